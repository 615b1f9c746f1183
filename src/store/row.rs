//! Decoding a profile read ([`Loaded`]) from the driver's row, by position.
//!
//! SeaORM's derived decoding looks each column up by name and, for each NULL, formats an
//! error message that it then throws away; a profile has 25 optional columns, most of them
//! NULL, and on a page of 50 profiles that was a tenth of the server's CPU. Here each column is
//! read by its place in the SELECT list, which [`super::with_owned`] builds as the entity's
//! columns in declaration order (NULL in place of those a read leaves out) followed by the
//! owned parts, straight into the domain's [`Profile`], through the same sqlx decoders SeaORM
//! uses.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, Row};
use sea_orm::{ColumnTrait, ColumnType, DbErr, FromQueryResult, IdenStatic, Iterable, QueryResult, RuntimeErr};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::{Field, MemberType, Profile, ProfileStatus, Scalar};
use crate::entity::profile;

/// A profile row with everything it owns, as one statement reads them (see
/// [`super::with_owned`]). The profile's tags, groups and custom values are still empty: they
/// come as the JSON arrays beside it.
#[derive(Debug)]
pub(super) struct Loaded {
    pub profile: Profile,
    /// `[[key, value], …]`
    pub owned_tags: Value,
    /// `[name, …]`, when read.
    pub owned_groups: Option<Value>,
    /// `[[custom field id, value], …]`, when read.
    pub owned_custom: Option<Value>,
    /// `[[id, name, type, options, max length], …]`: the tenant's custom fields, when read.
    pub definitions: Option<Value>,
}

/// The names of the columns after the profile row's, in the order `with_owned` adds them.
pub(super) const OWNED: [&str; 4] = ["owned_tags", "owned_groups", "owned_custom", "definitions"];

/// How a scalar field's column decodes.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Flag,
    Number,
    MemberType,
}

/// Each scalar field with its column's place in the row and how it decodes, from the entity.
static FIELDS: LazyLock<Vec<(Field, usize, Kind)>> = LazyLock::new(|| {
    Field::ALL
        .into_iter()
        .map(|field| {
            let column = super::column(field);
            let kind = match (field, column.def().get_column_type()) {
                (Field::MemberType, _) => Kind::MemberType,
                (_, ColumnType::Boolean) => Kind::Flag,
                (_, ColumnType::Double | ColumnType::Float) => Kind::Number,
                _ => Kind::Text,
            };
            (field, place(column), kind)
        })
        .collect()
});

/// A column's place in the row: `profile::Entity::find()` selects the columns in the order
/// `Column::iter()` gives, which is their declaration order.
fn place(column: profile::Column) -> usize {
    column as usize
}

/// Every column a profile read returns, in order.
fn names() -> impl Iterator<Item = &'static str> {
    profile::Column::iter().map(|column| column.as_str()).chain(OWNED)
}

impl FromQueryResult for Loaded {
    fn from_query_result(result: &QueryResult, prefix: &str) -> Result<Self, DbErr> {
        if !prefix.is_empty() {
            return Err(DbErr::Type(format!(
                "a profile read has no columns prefixed {prefix:?}"
            )));
        }
        let decoded = if let Some(row) = result.try_as_pg_row() {
            decode(row)
        } else if let Some(row) = result.try_as_sqlite_row() {
            decode(row)
        } else {
            return Err(DbErr::Type(
                "a profile read came from a driver that is not built in".into(),
            ));
        };
        decoded.map_err(|err| match err {
            Fault::Driver(err) => DbErr::Query(RuntimeErr::SqlxError(err.into())),
            Fault::Value(message) => DbErr::Type(message),
        })
    }
}

enum Fault {
    Driver(sqlx::Error),
    Value(String),
}

impl From<sqlx::Error> for Fault {
    fn from(err: sqlx::Error) -> Self {
        Fault::Driver(err)
    }
}

/// What a column of a profile read may hold, on either backend.
trait Column<'r, DB: sqlx::Database>: sqlx::Decode<'r, DB> + sqlx::Type<DB> {}
impl<'r, DB: sqlx::Database, T: sqlx::Decode<'r, DB> + sqlx::Type<DB>> Column<'r, DB> for T {}

