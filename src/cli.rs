//! The `profile-gateway` command line.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use uuid::Uuid;

use crate::auth::{KeyInfo, Keys, Scope};
use crate::http::{DEFAULT_API_KEY_CACHE, DEFAULT_TENANT, EdgeConfig, Lifecycle, Limits};
use crate::idempotency::IdempotencyKeys;
use crate::store::Store;
use crate::tenant::Tenants;

/// One GraphQL API over five vendor dialects of profile updates.
#[derive(Debug, Parser)]
#[command(name = "profile-gateway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending migrations, then serve GraphQL (/graphql) and GraphiQL (/graphiql).
    Serve {
        /// Address to listen on.
        #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[command(flatten)]
        database: Database,
        /// Answer introspection queries (and suggest field names in errors): true or false.
        #[arg(long, env = "GRAPHQL_INTROSPECTION", default_value_t = true, action = ArgAction::Set)]
        introspection: bool,
        /// Seconds a valid API key is remembered without asking the database; a key revoked
        /// on another replica (or by `apikey revoke`) stops working within this time. 0: never.
        #[arg(long, env = "API_KEY_CACHE_SECS", default_value_t = DEFAULT_API_KEY_CACHE.as_secs())]
        api_key_cache_secs: u64,
        /// Seconds a shutdown (SIGTERM, ctrl-c) may take: in-flight requests that have not
        /// finished by then are dropped and the process exits.
        #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 15)]
        shutdown_timeout_secs: u64,
        /// A manifest of trusted documents (a JSON object from SHA-256 hex to document text,
        /// as GraphQL Code Generator's persisted-documents.json): requests may name them by
        /// `documentId` ("sha256:<hex>") or Apollo's `extensions.persistedQuery.sha256Hash`.
        #[arg(long, env = "TRUSTED_DOCUMENTS")]
        trusted_documents: Option<std::path::PathBuf>,
        #[command(flatten)]
        limits: Limits,
        #[command(flatten)]
        rates: crate::http::rate::Rates,
    },
    /// Apply pending migrations and exit.
    Migrate {
        #[command(flatten)]
        database: Database,
    },
    /// Print the GraphQL schema (SDL), as schema.graphql holds it.
    PrintSchema,
    /// Create, list and revoke API keys.
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// What a tenant allows browsers: origins (CORS) and end-user tokens (JWT).
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Change a tenant's settings (the tenant is created if needed); every replica follows
    /// within its API-key cache time. Prints the settings after.
    Set {
        /// The tenant to change.
        #[arg(long, value_parser = tenant_name)]
        tenant: String,
        /// An origin (scheme://host[:port]) browser pages may call from; repeat it for more. The
        /// list given replaces the tenant's list.
        #[arg(long = "allow-origin", value_parser = crate::tenant::origin)]
        allow_origins: Vec<String>,
        /// Allow no origin: browsers on other origins are refused.
        #[arg(long, conflicts_with = "allow_origins")]
        no_origins: bool,
        /// The `iss` of the tenant's end-user tokens (with --jwt-jwks-url and --jwt-audience).
        #[arg(long, value_parser = crate::tenant::http_url, requires_all = ["jwt_jwks_url", "jwt_audience"])]
        jwt_issuer: Option<String>,
        /// Where the issuer publishes its signing keys (a JWKS document).
        #[arg(long, value_parser = crate::tenant::http_url, requires = "jwt_issuer")]
        jwt_jwks_url: Option<String>,
        /// The `aud` the tenant's tokens must name.
        #[arg(long, value_parser = non_empty, requires = "jwt_issuer")]
        jwt_audience: Option<String>,
        /// Accept no end-user tokens for this tenant.
        #[arg(long, conflicts_with = "jwt_issuer")]
        no_jwt: bool,
        #[command(flatten)]
        database: Database,
    },
    /// Print a tenant's settings.
    Show {
        #[arg(long, value_parser = tenant_name)]
        tenant: String,
        #[command(flatten)]
        database: Database,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Create a key for a tenant (created if needed); the key is printed once, alone on the
    /// last line.
    Create {
        /// The tenant the key acts for.
        #[arg(long, value_parser = tenant_name)]
        tenant: String,
        /// read: queries; write: queries and profile mutations; admin: also defineCustomField.
        #[arg(long, value_enum, default_value_t = Scope::Read)]
        scope: Scope,
        /// A note to tell keys apart in `apikey list`.
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        database: Database,
    },
    /// List every key: id, tenant, scope, label, created and last-used times. Never a secret.
    List {
        #[command(flatten)]
        database: Database,
    },
    /// Revoke a key by its id; requests with it are refused from then on.
    Revoke {
        /// The key's id, as `apikey list` shows it.
        id: Uuid,
        #[command(flatten)]
        database: Database,
    },
}

