//! The engine: loads a profile, applies a change set and saves the result, each request in
//! one transaction.
//!
//! # Concurrency
//!
//! Every write locks what it changes before it reads it, so two updates of one profile run one
//! after the other and neither loses the other's change:
//!
//! - PostgreSQL: an update first reads the profile in one statement and writes the result in
//!   one statement that applies only if the profile is still at the version it read (see
//!   [`Store::update`]); when this replica wrote the profile last, the update starts from what
//!   it wrote instead of reading ([`written`]), and its write applies only at that version
//!   too. When it does not, or for any other write, the profile row is read with
//!   `SELECT … FOR UPDATE` (the tenant row for serial numbers and custom field definitions): a
//!   second writer waits for the first to commit and then reads the committed row. Row locks
//!   after one failed attempt, rather than compare-and-swap in a loop, because a hot profile
//!   would otherwise make writers retry again and again and fail under load. A profile whose
//!   first attempt lost a race is remembered as contended while updates of it keep coming
//!   ([`CONTENDED_FOR`]): this replica's updates of it then take turns, each starting from the
//!   profile as the previous one wrote it, so that each one's attempt is a single write at the
//!   version the previous one wrote (a writer on another replica can still win a race, and then
//!   the loser reads the profile and, losing again, takes the row lock as above).
//! - SQLite: writes take turns in this process first (a queue in memory rather than SQLite's
//!   busy handler, which polls with sleeps of up to 100 ms), then begin with `BEGIN
//!   IMMEDIATE`, which takes the database's one write lock up front (against other
//!   processes). A deferred transaction that reads and then writes fails at once with
//!   SQLITE_BUSY when another connection committed in between, whatever the busy timeout; an
//!   immediate one waits for the lock (up to the busy timeout) and then reads current data.
//!   Updates run on this process's own writer, on the request's thread ([`direct`]); when
//!   another process holds the lock, they wait for it through sqlx instead. WAL mode lets
//!   readers go on meanwhile.
//!
//! A profile is read with everything it owns by one statement, so it is never shown with the
//! tags of another version; a page of profiles with its total count shares one read-only
//! snapshot (REPEATABLE READ on PostgreSQL, a deferred transaction under WAL on SQLite).
//!
//! Every applied change appends its history record in the same transaction and, once that has
//! committed, announces the new version on the change feed ([`crate::feed`]; on PostgreSQL by a
//! `NOTIFY` of its own, sent after the commit, see there why). A change that rolls back leaves
//! neither.

use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::MutexGuard;

use chrono::Utc;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{self, PgConnection, Row, Sqlite, SqlitePool};
use sea_orm::{
    AccessMode, ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnAcquireErr, ConnectionTrait,
    DatabaseConnection, DatabaseExecutor, DatabaseTransaction, DbBackend, DbErr, EntityTrait, FromQueryResult,
    IdenStatic, IsolationLevel, Iterable, PaginatorTrait, QueryFilter, QueryOrder, QueryResult, QuerySelect,
    QueryTrait, RuntimeErr, Select, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait, Value,
    Values,
};
use sea_query_sqlx::SqlxValues;
use uuid::Uuid;

use crate::domain::{
    ChangeSet, CustomFieldDefinition, CustomFieldType, Field, FieldChange, NewCustomField, Profile, ProfileKey,
    ProfileStatus, Scalar,
};
use crate::entity::{
    custom_field_definition, custom_field_value, profile, profile_change, profile_group, profile_tag, tenant,
};
use crate::error::{Code, Error, Fault, Result, duplicate_external_id, external_id_conflict};
use crate::feed::{Feed, Notice};

mod direct;
mod held;
mod row;
mod written;

use direct::{Direct, DirectWrite};
use held::Held;
use row::Loaded;
use written::{WRITTEN_BYTES, Written};

/// The tenant a request acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TenantId(pub Uuid);

/// A profile together with its tenant's custom field definitions, which give its custom
/// values their names and types.
#[derive(Debug, Clone)]
pub struct ProfileView {
    pub profile: Profile,
    pub custom_fields: Arc<[CustomFieldDefinition]>,
    /// What was read: a part left out is empty here, not absent from the profile.
    pub parts: Parts,
}

/// What a read fetches of a profile beside its id, serial number, status, version, times and
/// tags. Each part costs the database: the standard fields are 25 columns, the attributes a
/// JSON document to send, groups and custom values a subquery per profile (custom values also
/// the tenant's custom field definitions); so a read leaves out what its caller will not show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// The standard fields: every [`Field`] (`name`, `email`, …).
    pub fields: bool,
    /// The attribute map.
    pub attributes: bool,
    /// The profile's groups.
    pub groups: bool,
    /// Its custom values, with the tenant's custom field definitions that name them.
    pub custom: bool,
}

impl Parts {
    /// Everything a profile owns: what a write reads, and what it returns.
    pub const ALL: Self = Self {
        fields: true,
        attributes: true,
        groups: true,
        custom: true,
    };
    /// None of the parts: the id, serial number, status, version, times and tags only.
    pub const NONE: Self = Self {
        fields: false,
        attributes: false,
        groups: false,
        custom: false,
    };
    /// The profile's row (its standard fields and attributes too) and its tags.
    pub const ROW: Self = Self {
        fields: true,
        attributes: true,
        groups: false,
        custom: false,
    };

    /// Whether `other` reads at least every part this reads.
    fn within(self, other: Self) -> bool {
        self.union(other) == other
    }

    /// Every part either reads.
    pub fn union(self, other: Self) -> Self {
        Self {
            fields: self.fields || other.fields,
            attributes: self.attributes || other.attributes,
            groups: self.groups || other.groups,
            custom: self.custom || other.custom,
        }
    }

    /// How many combinations of parts there are.
    const COMBINATIONS: usize = 16;

    /// Where [`load_text`] keeps this combination's text: below [`Self::COMBINATIONS`].
    fn index(self) -> usize {
        usize::from(self.fields) << 3
            | usize::from(self.attributes) << 2
            | usize::from(self.groups) << 1
            | usize::from(self.custom)
    }

    /// The combination at `index`.
    fn at(index: usize) -> Self {
        Self {
            fields: index & 8 != 0,
            attributes: index & 4 != 0,
            groups: index & 2 != 0,
            custom: index & 1 != 0,
        }
    }

    /// Every combination, in the order of their indices.
    fn every() -> impl Iterator<Item = Self> {
        (0..Self::COMBINATIONS).map(Self::at)
    }

    /// Whether a read with these parts reads `wanted`, a column of the profile row.
    fn reads(self, wanted: profile::Column) -> bool {
        match wanted {
            profile::Column::Attributes => self.attributes,
            _ if standard(wanted) => self.fields,
            _ => true,
        }
    }
}

/// Whether `wanted` is the column of a standard field ([`Field`]).
fn standard(wanted: profile::Column) -> bool {
    Field::ALL
        .into_iter()
        .any(|field| column(field) as usize == wanted as usize)
}

/// Whether the row of a read that reads the standard fields or not (`fields`) has `wanted`'s
/// column: [`with_owned`] leaves the standard fields' columns out of a read without them,
/// and `row::Shape` finds the columns where this puts them.
fn selected(fields: bool, wanted: profile::Column) -> bool {
    fields || !standard(wanted)
}

/// Who makes a change, as its history record names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub api_key_id: Option<Uuid>,
    /// The issuer and subject of the end-user token that made the change.
    pub person: Option<(String, String)>,
    pub request_id: Option<String>,
}

/// One applied change of a profile, as history keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    pub version: i32,
    pub operation: String,
    pub changes: Vec<FieldChange>,
    pub actor: Option<Uuid>,
    /// The issuer and subject of the end-user token that made the change.
    pub person: Option<(String, String)>,
    pub request_id: Option<String>,
    pub at: chrono::DateTime<Utc>,
}

/// How an `updateProfile` call runs.
#[derive(Debug, Clone, Copy)]
pub struct Update<'a> {
    /// The operation its history record names (`updateProfile.scrip`, …).
    pub operation: &'a str,
    /// Apply only to this version (VERSION_CONFLICT otherwise).
    pub expected_version: Option<i32>,
    /// Compute the result and store nothing.
    pub dry_run: bool,
    /// What of the profile the caller shows: the update reads these beside what the change
    /// set touches, and returns them.
    pub shows: Parts,
    /// For a person (an end-user token), their `sub`: the update applies only to the profile
    /// whose externalId it is, and may not change that externalId (FORBIDDEN). `shows` must
    /// hold the standard fields, where the externalId is.
    pub person: Option<&'a str>,
}

/// The outcome of `updateProfile`.
#[derive(Debug, Clone)]
pub struct Updated {
    /// Shared with what this replica keeps of the profile ([`Written`]) after a write.
    pub profile: Arc<ProfileView>,
    pub changes: Vec<FieldChange>,
}

/// Which profiles `profiles` lists.
#[derive(Debug, Clone, Default)]
pub struct ProfileFilter {
    pub status: Option<ProfileStatus>,
    pub tag: Option<String>,
    pub group: Option<String>,
    /// Only the profile of this externalId: a person's own (an end-user token's `sub`).
    pub external_id: Option<String>,
}

/// One page of profiles, ordered by serial number.
#[derive(Debug, Clone)]
pub struct Page {
    pub profiles: Vec<ProfileView>,
    pub has_next_page: bool,
    /// How many profiles match in all, when asked.
    pub total_count: Option<u64>,
}

/// How long a profile whose optimistic update lost a race stays contended after its last
/// update (PostgreSQL): long enough to span the gaps in a burst of writers.
const CONTENDED_FOR: Duration = Duration::from_secs(1);
/// Most contended profiles remembered at once; more are rare, and forgetting one only costs it
/// a lost race.
const MAX_CONTENDED: u64 = 1_000;

/// Connections that profile reads, pages of profiles without their count and updates keep on
/// PostgreSQL ([`held`]), besides the pool under the store's `DatabaseConnection`, which
/// serves everything else.
const HELD_CONNECTIONS: usize = 10;

/// Connections that profile reads open on a SQLite database's file ([`direct`]). They run on
/// the request's thread, so one per Tokio worker thread would do; a few more cost little.
const SQLITE_READERS: usize = 4;

/// A turn that writes take one at a time.
type Turn = Arc<tokio::sync::Mutex<()>>;

/// The turn that this replica's updates of one contended profile take, one at a time.
type HotTurn = Arc<tokio::sync::Mutex<HotProfile>>;

/// What the updates of a contended profile pass on to the next in turn (see [`Store::update`]).
#[derive(Debug, Default)]
struct HotProfile {
    /// The id of the profile the turn's key named when the last of them wrote it, whose
    /// snapshot ([`Written`]) stands in for a read of a key other than an id.
    id: Option<Uuid>,
    /// When a snapshot last turned out stale: someone else (another replica, or a write that
    /// is not an update) wrote in between. For [`CONTENDED_FOR`] after that, writes are not
    /// kept, since the profile's writers are not all here.
    stale_at: Option<Instant>,
}

/// Handle on the database and this replica's change feed; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// When `db` is PostgreSQL, the connections that profile reads (single and by the page,
    /// without a count) and updates keep between requests, opened through its pool ([`held`]):
    /// an update holds one for its read and its write (see [`Store::update`]).
    postgres: Option<Held>,
    /// The pool under `db` when it is SQLite's: an update that cannot run on the [`direct`]
    /// writer holds one of its connections from its `BEGIN` to its `COMMIT` (see
    /// [`update_through_sqlx`]).
    sqlite: Option<SqlitePool>,
    /// When `db` is SQLite's, the connections that profile reads and updates open on its
    /// file, opened on first use (`None` when the database is in memory: see [`direct`]).
    direct: Arc<tokio::sync::OnceCell<Option<Direct>>>,
    feed: Feed,
    /// Profiles (by tenant and the key updates name them by) whose optimistic update lost a
    /// race, updated within the last [`CONTENDED_FOR`].
    contended: moka::sync::Cache<(Uuid, ProfileKey), HotTurn>,
    /// Profiles as this replica's updates last wrote them (PostgreSQL).
    written: Written,
    /// The turn of this process's write transactions on SQLite, which has one writer at a time.
    sqlite_writer: Turn,
}

