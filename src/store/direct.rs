//! SQLite profile reads and updates on the request's own thread.
//!
//! sqlx's SQLite driver runs each connection on a thread of its own and hands every statement
//! to it over a channel, and the answer back; its pool then pings each connection it gets
//! back, which is one more hand-over there and back. A profile read is one statement that
//! SQLite answers from its page cache in a few microseconds, and on two cores the thread
//! switches around it cost far more than the statement: in the benchmark (W1, 16 connections)
//! a read took 0.133 ms of the server's CPU through sqlx, and 0.073 ms here. Updates pay the
//! same hand-overs inside their transaction, while they hold SQLite's one write lock, so the
//! next update waits for them too.
//!
//! So these run their statements where the request runs, on connections of their own
//! (rusqlite, over the same SQLite library that sqlx links) opened on the database's file:
//!
//! - single-profile reads, and pages of profiles without their total count, on a few readers
//!   opened with `query_only`: WAL lets them read beside the one writer, and each read sees
//!   every commit made before it began;
//! - profile updates, on one writer, in this process's write turn ([`Direct::begin`]).
//!
//! Their texts are the ones sqlx would run, their values are bound as sqlx binds them
//! ([`Param`]), and their rows decode as sqlx's do ([`super::row`]). Everything else (pages
//! with their count, history, the other writes) stays on sqlx.
//!
//! Running on the request's thread means that a statement that waits blocks that thread. A
//! reader waits only while another connection rebuilds the log's index (after a crash), for at
//! most [`BUSY_TIMEOUT`], and for the disk when a page is in neither SQLite's cache nor the
//! operating system's; for a database that fits in memory that is once per page. The writer
//! never waits for the write lock: when another connection holds it (another process's),
//! [`Direct::begin`] says so at once, and the update goes through sqlx, which waits for it
//! without blocking a thread. A commit appends to the write-ahead log without syncing it
//! (`synchronous = NORMAL`, as on sqlx's connections), but for the first after the log starts
//! over, which syncs the log's new header (SQLite's guard against corruption) and blocks its
//! thread meanwhile (0.2–0.6 ms in the benchmark); checkpoints run beside the writers
//! ([`crate::db::spawn_checkpoints`]).
//!
//! A database with no file of its own (SQLite in memory) cannot be opened a second time:
//! there, everything stays on sqlx ([`Direct::new`]).

use std::path::PathBuf;
use std::time::Duration;

use chrono::SecondsFormat;
use deadpool::managed::{self, Metrics, Object, PoolError, QueueMode, RecycleError, RecycleResult};
use rusqlite::types::{ToSqlOutput, Value as Sql};
use rusqlite::{Connection, ErrorCode, OpenFlags, ToSql, ffi};
use sea_orm::sqlx::SqlitePool;
use sea_orm::{ConnAcquireErr, DbBackend, DbErr, Statement, Value};

use super::row::{Loaded, decode};
use super::{Parts, ProfileKey, TenantId, load_text};
use crate::db::{WAL_BACKSTOP_PAGES, database_file};
use crate::error::{Error, Result};

/// How long a reader waits for SQLite's locks before it fails. Readers in WAL mode take none
/// that a writer holds; this bounds the rare wait for a connection rebuilding the log's index.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// Statements each reader keeps prepared: one per shape of read (kind of key and parts),
/// and the shapes of page used most lately.
const PREPARED_READS: usize = 3 * Parts::COMBINATIONS + PREPARED_PAGES;

/// Shapes of page (their texts vary with the filter, the parts and the length) that each
/// reader keeps prepared beside the reads, the least used lately given up first.
const PREPARED_PAGES: usize = 32;

/// Statements the writer keeps prepared: the reads, and the writes, whose texts vary with how
/// many tags, groups or custom values they write.
const PREPARED_WRITES: usize = 4 * PREPARED_READS;

/// Connections of this process's own on a SQLite database's file; cheap to clone.
#[derive(Debug, Clone)]
pub struct Direct {
    readers: managed::Pool<Opener>,
    writer: managed::Pool<Opener>,
}