#[derive(Debug, Args)]
pub struct Database {
    /// Database URL: sqlite://FILE (created if missing) or postgres://USER@HOST/DB.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "sqlite://profile-gateway.db"
    )]
    pub url: String,
}

impl Database {
    /// Connects and applies pending migrations.
    async fn open(&self) -> Result<Store, BoxError> {
        let db = crate::db::connect(&self.url).await?;
        crate::db::migrate(&db).await?;
        Ok(Store::new(db))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn tenant_name(name: &str) -> Result<String, String> {
    let valid = (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    valid
        .then(|| name.to_owned())
        .ok_or_else(|| "1 to 63 letters, digits, '-', '_' or '.'".to_owned())
}

/// Runs one command to completion.
pub async fn run(cli: Cli) -> Result<(), BoxError> {
    match cli.command {
        Command::Serve {
            listen,
            database,
            introspection,
            api_key_cache_secs,
            shutdown_timeout_secs,
            trusted_documents,
            limits,
            rates,
        } => {
            // A manifest that cannot be read or does not check out stops the start, before
            // anything else happens.
            let trusted_documents = trusted_documents
                .map(|path| crate::http::trusted::TrustedDocuments::load(&path).map(std::sync::Arc::new))
                .transpose()?;
            if let Some(documents) = &trusted_documents {
                tracing::info!(documents = documents.len(), "trusted documents loaded");
            }
            let store = database.open().await?;
            store.spawn_checkpoints();
            let keys = Keys::new(store.clone());
            let mut graphiql_key = None;
            if !keys.any().await? {
                let first = keys
                    .create(DEFAULT_TENANT, Scope::Admin, Some("created on first start".to_owned()))
                    .await?;
                println!(
                    "No API key existed, so an admin key for tenant \"{DEFAULT_TENANT}\" was created. \
                     It is shown only now; send it as X-API-Key:\n{}",
                    first.key
                );
                // Only a loopback listener may hand the key to whoever opens GraphiQL.
                if listen.ip().is_loopback() {
                    graphiql_key = Some(first.key);
                }
            }
            spawn_idempotency_purge(IdempotencyKeys::new(store.clone(), limits.request_timeout()));
            let lifecycle = Lifecycle::default();
            let config = EdgeConfig {
                limits,
                introspection,
                graphiql_key,
                lifecycle: lifecycle.clone(),
                api_key_cache: std::time::Duration::from_secs(api_key_cache_secs),
                trusted_documents,
                rates,
            };
            let router = crate::http::router(store, config)?;
            let listener = crate::http::bind(listen).await?;
            crate::http::serve(listener, router, lifecycle, Duration::from_secs(shutdown_timeout_secs)).await?;
        }
        Command::Migrate { database } => {
            database.open().await?;
            tracing::info!("migrations applied");
        }
        Command::PrintSchema => print!("{}", crate::sdl()),
        Command::Apikey { command } => apikey(command).await?,
        Command::Tenant { command } => tenant(command).await?,
    }
    Ok(())
}

/// Forgets expired idempotency keys every ten minutes, for as long as the server runs.
fn spawn_idempotency_purge(keys: IdempotencyKeys) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(600));
        loop {
            every.tick().await;
            match keys.purge_expired(chrono::Utc::now()).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "expired idempotency keys forgotten"),
                Err(err) => tracing::warn!(error = %err, "could not forget expired idempotency keys"),
            }
        }
    });
}

