//! Decoding a profile read ([`Loaded`]) from the driver's row, by position.
//!
//! SeaORM's derived decoding looks each column up by name and, for each NULL, formats an
//! error message that it then throws away; a profile has 25 optional columns, most of them
//! NULL, and on a page of 50 profiles that was a tenth of the server's CPU. Here each column is
//! read by its place in the SELECT list, which [`super::with_owned`] builds as the entity's
//! columns in declaration order (without the standard fields' when a read leaves them out:
//! [`Shape`]) followed by the owned parts, straight into the domain's [`Profile`]: through the
//! same sqlx decoders SeaORM uses, or rusqlite's for the SQLite reads of [`super::direct`]
//! ([`Cells`]).

use std::sync::LazyLock;

use rusqlite::types::{FromSqlError, FromSqlResult, ValueRef};
use sea_orm::sqlx::error::BoxDynError;
use sea_orm::sqlx::postgres::{PgRow, PgTypeInfo, PgValueRef};
use sea_orm::sqlx::sqlite::{SqliteRow, SqliteTypeInfo, SqliteValueRef};
use sea_orm::sqlx::types::Json;
use sea_orm::sqlx::{self, Postgres, Row, Sqlite};
use sea_orm::{ColumnTrait, ColumnType, DbErr, FromQueryResult, IdenStatic, Iterable, QueryResult, RuntimeErr};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::{Field, MemberType, Profile, ProfileStatus, Scalar};
use crate::entity::profile;

/// A profile row with everything it owns, as one statement reads them (see
/// [`super::with_owned`]). The profile's tags, groups and custom values are still empty: they
/// come as the JSON arrays beside it, decoded straight into their pairs ([`JsonCell`]).
#[derive(Debug)]
pub(super) struct Loaded {
    pub profile: Profile,
    /// `[[key, value], …]`
    pub owned_tags: JsonCell<Vec<(String, Option<String>)>>,
    /// `[name, …]`, when read.
    pub owned_groups: Option<JsonCell<Vec<String>>>,
    /// `[[custom field id, value], …]`, when read.
    pub owned_custom: Option<JsonCell<Vec<(String, String)>>>,
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

/// A column's place in a row with every column: `profile::Entity::find()` selects the
/// columns in the order `Column::iter()` gives, which is their declaration order.
fn place(column: profile::Column) -> usize {
    column as usize
}

/// Which columns of the profile row a read returns, and where: every column, or every column
/// but the standard fields', in declaration order either way. [`decode`] tells the two apart
/// by the row's width.
#[derive(Debug)]
struct Shape {
    /// Whether the row holds the standard fields.
    fields: bool,
    /// Each column's place (by [`place`]), `None` for a column the shape leaves out.
    places: Vec<Option<usize>>,
    /// How many of the profile row's columns it holds: the owned parts follow them.
    width: usize,
}

/// The shapes a profile read has.
static SHAPES: LazyLock<[Shape; 2]> = LazyLock::new(|| [Shape::new(true), Shape::new(false)]);

impl Shape {
    fn new(fields: bool) -> Self {
        let mut width = 0;
        let places = profile::Column::iter()
            .map(|column| {
                super::selected(fields, column).then(|| {
                    width += 1;
                    width - 1
                })
            })
            .collect();
        Self { fields, places, width }
    }

    /// Where `column` is. A column the shape leaves out has no place, and reading one is the
    /// driver's error of a column out of range.
    fn at(&self, column: profile::Column) -> usize {
        self.places.get(place(column)).copied().flatten().unwrap_or(usize::MAX)
    }

    /// Every column a read of this shape returns, in order: those with a place.
    fn names(&self) -> impl Iterator<Item = &'static str> {
        profile::Column::iter()
            .zip(&self.places)
            .filter_map(|(column, place)| place.map(|_| column.as_str()))
            .chain(OWNED)
    }
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
            // Never: only the rows of `super::direct` are rusqlite's, and they are not
            // SeaORM's; DbErr has no place for a rusqlite error but its message.
            Fault::Reader(err) => DbErr::Query(RuntimeErr::Internal(err.to_string())),
            Fault::Value(message) => DbErr::Type(message),
        })
    }
}