impl Direct {
    /// Up to `readers` readers and one writer on the database under `pool`, or `None` when it
    /// has no file of its own (in memory). Each waits for a connection as long as `pool` does.
    pub async fn new(pool: &SqlitePool, readers: usize) -> Result<Option<Self>> {
        let Some(file) = database_file(pool).await? else {
            return Ok(None);
        };
        let wait = pool.options().get_acquire_timeout();
        let open = |role, size| {
            managed::Pool::builder(Opener {
                file: file.clone(),
                role,
            })
            .max_size(size)
            .queue_mode(QueueMode::Lifo)
            .wait_timeout(Some(wait))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|err| Error::Internal(Box::new(err)))
        };
        Ok(Some(Direct {
            readers: open(Role::Reader, readers)?,
            writer: open(Role::Writer, 1)?,
        }))
    }

    /// The profile `key` names with `parts`, read by one statement on this thread.
    pub async fn load(&self, tenant: TenantId, key: &ProfileKey, parts: Parts) -> Result<Option<Loaded>> {
        load(&*get(&self.readers).await?, tenant, key, parts)
    }

    /// Every profile `statement` reads, with what each owns: a select that
    /// [`super::with_owned`] built for SQLite, as a page of profiles is; read by one statement
    /// on this thread.
    pub async fn rows(&self, statement: &Statement) -> Result<Vec<Loaded>> {
        let reader = get(&self.readers).await?;
        let mut prepared = reader.prepare_cached(&statement.sql).map_err(sqlite_err)?;
        let mut rows = prepared.query(params(statement)).map_err(sqlite_err)?;
        let mut loaded = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite_err)? {
            loaded.push(decode(row)?);
        }
        Ok(loaded)
    }

    /// Begins an update's transaction on the writer with `BEGIN IMMEDIATE`, which takes
    /// SQLite's write lock, or says at once (`None`) that another connection holds that lock.
    /// Call it in this process's write turn: no other writer of this process can then hold the
    /// lock, and the writer is one connection.
    pub async fn begin(&self) -> Result<Option<DirectWrite>> {
        let writer = get(&self.writer).await?;
        let begun = writer
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut begin| begin.execute([]));
        match begun {
            Ok(_) => Ok(Some(DirectWrite { writer })),
            Err(err) if err.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => Ok(None),
            Err(err) => Err(sqlite_err(err)),
        }
    }

    /// Whether the writer has been opened (by an update through it).
    #[cfg(test)]
    fn wrote(&self) -> bool {
        self.writer.status().size > 0
    }
}

/// An update's transaction on the writer ([`Direct::begin`]): rolled back when dropped before
/// its commit.
pub struct DirectWrite {
    writer: Object<Opener>,
}

impl DirectWrite {
    /// The profile `key` names with `parts`, as this transaction sees it.
    pub fn load(&self, tenant: TenantId, key: &ProfileKey, parts: Parts) -> Result<Option<Loaded>> {
        load(&self.writer, tenant, key, parts)
    }

    /// Runs `statement`, built for SQLite, with its values bound as sqlx binds them.
    pub fn execute(&self, statement: &Statement) -> rusqlite::Result<usize> {
        self.writer.prepare_cached(&statement.sql)?.execute(params(statement))
    }

    pub fn commit(self) -> Result<()> {
        self.writer
            .prepare_cached("COMMIT")
            .and_then(|mut commit| commit.execute([]))
            .map(drop)
            .map_err(sqlite_err)
    }
}

impl Drop for DirectWrite {
    fn drop(&mut self) {
        // Open unless committed, or ended by SQLite itself on some failures.
        if !self.writer.is_autocommit()
            && let Err(err) = self.writer.execute_batch("ROLLBACK")
        {
            // The pool then drops the connection ([`Opener::recycle`]), and closing it rolls
            // the transaction back.
            tracing::warn!(error = %err, "could not roll back a SQLite update; closing its connection");
        }
    }
}