impl Store {
    pub fn new(db: DatabaseConnection) -> Self {
        let postgres = (db.get_database_backend() == DbBackend::Postgres)
            .then(|| Held::new(db.get_postgres_connection_pool().clone(), HELD_CONNECTIONS));
        let sqlite = (db.get_database_backend() == DbBackend::Sqlite).then(|| db.get_sqlite_connection_pool().clone());
        Store {
            feed: Feed::new(&db),
            db,
            postgres,
            sqlite,
            direct: Arc::default(),
            contended: moka::sync::Cache::builder()
                .max_capacity(MAX_CONTENDED)
                .time_to_idle(CONTENDED_FOR)
                .build(),
            written: Written::new(WRITTEN_BYTES),
            sqlite_writer: Turn::default(),
        }
    }

    /// On SQLite, checkpoints the write-ahead log beside the writers after changes (see
    /// [`crate::db::spawn_checkpoints`]). Call it once, in a Tokio runtime.
    pub fn spawn_checkpoints(&self) {
        crate::db::spawn_checkpoints(self.db.clone(), self.feed.subscribe(), self.sqlite_writer.clone());
    }

    /// This replica's change feed (see [`Store::listen`]).
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// On PostgreSQL, hears every replica's changes: relays their notices to this replica's
    /// feed, and forgets the snapshots of profiles they changed since this replica wrote them.
    /// Call it once, in a Tokio runtime; on SQLite it does nothing.
    pub fn listen(&self) {
        if self.postgres.is_some() {
            self.feed.relay();
            tokio::spawn(self.written.clone().follow(self.feed.subscribe()));
        }
    }

    /// The change record of `profile_id` at `version`, if there is one.
    pub async fn change(&self, tenant: TenantId, profile_id: Uuid, version: i32) -> Result<Option<ChangeRecord>> {
        let (mut records, _) = self.history(tenant, profile_id, 1, version.checked_add(1)).await?;
        Ok(records.pop().filter(|record| record.version == version))
    }

    /// On SQLite, this process's turn of writers, for a write outside the store's own (an
    /// idempotency key, an API key): taken, the write queues with the others rather than
    /// polling for the database's write lock with SQLite's busy handler, which could lose to
    /// them again and again while they keep coming. `None` on PostgreSQL, which needs none.
    pub async fn write_turn(&self) -> Option<MutexGuard<'_, ()>> {
        match self.sqlite {
            Some(_) => Some(self.sqlite_writer.lock().await),
            None => None,
        }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The id of the tenant called `name`, created if it does not exist yet.
    pub async fn ensure_tenant(&self, name: &str) -> Result<TenantId> {
        let turn = self.write_turn().await;
        let row = tenant::ActiveModel {
            id: Set(Uuid::new_v4()),
            name: Set(name.to_owned()),
            last_serial: Set(0),
            created_at: Set(Utc::now()),
            ..Default::default()
        };
        tenant::Entity::insert(row)
            .on_conflict_do_nothing_on([tenant::Column::Name])
            .exec(&self.db)
            .await?;
        drop(turn);
        let found = tenant::Entity::find()
            .filter(tenant::Column::Name.eq(name))
            .one(&self.db)
            .await?;
        let tenant = found.ok_or_else(|| internal(format!("tenant {name:?} vanished right after its insert")))?;
        Ok(TenantId(tenant.id))
    }

    /// The profile `key` names with `parts`, read by one statement (one consistent snapshot).
    pub async fn find(&self, tenant: TenantId, key: &ProfileKey, parts: Parts) -> Result<Option<ProfileView>> {
        let loaded = match &self.postgres {
            Some(held) => {
                let mut conn = held.lend().await?;
                let loaded = load_postgres(&mut conn, tenant, key, false, parts).await?;
                conn.done();
                loaded
            }
            None => match self.direct().await? {
                Some(direct) => direct.load(tenant, key, parts).await?,
                None => load(&self.db, tenant, key, false, parts).await?,
            },
        };
        loaded.map(|loaded| loaded.into_view(parts)).transpose()
    }

    /// On SQLite, this process's own connections on its file, opened on the first call; `None`
    /// on PostgreSQL and for a database in memory.
    async fn direct(&self) -> Result<Option<&Direct>> {
        let Some(pool) = &self.sqlite else {
            return Ok(None);
        };
        let direct = self
            .direct
            .get_or_try_init(|| Direct::new(pool, SQLITE_READERS))
            .await?;
        Ok(direct.as_ref())
    }

