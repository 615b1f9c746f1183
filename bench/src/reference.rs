//! The SQL of the contenders that are not profile-gateway: the raw baseline runs it directly,
//! the HTTP floor behind a plain axum route, PostGraphile (its write) as a mutation. Each
//! workload is one statement, over profile-gateway's own tables; the write is a function of
//! `sql/reference.sql`: `scrip_write` here, `scrip_update` (the same and a change notice) in
//! PostGraphile.

use sea_orm::sqlx::{self, PgPool};
use serde_json::{Value, json};
use uuid::Uuid;

/// Creates (or replaces) the `scrip_write` and `scrip_update` functions.
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

/// W2 and W3: a scrip update, with no change notice.
pub const UPDATE: &str = "SELECT id, version FROM scrip_write($1, $2, $3)";

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sea_orm::sqlx::postgres::PgListener;

    use super::*;
    use crate::{Database, pool, seed};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_floors_write_does_a_scrip_update_without_a_notice_and_postgraphiles_sends_one() {
        let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
            println!("skipped: TEST_POSTGRES_URL is not set");
            return;
        };
        let database = Database::create(&url).await.unwrap();
        let seeded = seed(&database.url, 1).await.unwrap();
        let id: Uuid = seeded.ids[0].parse().unwrap();
        let pool = pool(&database.url).await.unwrap();
        let mut listener = PgListener::connect_with(&pool).await.unwrap();
        listener.listen("profile_changes").await.unwrap();

        // Seeded with plan, region, visits, score and segment, and tags tag0..tag2.
        let attributes = json!({"plan": null, "a": 1});
        let tags = ["vip", "t1", "vip"].map(str::to_owned);
        assert_eq!(
            update(&pool, id, &attributes, &tags).await.unwrap(),
            json!({"id": id, "version": 2})
        );
        let (stored, version): (Value, i32) = sqlx::query_as("SELECT attributes, version FROM profiles WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(version, 2);
        assert_eq!(
            stored,
            json!({"region": "eu", "visits": 0, "score": 0, "segment": 0, "a": 1})
        );
        let stored_tags: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT key, value FROM profile_tags WHERE profile_id = $1 ORDER BY key")
                .bind(id)
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(stored_tags, [("t1".to_owned(), None), ("vip".to_owned(), None)]);
        let history: i64 =
            sqlx::query_scalar("SELECT count(*) FROM profile_changes WHERE profile_id = $1 AND version = 2")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(history, 1);

        // PostGraphile's mutation does the same and notifies; a marker sent after it is heard
        // second, so nothing came from the floor's write before it.
        let (version,): (i32,) = sqlx::query_as("SELECT version FROM scrip_update($1, $2, $3)")
            .bind(id)
            .bind(&attributes)
            .bind(&tags[..])
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(version, 3);
        sqlx::query("SELECT pg_notify('profile_changes', 'marker')")
            .execute(&pool)
            .await
            .unwrap();
        let mut heard = Vec::new();
        for _ in 0..2 {
            let notice = tokio::time::timeout(Duration::from_secs(10), listener.recv())
                .await
                .expect("a notice within 10 s")
                .unwrap();
            heard.push(notice.payload().to_owned());
        }
        let notice: Value = serde_json::from_str(&heard[0]).unwrap();
        assert_eq!(notice["profile_id"], json!(id));
        assert_eq!(notice["version"], json!(3));
        assert_eq!(heard[1], "marker");

        drop(listener);
        pool.close().await;
        database.drop().await;
    }
}
