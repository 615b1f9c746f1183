//! Output types, enums and shared inputs, written for clients rather than mirroring rows.
//!
//! Every object here resolves its fields one after another (`serial`): they are in memory,
//! but for `Profile.history`, and async-graphql's concurrent resolution makes each field a
//! task of a `FuturesUnordered` that is ready at once: 5k instructions of a profile read with
//! three tags (callgrind, W1). Fields still resolve in the order the query selects them, and
//! the items of a list concurrently.

use std::sync::Arc;

use async_graphql::{
    Context, Enum, ErrorExtensions, ID, InputObject, Json, Lookahead, Object, OneofObject, Result, ResultExt,
    SelectionField, SimpleObject,
};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::cursor;
use crate::dialects::MemberType;
use crate::domain::{self, Field, ProfileKey, STANDARD_NAMES};
use crate::error::Error;
use crate::store::{ChangeRecord, Parts, ProfileView};

/// Lifecycle state of a profile. Only `setProfileStatus` changes it.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "domain::ProfileStatus")]
pub enum ProfileStatus {
    /// The default: the profile takes updates.
    Active,
    /// Paused; takes updates and may become ACTIVE again.
    Suspended,
    /// Final: refuses every update and every further status change.
    Closed,
}

/// The type of a custom field, which decides the values it accepts.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "domain::CustomFieldType")]
pub enum CustomFieldType {
    /// Free text, at most maxLength characters (1,000 unless set).
    Text,
    /// A calendar date written YYYY-MM-DD.
    Date,
    /// Exactly one of the field's options.
    Dropdown,
    /// A decimal number such as 42 or -1.5.
    Number,
    /// `true` or `false`.
    Boolean,
}

/// Exactly one identifier of a profile, scoped to the caller's tenant.
#[derive(OneofObject, Debug, Clone)]
pub enum ProfileRef {
    /// The profile's id, a UUID.
    Id(ID),
    /// Your own id for the profile.
    ExternalId(String),
    /// The per-tenant serial number ("1", "2", ...).
    SerialNumber(String),
}

impl ProfileRef {
    /// The key to look up, or `None` when the reference cannot name any profile (an id that
    /// is not a UUID, a serial number that is not a number, an externalId with a character no
    /// stored externalId has).
    pub fn key(&self) -> Option<ProfileKey> {
        match self {
            ProfileRef::Id(id) => uuid::Uuid::parse_str(id).ok().map(ProfileKey::Id),
            ProfileRef::ExternalId(id) if id.contains('\0') => None,
            ProfileRef::ExternalId(id) => Some(ProfileKey::ExternalId(id.clone())),
            ProfileRef::SerialNumber(serial) => serial.parse().ok().map(ProfileKey::SerialNumber),
        }
    }
}

/// Which profiles to list; every filter given must hold.
#[derive(InputObject, Debug, Clone, Default)]
pub struct ProfileFilter {
    /// Only profiles in this status.
    pub status: Option<ProfileStatus>,
    /// Only profiles with a tag of this key.
    pub tag: Option<String>,
    /// Only profiles in this group.
    pub group: Option<String>,
}

/// A custom field to define, or to redefine by its name.
#[derive(InputObject, Debug, Clone)]
pub struct CustomFieldInput {
    /// The field's name: a letter, then up to 63 letters, digits or underscores; not a
    /// standard name such as Email.
    pub name: String,
    /// The field's type. It cannot change while stored values use the field.
    #[graphql(name = "type")]
    pub field_type: CustomFieldType,
    /// The choices of a DROPDOWN, at least one, each once. Options that stored values use
    /// cannot be removed.
    pub options: Option<Vec<String>>,
    /// Longest TEXT value, 1 to 10,000 characters (1,000 when not set).
    pub max_length: Option<i32>,
}

/// A tag of a profile.
// Borrowed from the profile that shows it: a page of 50 profiles has 150 tags or more.
#[derive(SimpleObject, Debug, Clone)]
#[graphql(serial)]
pub struct Tag<'a> {
    /// The tag key, unique on the profile.
    pub key: &'a str,
    /// The tag value; null for a tag without one (as the loyalty dialect writes them).
    pub value: Option<&'a str>,
}

/// One custom field of the tenant with this profile's value.
#[derive(SimpleObject, Debug, Clone)]
#[graphql(serial)]
pub struct CustomFieldValue {
    /// The custom field's name.
    pub name: String,
    /// The custom field's type.
    #[graphql(name = "type")]
    pub field_type: CustomFieldType,
    /// This profile's value, or null when it has none.
    pub value: Option<String>,
}