    /// Up to `first` profiles after serial number `after`, with `parts`, and, when `count`
    /// asks, how many match in all.
    pub async fn list(
        &self,
        tenant: TenantId,
        first: u64,
        after: Option<i64>,
        filter: &ProfileFilter,
        parts: Parts,
        count: bool,
    ) -> Result<Page> {
        // No tag key or group holds U+0000 (PostgreSQL could not even compare it).
        if [&filter.tag, &filter.group, &filter.external_id]
            .into_iter()
            .flatten()
            .any(|name| name.contains('\0'))
        {
            return Ok(Page {
                profiles: Vec::new(),
                has_next_page: false,
                total_count: count.then_some(0),
            });
        }
        // The count and the page must agree, so with a count they share a snapshot; without
        // one, the page and the definitions are read in two statements and no transaction
        // (a definition is never removed, so a page never holds a value without one).
        let tx = match count {
            true => Some(self.begin_read().await?),
            false => None,
        };
        let conn = match &tx {
            Some(tx) => DatabaseExecutor::Transaction(tx),
            None => DatabaseExecutor::Connection(&self.db),
        };
        let total_count = match count {
            true => Some(
                profile::Entity::find()
                    .filter(page_condition(tenant, filter))
                    .count(&conn)
                    .await?,
            ),
            false => None,
        };
        let page = page_statement(self.db.get_database_backend(), tenant, first + 1, after, filter, parts);
        // A page without its count is one statement on a connection of the store's own: on
        // SQLite this process's readers, on PostgreSQL a held connection, as a profile read's.
        let mut rows = match (&tx, &self.postgres) {
            (Some(_), _) => Loaded::find_by_statement(page).all(&conn).await?,
            (None, Some(held)) => {
                let mut conn = held.lend().await?;
                let rows = load_all_postgres(&mut conn, page).await?;
                conn.done();
                rows
            }
            (None, None) => match self.direct().await? {
                Some(direct) => direct.rows(&page).await?,
                None => Loaded::find_by_statement(page).all(&conn).await?,
            },
        };
        let has_next_page = rows.len() as u64 > first;
        rows.truncate(usize::try_from(first).unwrap_or(usize::MAX));
        let custom_fields = match parts.custom {
            true => definitions(&conn, tenant).await?,
            false => Arc::from([]),
        };
        if let Some(tx) = tx {
            tx.commit().await?;
        }
        let profiles = rows
            .into_iter()
            .map(|loaded| {
                Ok(ProfileView {
                    profile: loaded.into_profile(&custom_fields)?,
                    custom_fields: custom_fields.clone(),
                    parts,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Page {
            profiles,
            has_next_page,
            total_count,
        })
    }

    pub async fn custom_fields(&self, tenant: TenantId) -> Result<Arc<[CustomFieldDefinition]>> {
        definitions(&self.db, tenant).await
    }

    pub async fn create(&self, tenant: TenantId, change: &ChangeSet, actor: &Actor) -> Result<ProfileView> {
        let (tx, _turn) = self.begin_write().await?;
        let serial_number = next_serial_number(&tx, tenant).await?;
        let custom_fields = definitions(&tx, tenant).await?;
        let blank = Profile::new(Uuid::new_v4(), serial_number, Utc::now());
        let (profile, changes) = change.apply(&blank, &custom_fields)?;
        let mut writes = Writes::new(tx.get_database_backend());
        let row = profile::ActiveModel::from_profile(tenant, &profile)?;
        writes.push(&profile::Entity::insert(row));
        writes.children(&blank, &profile, &custom_fields)?;
        let notice = writes.record(tenant, &profile, "createProfile", &changes, actor)?;
        writes.run(&tx).await.map_err(|err| on_external_id(err, change))?;
        tx.commit().await?;
        self.feed.announce(notice).await;
        Ok(ProfileView {
            profile,
            custom_fields,
            parts: Parts::ALL,
        })
    }

    /// Applies `change` to the profile `key` names, all or nothing, as `update` says.
    ///
    /// On PostgreSQL an update first tries without a transaction: one statement reads the
    /// profile, one writes the result if the profile is still at the version it read (two
    /// round trips; one when this replica wrote the profile last and still holds what it
    /// wrote, see [`written`], and when what it holds is stale, two: the write that does not
    /// apply reads the profile back). If another writer got there first, it falls back to
    /// the locking transaction below, which waits for that writer instead of retrying, so a
    /// hot profile costs one wasted read per update at most; and from then on, while its
    /// updates keep coming, this replica's updates of it take turns, so that they do not
    /// race each other at all, and each starts from the profile as the previous one wrote it
    /// (one round trip). All of it runs on one connection ([`Store::update_postgres`]).
    /// SQLite (in process, one writer at a time) always takes the transaction
    /// ([`Store::update_sqlite`]).
    pub async fn update(
        &self,
        tenant: TenantId,
        key: &ProfileKey,
        change: &ChangeSet,
        update: &Update<'_>,
        actor: &Actor,
    ) -> Result<Updated> {
        // Groups or custom values the change set does not touch are neither read nor written,
        // unless shown; the row is always read whole, as the write stores it whole.
        let parts = update.shows.union(Parts {
            fields: true,
            attributes: true,
            groups: change.touches_groups(),
            custom: change.touches_custom(),
        });
        match (&self.postgres, &self.sqlite) {
            (Some(held), _) => {
                self.update_postgres(held, tenant, key, change, update, actor, parts)
                    .await
            }
            (None, Some(pool)) => {
                self.update_sqlite(pool, tenant, key, change, update, actor, parts)
                    .await
            }
            (None, None) => Err(internal("the database is neither PostgreSQL nor SQLite")),
        }
    }

    /// [`Store::update`] on SQLite, in this process's write turn: on this process's own writer
    /// ([`direct`]), or through sqlx when the database is in memory or another process holds
    /// SQLite's write lock.
    #[allow(clippy::too_many_arguments)]
    async fn update_sqlite(
        &self,
        pool: &SqlitePool,
        tenant: TenantId,
        key: &ProfileKey,
        change: &ChangeSet,
        update: &Update<'_>,
        actor: &Actor,
        parts: Parts,
    ) -> Result<Updated> {
        let _turn = self.sqlite_writer.lock().await;
        let direct = match self.direct().await? {
            Some(direct) => direct.begin().await?,
            None => None,
        };
        let call = SqliteUpdate {
            tenant,
            key,
            change,
            update,
            actor,
            parts,
        };
        let (updated, notice) = match direct {
            Some(tx) => update_direct(tx, &call)?,
            None => update_through_sqlx(pool, &call).await?,
        };
        if let Some(notice) = notice {
            self.feed.announce(notice).await;
        }
        Ok(updated)
    }

    /// [`Store::update`] on PostgreSQL, on one connection of `held` from the first statement
    /// to the last. SeaORM would take a connection from the pool for each statement, and sqlx
    /// checks every connection that goes back to its pool with a round trip of its own, so
    /// holding one, and keeping it after, saves the database round trips.
    #[allow(clippy::too_many_arguments)]
    async fn update_postgres(
        &self,
        held: &Held,
        tenant: TenantId,
        key: &ProfileKey,
        change: &ChangeSet,
        update: &Update<'_>,
        actor: &Actor,
        parts: Parts,
    ) -> Result<Updated> {
        let slot = (tenant.0, key.clone());
        // Held until the update is stored, or has failed.
        let mut turn = match self.contended.get(&slot) {
            Some(turn) => Some(turn.lock_owned().await),
            None => None,
        };
        // Taken after the turn, so that updates waiting for their turn hold no connection.
        let mut conn = held.lend().await?;
        let updated: Result<Updated> = async {
            // The profile as this replica last wrote it stands in for a read when it holds every
            // part needed. It may be stale (see [`Written`]), so it is trusted only when its
            // write applies, which it does only at the version it holds; otherwise the write
            // reads the profile back by id, and that stands in for the read below if the key
            // still names the profile.
            let id = match key {
                ProfileKey::Id(id) => Some(*id),
                ProfileKey::ExternalId(_) | ProfileKey::SerialNumber(_) => turn.as_ref().and_then(|hot| hot.id),
            };
            let last = id.and_then(|id| self.written.take(tenant, id));
            let mut read_back = None;
            if let Some(before) = last.filter(|last| parts.within(last.parts))
                && let Ok(Plan::Write(write)) = plan(before, change, update)
            {
                match write_postgres(&mut conn, tenant, &write, update.operation, actor, change, Some(parts)).await? {
                    Stored::Applied => {
                        self.stored(turn.as_deref_mut(), tenant, key, &write.updated.profile)
                            .await;
                        return Ok(write.updated);
                    }
                    Stored::Stale(now) => read_back = now.filter(|now| key.names(&now.profile)),
                }
                if let Some(hot) = turn.as_deref_mut() {
                    hot.stale_at = Some(Instant::now());
                }
            }
            let before = match read_back {
                Some(now) => *now,
                None => load_postgres(&mut conn, tenant, key, false, parts)
                    .await?
                    .ok_or_else(|| Fault::not_found("profile"))?,
            };
            let before = before.into_view(parts).map(Arc::new)?;
            match plan(before, change, update)? {
                Plan::Unchanged(updated) => return Ok(updated),
                Plan::Write(write) => {
                    if let Stored::Applied =
                        write_postgres(&mut conn, tenant, &write, update.operation, actor, change, None).await?
                    {
                        self.stored(turn.as_deref_mut(), tenant, key, &write.updated.profile)
                            .await;
                        return Ok(write.updated);
                    }
                    self.contended.get_with(slot, HotTurn::default);
                }
            }
            // Lost a race: read under the row lock, on the same connection.
            let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(query_err)?;
            let before = load_postgres(&mut tx, tenant, key, true, parts)
                .await?
                .ok_or_else(|| Fault::not_found("profile"))?
                .into_view(parts)
                .map(Arc::new)?;
            let write = match plan(before, change, update)? {
                Plan::Unchanged(updated) => {
                    tx.rollback().await.map_err(query_err)?;
                    return Ok(updated);
                }
                Plan::Write(write) => write,
            };
            if let Stored::Stale(_) =
                write_postgres(&mut tx, tenant, &write, update.operation, actor, change, None).await?
            {
                return Err(internal("a profile changed while locked"));
            }
            tx.commit().await.map_err(query_err)?;
            self.stored(turn.as_deref_mut(), tenant, key, &write.updated.profile)
                .await;
            Ok(write.updated)
        }
        .await;
        // Every way to `Ok` above ends the transaction it began, if any.
        if updated.is_ok() {
            conn.done();
        }
        updated
    }

    /// After an update stored `written`: announces its new version ([`Feed::announce`]), and
    /// keeps it for the next update of the profile to start from; and in `hot`, its turn, which
    /// profile `key` named, unless a snapshot of it turned out stale lately.
    async fn stored(
        &self,
        hot: Option<&mut HotProfile>,
        tenant: TenantId,
        key: &ProfileKey,
        written: &Arc<ProfileView>,
    ) {
        self.feed.announce(notice(tenant, &written.profile)).await;
        if let Some(hot) = hot {
            if hot.stale_at.is_some_and(|at| at.elapsed() < CONTENDED_FOR) {
                return;
            }
            hot.id = key.names(&written.profile).then_some(written.profile.id);
        }
        self.written.keep(tenant, written);
    }

    pub async fn set_status(
        &self,
        tenant: TenantId,
        key: &ProfileKey,
        status: ProfileStatus,
        actor: &Actor,
    ) -> Result<ProfileView> {
        let (tx, _turn) = self.begin_write().await?;
        let ProfileView {
            mut profile,
            custom_fields,
            parts,
        } = load(&tx, tenant, key, true, Parts::ALL)
            .await?
            .ok_or_else(|| Fault::not_found("profile"))?
            .into_view(Parts::ALL)?;
        if profile.status == status {
            tx.rollback().await?;
            return Ok(ProfileView {
                profile,
                custom_fields,
                parts,
            });
        }
        if !profile.status.may_become(status) {
            return Err(Fault::new(
                Code::InvalidStatusTransition,
                format!(
                    "A {} profile cannot become {}; CLOSED is final.",
                    profile.status.as_str(),
                    status.as_str()
                ),
            )
            .at("status")
            .into());
        }
        let change = FieldChange {
            field: "status".to_owned(),
            before: profile.status.as_str().into(),
            after: status.as_str().into(),
        };
        profile.status = status;
        profile.version += 1;
        profile.updated_at = Utc::now();
        let mut writes = Writes::new(tx.get_database_backend());
        writes.push(
            &profile::Entity::update_many()
                .col_expr(profile::Column::Status, Expr::value(status.as_str()))
                .col_expr(profile::Column::Version, Expr::value(profile.version))
                .col_expr(profile::Column::UpdatedAt, Expr::value(profile.updated_at))
                .filter(profile::Column::Id.eq(profile.id)),
        );
        let notice = writes.record(tenant, &profile, "setProfileStatus", &[change], actor)?;
        writes.run(&tx).await?;
        tx.commit().await?;
        self.feed.announce(notice).await;
        Ok(ProfileView {
            profile,
            custom_fields,
            parts,
        })
    }

    /// Deletes the profile with its tags, groups and custom values (by cascade), and erases its
    /// history, whose changes hold personal data, for a tombstone that holds none; returns its id.
    pub async fn delete(&self, tenant: TenantId, key: &ProfileKey, actor: &Actor) -> Result<Uuid> {
        let (tx, _turn) = self.begin_write().await?;
        let row = find_row(&tx, tenant, key, true)
            .await?
            .ok_or_else(|| Fault::not_found("profile"))?;
        let mut writes = Writes::new(tx.get_database_backend());
        writes.push(&profile::Entity::delete_many().filter(profile::Column::Id.eq(row.id)));
        writes.push(&profile_change::Entity::delete_many().filter(profile_change::Column::ProfileId.eq(row.id)));
        let tombstone = Profile {
            version: row.version + 1,
            ..Profile::new(row.id, row.serial_number, Utc::now())
        };
        let notice = writes.record(tenant, &tombstone, "deleteProfile", &[], actor)?;
        writes.run(&tx).await?;
        tx.commit().await?;
        self.feed.announce(notice).await;
        Ok(row.id)
    }

    /// A profile's change records, newest first: up to `first` below version `before`, and
    /// whether more follow.
    pub async fn history(
        &self,
        tenant: TenantId,
        profile_id: Uuid,
        first: u64,
        before: Option<i32>,
    ) -> Result<(Vec<ChangeRecord>, bool)> {
        let mut query = profile_change::Entity::find()
            .filter(profile_change::Column::TenantId.eq(tenant.0))
            .filter(profile_change::Column::ProfileId.eq(profile_id));
        if let Some(before) = before {
            query = query.filter(profile_change::Column::Version.lt(before));
        }
        let query = query.order_by_desc(profile_change::Column::Version);
        let mut rows: Vec<profile_change::Model> = first_rows(query, first + 1, &self.db).await?;
        let has_next = rows.len() as u64 > first;
        rows.truncate(usize::try_from(first).unwrap_or(usize::MAX));
        let records = rows
            .into_iter()
            .map(|row| {
                Ok(ChangeRecord {
                    version: row.version,
                    operation: row.operation,
                    changes: serde_json::from_value(row.changes).map_err(internal)?,
                    actor: row.api_key_id,
                    person: row.actor_issuer.zip(row.actor_subject),
                    request_id: row.request_id,
                    at: row.at,
                })
            })
            .collect::<Result<_>>()?;
        Ok((records, has_next))
    }

    /// Defines a custom field, or redefines the one of the same name.
    pub async fn define_custom_field(&self, tenant: TenantId, field: NewCustomField) -> Result<CustomFieldDefinition> {
        let (tx, _turn) = self.begin_write().await?;
        // Serialises definitions per tenant on PostgreSQL (SQLite's write lock already does).
        tenant::Entity::find_by_id(tenant.0).lock_exclusive().one(&tx).await?;
        let existing = custom_field_definition::Entity::find()
            .filter(custom_field_definition::Column::TenantId.eq(tenant.0))
            .filter(custom_field_definition::Column::Name.eq(field.name.as_str()))
            .one(&tx)
            .await?;
        let options = serde_json::to_value(&field.options).map_err(internal)?;
        let definition = match existing {
            Some(row) => {
                let existing = definition_from_row(row)?;
                let used = used_values(&tx, &existing, &field).await?;
                field.check_redefinition(&existing, &used)?;
                custom_field_definition::Entity::update_many()
                    .col_expr(
                        custom_field_definition::Column::FieldType,
                        Expr::value(field.field_type.as_str()),
                    )
                    .col_expr(custom_field_definition::Column::Options, Expr::value(options))
                    .col_expr(
                        custom_field_definition::Column::MaxLength,
                        Expr::value(field.max_length),
                    )
                    .filter(custom_field_definition::Column::Id.eq(existing.id))
                    .exec(&tx)
                    .await?;
                CustomFieldDefinition {
                    field_type: field.field_type,
                    options: field.options,
                    max_length: field.max_length,
                    ..existing
                }
            }
            None => {
                let id = Uuid::new_v4();
                custom_field_definition::ActiveModel {
                    id: Set(id),
                    tenant_id: Set(tenant.0),
                    name: Set(field.name.clone()),
                    field_type: Set(field.field_type.as_str().to_owned()),
                    options: Set(options),
                    max_length: Set(field.max_length),
                    created_at: Set(Utc::now()),
                }
                .insert(&tx)
                .await?;
                CustomFieldDefinition {
                    id,
                    name: field.name,
                    field_type: field.field_type,
                    options: field.options,
                    max_length: field.max_length,
                }
            }
        };
        tx.commit().await?;
        Ok(definition)
    }

    /// A write transaction, and on SQLite the write turn it holds until it is dropped (keep it
    /// past the commit).
    async fn begin_write(&self) -> Result<(DatabaseTransaction, Option<MutexGuard<'_, ()>>), DbErr> {
        let turn = self.write_turn().await;
        let tx = self
            .db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?;
        Ok((tx, turn))
    }

    async fn begin_read(&self) -> Result<DatabaseTransaction, DbErr> {
        match self.db.get_database_backend() {
            sea_orm::DbBackend::Postgres => {
                self.db
                    .begin_with_config(Some(IsolationLevel::RepeatableRead), Some(AccessMode::ReadOnly))
                    .await
            }
            _ => self.db.begin().await,
        }
    }
}

/// The statements that store one change in its write transaction: on SQLite through sqlx as
/// one text, on PostgreSQL and on SQLite's [`direct`] writer one after another.
///
/// sqlx's SQLite driver runs each connection on a thread of its own and hands it every
/// statement and the answer back, two thread wake-ups a statement, all while the writer holds
/// SQLite's one write turn; so each statement folded into the text is a hand-over the next
/// writer no longer waits for (the direct writer has none). SQLite runs a text of several
/// statements in order and binds their parameters (all `?`) from one list, in order; the first
/// that fails ends it, and the transaction rolls back. PostgreSQL's extended protocol takes one
/// statement at a time (its updates have a single statement of their own, [`postgres_write`]).
struct Writes {
    backend: DbBackend,
    statements: Vec<Statement>,
}

impl Writes {
    fn new(backend: DbBackend) -> Self {
        Writes {
            backend,
            statements: Vec::new(),
        }
    }

    fn push(&mut self, statement: &impl QueryTrait) {
        self.statements.push(statement.build(self.backend));
    }

    /// Writes what differs between `before` and `after` in the child tables, a statement per
    /// kind of change.
    fn children(&mut self, before: &Profile, after: &Profile, custom_fields: &[CustomFieldDefinition]) -> Result<()> {
        let id = after.id;
        let diff = ChildDiff::new(before, after, custom_fields)?;
        if !diff.tags_removed.is_empty() {
            self.push(
                &profile_tag::Entity::delete_many()
                    .filter(profile_tag::Column::ProfileId.eq(id))
                    .filter(profile_tag::Column::Key.is_in(diff.tags_removed)),
            );
        }
        if !diff.tags_written.is_empty() {
            let rows = diff
                .tags_written
                .into_iter()
                .map(|(key, value)| profile_tag::ActiveModel {
                    profile_id: Set(id),
                    key: Set(key.clone()),
                    value: Set(value.clone()),
                });
            self.push(
                &profile_tag::Entity::insert_many(rows).on_conflict(
                    OnConflict::columns([profile_tag::Column::ProfileId, profile_tag::Column::Key])
                        .update_column(profile_tag::Column::Value)
                        .to_owned(),
                ),
            );
        }
        if !diff.groups_left.is_empty() {
            self.push(
                &profile_group::Entity::delete_many()
                    .filter(profile_group::Column::ProfileId.eq(id))
                    .filter(profile_group::Column::Name.is_in(diff.groups_left)),
            );
        }
        if !diff.groups_joined.is_empty() {
            let rows = diff.groups_joined.into_iter().map(|name| profile_group::ActiveModel {
                profile_id: Set(id),
                name: Set(name.clone()),
            });
            self.push(&profile_group::Entity::insert_many(rows));
        }
        if !diff.custom_cleared.is_empty() {
            self.push(
                &custom_field_value::Entity::delete_many()
                    .filter(custom_field_value::Column::ProfileId.eq(id))
                    .filter(custom_field_value::Column::FieldId.is_in(diff.custom_cleared)),
            );
        }
        if !diff.custom_written.is_empty() {
            let rows = diff
                .custom_written
                .into_iter()
                .map(|(field_id, value)| custom_field_value::ActiveModel {
                    profile_id: Set(id),
                    field_id: Set(field_id),
                    value: Set(value.clone()),
                });
            self.push(
                &custom_field_value::Entity::insert_many(rows).on_conflict(
                    OnConflict::columns([
                        custom_field_value::Column::ProfileId,
                        custom_field_value::Column::FieldId,
                    ])
                    .update_column(custom_field_value::Column::Value)
                    .to_owned(),
                ),
            );
        }
        Ok(())
    }

    /// Appends the history record of `profile`'s new version; returns the notice to announce
    /// once it is committed.
    fn record(
        &mut self,
        tenant: TenantId,
        profile: &Profile,
        operation: &str,
        changes: &[FieldChange],
        actor: &Actor,
    ) -> Result<Notice> {
        self.push(&profile_change::Entity::insert(profile_change::ActiveModel {
            id: Set(history_id()),
            tenant_id: Set(tenant.0),
            profile_id: Set(profile.id),
            version: Set(profile.version),
            operation: Set(operation.to_owned()),
            changes: Set(serde_json::to_value(changes).map_err(internal)?),
            api_key_id: Set(actor.api_key_id),
            actor_issuer: Set(actor.person.as_ref().map(|(issuer, _)| issuer.clone())),
            actor_subject: Set(actor.person.as_ref().map(|(_, subject)| subject.clone())),
            request_id: Set(actor.request_id.clone()),
            at: Set(profile.updated_at),
        }));
        Ok(notice(tenant, profile))
    }

    async fn run(self, tx: &DatabaseTransaction) -> Result<(), DbErr> {
        match self.backend {
            DbBackend::Sqlite => tx.execute_raw(joined(self.statements)).await.map(drop),
            _ => {
                for statement in self.statements {
                    tx.execute_raw(statement).await?;
                }
                Ok(())
            }
        }
    }
}

/// What [`Store::update_sqlite`] was asked, for either way it takes.
struct SqliteUpdate<'a> {
    tenant: TenantId,
    key: &'a ProfileKey,
    change: &'a ChangeSet,
    update: &'a Update<'a>,
    actor: &'a Actor,
    parts: Parts,
}

/// A planned SQLite update: its result, and unless it stores nothing, the statements that store
/// it with the notice of its new version.
type SqlitePlan = (Updated, Option<(Vec<Statement>, Notice)>);

impl SqliteUpdate<'_> {
    /// Plans the update of the profile `loaded` (read in the update's transaction).
    fn plan(&self, loaded: Loaded) -> Result<SqlitePlan> {
        match plan(Arc::new(loaded.into_view(self.parts)?), self.change, self.update)? {
            Plan::Unchanged(updated) => Ok((updated, None)),
            Plan::Write(write) => {
                let statements = self.writes(&write)?;
                Ok((write.updated, Some(statements)))
            }
        }
    }

    /// The statements that store `write`, and the notice of its new version.
    fn writes(&self, write: &Write) -> Result<(Vec<Statement>, Notice)> {
        let Updated { profile, changes } = &write.updated;
        let mut writes = Writes::new(DbBackend::Sqlite);
        writes.push(
            &profile::Entity::update_many()
                .set(profile::ActiveModel::changed(
                    self.tenant,
                    &write.before.profile,
                    &profile.profile,
                )?)
                .filter(profile::Column::Id.eq(profile.profile.id)),
        );
        writes.children(&write.before.profile, &profile.profile, &profile.custom_fields)?;
        let notice = writes.record(
            self.tenant,
            &profile.profile,
            self.update.operation,
            changes,
            self.actor,
        )?;
        Ok((writes.statements, notice))
    }
}

/// [`Store::update_sqlite`] in the transaction `tx` began on this process's writer, all on this
/// thread; returns the notice of what it stored. Returning early drops `tx`, which rolls it
/// back.
fn update_direct(tx: DirectWrite, call: &SqliteUpdate<'_>) -> Result<(Updated, Option<Notice>)> {
    let loaded = tx
        .load(call.tenant, call.key, call.parts)?
        .ok_or_else(|| Fault::not_found("profile"))?;
    let (updated, (statements, notice)) = match call.plan(loaded)? {
        (updated, Some(write)) => (updated, write),
        (updated, None) => return Ok((updated, None)),
    };
    for statement in &statements {
        tx.execute(statement)
            .map_err(|err| match call.change.external_id_write() {
                Some((value, field)) if direct::violates_unique(&err, "external_id") => {
                    duplicate_external_id(value, field)
                }
                _ => internal(err),
            })?;
    }
    tx.commit()?;
    Ok((updated, Some(notice)))
}

/// [`Store::update_sqlite`] through sqlx, on one connection of `pool`, in two hand-overs to the
/// connection's thread (see [`Writes`]): `BEGIN IMMEDIATE` with the read, then the write with
/// `COMMIT`. SeaORM's transactions would take four, as its `BEGIN` and `COMMIT` are statements
/// of their own. Returns the notice of what it stored.
async fn update_through_sqlx(pool: &SqlitePool, call: &SqliteUpdate<'_>) -> Result<(Updated, Option<Notice>)> {
    let mut tx = SqliteWrite {
        conn: pool.acquire().await.map_err(acquire_err)?,
        open: true,
    };
    let Statement { sql, values, .. } = load_statement(DbBackend::Sqlite, call.tenant, call.key, false, call.parts);
    let row = bound(format!("BEGIN IMMEDIATE;\n{sql}"), values)
        .fetch_optional(&mut *tx.conn)
        .await
        .map_err(query_err)?;
    let planned = row
        .ok_or_else(|| Fault::not_found("profile").into())
        .and_then(|row| Ok(Loaded::from_query_result(&QueryResult::from(row), "")?))
        .and_then(|loaded| call.plan(loaded));
    let (updated, statements, notice) = match planned {
        Ok((updated, Some((statements, notice)))) => (updated, statements, notice),
        Ok((updated, None)) => {
            tx.roll_back().await;
            return Ok((updated, None));
        }
        Err(err) => {
            tx.roll_back().await;
            return Err(err);
        }
    };
    let Statement { sql, values, .. } = joined(statements);
    let stored = bound(format!("{sql};\nCOMMIT"), values).execute(&mut *tx.conn).await;
    if let Err(err) = stored {
        tx.roll_back().await;
        return Err(on_external_id(query_err(err), call.change));
    }
    tx.open = false;
    Ok((updated, Some(notice)))
}

/// SQLite's statements as one text, their parameters in order.
fn joined(statements: Vec<Statement>) -> Statement {
    let mut sql = Vec::with_capacity(statements.len());
    let mut values = Vec::new();
    for statement in statements {
        sql.push(statement.sql);
        values.extend(statement.values.into_iter().flat_map(|Values(values)| values));
    }
    Statement::from_sql_and_values(DbBackend::Sqlite, sql.join(";\n"), values)
}

/// A write transaction on a SQLite connection the store holds, begun by the text of its first
/// statement rather than by sqlx, which therefore cannot roll it back. Dropped while `open` (a
/// failure the caller did not roll back, a request cancelled mid-way), it closes its connection
/// instead of handing it back to the pool, and closing rolls the transaction back.
struct SqliteWrite {
    conn: PoolConnection<Sqlite>,
    open: bool,
}

impl SqliteWrite {
    /// Rolls back; if even that fails, the connection is closed when this is dropped.
    async fn roll_back(&mut self) {
        match sqlx::raw_sql("ROLLBACK").execute(&mut *self.conn).await {
            Ok(_) => self.open = false,
            Err(err) => tracing::warn!(error = %err, "could not roll back a SQLite write; closing its connection"),
        }
    }
}

impl Drop for SqliteWrite {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

/// The id of a new history record: a version 7 UUID, which sorts by the time it was made, so
/// each new record goes at the end of the table's primary-key index, on a page the last update
/// wrote, not on a random one. On SQLite a random id cost an update about 12% more CPU (a page
/// read into the cache and a page written to the log and to the file).
fn history_id() -> Uuid {
    Uuid::now_v7()
}

/// The change notice of `profile`'s version.
fn notice(tenant: TenantId, profile: &Profile) -> Notice {
    Notice {
        tenant: tenant.0,
        profile_id: profile.id,
        version: profile.version,
    }
}

fn internal(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::Internal(err.into())
}

fn on_external_id(err: DbErr, change: &ChangeSet) -> Error {
    match change.external_id_write() {
        Some((value, field)) => external_id_conflict(err, value, field),
        None => err.into(),
    }
}

async fn find_row<C: ConnectionTrait>(
    conn: &C,
    tenant: TenantId,
    key: &ProfileKey,
    lock: bool,
) -> Result<Option<profile::Model>> {
    let by_key = match key {
        ProfileKey::Id(id) => profile::Column::Id.eq(*id),
        ProfileKey::ExternalId(external_id) => profile::Column::ExternalId.eq(external_id.as_str()),
        ProfileKey::SerialNumber(serial) => profile::Column::SerialNumber.eq(*serial),
    };
    let mut query = profile::Entity::find()
        .filter(profile::Column::TenantId.eq(tenant.0))
        .filter(by_key);
    if lock {
        // FOR UPDATE on PostgreSQL; SQLite has no row locks and needs none (see module docs).
        query = query.lock_exclusive();
    }
    Ok(query.one(conn).await?)
}

async fn next_serial_number(tx: &DatabaseTransaction, tenant: TenantId) -> Result<i64> {
    tenant::Entity::update_many()
        .col_expr(tenant::Column::LastSerial, Expr::col(tenant::Column::LastSerial).add(1))
        .filter(tenant::Column::Id.eq(tenant.0))
        .exec(tx)
        .await?;
    let row = tenant::Entity::find_by_id(tenant.0).one(tx).await?;
    Ok(row
        .ok_or_else(|| internal("the request's tenant does not exist"))?
        .last_serial)
}

async fn definitions<C: ConnectionTrait>(conn: &C, tenant: TenantId) -> Result<Arc<[CustomFieldDefinition]>> {
    custom_field_definition::Entity::find()
        .filter(custom_field_definition::Column::TenantId.eq(tenant.0))
        .order_by_asc(custom_field_definition::Column::Name)
        .all(conn)
        .await?
        .into_iter()
        .map(definition_from_row)
        .collect()
}

fn definition_from_row(row: custom_field_definition::Model) -> Result<CustomFieldDefinition> {
    let field_type = CustomFieldType::parse(&row.field_type)
        .ok_or_else(|| internal(format!("custom field {} has unknown type {:?}", row.id, row.field_type)))?;
    let options = serde_json::from_value(row.options).map_err(internal)?;
    Ok(CustomFieldDefinition {
        id: row.id,
        name: row.name,
        field_type,
        options,
        max_length: row.max_length,
    })
}

/// The stored values of `existing` that a redefinition must keep valid: one value if the type
/// changes (any stored value forbids that), every distinct value of a dropdown (its options).
async fn used_values(
    tx: &DatabaseTransaction,
    existing: &CustomFieldDefinition,
    next: &NewCustomField,
) -> Result<Vec<String>> {
    let values = custom_field_value::Entity::find()
        .select_only()
        .column(custom_field_value::Column::Value)
        .filter(custom_field_value::Column::FieldId.eq(existing.id));
    let used = if existing.field_type != next.field_type {
        values.limit(1).into_tuple().all(tx).await?
    } else if next.field_type == CustomFieldType::Dropdown {
        values.distinct().into_tuple().all(tx).await?
    } else {
        Vec::new()
    };
    Ok(used)
}

/// The SQL that reads what a profile owns beside its row, per backend: JSON arrays built by
/// correlated subqueries, so a profile with its tags, groups, custom values and its tenant's
/// custom field definitions is one statement and one round trip.
struct OwnedSql {
    tags: &'static str,
    groups: &'static str,
    custom: &'static str,
    definitions: &'static str,
    /// In place of a part left out.
    null: &'static str,
}

// `json`, not `jsonb`: PostgreSQL sends either as text, and builds `json` without converting
// each element to its binary form first (a page of 50 profiles: ~15% less database CPU).
const POSTGRES_OWNED: OwnedSql = OwnedSql {
    tags: r#"(SELECT coalesce(json_agg(json_build_array(t.key, t.value)), '[]'::json) FROM profile_tags AS t WHERE t.profile_id = "profiles"."id")"#,
    groups: r#"(SELECT coalesce(json_agg(g.name), '[]'::json) FROM profile_groups AS g WHERE g.profile_id = "profiles"."id")"#,
    custom: r#"(SELECT coalesce(json_agg(json_build_array(c.field_id, c.value)), '[]'::json) FROM custom_field_values AS c WHERE c.profile_id = "profiles"."id")"#,
    definitions: r#"(SELECT coalesce(json_agg(json_build_array(d.id, d.name, d.field_type, d.options, d.max_length)), '[]'::json) FROM custom_field_definitions AS d WHERE d.tenant_id = "profiles"."tenant_id")"#,
    null: "NULL::json",
};

// SQLite keeps UUIDs as 16-byte blobs, which JSON cannot hold: they travel as hex.
const SQLITE_OWNED: OwnedSql = OwnedSql {
    tags: r#"(SELECT json_group_array(json_array(t.key, t.value)) FROM profile_tags AS t WHERE t.profile_id = "profiles"."id")"#,
    groups: r#"(SELECT json_group_array(g.name) FROM profile_groups AS g WHERE g.profile_id = "profiles"."id")"#,
    custom: r#"(SELECT json_group_array(json_array(hex(c.field_id), c.value)) FROM custom_field_values AS c WHERE c.profile_id = "profiles"."id")"#,
    definitions: r#"(SELECT json_group_array(json_array(hex(d.id), d.name, d.field_type, json(d.options), d.max_length)) FROM custom_field_definitions AS d WHERE d.tenant_id = "profiles"."tenant_id")"#,
    null: "NULL",
};

/// A select of the profile row's columns in their order (without the standard fields' when
/// the `parts` leave them out, with NULL for the attributes when they leave those out), and
/// beside them the columns [`Loaded`] reads: its tags, the `parts` it owns, and the tenant's
/// custom field definitions when `definitions` (and `parts.custom`) asks.
fn with_owned(backend: DbBackend, parts: Parts, definitions: bool) -> Select<profile::Entity> {
    let sql = match backend {
        DbBackend::Postgres => &POSTGRES_OWNED,
        _ => &SQLITE_OWNED,
    };
    // Leaving the 25 standard columns out, rather than selecting NULL in their place, spares
    // the database and the driver a cell each; the row has one of two shapes (`row::Shape`).
    let row = profile::Column::iter().fold(profile::Entity::find().select_only(), |select, column| {
        match (selected(parts.fields, column), parts.reads(column)) {
            (false, _) => select,
            (true, true) => select.column(column),
            (true, false) => select.expr_as(Expr::cust("NULL"), column.as_str()),
        }
    });
    let part = |wanted: bool, subquery: &'static str| Expr::cust(if wanted { subquery } else { sql.null });
    let [tags, groups, custom, definitions_as] = row::OWNED;
    row.expr_as(Expr::cust(sql.tags), tags)
        .expr_as(part(parts.groups, sql.groups), groups)
        .expr_as(part(parts.custom, sql.custom), custom)
        .expr_as(part(parts.custom && definitions, sql.definitions), definitions_as)
}

/// Which of a tenant's profiles `filter` lets through.
fn page_condition(tenant: TenantId, filter: &ProfileFilter) -> Condition {
    let mut condition = Condition::all().add(profile::Column::TenantId.eq(tenant.0));
    if let Some(status) = filter.status {
        condition = condition.add(profile::Column::Status.eq(status.as_str()));
    }
    if let Some(tag) = &filter.tag {
        condition = condition.add(owners_of(profile_tag::Column::ProfileId, profile_tag::Column::Key, tag));
    }
    if let Some(group) = &filter.group {
        condition = condition.add(owners_of(
            profile_group::Column::ProfileId,
            profile_group::Column::Name,
            group,
        ));
    }
    if let Some(external_id) = &filter.external_id {
        condition = condition.add(profile::Column::ExternalId.eq(external_id.as_str()));
    }
    condition
}

/// The profiles that own a row whose `column` is `value`, in the table of `owner`, the
/// column that names a row's profile.
fn owners_of<C: ColumnTrait>(owner: C, column: C, value: &str) -> Expr {
    profile::Column::Id.in_subquery(
        sea_orm::sea_query::Query::select()
            .column(owner)
            .from(owner.entity_name())
            .and_where(column.eq(value))
            .to_owned(),
    )
}

/// The profiles that `filter` lets through after serial number `after`, with `parts`, in
/// order: what [`page_statement`] runs, as SeaORM builds it.
fn page_select(
    backend: DbBackend,
    tenant: TenantId,
    after: Option<i64>,
    filter: &ProfileFilter,
    parts: Parts,
) -> Select<profile::Entity> {
    let mut condition = page_condition(tenant, filter);
    if let Some(after) = after {
        condition = condition.add(profile::Column::SerialNumber.gt(after));
    }
    with_owned(backend, parts, false)
        .filter(condition)
        .order_by_asc(profile::Column::SerialNumber)
}

/// [`page_select`]'s first `rows` as a statement. Its text is built once for each shape of
/// page (the backend, which filters and whether `after` are given, the parts) rather than by
/// SeaORM for every page (3.5% of the instructions of a page of 50, W4); its values are bound
/// in the order SeaORM binds them: tenant, status, tag, group, externalId, `after`, and on
/// PostgreSQL the row count (SQLite's is in the text, see [`limited`]).
fn page_statement(
    backend: DbBackend,
    tenant: TenantId,
    rows: u64,
    after: Option<i64>,
    filter: &ProfileFilter,
    parts: Parts,
) -> Statement {
    // Six things given or not (the backend is PostgreSQL or not) for each combination of parts.
    const SHAPES: usize = Parts::COMBINATIONS << 6;
    static TEXTS: LazyLock<Vec<OnceLock<String>>> = LazyLock::new(|| (0..SHAPES).map(|_| OnceLock::new()).collect());
    // Only PostgreSQL and SQLite are served: no other driver is built in.
    let postgres = backend == DbBackend::Postgres;
    let given = [
        postgres,
        filter.status.is_some(),
        filter.tag.is_some(),
        filter.group.is_some(),
        filter.external_id.is_some(),
        after.is_some(),
    ];
    let shape = given
        .into_iter()
        .fold(parts.index(), |index, given| index * 2 + usize::from(given));
    let text = TEXTS[shape].get_or_init(|| {
        // Any values of the same shape give the same text; SQLite's is taken without its
        // `LIMIT`, which goes into the text below.
        let filter = ProfileFilter {
            status: filter.status.map(|_| ProfileStatus::Active),
            tag: filter.tag.as_ref().map(|_| String::new()),
            group: filter.group.as_ref().map(|_| String::new()),
            external_id: filter.external_id.as_ref().map(|_| String::new()),
        };
        let select = page_select(backend, TenantId(Uuid::nil()), after.map(|_| 0), &filter, parts);
        match postgres {
            true => limited(select, backend, 0).sql,
            false => select.build(backend).sql,
        }
    });
    let mut values = vec![Value::from(tenant.0)];
    values.extend(filter.status.map(|status| Value::from(status.as_str())));
    values.extend(filter.tag.as_deref().map(Value::from));
    values.extend(filter.group.as_deref().map(Value::from));
    values.extend(filter.external_id.as_deref().map(Value::from));
    values.extend(after.map(Value::from));
    let sql = match postgres {
        true => {
            values.push(Value::from(rows));
            text.clone()
        }
        false => format!("{text} LIMIT {rows}"),
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// The profile `key` names with its tags and `parts` (custom values with the tenant's custom
/// field definitions), in one statement; `lock` takes its row lock on PostgreSQL (see the
/// module docs).
async fn load<C: ConnectionTrait>(
    conn: &C,
    tenant: TenantId,
    key: &ProfileKey,
    lock: bool,
    parts: Parts,
) -> Result<Option<Loaded>> {
    let statement = load_statement(conn.get_database_backend(), tenant, key, lock, parts);
    Ok(Loaded::find_by_statement(statement).one(conn).await?)
}

/// [`load`] on a PostgreSQL connection the caller holds.
async fn load_postgres(
    conn: &mut PgConnection,
    tenant: TenantId,
    key: &ProfileKey,
    lock: bool,
    parts: Parts,
) -> Result<Option<Loaded>> {
    let statement = load_statement(DbBackend::Postgres, tenant, key, lock, parts);
    match query_one_postgres(conn, statement).await? {
        Some(row) => Ok(Some(Loaded::from_query_result(&row, "")?)),
        None => Ok(None),
    }
}

/// The profiles `statement` reads (as [`with_owned`] selects them), on a PostgreSQL connection
/// the caller holds.
async fn load_all_postgres(conn: &mut PgConnection, statement: Statement) -> Result<Vec<Loaded>> {
    let Statement { sql, values, .. } = statement;
    let rows = bound(sql, values).fetch_all(conn).await.map_err(query_err)?;
    Ok(rows.iter().map(row::decode).collect::<Result<_, _>>()?)
}

/// Runs `statement` on a PostgreSQL connection the caller holds, as SeaORM runs one on a
/// connection of its pool: the same binding of values, the same prepared-statement cache.
async fn query_one_postgres(conn: &mut PgConnection, statement: Statement) -> Result<Option<QueryResult>, DbErr> {
    let Statement { sql, values, .. } = statement;
    bound(sql, values)
        .fetch_optional(conn)
        .await
        .map(|row| row.map(QueryResult::from))
        .map_err(query_err)
}

/// `sql` with `values` bound as SeaORM binds a statement's, for a connection the store holds.
fn bound<DB: sqlx::Database>(sql: String, values: Option<Values>) -> sqlx::query::Query<'static, DB, SqlxValues>
where
    SqlxValues: sqlx::IntoArguments<DB>,
{
    sqlx::query_with(
        sqlx::AssertSqlSafe(sql),
        SqlxValues(values.unwrap_or(Values(Vec::new()))),
    )
}

/// A failure to take a connection from the pool, as SeaORM reports one.
fn acquire_err(err: sqlx::Error) -> DbErr {
    match err {
        sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
        sqlx::Error::PoolClosed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
        err => DbErr::Conn(RuntimeErr::SqlxError(err.into())),
    }
}

/// A sqlx error as SeaORM reports one from a query, for the statements the store runs on a
/// connection it holds.
fn query_err(err: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(err.into()))
}

/// The first `rows` rows of `select`, as `M`.
async fn first_rows<E, M, C>(select: Select<E>, rows: u64, conn: &C) -> Result<Vec<M>, DbErr>
where
    E: EntityTrait,
    M: FromQueryResult,
    C: ConnectionTrait,
{
    M::find_by_statement(limited(select, conn.get_database_backend(), rows))
        .all(conn)
        .await
}

/// `select` limited to `rows` rows, as a statement. On SQLite the limit is written into the
/// text rather than bound: SQLite prepares a statement again whenever a value is bound to its
/// `LIMIT` (see [`load_select`]), and the text differs only with `rows`, of which a client asks
/// a handful of values.
fn limited<E: EntityTrait>(select: Select<E>, backend: DbBackend, rows: u64) -> Statement {
    match backend {
        DbBackend::Sqlite => {
            let mut statement = select.build(backend);
            statement.sql.push_str(" LIMIT ");
            statement.sql.push_str(&rows.to_string());
            statement
        }
        _ => select.limit(rows).build(backend),
    }
}

/// [`load`]'s statement, as [`load_select`] builds it, with its values.
fn load_statement(backend: DbBackend, tenant: TenantId, key: &ProfileKey, lock: bool, parts: Parts) -> Statement {
    let key_value = match key {
        ProfileKey::Id(id) => Value::from(*id),
        ProfileKey::ExternalId(external_id) => Value::from(external_id.as_str()),
        ProfileKey::SerialNumber(serial) => Value::from(*serial),
    };
    // The values in the order `load_select` binds them: tenant, then key.
    Statement::from_sql_and_values(
        backend,
        load_text(backend, key, lock, parts),
        [tenant.0.into(), key_value],
    )
}

/// The text of [`load_statement`]. It depends only on the backend, the kind of key, `lock` and
/// `parts`, so each text is built once: every profile read runs it, and building it (four
/// subqueries, every column) cost more than reading the row.
fn load_text(backend: DbBackend, key: &ProfileKey, lock: bool, parts: Parts) -> &'static str {
    static TEXTS: LazyLock<Vec<String>> = LazyLock::new(|| {
        let keys = [
            ProfileKey::Id(Uuid::nil()),
            ProfileKey::ExternalId(String::new()),
            ProfileKey::SerialNumber(0),
        ];
        [DbBackend::Postgres, DbBackend::Sqlite]
            .into_iter()
            .flat_map(|backend| {
                keys.iter().flat_map(move |key| {
                    [false, true].into_iter().flat_map(move |lock| {
                        Parts::every().map(move |parts| {
                            load_select(backend, TenantId(Uuid::nil()), key, lock, parts)
                                .build(backend)
                                .sql
                        })
                    })
                })
            })
            .collect()
    });
    let key_index = match key {
        ProfileKey::Id(_) => 0,
        ProfileKey::ExternalId(_) => 1,
        ProfileKey::SerialNumber(_) => 2,
    };
    // Only PostgreSQL and SQLite are served: no other driver is built in.
    let backend_index = usize::from(backend != DbBackend::Postgres);
    &TEXTS[((backend_index * 3 + key_index) * 2 + usize::from(lock)) * Parts::COMBINATIONS + parts.index()]
}

/// The query of [`load`]. Every kind of key is unique within a tenant, so it has no `LIMIT`:
/// SQLite prepares a statement again whenever a value bound to its `LIMIT` changes, or is
/// bound anew, as every execution does (46 µs a read against 6 µs without, SQLite 3.51).
fn load_select(
    backend: DbBackend,
    tenant: TenantId,
    key: &ProfileKey,
    lock: bool,
    parts: Parts,
) -> Select<profile::Entity> {
    let by_key = match key {
        ProfileKey::Id(id) => profile::Column::Id.eq(*id),
        ProfileKey::ExternalId(external_id) => profile::Column::ExternalId.eq(external_id.as_str()),
        ProfileKey::SerialNumber(serial) => profile::Column::SerialNumber.eq(*serial),
    };
    let mut query = with_owned(backend, parts, true)
        .filter(profile::Column::TenantId.eq(tenant.0))
        .filter(by_key);
    if lock {
        // FOR UPDATE of the profile row on PostgreSQL (the subqueries lock nothing); SQLite has
        // no row locks and needs none.
        query = query.lock_exclusive();
    }
    query
}

impl Loaded {
    /// The profile with the `parts` it was read with, and its tenant's custom field
    /// definitions when those include custom values.
    fn into_view(mut self, parts: Parts) -> Result<ProfileView> {
        let custom_fields: Arc<[CustomFieldDefinition]> = match self.definitions.take() {
            None if !parts.custom => Arc::from([]),
            Some(definitions) => {
                let mut definitions = json_rows(definitions, "definitions")?
                    .into_iter()
                    .map(definition_from_json)
                    .collect::<Result<Vec<_>>>()?;
                definitions.sort_by(|a, b| a.name.cmp(&b.name));
                definitions.into()
            }
            None => return Err(internal("a profile was read without its custom field definitions")),
        };
        let profile = self.into_profile(&custom_fields)?;
        Ok(ProfileView {
            profile,
            custom_fields,
            parts,
        })
    }

