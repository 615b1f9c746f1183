//! The SQL of the contenders that are not profile-gateway: the raw baseline runs it directly,
//! the HTTP floor behind a plain axum route, PostGraphile (its write) as a mutation. Each
//! workload is one statement, over profile-gateway's own tables; the write is the
//! `scrip_update` function of `sql/reference.sql`.

use sea_orm::sqlx::{self, PgPool};
use serde_json::{Value, json};
use uuid::Uuid;

/// Creates (or replaces) the `scrip_update` function.
pub const FUNCTION: &str = include_str!("../sql/reference.sql");

/// A profile's tags as a JSON array of `{key, value}`, ordered by key.
macro_rules! tags_of {
    ($profile:literal) => {
        concat!(
            "COALESCE((SELECT jsonb_agg(jsonb_build_object('key', t.key, 'value', t.value) ORDER BY t.key) \
             FROM profile_tags AS t WHERE t.profile_id = ",
            $profile,
            "), '[]'::jsonb)"
        )
    };
}

/// W1: a profile with its version, attributes and tags.
pub const READ: &str = concat!(
    "SELECT p.id, p.version, p.attributes, ",
    tags_of!("p.id"),
    " AS tags FROM profiles AS p WHERE p.id = $1"
);

/// W2 and W3: a scrip update.
pub const UPDATE: &str = "SELECT id, version FROM scrip_update($1, $2, $3)";

/// W4: a tenant's first 50 profiles by serial number, with their tags.
pub const LIST: &str = concat!(
    "SELECT p.id, ",
    tags_of!("p.id"),
    " AS tags FROM profiles AS p WHERE p.tenant_id = $1 ORDER BY p.serial_number LIMIT 50"
);

/// The `n`th update's patch: two attribute keys and two tags.
pub fn scrip_patch(n: u64) -> (Value, Vec<String>) {
    (
        json!({"a": n, "b": n % 7}),
        vec![format!("t{}", n % 5), "vip".to_owned()],
    )
}

/// Runs [`READ`]: `{id, version, attributes, tags}`, or `None` when no profile has `id`.
pub async fn read(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<Value>> {
    let row: Option<(Uuid, i32, Value, Value)> = sqlx::query_as(READ).bind(id).fetch_optional(pool).await?;
    Ok(row.map(
        |(id, version, attributes, tags)| json!({"id": id, "version": version, "attributes": attributes, "tags": tags}),
    ))
}

/// Runs [`UPDATE`]: the profile's `{id, version}` after the update.
pub async fn update(pool: &PgPool, id: Uuid, attributes: &Value, tags: &[String]) -> sqlx::Result<Value> {
    let (id, version): (Uuid, i32) = sqlx::query_as(UPDATE)
        .bind(id)
        .bind(attributes)
        .bind(tags)
        .fetch_one(pool)
        .await?;
    Ok(json!({"id": id, "version": version}))
}

/// Runs [`LIST`]: `[{id, tags}]`.
pub async fn list(pool: &PgPool, tenant: Uuid) -> sqlx::Result<Value> {
    let rows: Vec<(Uuid, Value)> = sqlx::query_as(LIST).bind(tenant).fetch_all(pool).await?;
    Ok(Value::Array(
        rows.into_iter()
            .map(|(id, tags)| json!({"id": id, "tags": tags}))
            .collect(),
    ))
}
