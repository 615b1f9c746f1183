//! A tenant's settings for browsers: the origins its frontends are served from (CORS), and the
//! issuer of its end users' tokens (JWT), with where its signing keys are published and the
//! audience its tokens name.
//!
//! `profile-gateway tenant set` writes them and `tenant show` reads them; the edge reads them
//! through [`Tenants::snapshot`], which asks the database at most once per cache time, so a
//! change reaches every replica within that time without a restart.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use tokio::sync::RwLock;

use crate::entity::tenant;
use crate::error::{Code, Error, Fault, Result};
use crate::store::{Store, TenantId};

/// Where a tenant's end-user tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwt {
    /// The `iss` its tokens carry; it selects the tenant.
    pub issuer: String,
    /// Where the issuer publishes its signing keys (a JWKS document).
    pub jwks_url: String,
    /// The `aud` its tokens must name.
    pub audience: String,
}

/// What a tenant allows browsers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub tenant: TenantId,
    pub name: String,
    /// The origins (`scheme://host[:port]`) pages calling the gateway may be served from.
    pub allowed_origins: Vec<String>,
    pub jwt: Option<Jwt>,
}

/// A change of settings: each part given replaces what was there.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub allowed_origins: Option<Vec<String>>,
    /// `Some(None)` removes the token settings.
    pub jwt: Option<Option<Jwt>>,
}

/// An origin as browsers send it in `Origin`: `scheme://host[:port]`, http or https, without
/// a path, query, fragment or user, and without the scheme's default port. Anything else is
/// refused, so that a configured origin can match a request's `Origin` exactly.
pub fn origin(text: &str) -> std::result::Result<String, String> {
    let refused = || format!("{text:?} is not an origin: write scheme://host[:port], such as https://app.example.com");
    let url = url::Url::parse(text).map_err(|_| refused())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refused());
    }
    let origin = url.origin().ascii_serialization();
    // The serialisation drops a default port and a trailing slash; anything else it drops
    // (a path, a query, a user) was not an origin.
    if text.trim_end_matches('/') != origin && text != format!("{origin}/") {
        return Err(refused());
    }
    Ok(origin)
}

/// An absolute http(s) URL, as an issuer or a JWKS address.
pub fn http_url(text: &str) -> std::result::Result<String, String> {
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(text.to_owned()),
        _ => Err(format!(
            "{text:?} is not an http(s) URL, such as https://auth.example.com/"
        )),
    }
}

/// Every tenant's settings that allow anything, as the edge reads them.
#[derive(Debug, Default)]
pub struct Snapshot {
    tenants: HashMap<TenantId, Arc<Settings>>,
    /// Every tenant's origins together: a preflight carries no credentials, so it is answered
    /// for any origin some tenant allows.
    origins: HashSet<String>,
    issuers: HashMap<String, TenantId>,
}

impl Snapshot {
    /// The snapshot of these tenants' settings.
    pub fn of(settings: impl IntoIterator<Item = Settings>) -> Self {
        let mut snapshot = Snapshot::default();
        for settings in settings {
            let settings = Arc::new(settings);
            snapshot.origins.extend(settings.allowed_origins.iter().cloned());
            if let Some(jwt) = &settings.jwt {
                snapshot.issuers.insert(jwt.issuer.clone(), settings.tenant);
            }
            snapshot.tenants.insert(settings.tenant, settings);
        }
        snapshot
    }

    /// Whether some tenant allows `origin`.
    pub fn allows_any(&self, origin: &str) -> bool {
        self.origins.contains(origin)
    }

    /// Whether `tenant` allows `origin`.
    pub fn allows(&self, tenant: TenantId, origin: &str) -> bool {
        self.tenants
            .get(&tenant)
            .is_some_and(|settings| settings.allowed_origins.iter().any(|allowed| allowed == origin))
    }

    /// The tenant whose tokens `issuer` signs.
    pub fn by_issuer(&self, issuer: &str) -> Option<&Arc<Settings>> {
        self.tenants.get(self.issuers.get(issuer)?)
    }
}

/// A snapshot and when it was read.
type Kept = (Instant, Arc<Snapshot>);

/// Tenants' settings, read and written.
#[derive(Debug, Clone)]
pub struct Tenants {
    store: Store,
    ttl: Duration,
    snapshot: Arc<RwLock<Option<Kept>>>,
}

impl Tenants {
    /// Settings whose snapshot is read from the database at most once per `ttl`.
    pub fn cached(store: Store, ttl: Duration) -> Self {
        Tenants {
            store,
            ttl,
            snapshot: Arc::default(),
        }
    }

