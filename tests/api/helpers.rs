//! A running gateway on port 0 over a fresh database, spoken to over HTTP.

use std::time::Duration;

use profile_gateway::auth::{Keys, Scope};
use profile_gateway::http::EdgeConfig;
use profile_gateway::store::Store;
use profile_gateway::{db, http};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};

/// Set to a PostgreSQL URL (its database is only used to create per-test databases) to run
/// every test on PostgreSQL too. When set, an unreachable server fails the tests.
pub const POSTGRES_URL_VAR: &str = "TEST_POSTGRES_URL";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// An admin key of the tenant `default`, which requests use unless told otherwise.
    pub admin_key: String,
    /// The database URL, for tests that open a connection of their own.
    pub database_url: String,
    keys: Keys,
    _database: TestDatabase,
}

enum TestDatabase {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres {
        admin_url: String,
        name: String,
    },
    /// Another replica's database, cleaned up by that replica.
    Shared,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let TestDatabase::Postgres { admin_url, name } = self {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop is synchronous; a thread of its own runs the async cleanup.
            let dropped = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(async {
                    let admin = Database::connect(&admin_url).await?;
                    admin
                        .execute_unprepared(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                        .await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                })
            })
            .join();
            if !matches!(dropped, Ok(Ok(()))) {
                eprintln!("could not drop the test database {}", self.name());
            }
        }
    }
}

impl TestDatabase {
    fn name(&self) -> &str {
        match self {
            TestDatabase::Sqlite(_) => "sqlite",
            TestDatabase::Postgres { name, .. } => name,
            TestDatabase::Shared => "shared",
        }
    }
}

impl TestApp {
    /// The gateway over a new SQLite file in a temporary directory.
    pub async fn sqlite() -> TestApp {
        Self::sqlite_with(EdgeConfig {
            introspection: true,
            ..EdgeConfig::default()
        })
        .await
    }