/// Whether `err` is the violation of a unique index (or primary key) that covers `column`.
pub fn violates_unique(err: &rusqlite::Error, column: &str) -> bool {
    // SQLite's message names the columns: "UNIQUE constraint failed: profile.tenant_id, …".
    matches!(
        err,
        rusqlite::Error::SqliteFailure(failure, Some(message))
            if matches!(failure.extended_code, ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
                && message.contains(column)
    )
}

/// The profile `key` names with `parts`, read on `conn` by one statement.
fn load(conn: &Connection, tenant: TenantId, key: &ProfileKey, parts: Parts) -> Result<Option<Loaded>> {
    let text = load_text(DbBackend::Sqlite, key, false, parts);
    let key: &dyn ToSql = match key {
        ProfileKey::Id(id) => id,
        ProfileKey::ExternalId(external_id) => external_id,
        ProfileKey::SerialNumber(serial) => serial,
    };
    // The values in the order the text binds them: tenant, then key.
    let mut statement = conn.prepare_cached(text).map_err(sqlite_err)?;
    let mut rows = statement.query((tenant.0, key)).map_err(sqlite_err)?;
    match rows.next().map_err(sqlite_err)? {
        Some(row) => Ok(Some(decode(row)?)),
        None => Ok(None),
    }
}

async fn get(pool: &managed::Pool<Opener>) -> Result<Object<Opener>> {
    match pool.get().await {
        Ok(conn) => Ok(conn),
        Err(PoolError::Timeout(_)) => Err(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout).into()),
        Err(err) => Err(Error::Internal(Box::new(err))),
    }
}

fn sqlite_err(err: rusqlite::Error) -> Error {
    Error::Internal(Box::new(err))
}

/// `statement`'s values, each bound as [`Param`] binds it.
fn params(statement: &Statement) -> rusqlite::ParamsFromIter<impl Iterator<Item = Param<'_>>> {
    let values = statement.values.as_ref().map_or(&[][..], |values| &values.0[..]);
    rusqlite::params_from_iter(values.iter().map(Param))
}

/// A SeaORM value bound to a rusqlite statement as sea-query-sqlx and sqlx bind it, so that
/// what either driver writes, the other reads and compares alike: a UUID as its 16 bytes, a
/// time as RFC 3339 text, JSON as its text, a flag as 0 or 1. Values of other kinds (none of
/// the entities' columns) fail to bind.
struct Param<'a>(&'a Value);

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self.0 {
            Value::Bool(v) => v.to_sql(),
            Value::TinyInt(v) => v.to_sql(),
            Value::SmallInt(v) => v.to_sql(),
            Value::Int(v) => v.to_sql(),
            Value::BigInt(v) => v.to_sql(),
            Value::TinyUnsigned(v) => v.to_sql(),
            Value::SmallUnsigned(v) => v.to_sql(),
            Value::Unsigned(v) => v.to_sql(),
            Value::Float(v) => v.to_sql(),
            Value::Double(v) => v.to_sql(),
            Value::String(v) => v.to_sql(),
            Value::Bytes(v) => v.to_sql(),
            Value::Uuid(v) => v.to_sql(),
            Value::Char(v) => Ok(owned(v.map(|c| Sql::Text(c.to_string())))),
            Value::Json(v) => match v {
                Some(json) => serde_json::to_string(json)
                    .map(|text| owned(Some(Sql::Text(text))))
                    .map_err(|err| rusqlite::Error::ToSqlConversionFailure(Box::new(err))),
                None => Ok(owned(None)),
            },
            Value::ChronoDateTimeUtc(v) => Ok(owned(
                v.map(|at| Sql::Text(at.to_rfc3339_opts(SecondsFormat::AutoSi, false))),
            )),
            other => Err(rusqlite::Error::ToSqlConversionFailure(
                format!("no SQLite binding for {other:?}").into(),
            )),
        }
    }
}

fn owned(value: Option<Sql>) -> ToSqlOutput<'static> {
    ToSqlOutput::Owned(value.unwrap_or(Sql::Null))
}

/// What a connection is for.
#[derive(Debug, Clone, Copy)]
enum Role {
    Reader,
    Writer,
}

/// Opens connections on one database file.
#[derive(Debug)]
struct Opener {
    file: PathBuf,
    role: Role,
}

impl managed::Manager for Opener {
    type Type = Connection;
    type Error = rusqlite::Error;