    /// Applies `change` to the tenant called `name` (created if needed); its settings after.
    pub async fn set(&self, name: &str, change: Change) -> Result<Settings> {
        let id = self.store.ensure_tenant(name).await?;
        let mut row = tenant::ActiveModel {
            id: Set(id.0),
            ..Default::default()
        };
        if let Some(origins) = change.allowed_origins {
            let json = serde_json::to_string(&origins).map_err(|err| Error::Internal(Box::new(err)))?;
            row.allowed_origins = Set(json);
        }
        if let Some(jwt) = change.jwt {
            if let Some(jwt) = &jwt
                && let Some(other) = tenant::Entity::find()
                    .filter(tenant::Column::JwtIssuer.eq(&jwt.issuer))
                    .filter(tenant::Column::Id.ne(id.0))
                    .one(self.store.connection())
                    .await?
            {
                return Err(Error::User(Fault::new(
                    Code::ValidationFailed,
                    format!(
                        "the issuer {} already belongs to tenant \"{}\"; an issuer selects one tenant",
                        jwt.issuer, other.name
                    ),
                )));
            }
            row.jwt_issuer = Set(jwt.as_ref().map(|jwt| jwt.issuer.clone()));
            row.jwt_jwks_url = Set(jwt.as_ref().map(|jwt| jwt.jwks_url.clone()));
            row.jwt_audience = Set(jwt.map(|jwt| jwt.audience));
        }
        if row.is_changed() {
            let turn = self.store.write_turn().await;
            row.update(self.store.connection()).await?;
            drop(turn);
        }
        *self.snapshot.write().await = None;
        self.show(name)
            .await?
            .ok_or_else(|| Error::Internal(format!("tenant {name:?} vanished while it was set").into()))
    }

    /// The settings of the tenant called `name`, if there is one.
    pub async fn show(&self, name: &str) -> Result<Option<Settings>> {
        let row = tenant::Entity::find()
            .filter(tenant::Column::Name.eq(name))
            .one(self.store.connection())
            .await?;
        row.map(settings).transpose()
    }

    /// Every tenant's settings, read anew once the last read is older than the cache time.
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>> {
        if let Some((read, snapshot)) = &*self.snapshot.read().await
            && read.elapsed() < self.ttl
        {
            return Ok(snapshot.clone());
        }
        let mut kept = self.snapshot.write().await;
        if let Some((read, snapshot)) = &*kept
            && read.elapsed() < self.ttl
        {
            return Ok(snapshot.clone());
        }
        let rows = tenant::Entity::find()
            .filter(
                sea_orm::Condition::any()
                    .add(tenant::Column::AllowedOrigins.ne("[]"))
                    .add(tenant::Column::JwtIssuer.is_not_null()),
            )
            .all(self.store.connection())
            .await?;
        let settings = rows.into_iter().map(settings).collect::<Result<Vec<_>>>()?;
        let snapshot = Arc::new(Snapshot::of(settings));
        *kept = Some((Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }
}

fn settings(row: tenant::Model) -> Result<Settings> {
    let allowed_origins: Vec<String> = serde_json::from_str(&row.allowed_origins)
        .map_err(|err| Error::Internal(format!("tenant {} has allowed origins {err}", row.name).into()))?;
    let jwt = match (row.jwt_issuer, row.jwt_jwks_url, row.jwt_audience) {
        (Some(issuer), Some(jwks_url), Some(audience)) => Some(Jwt {
            issuer,
            jwks_url,
            audience,
        }),
        _ => None,
    };
    Ok(Settings {
        tenant: TenantId(row.id),
        name: row.name,
        allowed_origins,
        jwt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_a_scheme_a_host_and_a_port_only() {
        assert_eq!(origin("https://app.example.com").unwrap(), "https://app.example.com");
        assert_eq!(origin("http://127.0.0.1:18182").unwrap(), "http://127.0.0.1:18182");
        assert_eq!(origin("https://app.example.com/").unwrap(), "https://app.example.com");
        for bad in [
            "app.example.com",
            "https://app.example.com/path",
            "https://app.example.com?q=1",
            "https://user@app.example.com",
            "https://app.example.com:443",
            "ftp://app.example.com",
            "*",
            "null",
            "",
        ] {
            assert!(origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_issuer_is_an_http_url() {
        assert!(http_url("https://auth.example.com/").is_ok());
        assert!(http_url("http://127.0.0.1:9000/jwks.json").is_ok());
        for bad in ["auth.example.com", "mailto:a@b.c", "https://", ""] {
            assert!(http_url(bad).is_err(), "{bad}");
        }
    }
}