fn decode<'r, R>(row: &'r R) -> Result<Loaded, Fault>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    Uuid: Column<'r, R::Database>,
    i64: Column<'r, R::Database>,
    i32: Column<'r, R::Database>,
    bool: Column<'r, R::Database>,
    f64: Column<'r, R::Database>,
    String: Column<'r, R::Database>,
    DateTime<Utc>: Column<'r, R::Database>,
    Value: Column<'r, R::Database>,
{
    use profile::Column as C;
    let width = profile::Column::iter().count();
    if row.len() != width + OWNED.len() {
        return Err(Fault::Value(format!(
            "a profile read returned {} columns, not {}",
            row.len(),
            width + OWNED.len()
        )));
    }
    debug_assert!(
        names().eq(row.columns().iter().map(sqlx::Column::name)),
        "a profile read's columns are not in the order decoding expects"
    );
    let id: Uuid = row.try_get(place(C::Id))?;
    let mut fields = std::collections::BTreeMap::new();
    for &(field, index, kind) in FIELDS.iter() {
        let scalar = match kind {
            Kind::Text => row.try_get::<Option<String>, _>(index)?.map(Scalar::Text),
            Kind::Flag => row.try_get::<Option<bool>, _>(index)?.map(Scalar::Flag),
            Kind::Number => row.try_get::<Option<f64>, _>(index)?.map(Scalar::Number),
            Kind::MemberType => match row.try_get::<Option<String>, _>(index)? {
                Some(text) => {
                    Some(Scalar::MemberType(MemberType::parse(&text).ok_or_else(|| {
                        Fault::Value(format!("profile {id} has member type {text:?}"))
                    })?))
                }
                None => None,
            },
        };
        if let Some(scalar) = scalar {
            fields.insert(field, scalar);
        }
    }
    let status: String = row.try_get(place(C::Status))?;
    let status =
        ProfileStatus::parse(&status).ok_or_else(|| Fault::Value(format!("profile {id} has status {status:?}")))?;
    // NULL when the read left the attributes out.
    let attributes = match row.try_get(place(C::Attributes))? {
        Some(Value::Object(map)) => map,
        None | Some(Value::Null) => Map::new(),
        Some(other) => return Err(Fault::Value(format!("profile {id} has attributes {other}"))),
    };
    Ok(Loaded {
        profile: Profile {
            id,
            serial_number: row.try_get(place(C::SerialNumber))?,
            status,
            fields,
            attributes,
            tags: Default::default(),
            groups: Default::default(),
            custom: Default::default(),
            version: row.try_get(place(C::Version))?,
            created_at: row.try_get(place(C::CreatedAt))?,
            updated_at: row.try_get(place(C::UpdatedAt))?,
        },
        owned_tags: row.try_get(width)?,
        owned_groups: row.try_get(width + 1)?,
        owned_custom: row.try_get(width + 2)?,
        definitions: row.try_get(width + 3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_columns_place_is_its_place_in_the_entitys_column_order() {
        for (index, column) in profile::Column::iter().enumerate() {
            assert_eq!(place(column), index, "{}", column.as_str());
        }
    }

    #[test]
    fn every_scalar_field_decodes_as_its_column_is_typed() {
        let kind = |wanted: Field| {
            FIELDS
                .iter()
                .find(|(field, ..)| *field == wanted)
                .map(|&(.., kind)| kind)
        };
        assert!(matches!(kind(Field::Name), Some(Kind::Text)));
        assert!(matches!(kind(Field::MemberType), Some(Kind::MemberType)));
        assert!(matches!(kind(Field::MarketingConsent), Some(Kind::Flag)));
        assert!(matches!(kind(Field::AcceptsMarketing), Some(Kind::Flag)));
        assert!(matches!(kind(Field::Latitude), Some(Kind::Number)));
        assert!(matches!(kind(Field::Longitude), Some(Kind::Number)));
        assert_eq!(FIELDS.len(), Field::ALL.len());
    }
}
