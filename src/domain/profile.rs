use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Lifecycle state of a profile; only `setProfileStatus` changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileStatus {
    Active,
    Suspended,
    Closed,
}

impl ProfileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileStatus::Active => "ACTIVE",
            ProfileStatus::Suspended => "SUSPENDED",
            ProfileStatus::Closed => "CLOSED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [ProfileStatus::Active, ProfileStatus::Suspended, ProfileStatus::Closed]
            .into_iter()
            .find(|status| status.as_str() == s)
    }

    /// ACTIVE and SUSPENDED switch either way, either may become CLOSED, CLOSED is final.
    /// Staying in the same state is allowed (and changes nothing).
    pub fn may_become(self, next: ProfileStatus) -> bool {
        self == next || self != ProfileStatus::Closed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberType {
    Individual,
    Team,
}

impl MemberType {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberType::Individual => "INDIVIDUAL",
            MemberType::Team => "TEAM",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [MemberType::Individual, MemberType::Team]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// The scalar canonical fields, in the order `changes` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    ExternalId,
    MemberType,
    Name,
    Email,
    Role,
    MarketingConsent,
    AcceptsMarketing,
    FirstName,
    LastName,
    Title,
    Organization,
    PhoneNumber,
    Address,
    Address2,
    City,
    StateRegion,
    ZipCode,
    Country,
    Latitude,
    Longitude,
    Timezone,
    Locale,
    KlaviyoId,
    Biography,
    Category,
}

impl Field {
    pub const ALL: [Field; 25] = [
        Field::ExternalId,
        Field::MemberType,
        Field::Name,
        Field::Email,
        Field::Role,
        Field::MarketingConsent,
        Field::AcceptsMarketing,
        Field::FirstName,
        Field::LastName,
        Field::Title,
        Field::Organization,
        Field::PhoneNumber,
        Field::Address,
        Field::Address2,
        Field::City,
        Field::StateRegion,
        Field::ZipCode,
        Field::Country,
        Field::Latitude,
        Field::Longitude,
        Field::Timezone,
        Field::Locale,
        Field::KlaviyoId,
        Field::Biography,
        Field::Category,
    ];

    /// The canonical (GraphQL) name, as used in `changes`.
    pub fn name(self) -> &'static str {
        match self {
            Field::ExternalId => "externalId",
            Field::MemberType => "memberType",
            Field::Name => "name",
            Field::Email => "email",
            Field::Role => "role",
            Field::MarketingConsent => "marketingConsent",
            Field::AcceptsMarketing => "acceptsMarketing",
            Field::FirstName => "firstName",
            Field::LastName => "lastName",
            Field::Title => "title",
            Field::Organization => "organization",
            Field::PhoneNumber => "phoneNumber",
            Field::Address => "address",
            Field::Address2 => "address2",
            Field::City => "city",
            Field::StateRegion => "stateRegion",
            Field::ZipCode => "zipCode",
            Field::Country => "country",
            Field::Latitude => "latitude",
            Field::Longitude => "longitude",
            Field::Timezone => "timezone",
            Field::Locale => "locale",
            Field::KlaviyoId => "klaviyoId",
            Field::Biography => "biography",
            Field::Category => "category",
        }
    }

    /// The field whose canonical name is `name`.
    pub fn named(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|field| field.name() == name)
    }

    /// Longest text this field holds, in characters.
    pub fn max_chars(self) -> usize {
        match self {
            Field::Biography => 4_000,
            _ => 255,
        }
    }
}

/// The event platform's standard names (profileValues) and the canonical field each names.
pub const STANDARD_NAMES: [(&str, Field); 14] = [
    ("First_Name", Field::FirstName),
    ("Family_Name", Field::LastName),
    ("Email", Field::Email),
    ("Company", Field::Organization),
    ("Title", Field::Title),
    ("Phone", Field::PhoneNumber),
    ("Address", Field::Address),
    ("Address_2", Field::Address2),
    ("City", Field::City),
    ("State", Field::StateRegion),
    ("Zip", Field::ZipCode),
    ("Country", Field::Country),
    ("Biography", Field::Biography),
    ("Category_Name", Field::Category),
];

/// A value of a scalar canonical field.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Text(String),
    Flag(bool),
    Number(f64),
    MemberType(MemberType),
}