    async fn create(&self) -> Result<Connection, rusqlite::Error> {
        // Read-write also for readers, as a WAL reader needs the log's index to be. Never
        // created: the file is the one sqlx opened, in WAL mode.
        let conn = Connection::open_with_flags(
            &self.file,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        match self.role {
            Role::Reader => {
                conn.pragma_update(None, "query_only", true)?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                conn.set_prepared_statement_cache_capacity(PREPARED_READS);
            }
            Role::Writer => {
                // As `crate::db::connect` sets sqlx's connections, but with no busy timeout
                // (see `Direct::begin`).
                conn.pragma_update(None, "synchronous", "NORMAL")?;
                conn.pragma_update(None, "foreign_keys", true)?;
                conn.pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES)?;
                conn.busy_timeout(Duration::ZERO)?;
                conn.set_prepared_statement_cache_capacity(PREPARED_WRITES);
            }
        }
        Ok(conn)
    }

    async fn recycle(&self, conn: &mut Connection, _: &Metrics) -> RecycleResult<rusqlite::Error> {
        // Statements end their own transactions, and updates theirs (`DirectWrite`'s drop); one
        // left open, its rollback having failed, goes with its connection.
        match conn.is_autocommit() {
            true => Ok(()),
            false => Err(RecycleError::message("left inside a transaction")),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use sea_orm::{ConnectionTrait, sqlx};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::domain::{
        ChangeSet, CustomFieldType, Field, MemberType, NewCustomField, Op, ProfileStatus, Scalar, TagWrite,
    };
    use crate::error::Code;
    use crate::store::{Actor, ProfileFilter, Store, Update, Updated, load, on_a_fresh_sqlite_file};

    /// A tenant with one profile of no values, and the profile's key.
    async fn a_blank_profile(store: &Store) -> (TenantId, ProfileKey) {
        let tenant = store.ensure_tenant("blank").await.unwrap();
        let created = store
            .create(tenant, &ChangeSet::default(), &Actor::default())
            .await
            .unwrap();
        (tenant, ProfileKey::Id(created.profile.id))
    }

    /// Renames the profile `key` names, in an update of its own.
    async fn rename(store: &Store, tenant: TenantId, key: &ProfileKey, name: &str) -> Result<Updated> {
        let mut change = ChangeSet::default();
        change.push(Op::Set {
            field: Field::Name,
            value: Some(Scalar::Text(name.into())),
        });
        let update = Update {
            operation: "test",
            expected_version: None,
            dry_run: false,
            shows: Parts::ALL,
            person: None,
        };
        store.update(tenant, key, &change, &update, &Actor::default()).await
    }

    /// A tenant named `name` with the custom field that [`everything`] sets.
    async fn a_tenant_with_shoe_sizes(store: &Store, name: &str) -> TenantId {
        let tenant = store.ensure_tenant(name).await.unwrap();
        let field = NewCustomField::new("shoe_size".into(), CustomFieldType::Number, None, None).unwrap();
        store.define_custom_field(tenant, field).await.unwrap();
        tenant
    }

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
        let tenant = a_tenant_with_shoe_sizes(&store, "readers").await;
        let created = store.create(tenant, &everything(), &Actor::default()).await.unwrap();
        let readers = store
            .direct()
            .await
            .unwrap()
            .expect("a database file has direct connections");

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
    async fn a_page_reads_through_the_readers_as_it_reads_through_sqlx_with_every_filter_and_parts() {
        let (store, _dir) = on_a_fresh_sqlite_file().await;
        let tenant = a_tenant_with_shoe_sizes(&store, "pages").await;
        let mut tagged = ChangeSet::default();
        tagged.push(Op::ReplaceTags(["vip".to_string()].into()));
        for change in [everything(), ChangeSet::default(), tagged] {
            store.create(tenant, &change, &Actor::default()).await.unwrap();
        }
        let readers = store
            .direct()
            .await
            .unwrap()
            .expect("a database file has direct connections");
        assert_eq!(readers.readers.status().size, 0);

        let filters = [
            ProfileFilter::default(),
            ProfileFilter {
                tag: Some("vip".into()),
                ..ProfileFilter::default()
            },
            ProfileFilter {
                group: Some("beta".into()),
                ..ProfileFilter::default()
            },
            ProfileFilter {
                status: Some(ProfileStatus::Active),
                ..ProfileFilter::default()
            },
            ProfileFilter {
                external_id: Some("ada-1815".into()),
                ..ProfileFilter::default()
            },
        ];
        for filter in &filters {
            for parts in Parts::every() {
                for (first, after) in [(50, None), (1, None), (1, Some(1))] {
                    // A page with its count is read through sqlx, in a transaction.
                    let read = store.list(tenant, first, after, filter, parts, false).await.unwrap();
                    let through_sqlx = store.list(tenant, first, after, filter, parts, true).await.unwrap();
                    let case = format!("{filter:?} {parts:?} first {first} after {after:?}");
                    assert_eq!(
                        format!("{:?}", read.profiles),
                        format!("{:?}", through_sqlx.profiles),
                        "{case}"
                    );
                    assert_eq!(read.has_next_page, through_sqlx.has_next_page, "{case}");
                    assert_eq!(read.total_count, None, "{case}");
                }
            }
        }
        assert!(readers.readers.status().size > 0, "the pages were read on the readers");
        let all = store
            .list(tenant, 50, None, &filters[0], Parts::ALL, false)
            .await
            .unwrap();
        assert_eq!(all.profiles.len(), 3);
        let tagged = store
            .list(tenant, 50, None, &filters[1], Parts::ALL, false)
            .await
            .unwrap();
        assert_eq!(tagged.profiles.len(), 2);
        let own = store
            .list(tenant, 50, None, &filters[4], Parts::ALL, false)
            .await
            .unwrap();
        assert_eq!(own.profiles.len(), 1);
        assert_eq!(own.profiles[0].profile.external_id(), Some("ada-1815"));
        let other_tenant = store.ensure_tenant("other").await.unwrap();
        let none = store
            .list(other_tenant, 50, None, &filters[0], Parts::ALL, false)
            .await
            .unwrap();
        assert!(none.profiles.is_empty() && !none.has_next_page);
    }

    #[tokio::test]
    async fn a_read_sees_the_update_committed_just_before_it() {
        let (store, _dir) = on_a_fresh_sqlite_file().await;
        let (tenant, key) = a_blank_profile(&store).await;
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
            let updated = rename(&store, tenant, &key, &format!("name {n}")).await.unwrap();
            let read = store.find(tenant, &key, Parts::ALL).await.unwrap().unwrap();
            assert_eq!(read.profile, updated.profile.profile);
        }
    }

    #[tokio::test]
    async fn a_database_in_memory_has_no_direct_connections() {
        let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
        assert!(Direct::new(&pool, 2).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn values_bind_on_the_writer_as_they_bind_through_sqlx() {
        let (store, _dir) = on_a_fresh_sqlite_file().await;
        let at = |text| DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc);
        let values = [
            Value::Bool(Some(true)),
            Value::Bool(Some(false)),
            Value::Bool(None),
            Value::TinyInt(Some(-8)),
            Value::SmallInt(Some(-300)),
            Value::Int(Some(i32::MIN)),
            Value::BigInt(Some(i64::MAX)),
            Value::TinyUnsigned(Some(u8::MAX)),
            Value::SmallUnsigned(Some(u16::MAX)),
            Value::Unsigned(Some(u32::MAX)),
            Value::Float(Some(1.5)),
            Value::Double(Some(-0.1)),
            Value::String(Some("zoë".into())),
            Value::String(Some(String::new())),
            Value::String(None),
            Value::Char(Some('ß')),
            Value::Bytes(Some(vec![0, 255])),
            Value::Uuid(Some(Uuid::new_v4())),
            Value::Uuid(None),
            Value::Json(Some(Box::new(json!({"a": [1, "b", 2.5], "c": null})))),
            Value::Json(Some(Box::new(json!("text")))),
            Value::Json(None),
            Value::ChronoDateTimeUtc(Some(at("2026-11-30T21:45:01.123456789Z"))),
            Value::ChronoDateTimeUtc(Some(at("2026-11-30T21:45:01Z"))),
            Value::ChronoDateTimeUtc(None),
        ];
        let db = store.connection();
        db.execute_unprepared("CREATE TABLE bound (through TEXT, n INTEGER, v)")
            .await
            .unwrap();
        let insert = |through: &str, n: usize, value: &Value| {
            Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "INSERT INTO bound VALUES (?, ?, ?)",
                [through.into(), (n as i64).into(), value.clone()],
            )
        };
        for (n, value) in values.iter().enumerate() {
            db.execute_raw(insert("sqlx", n, value)).await.unwrap();
        }
        let direct = store.direct().await.unwrap().unwrap();
        let tx = direct.begin().await.unwrap().unwrap();
        for (n, value) in values.iter().enumerate() {
            tx.execute(&insert("direct", n, value)).unwrap();
        }
        tx.commit().unwrap();

        let stored = |through: &'static str| {
            sqlx::query_as::<_, (String, String)>("SELECT typeof(v), quote(v) FROM bound WHERE through = ? ORDER BY n")
                .bind(through)
                .fetch_all(db.get_sqlite_connection_pool())
        };
        let through_sqlx = stored("sqlx").await.unwrap();
        assert_eq!(through_sqlx.len(), values.len());
        assert_eq!(stored("direct").await.unwrap(), through_sqlx);

        let unsupported = tx_value_error(direct, Value::BigUnsigned(Some(1))).await;
        assert!(unsupported.contains("no SQLite binding"), "{unsupported}");
    }