/// A custom field the tenant defined.
#[derive(SimpleObject, Debug, Clone)]
#[graphql(serial)]
pub struct CustomFieldDefinition {
    /// The field's name, as used in profileValues updates.
    pub name: String,
    /// The field's type.
    #[graphql(name = "type")]
    pub field_type: CustomFieldType,
    /// The choices of a DROPDOWN; empty for other types.
    pub options: Vec<String>,
    /// Longest TEXT value; null means the default of 1,000.
    pub max_length: Option<i32>,
}

impl From<domain::CustomFieldDefinition> for CustomFieldDefinition {
    fn from(field: domain::CustomFieldDefinition) -> Self {
        CustomFieldDefinition {
            name: field.name,
            field_type: field.field_type.into(),
            options: field.options,
            max_length: field.max_length,
        }
    }
}

/// One canonical field an update changed.
#[derive(SimpleObject, Debug, Clone)]
#[graphql(serial)]
pub struct FieldChange {
    /// The canonical name: `firstName`, `attributes.<key>`, `tags.<key>`, `groups` or
    /// `customFields.<name>`.
    pub field: String,
    /// The value before; null when absent. A tag is `{"value": ...}`; groups are the sorted list.
    pub before: Option<Json<Value>>,
    /// The value after, in the same form.
    pub after: Option<Json<Value>>,
}

impl From<domain::FieldChange> for FieldChange {
    fn from(change: domain::FieldChange) -> Self {
        let json = |value: Value| (!value.is_null()).then_some(Json(value));
        FieldChange {
            field: change.field,
            before: json(change.before),
            after: json(change.after),
        }
    }
}

/// What `updateProfile` did, or would do with `dryRun`.
#[derive(SimpleObject)]
#[graphql(serial)]
pub struct UpdateProfilePayload {
    /// The profile after the update (with `dryRun`, as it would be; nothing is stored).
    pub profile: Profile,
    /// Every canonical field that changed; empty when the update changed nothing.
    pub changes: Vec<FieldChange>,
    /// Whether this was a dry run that stored nothing.
    pub dry_run: bool,
}

/// The profile `deleteProfile` removed.
#[derive(SimpleObject)]
#[graphql(serial)]
pub struct DeletedProfile {
    /// The id the profile had.
    pub id: ID,
}

/// Where a page of a list stands.
#[derive(SimpleObject)]
#[graphql(serial)]
pub struct PageInfo {
    /// Whether more items follow this page.
    pub has_next_page: bool,
    /// The cursor of the last item of this page; pass it as `after` for the next page.
    pub end_cursor: Option<String>,
}

/// A profile of a page with its cursor, made as a client selects it.
pub struct ProfileEdge<'a>(&'a Profile);

/// A profile with its cursor.
#[Object(serial)]
impl ProfileEdge<'_> {
    /// Pass as `after` to list the profiles that follow this one.
    async fn cursor(&self) -> String {
        self.0.cursor()
    }

    /// The profile.
    async fn node(&self) -> &Profile {
        self.0
    }
}

/// One page of profiles. Its edges, and the cursors in them, are made only when a client
/// selects them: most pages are read by their nodes.
pub struct ProfileConnection {
    /// The profiles of this page.
    pub nodes: Vec<Profile>,
    /// Whether another page follows.
    pub has_next_page: bool,
    /// How many profiles match the filter over all pages, when the client asked.
    pub total_count: Option<i64>,
}

/// One page of profiles, oldest (lowest serial number) first.
#[Object(serial)]
impl ProfileConnection {
    /// The profiles of this page with their cursors.
    async fn edges(&self) -> Vec<ProfileEdge<'_>> {
        self.nodes.iter().map(ProfileEdge).collect()
    }

    /// The profiles of this page.
    async fn nodes(&self) -> &[Profile] {
        &self.nodes
    }

    /// Whether another page follows, and where it starts.
    async fn page_info(&self) -> PageInfo {
        PageInfo {
            has_next_page: self.has_next_page,
            end_cursor: self.nodes.last().map(Profile::cursor),
        }
    }

    /// How many profiles match the filter, over all pages.
    async fn total_count(&self) -> Result<i64> {
        // The resolver reads the count only when this field is selected.
        self.total_count
            .ok_or_else(|| Error::Internal("a page was read without its count".into()).extend())
    }
}