impl Scalar {
    pub fn to_json(&self) -> Value {
        match self {
            Scalar::Text(s) => Value::String(s.clone()),
            Scalar::Flag(b) => Value::Bool(*b),
            Scalar::Number(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
            Scalar::MemberType(t) => Value::String(t.as_str().to_owned()),
        }
    }
}

/// How a request names a profile; always within the caller's tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProfileKey {
    Id(Uuid),
    ExternalId(String),
    SerialNumber(i64),
}

impl ProfileKey {
    /// Whether this key names `profile`.
    pub fn names(&self, profile: &Profile) -> bool {
        match self {
            ProfileKey::Id(id) => profile.id == *id,
            ProfileKey::ExternalId(external_id) => profile.external_id() == Some(external_id.as_str()),
            ProfileKey::SerialNumber(serial) => profile.serial_number == *serial,
        }
    }
}

/// One person's canonical profile, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub id: Uuid,
    pub serial_number: i64,
    pub status: ProfileStatus,
    /// Every scalar canonical field that is set; an absent key is a cleared field.
    pub fields: BTreeMap<Field, Scalar>,
    pub attributes: Map<String, Value>,
    /// Tags by key; a tag may have no value.
    pub tags: BTreeMap<String, Option<String>>,
    pub groups: BTreeSet<String>,
    /// Custom field values by field name.
    pub custom: BTreeMap<String, String>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Profile {
    /// A profile with nothing set yet, about to be created.
    pub fn new(id: Uuid, serial_number: i64, now: DateTime<Utc>) -> Self {
        Profile {
            id,
            serial_number,
            status: ProfileStatus::Active,
            fields: BTreeMap::new(),
            attributes: Map::new(),
            tags: BTreeMap::new(),
            groups: BTreeSet::new(),
            custom: BTreeMap::new(),
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    pub fn text(&self, field: Field) -> Option<&str> {
        match self.fields.get(&field) {
            Some(Scalar::Text(s)) => Some(s),
            _ => None,
        }
    }

    pub fn flag(&self, field: Field) -> Option<bool> {
        match self.fields.get(&field) {
            Some(Scalar::Flag(b)) => Some(*b),
            _ => None,
        }
    }

    pub fn number(&self, field: Field) -> Option<f64> {
        match self.fields.get(&field) {
            Some(Scalar::Number(n)) => Some(*n),
            _ => None,
        }
    }

    pub fn member_type(&self) -> Option<MemberType> {
        match self.fields.get(&Field::MemberType) {
            Some(Scalar::MemberType(t)) => Some(*t),
            _ => None,
        }
    }

    pub fn external_id(&self) -> Option<&str> {
        self.text(Field::ExternalId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_is_final_and_every_other_move_is_allowed() {
        use ProfileStatus::*;
        assert!(Active.may_become(Suspended));
        assert!(Suspended.may_become(Active));
        assert!(Active.may_become(Closed));
        assert!(Suspended.may_become(Closed));
        assert!(Closed.may_become(Closed));
        assert!(!Closed.may_become(Active));
        assert!(!Closed.may_become(Suspended));
    }

    #[test]
    fn a_key_names_the_profile_whose_id_external_id_or_serial_number_it_holds() {
        let mut profile = Profile::new(Uuid::new_v4(), 7, Utc::now());
        profile
            .fields
            .insert(Field::ExternalId, Scalar::Text("crm-1".to_owned()));
        assert!(ProfileKey::Id(profile.id).names(&profile));
        assert!(!ProfileKey::Id(Uuid::new_v4()).names(&profile));
        assert!(ProfileKey::ExternalId("crm-1".to_owned()).names(&profile));
        assert!(!ProfileKey::ExternalId("crm-2".to_owned()).names(&profile));
        assert!(ProfileKey::SerialNumber(7).names(&profile));
        assert!(!ProfileKey::SerialNumber(8).names(&profile));
        profile.fields.remove(&Field::ExternalId);
        assert!(!ProfileKey::ExternalId("crm-1".to_owned()).names(&profile));
    }

    #[test]
    fn every_field_is_listed_once_in_order() {
        let mut sorted = Field::ALL;
        sorted.sort();
        assert_eq!(sorted, Field::ALL);
        let names: BTreeSet<_> = Field::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names.len(), Field::ALL.len());
    }
}
