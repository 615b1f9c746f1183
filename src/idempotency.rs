//! Idempotency keys: a request sent again with the same `Idempotency-Key` is answered with the
//! first response instead of running again.
//!
//! Keys live in the database, so that every replica sees them: the first request claims the
//! key with an insert that only one writer can win (the primary key is tenant and key), runs,
//! and stores its response; a repeat finds the stored response and replays it byte for byte; a
//! repeat that arrives while the first still runs waits for it. A request whose run failed on
//! our side (5xx) releases its key, so that a retry may run.

use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, TryInsertResult};
use sha2::{Digest, Sha256};

use crate::entity::idempotency_key;
use crate::error::Result;
use crate::store::{Store, TenantId};

/// How long a key is remembered.
pub const RETENTION: Duration = Duration::hours(24);

/// The largest response kept for a replay; a larger one is replaced by a note that the
/// request was applied (a mutation's answer is rarely near this).
pub const MAX_STORED_RESPONSE_BYTES: usize = 256 * 1024;

/// A response as it was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is new (or expired, or abandoned): this request runs.
    Run,
    /// Another request with this key is running.
    Running { same_request: bool },
    /// A request with this key ran; here is its response.
    Done {
        same_request: bool,
        response: StoredResponse,
    },
}

/// Whether a presented key is acceptable: 1 to 255 visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// The key as stored: a person's own (so that one person can never be answered with another's
/// stored response, nor collide with another's keys), or the tenant's for an API key.
pub fn scoped(person: Option<&str>, key: String) -> String {
    match person {
        None => key,
        Some(subject) => {
            let mut hash = Sha256::new();
            hash.update(subject.as_bytes());
            hash.update([0]);
            hash.update(key.as_bytes());
            let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
            format!("person:{hex}")
        }
    }
}

/// The fingerprint of a request body, which a repeat must match.
pub fn fingerprint(body: &[u8]) -> Vec<u8> {
    Sha256::digest(body).to_vec()
}

/// Idempotency keys, on the service's database.
#[derive(Debug, Clone)]
pub struct IdempotencyKeys {
    store: Store,
    /// A claim still unanswered after this long is taken to be abandoned (its server died).
    abandoned_after: Duration,
}

impl IdempotencyKeys {
    pub fn new(store: Store, abandoned_after: std::time::Duration) -> Self {
        let abandoned_after = Duration::from_std(abandoned_after).unwrap_or(Duration::minutes(1)) * 2;
        IdempotencyKeys { store, abandoned_after }
    }

    /// Claims `key` for a request whose body has `fingerprint`.
    pub async fn claim(&self, tenant: TenantId, key: &str, fingerprint: &[u8]) -> Result<Claim> {
        let db = self.store.connection();
        let turn = self.store.write_turn().await;
        let now = Utc::now();
        let of_key = || {
            idempotency_key::Column::TenantId
                .eq(tenant.0)
                .and(idempotency_key::Column::Key.eq(key))
        };
        // An expired key is free again.
        idempotency_key::Entity::delete_many()
            .filter(of_key())
            .filter(idempotency_key::Column::ExpiresAt.lt(now))
            .exec(db)
            .await?;
        let claim = idempotency_key::ActiveModel {
            tenant_id: Set(tenant.0),
            key: Set(key.to_owned()),
            request_hash: Set(fingerprint.to_vec()),
            response_status: Set(None),
            response_content_type: Set(None),
            response_body: Set(None),
            created_at: Set(now),
            expires_at: Set(now + RETENTION),
        };
        let inserted = idempotency_key::Entity::insert(claim)
            .on_conflict_do_nothing_on([idempotency_key::Column::TenantId, idempotency_key::Column::Key])
            .exec_without_returning(db)
            .await?;
        if matches!(inserted, TryInsertResult::Inserted(rows) if rows > 0) {
            return Ok(Claim::Run);
        }
        // Take over a claim whose request never finished.
        let taken = idempotency_key::Entity::update_many()
            .col_expr(idempotency_key::Column::RequestHash, Expr::value(fingerprint.to_vec()))
            .col_expr(idempotency_key::Column::CreatedAt, Expr::value(now))
            .filter(of_key())
            .filter(idempotency_key::Column::ResponseStatus.is_null())
            .filter(idempotency_key::Column::CreatedAt.lt(now - self.abandoned_after))
            .exec(db)
            .await?;
        if taken.rows_affected > 0 {
            return Ok(Claim::Run);
        }
        drop(turn);
        let Some(row) = idempotency_key::Entity::find().filter(of_key()).one(db).await? else {
            // Released or expired in between: try again from the start.
            return Box::pin(self.claim(tenant, key, fingerprint)).await;
        };
        let same_request = row.request_hash == fingerprint;
        Ok(
            match (row.response_status, row.response_content_type, row.response_body) {
                (Some(status), Some(content_type), Some(body)) => Claim::Done {
                    same_request,
                    response: StoredResponse {
                        status: u16::try_from(status).unwrap_or(500),
                        content_type,
                        body,
                    },
                },
                _ => Claim::Running { same_request },
            },
        )
    }

