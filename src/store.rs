//! The engine: loads a profile, applies a change set and saves the result, each request in
//! one transaction.
//!
//! # Concurrency
//!
//! Every write locks what it changes before it reads it, so two updates of one profile run one
//! after the other and neither loses the other's change:
//!
//! - PostgreSQL: the profile row is read with `SELECT … FOR UPDATE` (the tenant row for serial
//!   numbers and custom field definitions). A second writer waits for the first to commit and
//!   then reads the committed row. Row locks, rather than optimistic compare-and-swap, because
//!   a hot profile would otherwise make writers retry in a loop and fail under load.
//! - SQLite: writes begin with `BEGIN IMMEDIATE`, which takes the database's one write lock up
//!   front. A deferred transaction that reads and then writes fails at once with SQLITE_BUSY
//!   when another connection committed in between, whatever the busy timeout; an immediate
//!   one waits for the lock (up to the busy timeout) and then reads current data. WAL mode lets
//!   readers go on meanwhile.
//!
//! Reads run in a read-only snapshot (REPEATABLE READ on PostgreSQL, a deferred transaction
//! under WAL on SQLite), so a profile is never shown with the tags of another version.
//!
//! Every applied change appends its history record in the same transaction and announces the
//! new version on the change feed ([`crate::feed`]): by a `NOTIFY` inside the transaction on
//! PostgreSQL, after the commit on SQLite. A change that rolls back leaves neither.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    AccessMode, ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, IsolationLevel, ModelTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait, Value,
};
use serde_json::Map;
use uuid::Uuid;

use crate::domain::{
    ChangeSet, CustomFieldDefinition, CustomFieldType, Field, FieldChange, MemberType, NewCustomField, Profile,
    ProfileKey, ProfileStatus, Scalar,
};
use crate::entity::{
    custom_field_definition, custom_field_value, profile, profile_change, profile_group, profile_tag, tenant,
};
use crate::error::{Code, Error, Fault, Result, external_id_conflict};
use crate::feed::{self, Feed, Notice};

/// The tenant a request acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantId(pub Uuid);

/// A profile together with its tenant's custom field definitions, which give its custom
/// values their names and types.
#[derive(Debug, Clone)]
pub struct ProfileView {
    pub profile: Profile,
    pub custom_fields: Arc<[CustomFieldDefinition]>,
}

/// Who makes a change, as its history record names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub api_key_id: Option<Uuid>,
    pub request_id: Option<String>,
}

/// One applied change of a profile, as history keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    pub version: i32,
    pub operation: String,
    pub changes: Vec<FieldChange>,
    pub actor: Option<Uuid>,
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
}

/// The outcome of `updateProfile`.
#[derive(Debug, Clone)]
pub struct Updated {
    pub profile: ProfileView,
    pub changes: Vec<FieldChange>,
}

/// Which profiles `profiles` lists.
#[derive(Debug, Clone, Default)]
pub struct ProfileFilter {
    pub status: Option<ProfileStatus>,
    pub tag: Option<String>,
    pub group: Option<String>,
}

/// One page of profiles, ordered by serial number.
#[derive(Debug, Clone)]
pub struct Page {
    pub profiles: Vec<ProfileView>,
    pub has_next_page: bool,
    pub total_count: u64,
}

/// Handle on the database and this replica's change feed; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    feed: Feed,
}

impl Store {
    pub fn new(db: DatabaseConnection) -> Self {
        Store {
            db,
            feed: Feed::default(),
        }
    }

    /// This replica's change feed (call [`Feed::relay_from`] to hear other replicas).
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Tells local subscribers about a committed change. On PostgreSQL the transaction's
    /// NOTIFY already reaches every replica, this one included.
    fn announce(&self, notice: Notice) {
        if self.db.get_database_backend() != DbBackend::Postgres {
            self.feed.publish(notice);
        }
    }