    fn into_profile(self, custom_fields: &[CustomFieldDefinition]) -> Result<Profile> {
        let mut profile = self.profile;
        profile.tags.extend(self.owned_tags.0);
        if let Some(groups) = self.owned_groups {
            profile.groups.extend(groups.0);
        }
        for (field_id, value) in self.owned_custom.map(|custom| custom.0).unwrap_or_default() {
            let field_id = Uuid::parse_str(&field_id).map_err(internal)?;
            if let Some(field) = custom_fields.iter().find(|field| field.id == field_id) {
                profile.custom.insert(field.name.clone(), value);
            }
        }
        Ok(profile)
    }
}

/// The rows of a JSON array column (SQLite returns it as text).
fn json_rows(value: serde_json::Value, what: &str) -> Result<Vec<serde_json::Value>> {
    match value {
        serde_json::Value::String(text) => json_rows(serde_json::from_str(&text).map_err(internal)?, what),
        serde_json::Value::Array(rows) => Ok(rows),
        serde_json::Value::Null => Ok(Vec::new()),
        other => Err(internal(format!("{what} were read as {other}"))),
    }
}

fn as_array(value: serde_json::Value) -> Result<Vec<serde_json::Value>> {
    match value {
        serde_json::Value::Array(items) => Ok(items),
        other => Err(internal(format!("expected a JSON array, read {other}"))),
    }
}

fn definition_from_json(value: serde_json::Value) -> Result<CustomFieldDefinition> {
    let Ok([id, name, field_type, options, max_length]) = <[serde_json::Value; 5]>::try_from(as_array(value)?) else {
        return Err(internal("a custom field definition row has not 5 columns"));
    };
    let (Some(id), Some(name), Some(field_type)) = (id.as_str(), name.as_str(), field_type.as_str()) else {
        return Err(internal("a custom field definition row has no id, name or type"));
    };
    let id = Uuid::parse_str(id).map_err(internal)?;
    Ok(CustomFieldDefinition {
        id,
        name: name.to_owned(),
        field_type: CustomFieldType::parse(field_type)
            .ok_or_else(|| internal(format!("custom field {id} has unknown type {field_type:?}")))?,
        options: serde_json::from_value(options).map_err(internal)?,
        max_length: max_length
            .as_i64()
            .map(|n| i32::try_from(n).map_err(internal))
            .transpose()?,
    })
}

/// What an update will do, once computed from the profile it read.
enum Plan {
    /// Nothing to store: a dry run, or a change that changes nothing.
    Unchanged(Updated),
    Write(Write),
}

/// An update to store.
struct Write {
    before: Arc<ProfileView>,
    updated: Updated,
}

/// Checks `update`'s conditions on the profile `before` (read with every part `change`
/// touches) and applies `change` to it.
fn plan(before: Arc<ProfileView>, change: &ChangeSet, update: &Update<'_>) -> Result<Plan> {
    let ProfileView {
        profile,
        custom_fields,
        parts,
    } = &*before;
    // Checked on the profile as the update's transaction reads it, so no change between a
    // check and the write can slip another person's profile in.
    if let Some(person) = update.person
        && profile.external_id() != Some(person)
    {
        return Err(Fault::not_found("profile").into());
    }
    if profile.status == ProfileStatus::Closed {
        return Err(Fault::new(Code::ProfileClosed, "This profile is CLOSED and accepts no updates.").into());
    }
    if let Some(expected) = update.expected_version
        && expected != profile.version
    {
        return Err(Fault::new(
            Code::VersionConflict,
            format!(
                "Expected version {expected}, but the profile is at version {}; reload it and try again.",
                profile.version
            ),
        )
        .at("expectedVersion")
        .with("currentVersion", profile.version)
        .into());
    }
    // A person's profile is theirs by its externalId, so they may not write another one. The
    // check after applying holds whatever the way the change set writes it.
    let rekeyed = || {
        Fault::new(
            Code::Forbidden,
            "An end-user token may not change its profile's externalId (memberRefId): it is the token's subject.",
        )
    };
    if let Some(person) = update.person
        && let Some((written, path)) = change.external_id_write()
        && written != Some(person)
    {
        return Err(rekeyed().at(path).into());
    }
    let (mut after, changes) = change.apply(profile, custom_fields)?;
    if update.person.is_some() && after.external_id() != profile.external_id() {
        return Err(rekeyed().into());
    }
    if !changes.is_empty() {
        after.version += 1;
        after.updated_at = Utc::now();
    }
    let updated = Updated {
        profile: Arc::new(ProfileView {
            profile: after,
            custom_fields: custom_fields.clone(),
            parts: *parts,
        }),
        changes,
    };
    Ok(match update.dry_run || updated.changes.is_empty() {
        true => Plan::Unchanged(updated),
        false => Plan::Write(Write { before, updated }),
    })
}

/// The profile columns an update writes, in the order [`postgres_write`] binds them from `$3`.
static WRITTEN_COLUMNS: LazyLock<Vec<profile::Column>> = LazyLock::new(|| {
    use profile::Column as C;
    profile::Column::iter()
        .filter(|column| !matches!(column, C::Id | C::TenantId | C::SerialNumber | C::CreatedAt))
        .collect()
});

/// Which child tables an update changes: tags, groups, custom values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Children {
    tags: bool,
    groups: bool,
    custom: bool,
}

impl Children {
    const COMBINATIONS: usize = 8;

