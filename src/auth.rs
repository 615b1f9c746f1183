//! API keys: what they look like, how they are checked, and where they are kept.
//!
//! A key reads `pgw_<prefix>_<secret>`. The prefix (16 hex digits) is public and finds the key's
//! row; the secret (32 random bytes, base64url) is never stored: the row keeps its SHA-256, and
//! a presented secret's hash is compared in constant time. A fast hash is enough because the
//! secret is 256 bits of randomness; there is no password to guess.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::entity::{api_key, tenant};
use crate::error::{Error, Result};
use crate::store::{Actor, Store, TenantId};

const KEY_MARK: &str = "pgw_";
const PREFIX_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
/// `last_used_at` is written at most this often per key (and only when the key is looked up
/// rather than remembered), so that reads stay reads.
const LAST_USED_RESOLUTION: Duration = Duration::seconds(60);

/// What a key may do. Each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scope {
    /// Queries.
    Read,
    /// Queries and profile mutations.
    Write,
    /// Everything, including `defineCustomField`.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Scope::Read, Scope::Write, Scope::Admin]
            .into_iter()
            .find(|scope| scope.as_str() == s)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a request acts as: the key it presented, its tenant and its scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub key_id: Uuid,
    pub tenant: TenantId,
    pub scope: Scope,
}

/// One person, as a verified end-user token names them (`tenant set --jwt-issuer`).
///
/// A person acts in the `self` scope: on the one profile of their tenant whose `externalId` is
/// their `subject`, which they may read, create and update (but not re-key, suspend or delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub tenant: TenantId,
    /// The token's `iss`.
    pub issuer: String,
    /// The token's `sub`: the `externalId` of the person's profile.
    pub subject: String,
    /// When the token expires (`exp`, seconds since the epoch): a socket it opened closes then.
    pub expires_at: u64,
}

/// Who a request acts as: a service with an API key, or a person with a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Key(Principal),
    Person(Arc<Person>),
}

impl Caller {
    pub fn tenant(&self) -> TenantId {
        match self {
            Caller::Key(principal) => principal.tenant,
            Caller::Person(person) => person.tenant,
        }
    }

    /// Who the caller is, as the history of what it changes names it.
    pub fn actor(&self, request_id: String) -> Actor {
        let (api_key_id, person) = match self {
            Caller::Key(principal) => (Some(principal.key_id), None),
            Caller::Person(person) => (None, Some((person.issuer.clone(), person.subject.clone()))),
        };
        Actor {
            api_key_id,
            person,
            request_id: Some(request_id),
        }
    }

    /// The person the caller acts for, when it is one.
    pub fn person(&self) -> Option<&Arc<Person>> {
        match self {
            Caller::Key(_) => None,
            Caller::Person(person) => Some(person),
        }
    }
}

/// Whether `presented` is meant as an API key (has its mark) rather than a token.
pub fn looks_like_key(presented: &str) -> bool {
    presented.starts_with(KEY_MARK)
}

/// A key as `apikey list` shows it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: Uuid,
    pub tenant: String,
    pub scope: Scope,
    pub label: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A freshly made key: the only moment its full text exists.
pub struct NewKey {
    pub info: KeyInfo,
    pub key: String,
}

/// The parts of a presented key, if it has the shape of one.
fn split(key: &str) -> Option<(&str, &str)> {
    let (prefix, secret) = key.strip_prefix(KEY_MARK)?.split_once('_')?;
    let well_formed = prefix.len() == PREFIX_BYTES * 2
        && prefix.bytes().all(|b| b.is_ascii_hexdigit())
        && !secret.is_empty()
        && secret.len() <= 64;
    well_formed.then_some((prefix, secret))
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|err| Error::Internal(format!("no randomness: {err}").into()))?;
    Ok(bytes)
}

/// A new key's text, its prefix and the hash to store.
fn generate() -> Result<(String, String, [u8; 32])> {
    let prefix: String = random::<PREFIX_BYTES>()?.iter().map(|b| format!("{b:02x}")).collect();
    let secret = URL_SAFE_NO_PAD.encode(random::<SECRET_BYTES>()?);
    let key = format!("{KEY_MARK}{prefix}_{secret}");
    Ok((key, prefix, hash(&secret)))
}