    /// The change record of `profile_id` at `version`, if there is one.
    pub async fn change(&self, tenant: TenantId, profile_id: Uuid, version: i32) -> Result<Option<ChangeRecord>> {
        let (mut records, _) = self.history(tenant, profile_id, 1, version.checked_add(1)).await?;
        Ok(records.pop().filter(|record| record.version == version))
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The id of the tenant called `name`, created if it does not exist yet.
    pub async fn ensure_tenant(&self, name: &str) -> Result<TenantId> {
        let row = tenant::ActiveModel {
            id: Set(Uuid::new_v4()),
            name: Set(name.to_owned()),
            last_serial: Set(0),
            created_at: Set(Utc::now()),
        };
        tenant::Entity::insert(row)
            .on_conflict_do_nothing_on([tenant::Column::Name])
            .exec(&self.db)
            .await?;
        let found = tenant::Entity::find()
            .filter(tenant::Column::Name.eq(name))
            .one(&self.db)
            .await?;
        let tenant = found.ok_or_else(|| internal(format!("tenant {name:?} vanished right after its insert")))?;
        Ok(TenantId(tenant.id))
    }

    pub async fn find(&self, tenant: TenantId, key: &ProfileKey) -> Result<Option<ProfileView>> {
        let tx = self.begin_read().await?;
        let Some(row) = find_row(&tx, tenant, key, false).await? else {
            return Ok(None);
        };
        let custom_fields = definitions(&tx, tenant).await?;
        let profile = hydrate(&tx, vec![row], &custom_fields).await?.pop();
        tx.commit().await?;
        Ok(profile.map(|profile| ProfileView { profile, custom_fields }))
    }

    /// Up to `first` profiles after serial number `after`, and how many match in all.
    pub async fn list(&self, tenant: TenantId, first: u64, after: Option<i64>, filter: &ProfileFilter) -> Result<Page> {
        // No tag key or group holds U+0000 (PostgreSQL could not even compare it).
        if [&filter.tag, &filter.group]
            .into_iter()
            .flatten()
            .any(|name| name.contains('\0'))
        {
            return Ok(Page {
                profiles: Vec::new(),
                has_next_page: false,
                total_count: 0,
            });
        }
        let tx = self.begin_read().await?;
        let mut condition = Condition::all().add(profile::Column::TenantId.eq(tenant.0));
        if let Some(status) = filter.status {
            condition = condition.add(profile::Column::Status.eq(status.as_str()));
        }
        if let Some(tag) = &filter.tag {
            condition = condition.add(
                profile::Column::Id.in_subquery(
                    sea_orm::sea_query::Query::select()
                        .column(profile_tag::Column::ProfileId)
                        .from(profile_tag::Entity)
                        .and_where(profile_tag::Column::Key.eq(tag.as_str()))
                        .to_owned(),
                ),
            );
        }
        if let Some(group) = &filter.group {
            condition = condition.add(
                profile::Column::Id.in_subquery(
                    sea_orm::sea_query::Query::select()
                        .column(profile_group::Column::ProfileId)
                        .from(profile_group::Entity)
                        .and_where(profile_group::Column::Name.eq(group.as_str()))
                        .to_owned(),
                ),
            );
        }
        let total_count = profile::Entity::find().filter(condition.clone()).count(&tx).await?;
        if let Some(after) = after {
            condition = condition.add(profile::Column::SerialNumber.gt(after));
        }
        let mut rows = profile::Entity::find()
            .filter(condition)
            .order_by_asc(profile::Column::SerialNumber)
            .limit(first + 1)
            .all(&tx)
            .await?;
        let has_next_page = rows.len() as u64 > first;
        rows.truncate(usize::try_from(first).unwrap_or(usize::MAX));
        let custom_fields = definitions(&tx, tenant).await?;
        let profiles = hydrate(&tx, rows, &custom_fields).await?;
        tx.commit().await?;
        let profiles = profiles
            .into_iter()
            .map(|profile| ProfileView {
                profile,
                custom_fields: custom_fields.clone(),
            })
            .collect();
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
        let tx = self.begin_write().await?;
        let serial_number = next_serial_number(&tx, tenant).await?;
        let custom_fields = definitions(&tx, tenant).await?;
        let blank = Profile::new(Uuid::new_v4(), serial_number, Utc::now());
        let (profile, changes) = change.apply(&blank, &custom_fields)?;
        let row = profile::ActiveModel::from_profile(tenant, &profile)?;
        profile::Entity::insert(row)
            .exec_without_returning(&tx)
            .await
            .map_err(|err| on_external_id(err, change))?;
        save_children(&tx, &blank, &profile, &custom_fields).await?;
        let notice = record(&tx, tenant, &profile, "createProfile", &changes, actor).await?;
        tx.commit().await?;
        self.announce(notice);
        Ok(ProfileView { profile, custom_fields })
    }

    /// Applies `change` to the profile `key` names, all or nothing, as `update` says.
    pub async fn update(
        &self,
        tenant: TenantId,
        key: &ProfileKey,
        change: &ChangeSet,
        update: &Update<'_>,
        actor: &Actor,
    ) -> Result<Updated> {
        let Update {
            operation,
            expected_version,
            dry_run,
        } = *update;
        let tx = self.begin_write().await?;
        let row = find_row(&tx, tenant, key, true)
            .await?
            .ok_or_else(|| Fault::not_found("profile"))?;
        if row.status == ProfileStatus::Closed.as_str() {
            return Err(Fault::new(Code::ProfileClosed, "This profile is CLOSED and accepts no updates.").into());
        }
        if let Some(expected) = expected_version
            && expected != row.version
        {
            return Err(Fault::new(
                Code::VersionConflict,
                format!(
                    "Expected version {expected}, but the profile is at version {}; reload it and try again.",
                    row.version
                ),
            )
            .at("expectedVersion")
            .with("currentVersion", row.version)
            .into());
        }
        let custom_fields = definitions(&tx, tenant).await?;
        let before = hydrate(&tx, vec![row], &custom_fields)
            .await?
            .pop()
            .ok_or_else(|| internal("locked profile vanished"))?;
        let (mut after, changes) = change.apply(&before, &custom_fields)?;
        if !changes.is_empty() {
            after.version += 1;
            after.updated_at = Utc::now();
        }
        if dry_run || changes.is_empty() {
            tx.rollback().await?;
        } else {
            let row = profile::ActiveModel::from_profile(tenant, &after)?;
            profile::Entity::update_many()
                .set(row)
                .filter(profile::Column::Id.eq(after.id))
                .exec(&tx)
                .await
                .map_err(|err| on_external_id(err, change))?;
            save_children(&tx, &before, &after, &custom_fields).await?;
            let notice = record(&tx, tenant, &after, operation, &changes, actor).await?;
            tx.commit().await?;
            self.announce(notice);
        }
        Ok(Updated {
            profile: ProfileView {
                profile: after,
                custom_fields,
            },
            changes,
        })
    }

    pub async fn set_status(
        &self,
        tenant: TenantId,
        key: &ProfileKey,
        status: ProfileStatus,
        actor: &Actor,
    ) -> Result<ProfileView> {
        let tx = self.begin_write().await?;
        let row = find_row(&tx, tenant, key, true)
            .await?
            .ok_or_else(|| Fault::not_found("profile"))?;
        let custom_fields = definitions(&tx, tenant).await?;
        let mut profile = hydrate(&tx, vec![row], &custom_fields)
            .await?
            .pop()
            .ok_or_else(|| internal("locked profile vanished"))?;
        if profile.status == status {
            tx.rollback().await?;
            return Ok(ProfileView { profile, custom_fields });
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
        profile::Entity::update_many()
            .col_expr(profile::Column::Status, Expr::value(status.as_str()))
            .col_expr(profile::Column::Version, Expr::value(profile.version))
            .col_expr(profile::Column::UpdatedAt, Expr::value(profile.updated_at))
            .filter(profile::Column::Id.eq(profile.id))
            .exec(&tx)
            .await?;
        let notice = record(&tx, tenant, &profile, "setProfileStatus", &[change], actor).await?;
        tx.commit().await?;
        self.announce(notice);
        Ok(ProfileView { profile, custom_fields })
    }

    /// Deletes the profile with its tags, groups and custom values (by cascade), and erases its
    /// history, whose changes hold personal data, for a tombstone that holds none; returns its id.
    pub async fn delete(&self, tenant: TenantId, key: &ProfileKey, actor: &Actor) -> Result<Uuid> {
        let tx = self.begin_write().await?;
        let row = find_row(&tx, tenant, key, true)
            .await?
            .ok_or_else(|| Fault::not_found("profile"))?;
        profile::Entity::delete_by_id(row.id).exec(&tx).await?;
        profile_change::Entity::delete_many()
            .filter(profile_change::Column::ProfileId.eq(row.id))
            .exec(&tx)
            .await?;
        let tombstone = Profile {
            version: row.version + 1,
            ..Profile::new(row.id, row.serial_number, Utc::now())
        };
        let notice = record(&tx, tenant, &tombstone, "deleteProfile", &[], actor).await?;
        tx.commit().await?;
        self.announce(notice);
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
        let mut rows = query
            .order_by_desc(profile_change::Column::Version)
            .limit(first + 1)
            .all(&self.db)
            .await?;
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
                    request_id: row.request_id,
                    at: row.at,
                })
            })
            .collect::<Result<_>>()?;
        Ok((records, has_next))
    }

    /// Defines a custom field, or redefines the one of the same name.
    pub async fn define_custom_field(&self, tenant: TenantId, field: NewCustomField) -> Result<CustomFieldDefinition> {
        let tx = self.begin_write().await?;
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

    async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        self.db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await
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

/// Appends the history record of `profile`'s new version, in the writing transaction.
async fn record(
    tx: &DatabaseTransaction,
    tenant: TenantId,
    profile: &Profile,
    operation: &str,
    changes: &[FieldChange],
    actor: &Actor,
) -> Result<Notice> {
    profile_change::ActiveModel {
        id: Set(Uuid::new_v4()),
        tenant_id: Set(tenant.0),
        profile_id: Set(profile.id),
        version: Set(profile.version),
        operation: Set(operation.to_owned()),
        changes: Set(serde_json::to_value(changes).map_err(internal)?),
        api_key_id: Set(actor.api_key_id),
        request_id: Set(actor.request_id.clone()),
        at: Set(profile.updated_at),
    }
    .insert(tx)
    .await?;
    let notice = Notice {
        tenant: tenant.0,
        profile_id: profile.id,
        version: profile.version,
    };
    if tx.get_database_backend() == DbBackend::Postgres {
        // Delivered to every replica's listener when (and only if) the transaction commits.
        let payload = serde_json::to_string(&notice).map_err(internal)?;
        tx.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [feed::CHANNEL.into(), payload.into()],
        ))
        .await?;
    }
    Ok(notice)
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