    fn index(self) -> usize {
        usize::from(self.tags) | usize::from(self.groups) << 1 | usize::from(self.custom) << 2
    }

    #[cfg(test)]
    fn at(index: usize) -> Self {
        Children {
            tags: index & 1 != 0,
            groups: index & 2 != 0,
            custom: index & 4 != 0,
        }
    }
}

/// The statement that stores an update on PostgreSQL: the profile row (only if it is still at
/// the version the update read), the child rows it changes and its history record, all in one
/// round trip (its change notice follows the commit, see [`crate::feed`]). Every part hangs on
/// the profile's UPDATE, so when that matches no row nothing else happens. The deleted and the
/// written keys of each child table are disjoint, so the parts never touch one row twice. The
/// child tables an update leaves alone are not in its statement at all: each part, even with
/// nothing to do, costs PostgreSQL the setting up of its plan on every execution.
///
/// With `read_back`, when the UPDATE matches no row the statement also reads the profile as it
/// is now, with those parts (as [`load`] reads it by id, in the same snapshot), so that an
/// update from a stale snapshot ([`written`]) needs no read of its own. Each text is built once,
/// when first used.
fn postgres_write(children: Children, read_back: Option<Parts>) -> &'static str {
    const TEXTS: usize = Children::COMBINATIONS * (1 + Parts::COMBINATIONS);
    static BUILT: [OnceLock<String>; TEXTS] = [const { OnceLock::new() }; TEXTS];
    let index = children.index() * (1 + Parts::COMBINATIONS) + read_back.map_or(0, |parts| 1 + parts.index());
    BUILT[index].get_or_init(|| postgres_write_text(children, read_back))
}