/// Why a profile read did not decode.
#[derive(Debug, thiserror::Error)]
pub(super) enum Fault {
    #[error(transparent)]
    Driver(#[from] sqlx::Error),
    #[error(transparent)]
    Reader(#[from] rusqlite::Error),
    #[error("{0}")]
    Value(String),
}

impl From<Fault> for crate::error::Error {
    fn from(fault: Fault) -> Self {
        match fault {
            // As SeaORM reports it, so that a lost database is UNAVAILABLE.
            Fault::Driver(err) => DbErr::Query(RuntimeErr::SqlxError(err.into())).into(),
            fault => crate::error::Error::Internal(Box::new(fault)),
        }
    }
}

/// What a cell of a profile read may hold, decoded alike by every driver that reads one.
pub(super) trait Cell:
    for<'r> sqlx::Decode<'r, Postgres>
    + sqlx::Type<Postgres>
    + for<'r> sqlx::Decode<'r, Sqlite>
    + sqlx::Type<Sqlite>
    + rusqlite::types::FromSql
{
}
impl<T> Cell for T where
    T: for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
        + for<'r> sqlx::Decode<'r, Sqlite>
        + sqlx::Type<Sqlite>
        + rusqlite::types::FromSql
{
}

/// A JSON cell decoded by serde straight into `T`, as sqlx's `Json<T>` decodes one, by every
/// driver that reads a profile. Decoding the owned parts' arrays into a `serde_json::Value`
/// first made a value of every pair in them only to take it apart: 2.4% of the instructions of
/// a page of 50 profiles with three tags each (callgrind, W4).
#[derive(Debug)]
pub(super) struct JsonCell<T>(pub T);

/// [`JsonCell`] for each of sqlx's databases, as its `Json<T>`.
macro_rules! sqlx_json_cell {
    ($($db:ty: $info:ty, $value:ty);+) => {$(
        impl<T> sqlx::Type<$db> for JsonCell<T> {
            fn type_info() -> $info {
                <Json<T> as sqlx::Type<$db>>::type_info()
            }
            fn compatible(ty: &$info) -> bool {
                <Json<T> as sqlx::Type<$db>>::compatible(ty)
            }
        }

        impl<'r, T: DeserializeOwned + 'r> sqlx::Decode<'r, $db> for JsonCell<T> {
            fn decode(value: $value) -> Result<Self, BoxDynError> {
                <Json<T> as sqlx::Decode<'r, $db>>::decode(value).map(|Json(inner)| JsonCell(inner))
            }
        }
    )+};
}

sqlx_json_cell!(Postgres: PgTypeInfo, PgValueRef<'r>; Sqlite: SqliteTypeInfo, SqliteValueRef<'r>);

impl<T: DeserializeOwned> rusqlite::types::FromSql for JsonCell<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value {
            // As rusqlite decodes a `serde_json::Value`.
            ValueRef::Text(json) | ValueRef::Blob(json) => {
                serde_json::from_slice(json).map(JsonCell).map_err(FromSqlError::other)
            }
            _ => Err(FromSqlError::InvalidType),
        }
    }
}

/// A row of a profile read, as the driver that read it holds it: its cells by place.
pub(super) trait Cells {
    fn width(&self) -> usize;
    fn names(&self) -> Vec<&str>;
    fn cell<T: Cell>(&self, index: usize) -> Result<T, Fault>;
}

/// [`Cells`] of sqlx's rows, the same for each database: a blanket impl over `sqlx::Row` would
/// need [`Cell`] to name each database's decoder generically, and would overlap rusqlite's.
macro_rules! sqlx_cells {
    ($($row:ty),+) => {$(
        impl Cells for $row {
            fn width(&self) -> usize {
                self.len()
            }
            fn names(&self) -> Vec<&str> {
                self.columns().iter().map(sqlx::Column::name).collect()
            }
            fn cell<T: Cell>(&self, index: usize) -> Result<T, Fault> {
                Ok(self.try_get(index)?)
            }
        }
    )+};
}

sqlx_cells!(PgRow, SqliteRow);

impl Cells for rusqlite::Row<'_> {
    fn width(&self) -> usize {
        self.as_ref().column_count()
    }
    fn names(&self) -> Vec<&str> {
        self.as_ref().column_names()
    }
    fn cell<T: Cell>(&self, index: usize) -> Result<T, Fault> {
        Ok(self.get(index)?)
    }
}

/// [`decode`] of a profile read that comes after the first `skip` cells of `row`.
pub(super) fn decode_after(row: &PgRow, skip: usize) -> Result<Loaded, Fault> {
    decode(&After { row, skip })
}

/// The cells of `row` after its first `skip`.
struct After<'r, R> {
    row: &'r R,
    skip: usize,
}

impl<R: Cells> Cells for After<'_, R> {
    fn width(&self) -> usize {
        self.row.width().saturating_sub(self.skip)
    }
    fn names(&self) -> Vec<&str> {
        self.row.names().into_iter().skip(self.skip).collect()
    }
    fn cell<T: Cell>(&self, index: usize) -> Result<T, Fault> {
        self.row.cell(index.saturating_add(self.skip))
    }
}