/// A valid key as the cache remembers it: the hash of its secret and whom it stands for.
#[derive(Debug, Clone, Copy)]
struct Known {
    secret_hash: [u8; 32],
    principal: Principal,
}

/// Most keys the cache holds; a replica serves few.
const CACHED_KEYS: u64 = 10_000;

/// API key storage, on the service's database.
///
/// A key that authenticated is remembered for a while ([`Keys::cached`]), so that a request
/// costs no database round trip for its key. A revocation reaches this process at once when it
/// revokes through it, and every other replica when the remembered entry expires.
#[derive(Debug, Clone)]
pub struct Keys {
    store: Store,
    cache: Option<moka::sync::Cache<String, Known>>,
}

impl Keys {
    /// Keys that are looked up in the database on every use.
    pub fn new(store: Store) -> Self {
        Keys { store, cache: None }
    }

    /// Keys whose successful lookups are remembered for `ttl` (none when it is zero).
    pub fn cached(store: Store, ttl: std::time::Duration) -> Self {
        let cache = (!ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(CACHED_KEYS)
                .time_to_live(ttl)
                .build()
        });
        Keys { store, cache }
    }

    /// Makes a key for `tenant` (created if missing).
    pub async fn create(&self, tenant: &str, scope: Scope, label: Option<String>) -> Result<NewKey> {
        let tenant_id = self.store.ensure_tenant(tenant).await?;
        let (key, prefix, secret_hash) = generate()?;
        let _turn = self.store.write_turn().await;
        let row = api_key::ActiveModel {
            id: Set(Uuid::new_v4()),
            tenant_id: Set(tenant_id.0),
            prefix: Set(prefix),
            secret_hash: Set(secret_hash.to_vec()),
            scope: Set(scope.as_str().to_owned()),
            label: Set(label),
            created_at: Set(Utc::now()),
            last_used_at: Set(None),
            revoked_at: Set(None),
        }
        .insert(self.store.connection())
        .await?;
        Ok(NewKey {
            info: info(row, tenant.to_owned())?,
            key,
        })
    }

    /// Every key, oldest first.
    pub async fn list(&self) -> Result<Vec<KeyInfo>> {
        let rows = api_key::Entity::find()
            .find_also_related(tenant::Entity)
            .order_by_asc(api_key::Column::CreatedAt)
            .all(self.store.connection())
            .await?;
        rows.into_iter()
            .map(|(key, tenant)| info(key, tenant.map(|t| t.name).unwrap_or_default()))
            .collect()
    }

    /// Revokes a key; `false` if there is no such key or it was revoked already.
    pub async fn revoke(&self, id: Uuid) -> Result<bool> {
        let turn = self.store.write_turn().await;
        let result = api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, sea_orm::sea_query::Expr::value(Utc::now()))
            .filter(api_key::Column::Id.eq(id))
            .filter(api_key::Column::RevokedAt.is_null())
            .exec(self.store.connection())
            .await?;
        drop(turn);
        if let Some(cache) = &self.cache {
            // Revocation is rare, so a scan of the cache is fine.
            let revoked: Vec<_> = cache
                .iter()
                .filter(|(_, known)| known.principal.key_id == id)
                .map(|(prefix, _)| prefix)
                .collect();
            for prefix in revoked {
                cache.invalidate(prefix.as_str());
            }
        }
        Ok(result.rows_affected > 0)
    }

    pub async fn any(&self) -> Result<bool> {
        Ok(api_key::Entity::find().count(self.store.connection()).await? > 0)
    }

    /// Whether the key `id` is revoked (or gone), asked of the database rather than the cache:
    /// an open socket asks this from time to time.
    pub async fn revoked(&self, id: Uuid) -> Result<bool> {
        let key = api_key::Entity::find_by_id(id).one(self.store.connection()).await?;
        Ok(key.is_none_or(|key| key.revoked_at.is_some()))
    }

    /// Who `presented` authenticates as, or `None` for a malformed, unknown or revoked key.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<Principal>> {
        let Some((prefix, secret)) = split(presented) else {
            return Ok(None);
        };
        if let Some(known) = self.cache.as_ref().and_then(|cache| cache.get(prefix)) {
            // A prefix names one key, whose secret never changes: a mismatch is a wrong secret.
            let matches: bool = hash(secret).ct_eq(&known.secret_hash).into();
            return Ok(matches.then_some(known.principal));
        }
        let row = api_key::Entity::find()
            .filter(api_key::Column::Prefix.eq(prefix))
            .one(self.store.connection())
            .await?;
        // The hash is computed even when no row matched, so that timing tells nothing about
        // which prefixes exist.
        let presented_hash = hash(secret);
        let Some(row) = row else {
            return Ok(None);
        };
        let matches: bool = presented_hash.ct_eq(row.secret_hash.as_slice()).into();
        if !matches || row.revoked_at.is_some() {
            return Ok(None);
        }
        let scope = Scope::parse(&row.scope)
            .ok_or_else(|| Error::Internal(format!("API key {} has scope {:?}", row.id, row.scope).into()))?;
        let now = Utc::now();
        if row.last_used_at.is_none_or(|at| now - at >= LAST_USED_RESOLUTION) {
            self.touch(row.id, now);
        }
        let principal = Principal {
            key_id: row.id,
            tenant: TenantId(row.tenant_id),
            scope,
        };
        if let Some(cache) = &self.cache {
            cache.insert(
                prefix.to_owned(),
                Known {
                    secret_hash: presented_hash,
                    principal,
                },
            );
        }
        Ok(Some(principal))
    }

    /// Records a use of the key in the background: the request does not wait for the write.
    fn touch(&self, id: Uuid, now: DateTime<Utc>) {
        let store = self.store.clone();
        tokio::spawn(async move {
            let _turn = store.write_turn().await;
            let result = api_key::Entity::update_many()
                .col_expr(api_key::Column::LastUsedAt, sea_orm::sea_query::Expr::value(now))
                .filter(api_key::Column::Id.eq(id))
                .exec(store.connection())
                .await;
            if let Err(err) = result {
                tracing::warn!(%err, key = %id, "could not record the key's last use");
            }
        });
    }
}