async fn apikey(command: ApikeyCommand) -> Result<(), BoxError> {
    match command {
        ApikeyCommand::Create {
            tenant,
            scope,
            label,
            database,
        } => {
            let keys = Keys::new(database.open().await?);
            let created = keys.create(&tenant, scope, label).await?;
            println!(
                "Created {scope} key {} for tenant \"{tenant}\". It is shown only now:",
                created.info.id
            );
            println!("{}", created.key);
        }
        ApikeyCommand::List { database } => {
            let keys = Keys::new(database.open().await?).list().await?;
            print!("{}", key_table(&keys));
        }
        ApikeyCommand::Revoke { id, database } => {
            if !Keys::new(database.open().await?).revoke(id).await? {
                return Err(format!("no active key has the id {id}").into());
            }
            println!("Revoked key {id}.");
        }
    }
    Ok(())
}

async fn tenant(command: TenantCommand) -> Result<(), BoxError> {
    let settings = match command {
        TenantCommand::Set {
            tenant,
            allow_origins,
            no_origins,
            jwt_issuer,
            jwt_jwks_url,
            jwt_audience,
            no_jwt,
            database,
        } => {
            let mut change = crate::tenant::Change::default();
            if no_origins || !allow_origins.is_empty() {
                change.allowed_origins = Some(allow_origins);
            }
            if no_jwt {
                change.jwt = Some(None);
            }
            if let (Some(issuer), Some(jwks_url), Some(audience)) = (jwt_issuer, jwt_jwks_url, jwt_audience) {
                change.jwt = Some(Some(crate::tenant::Jwt {
                    issuer,
                    jwks_url,
                    audience,
                }));
            }
            let tenants = Tenants::cached(database.open().await?, Duration::ZERO);
            tenants.set(&tenant, change).await?
        }
        TenantCommand::Show { tenant, database } => {
            let tenants = Tenants::cached(database.open().await?, Duration::ZERO);
            tenants
                .show(&tenant)
                .await?
                .ok_or_else(|| format!("no tenant is called \"{tenant}\""))?
        }
    };
    print!("{}", settings_text(&settings));
    Ok(())
}

fn settings_text(settings: &crate::tenant::Settings) -> String {
    let origins = if settings.allowed_origins.is_empty() {
        "none (browsers on other origins are refused)".to_owned()
    } else {
        settings.allowed_origins.join(" ")
    };
    let mut text = format!("tenant           {}\nallowed origins  {origins}\n", settings.name);
    match &settings.jwt {
        Some(jwt) => text.push_str(&format!(
            "jwt issuer       {}\njwt jwks url     {}\njwt audience     {}\n",
            jwt.issuer, jwt.jwks_url, jwt.audience
        )),
        None => text.push_str("jwt              none (API keys only)\n"),
    }
    text
}

fn non_empty(text: &str) -> Result<String, String> {
    (!text.trim().is_empty())
        .then(|| text.to_owned())
        .ok_or_else(|| "must not be empty".to_owned())
}

fn key_table(keys: &[KeyInfo]) -> String {
    let time = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map_or_else(|| "-".to_owned(), |at| at.format("%Y-%m-%d %H:%M:%S").to_string())
    };
    let mut table = format!(
        "{:<36}  {:<16}  {:<5}  {:<20}  {:<19}  {:<19}  {}\n",
        "ID", "TENANT", "SCOPE", "LABEL", "CREATED", "LAST USED", "REVOKED"
    );
    for key in keys {
        table.push_str(&format!(
            "{:<36}  {:<16}  {:<5}  {:<20}  {:<19}  {:<19}  {}\n",
            key.id,
            key.tenant,
            key.scope.as_str(),
            key.label.as_deref().unwrap_or("-"),
            time(Some(key.created_at)),
            time(key.last_used_at),
            time(key.revoked_at),
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_short_plain_words() {
        assert!(tenant_name("acme-eu_1.prod").is_ok());
        for bad in ["", "has space", "x".repeat(64).as_str(), "ünï"] {
            assert!(tenant_name(bad).is_err(), "{bad}");
        }
    }
}