/// Builds [`postgres_write`]'s text, numbering its parameters in the order [`write_postgres`]
/// binds them: the tenant and the profile's id first, as [`load_statement`] binds them for a
/// read by id, so that the read back is [`load_text`]'s as it is.
fn postgres_write_text(children: Children, read_back: Option<Parts>) -> String {
    let set = WRITTEN_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, column)| format!(r#""{}" = ${}"#, column.as_str(), i + 4))
        .collect::<Vec<_>>()
        .join(", ");
    let mut next = WRITTEN_COLUMNS.len() + 4;
    let mut p = || {
        let parameter = format!("${next}");
        next += 1;
        parameter
    };
    let mut parts = vec![format!(
        "WITH p AS (UPDATE profiles SET {set} WHERE id = $2 AND version = $3 RETURNING id)"
    )];
    if children.tags {
        parts.push(format!("tags_removed AS (DELETE FROM profile_tags AS t USING p WHERE t.profile_id = p.id AND t.key IN (SELECT jsonb_array_elements_text({}::jsonb)))", p()));
        parts.push(format!("tags_written AS (INSERT INTO profile_tags (profile_id, key, value) SELECT p.id, x.key, x.value FROM p, jsonb_to_recordset({}::jsonb) AS x(key text, value text) ON CONFLICT (profile_id, key) DO UPDATE SET value = excluded.value)", p()));
    }
    if children.groups {
        parts.push(format!("groups_left AS (DELETE FROM profile_groups AS g USING p WHERE g.profile_id = p.id AND g.name IN (SELECT jsonb_array_elements_text({}::jsonb)))", p()));
        parts.push(format!("groups_joined AS (INSERT INTO profile_groups (profile_id, name) SELECT p.id, x.name FROM p, jsonb_array_elements_text({}::jsonb) AS x(name))", p()));
    }
    if children.custom {
        parts.push(format!("custom_cleared AS (DELETE FROM custom_field_values AS c USING p WHERE c.profile_id = p.id AND c.field_id IN (SELECT x.id::uuid FROM jsonb_array_elements_text({}::jsonb) AS x(id)))", p()));
        parts.push(format!("custom_written AS (INSERT INTO custom_field_values (profile_id, field_id, value) SELECT p.id, x.field_id, x.value FROM p, jsonb_to_recordset({}::jsonb) AS x(field_id uuid, value text) ON CONFLICT (profile_id, field_id) DO UPDATE SET value = excluded.value)", p()));
    }
    let [
        id,
        version,
        operation,
        changes,
        api_key_id,
        issuer,
        subject,
        request_id,
        at,
    ] = [(); 9].map(|()| p());
    parts.push(format!("history AS (INSERT INTO profile_changes (id, tenant_id, profile_id, version, operation, changes, api_key_id, actor_issuer, actor_subject, request_id, at) SELECT {id}, $1, p.id, {version}, {operation}, {changes}, {api_key_id}, {issuer}, {subject}, {request_id}, {at} FROM p)"));
    let applied = "SELECT count(*) AS applied FROM p";
    let select = match read_back {
        None => applied.to_owned(),
        // The read's condition names only `a`, so PostgreSQL checks it once, before reading
        // anything, and an update that applies reads nothing. `OFFSET 0` keeps the planner
        // from pulling the read up into the join, where the condition would be checked only
        // after the read.
        Some(parts) => format!(
            "SELECT a.applied, now.* FROM ({applied}) AS a LEFT JOIN LATERAL (SELECT * FROM ({}) AS now WHERE a.applied = 0 OFFSET 0) AS now ON true",
            load_text(DbBackend::Postgres, &ProfileKey::Id(Uuid::nil()), false, parts)
        ),
    };
    format!("{}\n{select}", parts.join(",\n"))
}