    /// The error of binding `value` on the writer, whose transaction it leaves rolled back.
    async fn tx_value_error(direct: &Direct, value: Value) -> String {
        let tx = direct.begin().await.unwrap().unwrap();
        let statement = Statement::from_sql_and_values(DbBackend::Sqlite, "SELECT ?", [value]);
        tx.execute(&statement).unwrap_err().to_string()
    }

    #[tokio::test]
    async fn a_refused_update_on_the_writer_stores_nothing_and_the_next_one_goes_through() {
        let (store, _dir) = on_a_fresh_sqlite_file().await;
        let tenant = store.ensure_tenant("refused").await.unwrap();
        let mut claim = ChangeSet::default();
        claim.push(Op::ClaimExternalId {
            value: "taken".into(),
            path: "externalId".into(),
        });
        store.create(tenant, &claim, &Actor::default()).await.unwrap();
        let other = store
            .create(tenant, &ChangeSet::default(), &Actor::default())
            .await
            .unwrap();
        let key = ProfileKey::Id(other.profile.id);
        let update = Update {
            operation: "test",
            expected_version: None,
            dry_run: false,
            shows: Parts::ALL,
            person: None,
        };

        // The profile row's write fails on the unique index, after the read and the plan.
        let refused = store
            .update(tenant, &key, &claim, &update, &Actor::default())
            .await
            .unwrap_err();
        let Error::User(fault) = refused else {
            panic!("not the caller's fault: {refused:?}");
        };
        assert_eq!(fault.code, Code::DuplicateExternalId);
        assert_eq!(fault.field.as_deref(), Some("externalId"));
        let direct = store.direct().await.unwrap().unwrap();
        assert!(direct.wrote(), "the update did not run on the writer");
        assert_eq!(
            store.history(tenant, other.profile.id, 10, None).await.unwrap().0.len(),
            1
        );

        let renamed = rename(&store, tenant, &key, "next").await.unwrap();
        assert_eq!(renamed.profile.profile.version, 2);
        assert_eq!(renamed.profile.profile.external_id(), None);
        let read = store.find(tenant, &key, Parts::ALL).await.unwrap().unwrap();
        assert_eq!(read.profile, renamed.profile.profile);
    }

    #[tokio::test]
    async fn an_update_waits_through_sqlx_while_another_process_holds_the_write_lock() {
        let (store, dir) = on_a_fresh_sqlite_file().await;
        let (tenant, key) = a_blank_profile(&store).await;
        rename(&store, tenant, &key, "first").await.unwrap();
        let direct = store.direct().await.unwrap().unwrap();
        assert!(direct.wrote());

        let other = Connection::open(dir.path().join("store.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(direct.begin().await.unwrap().is_none());
        let waiting = tokio::spawn({
            let (store, key) = (store.clone(), key.clone());
            async move { rename(&store, tenant, &key, "second").await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "the update did not wait for the lock");
        other.execute_batch("COMMIT").unwrap();

        let updated = waiting.await.unwrap().unwrap();
        assert_eq!(updated.profile.profile.version, 3);
        assert_eq!(updated.profile.profile.text(Field::Name), Some("second"));
        // The lock is free again, and the next update takes the writer.
        assert!(direct.begin().await.unwrap().is_some());
        let third = rename(&store, tenant, &key, "third").await.unwrap();
        assert_eq!(third.profile.profile.version, 4);
    }
}