/// A profile as the API returns it (see the `#[Object]` impl for its description). Shared,
/// as an update's result is with what the store keeps of the profile it wrote.
#[derive(Clone)]
pub struct Profile(pub Arc<ProfileView>);

impl From<ProfileView> for Profile {
    fn from(view: ProfileView) -> Self {
        Profile(Arc::new(view))
    }
}

impl Profile {
    /// The kind of cursor of a page of profiles, which are paged by serial number.
    pub const CURSOR_KIND: &str = "profile";

    /// This profile's cursor in a page of profiles.
    pub fn cursor(&self) -> String {
        cursor::encode(Self::CURSOR_KIND, self.0.profile.serial_number)
    }

    /// What of a profile to read for `selection`, the look-ahead of a field whose type is
    /// `Profile`: only the fields that show a part need it read (fragments count too).
    pub fn parts(selection: Lookahead<'_>) -> Parts {
        // One walk over the fields shown, rather than a look-ahead per name: a look-ahead walks
        // the whole selection, and a profile has 25 standard fields.
        let mut parts = Parts::NONE;
        for field in selection
            .selection_fields()
            .iter()
            .flat_map(SelectionField::selection_set)
        {
            match field.name() {
                "values" => {
                    parts.fields = true;
                    parts.custom = true;
                }
                "customFields" => parts.custom = true,
                "attributes" => parts.attributes = true,
                "groups" => parts.groups = true,
                name => parts.fields |= Field::named(name).is_some(),
            }
        }
        parts
    }

    /// The profile's standard fields, which [`Profile::parts`] reads when any is shown.
    fn fields(&self) -> Result<&crate::domain::Profile> {
        self.require(self.0.parts.fields, "standard fields")?;
        Ok(&self.0.profile)
    }

    fn text(&self, field: Field) -> Result<Option<&str>> {
        Ok(self.fields()?.text(field))
    }

    /// Fails when the profile was read without `part`, which [`Profile::parts`] should have
    /// asked for: a field must never show a part it did not read as empty.
    fn require(&self, read: bool, part: &str) -> Result<()> {
        match read {
            true => Ok(()),
            false => Err(Error::Internal(format!("a profile was read without its {part}").into()).extend()),
        }
    }
}

/// Most history records one page may hold.
const MAX_HISTORY_PAGE: i32 = 100;
/// History is paged by version, newest first.
const HISTORY_CURSOR: &str = "change";

/// One applied change of a profile.
#[derive(SimpleObject, Debug, Clone)]
#[graphql(serial)]
pub struct ProfileChangeRecord {
    /// The version the change produced.
    pub version: i32,
    /// What made the change: `createProfile`, `updateProfile.scrip` (or another dialect),
    /// `setProfileStatus` or `deleteProfile`.
    pub operation: String,
    /// Every canonical field the change set, with its value before and after.
    pub changes: Vec<FieldChange>,
    /// The id of the API key that made the change; null when a person made it with a token.
    pub actor: Option<ID>,
    /// The issuer (`iss`) of the end-user token that made the change; null when a key made it.
    pub actor_issuer: Option<String>,
    /// The subject (`sub`) of the end-user token that made the change, which is the profile's
    /// externalId; null when a key made it.
    pub actor_subject: Option<String>,
    /// The id of the request that made the change, as its response and log name it.
    pub request_id: Option<String>,
    /// When the change was made (UTC).
    pub at: Timestamp,
}

impl From<ChangeRecord> for ProfileChangeRecord {
    fn from(record: ChangeRecord) -> Self {
        ProfileChangeRecord {
            version: record.version,
            operation: record.operation,
            changes: record.changes.into_iter().map(Into::into).collect(),
            actor: record.actor.map(|id| ID(id.to_string())),
            actor_issuer: record.person.as_ref().map(|(issuer, _)| issuer.clone()),
            actor_subject: record.person.map(|(_, subject)| subject),
            request_id: record.request_id,
            at: Timestamp(record.at),
        }
    }
}

/// A change record with its cursor.
#[derive(SimpleObject)]
#[graphql(serial)]
pub struct ProfileChangeRecordEdge {
    /// Pass as `after` to list the older records.
    pub cursor: String,
    /// The change record.
    pub node: ProfileChangeRecord,
}

/// One page of a profile's history, newest first.
#[derive(SimpleObject)]
#[graphql(serial)]
pub struct ProfileHistoryConnection {
    /// The records of this page with their cursors.
    pub edges: Vec<ProfileChangeRecordEdge>,
    /// The records of this page.
    pub nodes: Vec<ProfileChangeRecord>,
    /// Whether older records follow, and where they start.
    pub page_info: PageInfo,
}