/// What became of [`write_postgres`]'s write.
enum Stored {
    /// The profile was still at the version the update read: the update is stored.
    Applied,
    /// It was not, and nothing was stored. When the write was to read the profile back, the
    /// profile as it is now, if it still exists.
    Stale(Option<Box<Loaded>>),
}

/// Stores `write` with [`postgres_write`]'s statement, reading the profile back with the
/// `read_back` parts if the profile is no longer at the version the update read.
#[allow(clippy::too_many_arguments)]
async fn write_postgres(
    conn: &mut PgConnection,
    tenant: TenantId,
    write: &Write,
    operation: &str,
    actor: &Actor,
    change: &ChangeSet,
    read_back: Option<Parts>,
) -> Result<Stored> {
    let (before, after) = (&write.before.profile, &write.updated.profile.profile);
    let custom_fields = &write.updated.profile.custom_fields;
    let row = profile::ActiveModel::from_profile(tenant, after)?;
    let mut values: Vec<Value> = vec![tenant.0.into(), after.id.into(), before.version.into()];
    for column in WRITTEN_COLUMNS.iter() {
        values.push(
            row.get(*column)
                .into_value()
                .ok_or_else(|| internal(format!("column {} has no value", column.as_str())))?,
        );
    }
    let diff = ChildDiff::new(before, after, custom_fields)?;
    let children = diff.children();
    if children.tags {
        values.push(json(&diff.tags_removed)?);
        values.push(json(
            &diff
                .tags_written
                .iter()
                .map(|(key, value)| serde_json::json!({"key": key, "value": value}))
                .collect::<Vec<_>>(),
        )?);
    }
    if children.groups {
        values.push(json(&diff.groups_left)?);
        values.push(json(&diff.groups_joined)?);
    }
    if children.custom {
        values.push(json(&diff.custom_cleared)?);
        values.push(json(
            &diff
                .custom_written
                .iter()
                .map(|(field_id, value)| serde_json::json!({"field_id": field_id, "value": value}))
                .collect::<Vec<_>>(),
        )?);
    }
    values.extend([
        history_id().into(),
        after.version.into(),
        operation.into(),
        json(&write.updated.changes)?,
        actor.api_key_id.into(),
        actor.person.as_ref().map(|(issuer, _)| issuer.clone()).into(),
        actor.person.as_ref().map(|(_, subject)| subject.clone()).into(),
        actor.request_id.clone().into(),
        after.updated_at.into(),
    ]);
    let returned = bound(postgres_write(children, read_back).to_owned(), Some(Values(values)))
        .fetch_optional(conn)
        .await
        .map_err(|err| on_external_id(query_err(err), change))?
        .ok_or_else(|| internal("the write statement returned no row"))?;
    if returned.try_get::<i64, _>("applied").map_err(query_err)? == 1 {
        return Ok(Stored::Applied);
    }
    match read_back {
        // The read's columns follow `applied`; a NULL id is a profile that no longer exists.
        Some(_) if returned.try_get::<Option<Uuid>, _>(1).map_err(query_err)?.is_some() => {
            Ok(Stored::Stale(Some(Box::new(row::decode_after(&returned, 1)?))))
        }
        _ => Ok(Stored::Stale(None)),
    }
}

fn json(value: &impl serde::Serialize) -> Result<Value> {
    Ok(Value::Json(Some(Box::new(
        serde_json::to_value(value).map_err(internal)?,
    ))))
}

/// What differs between two versions of a profile in the child tables.
struct ChildDiff<'a> {
    tags_removed: Vec<&'a String>,
    tags_written: Vec<(&'a String, &'a Option<String>)>,
    groups_left: Vec<&'a String>,
    groups_joined: Vec<&'a String>,
    custom_cleared: Vec<Uuid>,
    custom_written: Vec<(Uuid, &'a String)>,
}

impl<'a> ChildDiff<'a> {
    /// The child tables the difference touches.
    fn children(&self) -> Children {
        Children {
            tags: !(self.tags_removed.is_empty() && self.tags_written.is_empty()),
            groups: !(self.groups_left.is_empty() && self.groups_joined.is_empty()),
            custom: !(self.custom_cleared.is_empty() && self.custom_written.is_empty()),
        }
    }

    fn new(before: &'a Profile, after: &'a Profile, custom_fields: &[CustomFieldDefinition]) -> Result<Self> {
        let field_id = |name: &str| {
            custom_fields
                .iter()
                .find(|field| field.name == name)
                .map(|field| field.id)
                .ok_or_else(|| internal(format!("custom field {name:?} has no definition")))
        };
        Ok(ChildDiff {
            tags_removed: before
                .tags
                .keys()
                .filter(|key| !after.tags.contains_key(*key))
                .collect(),
            tags_written: after
                .tags
                .iter()
                .filter(|(key, value)| before.tags.get(*key) != Some(*value))
                .collect(),
            groups_left: before.groups.difference(&after.groups).collect(),
            groups_joined: after.groups.difference(&before.groups).collect(),
            custom_cleared: before
                .custom
                .keys()
                .filter(|name| !after.custom.contains_key(*name))
                .map(|name| field_id(name))
                .collect::<Result<_>>()?,
            custom_written: after
                .custom
                .iter()
                .filter(|(name, value)| before.custom.get(*name) != Some(*value))
                .map(|(name, value)| Ok((field_id(name)?, value)))
                .collect::<Result<_>>()?,
        })
    }
}

/// The column that stores a scalar canonical field.
fn column(field: Field) -> profile::Column {
    use profile::Column as C;
    match field {
        Field::ExternalId => C::ExternalId,
        Field::MemberType => C::MemberType,
        Field::Name => C::Name,
        Field::Email => C::Email,
        Field::Role => C::Role,
        Field::MarketingConsent => C::MarketingConsent,
        Field::AcceptsMarketing => C::AcceptsMarketing,
        Field::FirstName => C::FirstName,
        Field::LastName => C::LastName,
        Field::Title => C::Title,
        Field::Organization => C::Organization,
        Field::PhoneNumber => C::PhoneNumber,
        Field::Address => C::Address,
        Field::Address2 => C::Address2,
        Field::City => C::City,
        Field::StateRegion => C::StateRegion,
        Field::ZipCode => C::ZipCode,
        Field::Country => C::Country,
        Field::Latitude => C::Latitude,
        Field::Longitude => C::Longitude,
        Field::Timezone => C::Timezone,
        Field::Locale => C::Locale,
        Field::KlaviyoId => C::KlaviyoId,
        Field::Biography => C::Biography,
        Field::Category => C::Category,
    }
}

impl profile::ActiveModel {
    /// Every column of `profile`'s row, ready to insert or update.
    fn from_profile(tenant: TenantId, profile: &Profile) -> Result<Self> {
        let mut row = profile::ActiveModel {
            id: Set(profile.id),
            tenant_id: Set(tenant.0),
            serial_number: Set(profile.serial_number),
            status: Set(profile.status.as_str().to_owned()),
            attributes: Set(serde_json::Value::Object(profile.attributes.clone())),
            version: Set(profile.version),
            created_at: Set(profile.created_at),
            updated_at: Set(profile.updated_at),
            ..Default::default()
        };
        for field in Field::ALL {
            let value = match (field, profile.fields.get(&field)) {
                (Field::MarketingConsent | Field::AcceptsMarketing, scalar) => Value::Bool(match scalar {
                    Some(Scalar::Flag(b)) => Some(*b),
                    _ => None,
                }),
                (Field::Latitude | Field::Longitude, scalar) => Value::Double(match scalar {
                    Some(Scalar::Number(n)) => Some(*n),
                    _ => None,
                }),
                (_, Some(Scalar::Text(s))) => Value::String(Some(s.clone())),
                (_, Some(Scalar::MemberType(t))) => Value::String(Some(t.as_str().to_owned())),
                (_, Some(other)) => return Err(internal(format!("{} cannot hold {other:?}", field.name()))),
                (_, None) => Value::String(None),
            };
            row.set(column(field), value);
        }
        Ok(row)
    }

    /// The columns of `after`'s row whose values differ from `before`'s, ready to update. An
    /// UPDATE maintains the index entries of every column it sets, and checks the rows that
    /// refer to a key it sets, whether or not the value changes.
    fn changed(tenant: TenantId, before: &Profile, after: &Profile) -> Result<Self> {
        let before = Self::from_profile(tenant, before)?;
        let mut row = Self::from_profile(tenant, after)?;
        for column in profile::Column::iter() {
            if row.get(column) == before.get(column) {
                row.not_set(column);
            }
        }
        Ok(row)
    }
}