/// Reads the tags, groups and custom values of `rows` in one query each.
async fn hydrate<C: ConnectionTrait>(
    conn: &C,
    rows: Vec<profile::Model>,
    custom_fields: &[CustomFieldDefinition],
) -> Result<Vec<Profile>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    let mut profiles: Vec<Profile> = rows.into_iter().map(profile_from_row).collect::<Result<_>>()?;
    let index: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for tag in profile_tag::Entity::find()
        .filter(profile_tag::Column::ProfileId.is_in(ids.clone()))
        .all(conn)
        .await?
    {
        if let Some(&i) = index.get(&tag.profile_id) {
            profiles[i].tags.insert(tag.key, tag.value);
        }
    }
    for group in profile_group::Entity::find()
        .filter(profile_group::Column::ProfileId.is_in(ids.clone()))
        .all(conn)
        .await?
    {
        if let Some(&i) = index.get(&group.profile_id) {
            profiles[i].groups.insert(group.name);
        }
    }
    if !custom_fields.is_empty() {
        let names: HashMap<Uuid, &str> = custom_fields
            .iter()
            .map(|field| (field.id, field.name.as_str()))
            .collect();
        for value in custom_field_value::Entity::find()
            .filter(custom_field_value::Column::ProfileId.is_in(ids))
            .all(conn)
            .await?
        {
            if let (Some(&i), Some(name)) = (index.get(&value.profile_id), names.get(&value.field_id)) {
                profiles[i].custom.insert((*name).to_owned(), value.value);
            }
        }
    }
    Ok(profiles)
}