fn info(row: api_key::Model, tenant: String) -> Result<KeyInfo> {
    let scope = Scope::parse(&row.scope)
        .ok_or_else(|| Error::Internal(format!("API key {} has scope {:?}", row.id, row.scope).into()))?;
    Ok(KeyInfo {
        id: row.id,
        tenant,
        scope,
        label: row.label,
        created_at: row.created_at,
        last_used_at: row.last_used_at,
        revoked_at: row.revoked_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_splits_into_its_prefix_and_a_secret_matching_its_hash() {
        let (key, prefix, stored) = generate().unwrap();
        let (p, secret) = split(&key).unwrap();
        assert_eq!(p, prefix);
        assert_eq!(hash(secret), stored);
        assert!(key.len() > 60, "{key}");
    }

    #[test]
    fn two_keys_never_share_a_prefix_or_secret() {
        let (a, ..) = generate().unwrap();
        let (b, ..) = generate().unwrap();
        assert_ne!(split(&a).unwrap().0, split(&b).unwrap().0);
        assert_ne!(split(&a).unwrap().1, split(&b).unwrap().1);
    }

    #[test]
    fn malformed_keys_do_not_split() {
        for bad in [
            "",
            "pgw_",
            "pgw_abc_def",
            "xyz_0123456789abcdef_secret",
            "pgw_0123456789abcdeg_s",
            "pgw_0123456789abcdef_",
        ] {
            assert!(split(bad).is_none(), "{bad}");
        }
        assert!(split("pgw_0123456789abcdef_s3cr_et").is_some());
    }

    #[test]
    fn scopes_include_the_ones_before_them() {
        assert!(Scope::Admin > Scope::Write && Scope::Write > Scope::Read);
        assert_eq!(Scope::parse("write"), Some(Scope::Write));
        assert_eq!(Scope::parse("root"), None);
    }
}