/// A store on a fresh, migrated SQLite file, and the file's folder, which must outlive it.
#[cfg(test)]
pub(crate) async fn on_a_fresh_sqlite_file() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let db = crate::db::connect(&url).await.unwrap();
    crate::db::migrate(&db).await.unwrap();
    (Store::new(db), dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_combination_of_parts_has_its_own_index() {
        let indices: Vec<usize> = Parts::every().map(Parts::index).collect();
        assert_eq!(indices, (0..Parts::COMBINATIONS).collect::<Vec<_>>());
        assert_eq!(Parts::ALL.index(), Parts::COMBINATIONS - 1);
    }

    #[test]
    fn a_pages_statement_is_the_one_seaorm_builds_for_every_shape_of_page() {
        let tenant = TenantId(Uuid::new_v4());
        for backend in [DbBackend::Postgres, DbBackend::Sqlite] {
            for parts in Parts::every() {
                for given in 0..32_u8 {
                    let filter = ProfileFilter {
                        status: (given & 1 != 0).then_some(ProfileStatus::Suspended),
                        tag: (given & 2 != 0).then(|| "vip".to_owned()),
                        group: (given & 4 != 0).then(|| "it's".to_owned()),
                        external_id: (given & 16 != 0).then(|| "ana".to_owned()),
                    };
                    let after = (given & 8 != 0).then_some(41);
                    // Twice: the first builds the shape's text, the second takes it as built.
                    for rows in [51, 3] {
                        assert_eq!(
                            page_statement(backend, tenant, rows, after, &filter, parts),
                            limited(page_select(backend, tenant, after, &filter, parts), backend, rows),
                            "{backend:?}, {parts:?}, {filter:?}, after {after:?}, {rows} rows"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_read_leaves_out_only_the_columns_of_the_parts_it_leaves_out() {
        let bare = Parts::at(0);
        let read = |parts: Parts| profile::Column::iter().filter(|&c| parts.reads(c)).count();
        let width = profile::Column::iter().count();
        assert_eq!(read(Parts::ALL), width);
        assert_eq!(read(Parts::ROW), width);
        assert!(Field::ALL.into_iter().all(|field| !bare.reads(column(field))));
        assert!(!bare.reads(profile::Column::Attributes));
        assert_eq!(read(bare), width - Field::ALL.len() - 1);
        for kept in [profile::Column::Id, profile::Column::Status, profile::Column::Version] {
            assert!(bare.reads(kept), "{}", kept.as_str());
        }
    }

    #[test]
    fn an_update_of_the_profile_row_sets_only_the_columns_that_changed() {
        let tenant = TenantId(Uuid::new_v4());
        let before = Profile::new(Uuid::new_v4(), 7, Utc::now());
        let mut after = before.clone();
        after.version += 1;
        after.updated_at += chrono::TimeDelta::seconds(1);
        after.fields.insert(Field::Name, Scalar::Text("Ada".into()));
        after.attributes.insert("tier".into(), "gold".into());
        let row = profile::ActiveModel::changed(tenant, &before, &after).unwrap();
        let mut set: Vec<&str> = profile::Column::iter()
            .filter(|&column| !row.is_not_set(column))
            .map(|column| column.as_str())
            .collect();
        set.sort_unstable();
        assert_eq!(set, ["attributes", "name", "updated_at", "version"]);
    }

    #[test]
    fn a_limit_is_written_into_the_text_on_sqlite_and_bound_on_postgresql() {
        let select = || profile::Entity::find().filter(profile::Column::TenantId.eq(Uuid::nil()));
        let sqlite = limited(select(), DbBackend::Sqlite, 51);
        assert!(sqlite.sql.ends_with(" LIMIT 51"), "{}", sqlite.sql);
        let unlimited = select().build(DbBackend::Sqlite);
        assert_eq!(sqlite.values, unlimited.values);
        let postgres = limited(select(), DbBackend::Postgres, 51);
        assert!(postgres.sql.ends_with(" LIMIT $2"), "{}", postgres.sql);
        let values = postgres.values.map(|values| values.0).unwrap_or_default();
        assert_eq!(values.last(), Some(&Value::from(51u64)));
    }

    #[test]
    fn a_remembered_load_statement_is_the_one_sea_query_builds() {
        let tenant = TenantId(Uuid::new_v4());
        let keys = [
            ProfileKey::Id(Uuid::new_v4()),
            ProfileKey::ExternalId("crm-7".into()),
            ProfileKey::SerialNumber(42),
        ];
        for backend in [DbBackend::Postgres, DbBackend::Sqlite] {
            for key in &keys {
                for lock in [false, true] {
                    for parts in Parts::every() {
                        let built = load_select(backend, tenant, key, lock, parts).build(backend);
                        let remembered = load_statement(backend, tenant, key, lock, parts);
                        let case = format!("{backend:?} {key:?} {lock} {parts:?}");
                        assert_eq!(remembered.sql, built.sql, "{case}");
                        assert_eq!(remembered.values, built.values, "{case}");
                    }
                }
            }
        }
    }

    #[test]
    fn each_set_of_child_tables_has_its_own_write_statement() {
        let indices: Vec<usize> = (0..Children::COMBINATIONS).map(|i| Children::at(i).index()).collect();
        assert_eq!(indices, (0..Children::COMBINATIONS).collect::<Vec<_>>());
    }

    /// The parameter numbers `sql` names.
    fn parameters(sql: &str) -> std::collections::BTreeSet<usize> {
        sql.split('$')
            .skip(1)
            .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>())
            .map(|digits| digits.parse().unwrap_or(0))
            .collect()
    }

    #[test]
    fn a_write_statement_names_only_the_child_tables_it_changes_and_numbers_its_parameters_in_order() {
        let read_backs: Vec<Option<Parts>> = std::iter::once(None).chain(Parts::every().map(Some)).collect();
        for (index, &read_back) in (0..Children::COMBINATIONS).flat_map(|i| read_backs.iter().map(move |r| (i, r))) {
            let children = Children::at(index);
            let sql = postgres_write(children, read_back);
            let case = format!("{children:?} {read_back:?}");
            // (A read back reads every child table it shows, but writes none.)
            let writes = |table: &str| {
                let [deletes, inserts] = [format!("DELETE FROM {table} "), format!("INSERT INTO {table} ")];
                assert_eq!(sql.contains(&deletes), sql.contains(&inserts), "{case}");
                sql.contains(&inserts)
            };
            assert_eq!(writes("profile_tags"), children.tags, "{case}");
            assert_eq!(writes("profile_groups"), children.groups, "{case}");
            assert_eq!(writes("custom_field_values"), children.custom, "{case}");
            // The notice goes after the commit (see `crate::feed`).
            assert!(sql.contains("profile_changes") && !sql.contains("pg_notify"), "{case}");
            // tenant, id and version, the columns, two per child table and the history
            // record's seven, as `write_postgres` binds them.
            let touched = [children.tags, children.groups, children.custom]
                .into_iter()
                .filter(|&t| t)
                .count();
            let expected = 3 + WRITTEN_COLUMNS.len() + 2 * touched + 9;
            assert_eq!(parameters(sql), (1..=expected).collect(), "{case}");
            assert_eq!(sql.contains("LEFT JOIN LATERAL"), read_back.is_some(), "{case}");
        }
    }

    #[test]
    fn a_write_reads_back_with_the_parameters_of_a_read_by_id() {
        // The write binds the tenant as $1 and the profile's id as $2, as a read by id does.
        let tenant = TenantId(Uuid::new_v4());
        let id = Uuid::new_v4();
        for parts in Parts::every() {
            let read = load_statement(DbBackend::Postgres, tenant, &ProfileKey::Id(id), false, parts);
            assert_eq!(parameters(&read.sql), [1, 2].into(), "{parts:?}");
            assert_eq!(
                read.values.map(|values| values.0),
                Some(vec![tenant.0.into(), id.into()]),
                "{parts:?}"
            );
            assert!(
                postgres_write(Children::at(1), Some(parts)).contains(&read.sql),
                "{parts:?}"
            );
        }
    }

    #[tokio::test]
    async fn on_postgres_a_write_from_a_stale_version_reads_the_profile_back_and_one_that_applies_reads_nothing() {
        let Ok(admin_url) = std::env::var("TEST_POSTGRES_URL") else {
            println!("skipped: TEST_POSTGRES_URL is not set");
            return;
        };
        let admin = sea_orm::Database::connect(&admin_url).await.unwrap();
        let name = format!("pgw_unit_{}", Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!(r#"CREATE DATABASE "{name}""#))
            .await
            .unwrap();
        let (server, _) = admin_url.rsplit_once('/').unwrap();
        let db = crate::db::connect(&format!("{server}/{name}")).await.unwrap();
        crate::db::migrate(&db).await.unwrap();
        let store = Store::new(db.clone());
        let tenant = store.ensure_tenant("acme").await.unwrap();
        let created = Arc::new(
            store
                .create(tenant, &ChangeSet::default(), &Actor::default())
                .await
                .unwrap(),
        );
        let id = created.profile.id;
        let mut rename = ChangeSet::default();
        rename.push(crate::domain::Op::Set {
            field: Field::Name,
            value: Some(Scalar::Text("Ann".into())),
        });
        let update = Update {
            operation: "test",
            expected_version: None,
            dry_run: false,
            shows: Parts::ROW,
            person: None,
        };
        let write = |before| match plan(before, &rename, &update).unwrap() {
            Plan::Write(write) => write,
            Plan::Unchanged(_) => panic!("a rename changes the profile"),
        };
        let mut conn = store.postgres.as_ref().unwrap().lend().await.unwrap();
        let mut store_it = async |write: &Write| {
            write_postgres(
                &mut conn,
                tenant,
                write,
                "test",
                &Actor::default(),
                &rename,
                Some(Parts::ROW),
            )
            .await
            .unwrap()
        };

        // Behind the write's back: a tag, and the version it bumps.
        db.execute_unprepared(&format!(
            "INSERT INTO profile_tags (profile_id, key, value) VALUES ('{id}', 'since', 'x'); \
             UPDATE profiles SET version = version + 1 WHERE id = '{id}'"
        ))
        .await
        .unwrap();
        let Stored::Stale(Some(now)) = store_it(&write(Arc::clone(&created))).await else {
            panic!("a write from version 1 applied to version 2, or read nothing back");
        };
        let now = Arc::new(now.into_view(Parts::ROW).unwrap());
        assert_eq!((now.profile.id, now.profile.version), (id, 2));
        assert_eq!(now.profile.tags, [("since".to_owned(), Some("x".to_owned()))].into());
        assert!(matches!(store_it(&write(now)).await, Stored::Applied));
        let stored = load(&db, tenant, &ProfileKey::Id(id), false, Parts::ROW)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.profile.version, 3);
        assert_eq!(stored.profile.text(Field::Name), Some("Ann"));

        db.execute_unprepared(&format!("DELETE FROM profiles WHERE id = '{id}'"))
            .await
            .unwrap();
        assert!(matches!(store_it(&write(created)).await, Stored::Stale(None)));

        drop(conn);
        db.close().await.unwrap();
        admin
            .execute_unprepared(&format!(r#"DROP DATABASE "{name}" WITH (FORCE)"#))
            .await
            .unwrap();
    }

    #[test]
    fn sqlite_writes_go_as_one_text_with_their_parameters_in_order() {
        let id = Uuid::new_v4();
        let mut writes = Writes::new(DbBackend::Sqlite);
        writes.push(
            &profile_tag::Entity::delete_many()
                .filter(profile_tag::Column::ProfileId.eq(id))
                .filter(profile_tag::Column::Key.is_in(["a", "b"])),
        );
        writes.push(&profile_group::Entity::insert_many([profile_group::ActiveModel {
            profile_id: Set(id),
            name: Set("vip".to_owned()),
        }]));
        let statement = joined(writes.statements);
        assert_eq!(
            statement.sql,
            r#"DELETE FROM "profile_tags" WHERE "profile_tags"."profile_id" = ? AND "profile_tags"."key" IN (?, ?);
INSERT INTO "profile_groups" ("profile_id", "name") VALUES (?, ?)"#
        );
        assert_eq!(
            statement.values,
            Some(Values(vec![id.into(), "a".into(), "b".into(), id.into(), "vip".into()]))
        );
    }

    #[test]
    fn history_records_take_ids_in_the_order_they_are_written() {
        let tenant = TenantId(Uuid::new_v4());
        let mut profile = Profile::new(Uuid::new_v4(), 1, Utc::now());
        let actor = Actor::default();
        let mut writes = Writes::new(DbBackend::Sqlite);
        for _ in 0..100 {
            writes
                .record(tenant, &profile, "updateProfile.scrip", &[], &actor)
                .unwrap();
            profile.version += 1;
        }
        let ids: Vec<Uuid> = writes
            .statements
            .iter()
            .map(|statement| match statement.values.as_ref().map(|values| &values.0[0]) {
                Some(sea_orm::Value::Uuid(Some(id))) => *id,
                other => panic!("the first value is not the record's id: {other:?}"),
            })
            .collect();
        assert_eq!(ids.len(), 100);
        assert!(ids.is_sorted(), "{ids:?}");
    }

    /// A connection to a fresh SQLite file, and the file's folder, which must outlive it.
    async fn sqlite() -> (SqlitePool, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("write.db").display());
        let db = crate::db::connect(&url).await.unwrap();
        (db.get_sqlite_connection_pool().clone(), dir)
    }

    /// Whether a connection of `pool` takes the write lock at once (it does not wait for it).
    async fn write_lock_is_free(pool: &SqlitePool) -> bool {
        let mut conn = pool.acquire().await.unwrap();
        let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        sqlx::raw_sql("PRAGMA busy_timeout = 0")
            .execute(&mut *conn)
            .await
            .unwrap();
        let free = sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await.is_ok();
        if free {
            sqlx::raw_sql("COMMIT").execute(&mut *conn).await.unwrap();
        }
        let restore = format!("PRAGMA busy_timeout = {busy_timeout}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(restore))
            .execute(&mut *conn)
            .await
            .unwrap();
        free
    }

    /// Whether the write lock is free within a second (a connection closes in a task of the
    /// pool's).
    async fn write_lock_frees_up(pool: &SqlitePool) -> bool {
        for _ in 0..20 {
            if write_lock_is_free(pool).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_sqlite_write_dropped_while_open_closes_its_connection_which_releases_the_write_lock() {
        let (pool, _dir) = sqlite().await;
        let mut tx = SqliteWrite {
            conn: pool.acquire().await.unwrap(),
            open: true,
        };
        sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *tx.conn).await.unwrap();
        assert!(!write_lock_is_free(&pool).await, "the write holds the lock");
        drop(tx);
        assert!(write_lock_frees_up(&pool).await);
    }

    #[tokio::test]
    async fn a_rolled_back_sqlite_write_returns_its_connection_to_the_pool_outside_a_transaction() {
        let (pool, _dir) = sqlite().await;
        let mut tx = SqliteWrite {
            conn: pool.acquire().await.unwrap(),
            open: true,
        };
        sqlx::raw_sql("BEGIN IMMEDIATE; CREATE TABLE t (n INTEGER)")
            .execute(&mut *tx.conn)
            .await
            .unwrap();
        tx.roll_back().await;
        assert!(!tx.open);
        drop(tx);
        assert!(write_lock_is_free(&pool).await);
        let mut conn = pool.acquire().await.unwrap();
        let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name = 't'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(tables, 0);
    }
}