/// Writes what differs between `before` and `after` in the child tables.
async fn save_children(
    tx: &DatabaseTransaction,
    before: &Profile,
    after: &Profile,
    custom_fields: &[CustomFieldDefinition],
) -> Result<()> {
    let id = after.id;

    let removed: Vec<&String> = before
        .tags
        .keys()
        .filter(|key| !after.tags.contains_key(*key))
        .collect();
    if !removed.is_empty() {
        profile_tag::Entity::delete_many()
            .filter(profile_tag::Column::ProfileId.eq(id))
            .filter(profile_tag::Column::Key.is_in(removed))
            .exec(tx)
            .await?;
    }
    let written: Vec<profile_tag::ActiveModel> = after
        .tags
        .iter()
        .filter(|(key, value)| before.tags.get(*key) != Some(*value))
        .map(|(key, value)| profile_tag::ActiveModel {
            profile_id: Set(id),
            key: Set(key.clone()),
            value: Set(value.clone()),
        })
        .collect();
    if !written.is_empty() {
        profile_tag::Entity::insert_many(written)
            .on_conflict(
                OnConflict::columns([profile_tag::Column::ProfileId, profile_tag::Column::Key])
                    .update_column(profile_tag::Column::Value)
                    .to_owned(),
            )
            .exec_without_returning(tx)
            .await?;
    }

    let left: Vec<&String> = before.groups.difference(&after.groups).collect();
    if !left.is_empty() {
        profile_group::Entity::delete_many()
            .filter(profile_group::Column::ProfileId.eq(id))
            .filter(profile_group::Column::Name.is_in(left))
            .exec(tx)
            .await?;
    }
    let joined: Vec<profile_group::ActiveModel> = after
        .groups
        .difference(&before.groups)
        .map(|name| profile_group::ActiveModel {
            profile_id: Set(id),
            name: Set(name.clone()),
        })
        .collect();
    if !joined.is_empty() {
        profile_group::Entity::insert_many(joined)
            .exec_without_returning(tx)
            .await?;
    }

    let field_id = |name: &str| {
        custom_fields
            .iter()
            .find(|field| field.name == name)
            .map(|field| field.id)
            .ok_or_else(|| internal(format!("custom field {name:?} has no definition")))
    };
    let cleared: Vec<Uuid> = before
        .custom
        .keys()
        .filter(|name| !after.custom.contains_key(*name))
        .map(|name| field_id(name))
        .collect::<Result<_>>()?;
    if !cleared.is_empty() {
        custom_field_value::Entity::delete_many()
            .filter(custom_field_value::Column::ProfileId.eq(id))
            .filter(custom_field_value::Column::FieldId.is_in(cleared))
            .exec(tx)
            .await?;
    }
    let written: Vec<custom_field_value::ActiveModel> = after
        .custom
        .iter()
        .filter(|(name, value)| before.custom.get(*name) != Some(*value))
        .map(|(name, value)| {
            Ok(custom_field_value::ActiveModel {
                profile_id: Set(id),
                field_id: Set(field_id(name)?),
                value: Set(value.clone()),
            })
        })
        .collect::<Result<_>>()?;
    if !written.is_empty() {
        custom_field_value::Entity::insert_many(written)
            .on_conflict(
                OnConflict::columns([
                    custom_field_value::Column::ProfileId,
                    custom_field_value::Column::FieldId,
                ])
                .update_column(custom_field_value::Column::Value)
                .to_owned(),
            )
            .exec_without_returning(tx)
            .await?;
    }
    Ok(())
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

fn profile_from_row(row: profile::Model) -> Result<Profile> {
    let mut fields = std::collections::BTreeMap::new();
    for field in Field::ALL {
        let scalar = match (field, row.get(column(field))) {
            (Field::MemberType, Value::String(Some(s))) => {
                Some(Scalar::MemberType(MemberType::parse(&s).ok_or_else(|| {
                    internal(format!("profile {} has member type {s:?}", row.id))
                })?))
            }
            (_, Value::String(Some(s))) => Some(Scalar::Text(s)),
            (_, Value::Bool(Some(b))) => Some(Scalar::Flag(b)),
            (_, Value::Double(Some(n))) => Some(Scalar::Number(n)),
            _ => None,
        };
        if let Some(scalar) = scalar {
            fields.insert(field, scalar);
        }
    }
    let status = ProfileStatus::parse(&row.status)
        .ok_or_else(|| internal(format!("profile {} has status {:?}", row.id, row.status)))?;
    let attributes = match row.attributes {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => Map::new(),
        other => return Err(internal(format!("profile {} has attributes {other}", row.id))),
    };
    Ok(Profile {
        id: row.id,
        serial_number: row.serial_number,
        status,
        fields,
        attributes,
        tags: Default::default(),
        groups: Default::default(),
        custom: Default::default(),
        version: row.version,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
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
}