/// The profile read `row` holds.
pub(super) fn decode(row: &impl Cells) -> Result<Loaded, Fault> {
    use profile::Column as C;
    let Some(shape) = SHAPES.iter().find(|shape| shape.width + OWNED.len() == row.width()) else {
        let [every, some] = SHAPES.each_ref().map(|shape| shape.width + OWNED.len());
        return Err(Fault::Value(format!(
            "a profile read returned {} columns, not {every} or {some}",
            row.width()
        )));
    };
    debug_assert!(
        shape.names().eq(row.names()),
        "a profile read's columns are not in the order decoding expects"
    );
    let id: Uuid = row.cell(shape.at(C::Id))?;
    let mut fields = std::collections::BTreeMap::new();
    let standard = match shape.fields {
        true => FIELDS.as_slice(),
        false => &[],
    };
    for &(field, index, kind) in standard {
        let scalar = match kind {
            Kind::Text => row.cell::<Option<String>>(index)?.map(Scalar::Text),
            Kind::Flag => row.cell::<Option<bool>>(index)?.map(Scalar::Flag),
            Kind::Number => row.cell::<Option<f64>>(index)?.map(Scalar::Number),
            Kind::MemberType => match row.cell::<Option<String>>(index)? {
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
    let status: String = row.cell(shape.at(C::Status))?;
    let status =
        ProfileStatus::parse(&status).ok_or_else(|| Fault::Value(format!("profile {id} has status {status:?}")))?;
    // NULL when the read left the attributes out.
    let attributes = match row.cell(shape.at(C::Attributes))? {
        Some(Value::Object(map)) => map,
        None | Some(Value::Null) => Map::new(),
        Some(other) => return Err(Fault::Value(format!("profile {id} has attributes {other}"))),
    };
    Ok(Loaded {
        profile: Profile {
            id,
            serial_number: row.cell(shape.at(C::SerialNumber))?,
            status,
            fields,
            attributes,
            tags: Default::default(),
            groups: Default::default(),
            custom: Default::default(),
            version: row.cell(shape.at(C::Version))?,
            created_at: row.cell(shape.at(C::CreatedAt))?,
            updated_at: row.cell(shape.at(C::UpdatedAt))?,
        },
        owned_tags: row.cell(shape.width)?,
        owned_groups: row.cell(shape.width + 1)?,
        owned_custom: row.cell(shape.width + 2)?,
        definitions: row.cell(shape.width + 3)?,
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
    fn a_read_with_the_standard_fields_holds_every_column_in_its_place() {
        let [every, _] = &*SHAPES;
        assert!(every.fields);
        assert_eq!(every.width, profile::Column::iter().count());
        for column in profile::Column::iter() {
            assert_eq!(every.at(column), place(column), "{}", column.as_str());
        }
    }

    #[test]
    fn a_read_without_the_standard_fields_holds_the_other_columns_in_their_order() {
        let [_, some] = &*SHAPES;
        assert!(!some.fields);
        let kept: Vec<_> = profile::Column::iter()
            .filter(|column| !super::super::standard(*column))
            .collect();
        assert_eq!(some.width, kept.len());
        assert_eq!(kept.len() + Field::ALL.len(), profile::Column::iter().count());
        for (index, column) in kept.into_iter().enumerate() {
            assert_eq!(some.at(column), index, "{}", column.as_str());
        }
        assert_eq!(some.at(profile::Column::Email), usize::MAX);
        assert!(some.names().all(|name| name != "email"));
        assert!(some.names().any(|name| name == "attributes"));
    }

    /// A row `width` cells wide, none of which decodes.
    struct Blank(usize);

    impl Cells for Blank {
        fn width(&self) -> usize {
            self.0
        }
        fn names(&self) -> Vec<&str> {
            Vec::new()
        }
        fn cell<T: Cell>(&self, _: usize) -> Result<T, Fault> {
            Err(Fault::Value("blank".into()))
        }
    }

    #[test]
    fn a_row_of_neither_shapes_width_is_an_error_that_names_both() {
        let every = profile::Column::iter().count() + OWNED.len();
        let some = every - Field::ALL.len();
        let Err(Fault::Value(message)) = decode(&Blank(every + 1)) else {
            panic!("a row one column too wide decoded");
        };
        assert_eq!(
            message,
            format!("a profile read returned {} columns, not {every} or {some}", every + 1)
        );
    }

    #[tokio::test]
    async fn json_cells_decode_straight_into_their_pairs_and_refuse_what_is_not_their_shape() {
        type Tags = JsonCell<Vec<(String, Option<String>)>>;
        let tags = "SELECT json_array(json_array('a', NULL), json_array('b', 'x'))";
        let expected = vec![("a".to_string(), None), ("b".to_string(), Some("x".to_string()))];
        let refused = [
            "SELECT json_object('a', 1)",
            "SELECT json_array(json_array(1, 'x'))",
            "SELECT 5",
        ];

        let reader = rusqlite::Connection::open_in_memory().unwrap();
        let read = |sql: &str| reader.query_row(sql, [], |row| row.get::<_, Tags>(0));
        assert_eq!(read(tags).unwrap().0, expected);
        for sql in refused {
            assert!(read(sql).is_err(), "rusqlite decoded {sql}");
        }

        let pool = sea_orm::sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let row = sqlx::query(tags).fetch_one(&pool).await.unwrap();
        assert_eq!(row.try_get::<Tags, _>(0).unwrap().0, expected);
        for sql in refused {
            let row = sqlx::query(sql).fetch_one(&pool).await.unwrap();
            assert!(row.try_get::<Tags, _>(0).is_err(), "sqlx decoded {sql}");
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