    /// Stores the response of the request that claimed `key`.
    pub async fn complete(&self, tenant: TenantId, key: &str, response: &StoredResponse) -> Result<()> {
        let _turn = self.store.write_turn().await;
        idempotency_key::Entity::update_many()
            .col_expr(
                idempotency_key::Column::ResponseStatus,
                Expr::value(response.status as i16),
            )
            .col_expr(
                idempotency_key::Column::ResponseContentType,
                Expr::value(response.content_type.clone()),
            )
            .col_expr(
                idempotency_key::Column::ResponseBody,
                Expr::value(response.body.clone()),
            )
            .filter(idempotency_key::Column::TenantId.eq(tenant.0))
            .filter(idempotency_key::Column::Key.eq(key))
            .exec(self.store.connection())
            .await?;
        Ok(())
    }

    /// Frees `key` after a run that failed on our side, so that a retry may run.
    pub async fn release(&self, tenant: TenantId, key: &str) -> Result<()> {
        let _turn = self.store.write_turn().await;
        idempotency_key::Entity::delete_many()
            .filter(idempotency_key::Column::TenantId.eq(tenant.0))
            .filter(idempotency_key::Column::Key.eq(key))
            .filter(idempotency_key::Column::ResponseStatus.is_null())
            .exec(self.store.connection())
            .await?;
        Ok(())
    }

    /// Forgets every expired key; returns how many.
    pub async fn purge_expired(&self, now: DateTime<Utc>) -> Result<u64> {
        let _turn = self.store.write_turn().await;
        let result = idempotency_key::Entity::delete_many()
            .filter(idempotency_key::Column::ExpiresAt.lt(now))
            .exec(self.store.connection())
            .await?;
        Ok(result.rows_affected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_person_has_keys_of_their_own_that_fit_the_column() {
        assert_eq!(scoped(None, "k1".to_owned()), "k1");
        let ana = scoped(Some("ana"), "k1".to_owned());
        assert_ne!(ana, scoped(Some("bo"), "k1".to_owned()));
        assert_ne!(ana, scoped(Some("ana"), "k2".to_owned()));
        // The separator keeps ("a", "b1") and ("ab", "1") apart.
        assert_ne!(scoped(Some("a"), "b1".to_owned()), scoped(Some("ab"), "1".to_owned()));
        assert!(valid_key(&ana) && ana.len() <= 255, "{ana}");
    }

    #[test]
    fn keys_are_short_visible_ascii() {
        assert!(valid_key("order-7f3a:retry_1"));
        assert!(!valid_key(""));
        assert!(!valid_key("has space"));
        assert!(!valid_key("ünï"));
        assert!(!valid_key(&"k".repeat(256)));
    }

    #[test]
    fn one_byte_of_difference_changes_the_fingerprint() {
        assert_eq!(fingerprint(b"{\"query\":\"{a}\"}"), fingerprint(b"{\"query\":\"{a}\"}"));
        assert_ne!(fingerprint(b"{\"query\":\"{a}\"}"), fingerprint(b"{\"query\":\"{b}\"}"));
    }

    #[tokio::test]
    async fn on_sqlite_a_claim_waits_for_the_writers_turn_and_then_runs() {
        let (store, _dir) = crate::store::on_a_fresh_sqlite_file().await;
        let tenant = store.ensure_tenant("acme").await.unwrap();
        let keys = IdempotencyKeys::new(store.clone(), std::time::Duration::from_secs(30));
        let turn = store.write_turn().await;
        assert!(turn.is_some());
        let claim = keys.claim(tenant, "order-1", b"body");
        tokio::pin!(claim);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(200), &mut claim).await;
        assert!(waited.is_err(), "the claim ran during another writer's turn");
        drop(turn);
        assert!(matches!(claim.await.unwrap(), Claim::Run));
    }
}
