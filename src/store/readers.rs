//! SQLite profile reads on the request's own thread.
//!
//! sqlx's SQLite driver runs each connection on a thread of its own and hands every statement
//! to it over a channel, and the answer back; its pool then pings each connection it gets
//! back, which is one more hand-over there and back. A profile read is one statement that
//! SQLite answers from its page cache in a few microseconds, and on two cores the thread
//! switches around it cost far more than the statement: in the benchmark (W1, 16 connections)
//! a read took 0.133 ms of the server's CPU through sqlx, and 0.073 ms here.
//!
//! So single-profile reads run their statement where the request runs, on connections of their
//! own (rusqlite, over the same SQLite library that sqlx links), opened on the database's file
//! with `query_only`: WAL lets them read beside the one writer, and each read sees every commit
//! made before it began. Its text is the one sqlx would run ([`super::load_text`]), and its row
//! decodes as sqlx's does ([`super::row`]). Everything else (lists, writes, the reads of a
//! write) stays on sqlx.
//!
//! Running on the request's thread means that a read that waits blocks that thread. A WAL
//! reader waits only while another connection rebuilds the log's index (after a crash), for at
//! most [`BUSY_TIMEOUT`], and for the disk when a page is in neither SQLite's cache nor the
//! operating system's; for a database that fits in memory that is once per page.
//!
//! A database with no file of its own (SQLite in memory) cannot be opened a second time:
//! there, reads stay on sqlx ([`Readers::new`]).

use std::path::PathBuf;
use std::time::Duration;

use deadpool::managed::{self, Metrics, PoolError, QueueMode, RecycleResult};
use rusqlite::{Connection, OpenFlags, ToSql};
use sea_orm::sqlx::{self, SqlitePool};
use sea_orm::{ConnAcquireErr, DbBackend, DbErr};

use super::row::{Loaded, decode};
use super::{Parts, ProfileKey, TenantId, load_text};
use crate::error::{Error, Result};

/// How long a reader waits for SQLite's locks before it fails. Readers in WAL mode take none
/// that a writer holds; this bounds the rare wait for a connection rebuilding the log's index.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// Statements each reader keeps prepared: one per shape of read (kind of key and parts).
const PREPARED: usize = 3 * Parts::COMBINATIONS;

/// Connections that read single profiles from a SQLite database's file; cheap to clone.
#[derive(Debug, Clone)]
pub struct Readers {
    pool: managed::Pool<Opener>,
}

impl Readers {
    /// Up to `size` readers of the database under `pool`, or `None` when it has no file of
    /// its own (in memory). A read waits for a reader as long as `pool` waits for a connection.
    pub async fn new(pool: &SqlitePool, size: usize) -> Result<Option<Self>> {
        // SQLite says which file it opened: the path as it resolved it, or "" in memory.
        let file: String = sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_one(pool)
            .await
            .map_err(|err| DbErr::Query(sea_orm::RuntimeErr::SqlxError(err.into())))?;
        if file.is_empty() {
            return Ok(None);
        }
        let wait = pool.options().get_acquire_timeout();
        let pool = managed::Pool::builder(Opener(PathBuf::from(file)))
            .max_size(size)
            .queue_mode(QueueMode::Lifo)
            .wait_timeout(Some(wait))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|err| Error::Internal(Box::new(err)))?;
        Ok(Some(Readers { pool }))
    }

    /// The profile `key` names with `parts`, read by one statement on this thread.
    pub async fn load(&self, tenant: TenantId, key: &ProfileKey, parts: Parts) -> Result<Option<Loaded>> {
        let reader = match self.pool.get().await {
            Ok(reader) => reader,
            Err(PoolError::Timeout(_)) => return Err(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout).into()),
            Err(err) => return Err(Error::Internal(Box::new(err))),
        };
        let text = load_text(DbBackend::Sqlite, key, false, parts);
        let key: &dyn ToSql = match key {
            ProfileKey::Id(id) => id,
            ProfileKey::ExternalId(external_id) => external_id,
            ProfileKey::SerialNumber(serial) => serial,
        };
        // The values in the order the text binds them: tenant, then key.
        let mut statement = reader.prepare_cached(text).map_err(read_err)?;
        let mut rows = statement.query((tenant.0, key)).map_err(read_err)?;
        match rows.next().map_err(read_err)? {
            Some(row) => Ok(Some(decode(row)?)),
            None => Ok(None),
        }
    }
}

fn read_err(err: rusqlite::Error) -> Error {
    Error::Internal(Box::new(err))
}

/// Opens readers on one database file.
#[derive(Debug)]
struct Opener(PathBuf);

impl managed::Manager for Opener {
    type Type = Connection;
    type Error = rusqlite::Error;