/// One person's (or team's) canonical profile, whichever vendor dialect wrote it.
#[Object(serial)]
impl Profile {
    /// The profile's id, a UUID assigned on create.
    async fn id(&self) -> ID {
        ID(self.0.profile.id.to_string())
    }

    /// Per-tenant counter assigned on create ("1", "2", ...); never reused, never changed.
    async fn serial_number(&self) -> String {
        self.0.profile.serial_number.to_string()
    }

    /// Your own id for this profile, unique within the tenant.
    async fn external_id(&self) -> Result<Option<&str>> {
        self.text(Field::ExternalId)
    }

    /// Lifecycle state; only `setProfileStatus` changes it.
    async fn status(&self) -> ProfileStatus {
        self.0.profile.status.into()
    }

    /// Whether the profile stands for a person or a team.
    async fn member_type(&self) -> Result<Option<MemberType>> {
        Ok(self.fields()?.member_type().map(Into::into))
    }

    /// Display name.
    async fn name(&self) -> Result<Option<&str>> {
        self.text(Field::Name)
    }

    /// E-mail address.
    async fn email(&self) -> Result<Option<&str>> {
        self.text(Field::Email)
    }

    /// Role, as the shop dialect sets it.
    async fn role(&self) -> Result<Option<&str>> {
        self.text(Field::Role)
    }

    /// Whether the person agreed to marketing.
    async fn marketing_consent(&self) -> Result<Option<bool>> {
        Ok(self.fields()?.flag(Field::MarketingConsent))
    }

    /// Whether the person accepts marketing e-mail.
    async fn accepts_marketing(&self) -> Result<Option<bool>> {
        Ok(self.fields()?.flag(Field::AcceptsMarketing))
    }

    /// Given name.
    async fn first_name(&self) -> Result<Option<&str>> {
        self.text(Field::FirstName)
    }

    /// Family name.
    async fn last_name(&self) -> Result<Option<&str>> {
        self.text(Field::LastName)
    }

    /// Job title.
    async fn title(&self) -> Result<Option<&str>> {
        self.text(Field::Title)
    }

    /// Company or organisation.
    async fn organization(&self) -> Result<Option<&str>> {
        self.text(Field::Organization)
    }

    /// Phone number, as written.
    async fn phone_number(&self) -> Result<Option<&str>> {
        self.text(Field::PhoneNumber)
    }

    /// First line of the postal address.
    async fn address(&self) -> Result<Option<&str>> {
        self.text(Field::Address)
    }

    /// Second line of the postal address.
    async fn address2(&self) -> Result<Option<&str>> {
        self.text(Field::Address2)
    }

    /// City.
    async fn city(&self) -> Result<Option<&str>> {
        self.text(Field::City)
    }

    /// State or region.
    async fn state_region(&self) -> Result<Option<&str>> {
        self.text(Field::StateRegion)
    }

    /// Postal code.
    async fn zip_code(&self) -> Result<Option<&str>> {
        self.text(Field::ZipCode)
    }

    /// Country.
    async fn country(&self) -> Result<Option<&str>> {
        self.text(Field::Country)
    }

    /// Latitude in degrees, -90 to 90.
    async fn latitude(&self) -> Result<Option<f64>> {
        Ok(self.fields()?.number(Field::Latitude))
    }

    /// Longitude in degrees, -180 to 180.
    async fn longitude(&self) -> Result<Option<f64>> {
        Ok(self.fields()?.number(Field::Longitude))
    }

    /// Time zone, such as "Europe/London".
    async fn timezone(&self) -> Result<Option<&str>> {
        self.text(Field::Timezone)
    }

    /// Preferred locale, such as "en-GB".
    async fn locale(&self) -> Result<Option<&str>> {
        self.text(Field::Locale)
    }

    /// The person's id at Klaviyo.
    async fn klaviyo_id(&self) -> Result<Option<&str>> {
        self.text(Field::KlaviyoId)
    }

    /// Biography, up to 4,000 characters.
    async fn biography(&self) -> Result<Option<&str>> {
        self.text(Field::Biography)
    }

    /// Category, such as "VIP".
    async fn category(&self) -> Result<Option<&str>> {
        self.text(Field::Category)
    }

    /// Key/value metadata, a JSON object.
    async fn attributes(&self) -> Result<Json<&Map<String, Value>>> {
        self.require(self.0.parts.attributes, "attributes")?;
        Ok(Json(&self.0.profile.attributes))
    }