    /// The gateway over a new SQLite file, configured with `config`.
    pub async fn sqlite_with(config: EdgeConfig) -> TestApp {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("gateway.db").display());
        Self::start(&url, TestDatabase::Sqlite(dir), config).await
    }

    /// The gateway over a new PostgreSQL database, or `None` when `TEST_POSTGRES_URL` is unset.
    pub async fn postgres() -> Option<TestApp> {
        Self::postgres_with(EdgeConfig {
            introspection: true,
            ..EdgeConfig::default()
        })
        .await
    }

    /// The gateway over a new PostgreSQL database, configured with `config`.
    pub async fn postgres_with(config: EdgeConfig) -> Option<TestApp> {
        Self::postgres_through(None, config).await
    }

    /// Where `TEST_POSTGRES_URL`'s server listens, if set.
    pub fn postgres_address() -> Option<String> {
        let url = std::env::var(POSTGRES_URL_VAR).ok()?;
        let authority = url.split("://").nth(1)?.split('/').next()?;
        Some(authority.rsplit('@').next()?.to_owned())
    }

    /// The gateway over a new PostgreSQL database that it reaches through `via` (a proxy's
    /// address) when given.
    pub async fn postgres_through(via: Option<&str>, config: EdgeConfig) -> Option<TestApp> {
        let Ok(admin_url) = std::env::var(POSTGRES_URL_VAR) else {
            println!("skipped: {POSTGRES_URL_VAR} is not set, so this test does not run on PostgreSQL");
            return None;
        };
        let admin = Database::connect(&admin_url)
            .await
            .unwrap_or_else(|err| panic!("{POSTGRES_URL_VAR} is set but PostgreSQL is unreachable: {err}"));
        let name = format!("pgw_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!(r#"CREATE DATABASE "{name}""#))
            .await
            .expect("CREATE DATABASE");
        admin.close().await.ok();
        let (base, _) = admin_url
            .rsplit_once('/')
            .expect("a PostgreSQL URL ends with /DATABASE");
        let mut url = format!("{base}/{name}");
        if let (Some(via), Some(direct)) = (via, Self::postgres_address()) {
            url = url.replacen(&direct, via, 1);
        }
        Some(Self::start(&url, TestDatabase::Postgres { admin_url, name }, config).await)
    }

    /// A second server on this one's database, as another replica would run.
    pub async fn replica(&self) -> TestApp {
        let config = EdgeConfig {
            introspection: true,
            ..EdgeConfig::default()
        };
        Self::serve(
            &self.database_url,
            TestDatabase::Shared,
            config,
            Some(self.admin_key.clone()),
        )
        .await
    }

    /// Another server on this one's database, with `config`.
    pub async fn replica_with(&self, config: EdgeConfig) -> TestApp {
        Self::serve(
            &self.database_url,
            TestDatabase::Shared,
            config,
            Some(self.admin_key.clone()),
        )
        .await
    }

    async fn start(url: &str, database: TestDatabase, config: EdgeConfig) -> TestApp {
        Self::serve(url, database, config, None).await
    }

    /// Serves `url`'s database, with `admin_key` or a new admin key of `default`.
    async fn serve(url: &str, database: TestDatabase, config: EdgeConfig, admin_key: Option<String>) -> TestApp {
        let connection = db::connect(url).await.expect("connect to the test database");
        db::migrate(&connection).await.expect("apply the migrations");
        let store = Store::new(connection);
        let keys = Keys::new(store.clone());
        let admin_key = match admin_key {
            Some(key) => key,
            None => {
                keys.create("default", Scope::Admin, None)
                    .await
                    .expect("an admin key")
                    .key
            }
        };
        let config_lifecycle = config.lifecycle.clone();
        let router = http::router(store, config).expect("build the router");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let address = format!("http://{}", listener.local_addr().expect("a local address"));
        let lifecycle = config_lifecycle;
        tokio::spawn(async move {
            http::serve_until(
                listener,
                router,
                lifecycle,
                Duration::from_secs(15),
                std::future::pending(),
            )
            .await
        });
        TestApp {
            address,
            client: reqwest::Client::new(),
            admin_key,
            database_url: url.to_owned(),
            keys,
            _database: database,
        }
    }

    /// A new key of `scope` for `tenant` (created if needed).
    pub async fn key(&self, tenant: &str, scope: Scope) -> String {
        self.keys.create(tenant, scope, None).await.expect("a key").key
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Posts a GraphQL request with the admin key and returns the whole response body.
    pub async fn graphql(&self, query: &str, variables: Value) -> Value {
        self.graphql_as(&self.admin_key, query, variables).await
    }

    /// Posts a GraphQL request with `key` and returns the whole response body.
    pub async fn graphql_as(&self, key: &str, query: &str, variables: Value) -> Value {
        self.post(Some(key), &json!({ "query": query, "variables": variables }))
            .await
            .json()
            .await
            .expect("the response is JSON")
    }

    /// Posts `body` as JSON to /graphql, with `key` if any.
    pub async fn post(&self, key: Option<&str>, body: &Value) -> reqwest::Response {
        let mut request = self.client.post(format!("{}/graphql", self.address)).json(body);
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        request.send().await.expect("the request is sent")
    }

    /// `data` of a request that must succeed.
    pub async fn ok(&self, query: &str, variables: Value) -> Value {
        let response = self.graphql(query, variables).await;
        assert!(response.get("errors").is_none(), "unexpected errors: {response:#}");
        response["data"].clone()
    }

    /// The single error of a request that must fail.
    pub async fn error(&self, query: &str, variables: Value) -> Value {
        let response = self.graphql(query, variables).await;
        let errors = response["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("expected an error: {response:#}"));
        assert_eq!(errors.len(), 1, "expected one error: {response:#}");
        errors[0].clone()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client");
        client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("the request is sent")
    }

    /// Creates a profile from `input` and returns the selected fields.
    pub async fn create(&self, input: Value) -> Value {
        let data = self
            .ok(
                "mutation($input: CreateProfileInput!) { createProfile(input: $input) { id serialNumber externalId version } }",
                json!({ "input": input }),
            )
            .await;
        data["createProfile"].clone()
    }

    /// Runs `updateProfile` on the profile with `id`; returns the whole response.
    pub async fn update(&self, id: &str, update: Value) -> Value {
        self.graphql(UPDATE, json!({ "ref": { "id": id }, "update": update }))
            .await
    }

    /// The profile with `id`, with every field tests look at.
    pub async fn profile(&self, id: &str) -> Value {
        self.ok(
            &format!("query($id: ID!) {{ profile(ref: {{id: $id}}) {{ {PROFILE_FIELDS} }} }}"),
            json!({ "id": id }),
        )
        .await["profile"]
            .clone()
    }
}

pub const PROFILE_FIELDS: &str = "id serialNumber externalId status memberType name email role marketingConsent \
    acceptsMarketing firstName lastName title organization phoneNumber address address2 city stateRegion zipCode \
    country latitude longitude timezone locale klaviyoId biography category attributes tags { key value } groups \
    customFields { name type value } values version createdAt updatedAt";

pub const UPDATE: &str =
    "mutation($ref: ProfileRef!, $update: ProfileUpdate!, $expectedVersion: Int, $dryRun: Boolean! = false) {
    updateProfile(ref: $ref, update: $update, expectedVersion: $expectedVersion, dryRun: $dryRun) {
        profile { id externalId version name firstName lastName email city latitude longitude memberType
                  attributes tags { key value } groups values customFields { name type value } }
        changes { field before after }
        dryRun
    }
}";

/// Runs each listed test against SQLite and, when `TEST_POSTGRES_URL` is set, PostgreSQL.
/// `api::<module>::<sentence>::on_sqlite` and `…::on_postgres` are the test names.
#[macro_export]
macro_rules! on_both_databases {
    ($(async fn $name:ident($app:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn run($app: $crate::helpers::TestApp) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sqlite() {
                    run($crate::helpers::TestApp::sqlite().await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_postgres() {
                    if let Some(app) = $crate::helpers::TestApp::postgres().await {
                        run(app).await;
                    }
                }
            }
        )*
    };
}