    async fn create(&self) -> Result<Connection, rusqlite::Error> {
        // Read-write, as a WAL reader needs the log's index to be; `query_only` keeps it from
        // writing. Never created: the file is the one sqlx opened.
        let reader = Connection::open_with_flags(
            &self.0,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        reader.pragma_update(None, "query_only", true)?;
        reader.busy_timeout(BUSY_TIMEOUT)?;
        reader.set_prepared_statement_cache_capacity(PREPARED);
        Ok(reader)
    }

    async fn recycle(&self, _: &mut Connection, _: &Metrics) -> RecycleResult<rusqlite::Error> {
        // A reader holds no transaction between reads: each statement's ends with it.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::domain::{ChangeSet, CustomFieldType, Field, MemberType, NewCustomField, Op, Scalar, TagWrite};
    use crate::store::{Actor, load, on_a_fresh_sqlite_file};

    /// A profile with every kind of value a read decodes: text, flag, number and member-type
    /// fields, a time, attributes, tags with and without values, groups and custom values.
    fn everything() -> ChangeSet {
        let mut change = ChangeSet::default();
        let set = |field, value| Op::Set {
            field,
            value: Some(value),
        };
        change.push(set(Field::Name, Scalar::Text("Ada Lovelace".into())));
        change.push(set(Field::Email, Scalar::Text("ada@example.com".into())));
        change.push(set(Field::MemberType, Scalar::MemberType(MemberType::Team)));
        change.push(set(Field::MarketingConsent, Scalar::Flag(true)));
        change.push(set(Field::AcceptsMarketing, Scalar::Flag(false)));
        change.push(set(Field::Latitude, Scalar::Number(51.5)));
        change.push(set(Field::Longitude, Scalar::Number(-1.0)));
        change.push(Op::ClaimExternalId {
            value: "ada-1815".into(),
            path: "externalId".into(),
        });
        change.push(Op::ReplaceAttributes(
            json!({"tier": "gold", "points": 12.5, "nested": {"a": [1, null]}})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ));
        change.push(Op::ReplaceTags(["vip".to_string()].into()));
        change.push(Op::WriteTag {
            key: "plan".into(),
            value: "yearly".into(),
            mode: TagWrite::Set,
            path: "tags".into(),
        });
        change.push(Op::ReplaceGroups(["beta".to_string(), "staff".to_string()].into()));
        change.push(Op::SetCustom {
            name: "shoe_size".into(),
            value: Some("42".into()),
            path: "custom".into(),
        });
        change
    }

    #[tokio::test]
    async fn a_profile_reads_through_the_readers_as_it_reads_through_sqlx_by_every_key_and_parts() {
        let (store, _dir) = on_a_fresh_sqlite_file().await;
        let tenant = store.ensure_tenant("readers").await.unwrap();
        let field = NewCustomField::new("shoe_size".into(), CustomFieldType::Number, None, None).unwrap();
        store.define_custom_field(tenant, field).await.unwrap();
        let created = store.create(tenant, &everything(), &Actor::default()).await.unwrap();
        let readers = store.readers().await.unwrap().expect("a database file has readers");

        let keys = [
            ProfileKey::Id(created.profile.id),
            ProfileKey::ExternalId("ada-1815".into()),
            ProfileKey::SerialNumber(created.profile.serial_number),
        ];
        for key in &keys {
            for parts in Parts::every() {
                let read = readers.load(tenant, key, parts).await.unwrap().unwrap();
                let read = read.into_view(parts).unwrap();
                let through_sqlx = load(store.connection(), tenant, key, false, parts)
                    .await
                    .unwrap()
                    .unwrap();
                let through_sqlx = through_sqlx.into_view(parts).unwrap();
                assert_eq!(format!("{read:?}"), format!("{through_sqlx:?}"), "{key:?} {parts:?}");
            }
        }
        let everything = readers.load(tenant, &keys[0], Parts::ALL).await.unwrap().unwrap();
        let everything = everything.into_view(Parts::ALL).unwrap().profile;
        assert_eq!(everything, created.profile);

        let missing = ProfileKey::Id(Uuid::new_v4());
        assert!(readers.load(tenant, &missing, Parts::ALL).await.unwrap().is_none());
        let other_tenant = store.ensure_tenant("other").await.unwrap();
        assert!(
            readers
                .load(other_tenant, &keys[0], Parts::ALL)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_read_sees_the_update_committed_just_before_it() {
        let (store, _dir) = on_a_fresh_sqlite_file().await;
        let tenant = store.ensure_tenant("fresh").await.unwrap();
        let created = store
            .create(tenant, &ChangeSet::default(), &Actor::default())
            .await
            .unwrap();
        let key = ProfileKey::Id(created.profile.id);
        // Open the readers first, so that they hold the file before the writes.
        assert_eq!(
            store
                .find(tenant, &key, Parts::ALL)
                .await
                .unwrap()
                .unwrap()
                .profile
                .version,
            1
        );
        for n in 0..20 {
            let mut change = ChangeSet::default();
            change.push(Op::Set {
                field: Field::Name,
                value: Some(Scalar::Text(format!("name {n}"))),
            });
            let update = crate::store::Update {
                operation: "test",
                expected_version: None,
                dry_run: false,
                shows: Parts::ALL,
            };
            let updated = store
                .update(tenant, &key, &change, &update, &Actor::default())
                .await
                .unwrap();
            let read = store.find(tenant, &key, Parts::ALL).await.unwrap().unwrap();
            assert_eq!(read.profile, updated.profile.profile);
        }
    }

    #[tokio::test]
    async fn a_database_in_memory_has_no_readers() {
        let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
        assert!(Readers::new(&pool, 2).await.unwrap().is_none());
    }
}