    /// Tags, sorted by key.
    async fn tags(&self) -> Vec<Tag<'_>> {
        self.0
            .profile
            .tags
            .iter()
            .map(|(key, value)| Tag {
                key,
                value: value.as_deref(),
            })
            .collect()
    }

    /// Groups, sorted.
    async fn groups(&self) -> Result<Vec<&str>> {
        self.require(self.0.parts.groups, "groups")?;
        Ok(self.0.profile.groups.iter().map(String::as_str).collect())
    }

    /// Every custom field of the tenant, with this profile's value or null.
    async fn custom_fields(&self) -> Result<Vec<CustomFieldValue>> {
        self.require(self.0.parts.custom, "custom values")?;
        Ok(self
            .0
            .custom_fields
            .iter()
            .map(|field| CustomFieldValue {
                name: field.name.clone(),
                field_type: field.field_type.into(),
                value: self.0.profile.custom.get(&field.name).cloned(),
            })
            .collect())
    }

    /// Flat view: standard field names (First_Name, Email, ...) and custom field names to their values.
    async fn values(&self) -> Result<Json<Map<String, Value>>> {
        self.require(self.0.parts.custom, "custom values")?;
        let profile = self.fields()?;
        let standard = STANDARD_NAMES.iter().filter_map(|(name, field)| {
            profile
                .text(*field)
                .map(|value| ((*name).to_owned(), Value::from(value)))
        });
        let custom = profile
            .custom
            .iter()
            .map(|(name, value)| (name.clone(), Value::from(value.as_str())));
        Ok(Json(standard.chain(custom).collect()))
    }

    /// Every applied change of this profile, newest first, `first` at a time (at most 100)
    /// after the cursor `after`.
    async fn history(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20, desc = "How many records to return, 0 to 100.")] first: i32,
        #[graphql(desc = "The `endCursor` of the previous page; omit it for the newest records.")] after: Option<
            String,
        >,
    ) -> Result<ProfileHistoryConnection> {
        let (store, tenant) = super::scope(ctx)?;
        super::budget::check(ctx)?;
        let page_size = cursor::page_size(first, MAX_HISTORY_PAGE).extend()?;
        let before = after
            .as_deref()
            .map(|after| cursor::decode(HISTORY_CURSOR, after, "after").map(|v| i32::try_from(v).unwrap_or(i32::MAX)))
            .transpose()
            .extend()?;
        // Boxed: every field of a profile is resolved in a future as large as its largest
        // field's, which this one would be.
        let (records, has_next_page) = Box::pin(store.history(tenant, self.0.profile.id, page_size, before))
            .await
            .extend()?;
        for record in &records {
            super::budget::charge(ctx, || super::budget::changes_bytes(&record.changes))?;
        }
        let edges: Vec<ProfileChangeRecordEdge> = records
            .into_iter()
            .map(|record| ProfileChangeRecordEdge {
                cursor: cursor::encode(HISTORY_CURSOR, i64::from(record.version)),
                node: record.into(),
            })
            .collect();
        Ok(ProfileHistoryConnection {
            page_info: PageInfo {
                has_next_page,
                end_cursor: edges.last().map(|edge| edge.cursor.clone()),
            },
            nodes: edges.iter().map(|edge| edge.node.clone()).collect(),
            edges,
        })
    }

    /// Starts at 1 and grows by exactly one with every mutation that changes the profile.
    async fn version(&self) -> i32 {
        self.0.profile.version
    }

    /// When the profile was created (UTC).
    async fn created_at(&self) -> Timestamp {
        Timestamp(self.0.profile.created_at)
    }

    /// When the profile last changed (UTC).
    async fn updated_at(&self) -> Timestamp {
        Timestamp(self.0.profile.updated_at)
    }
}

/// A moment, as the schema's `DateTime` scalar writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub DateTime<Utc>);

/// A moment in time in UTC, written in RFC 3339, such as "2026-12-07T21:06:55.123456+00:00".
#[async_graphql::Scalar(
    name = "DateTime",
    specified_by_url = "https://datatracker.ietf.org/doc/html/rfc3339"
)]
impl async_graphql::ScalarType for Timestamp {
    fn parse(value: async_graphql::Value) -> async_graphql::InputValueResult<Self> {
        match &value {
            async_graphql::Value::String(text) => Ok(Timestamp(text.parse::<DateTime<Utc>>()?)),
            _ => Err(async_graphql::InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> async_graphql::Value {
        async_graphql::Value::String(self.0.to_rfc3339())
    }
}
