//! On PostgreSQL, an update of a profile that this replica wrote last starts from what it
//! wrote instead of reading the profile first; a change made since by anyone else is never
//! lost for it, only read late.

use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};

use crate::helpers::TestApp;

/// An update that shows neither groups nor custom fields, so that the replica keeps what it
/// wrote.
const SLIM: &str = "mutation($id: ID!, $update: ProfileUpdate!) { updateProfile(ref: {id: $id}, update: $update) { profile { name version attributes tags { key } } } }";

async fn slim(app: &TestApp, id: &str, update: Value) -> Value {
    app.ok(SLIM, json!({ "id": id, "update": update })).await["updateProfile"]["profile"].clone()
}

async fn create(app: &TestApp) -> String {
    let created = app.create(json!({ "name": "Ann" })).await;
    created["id"].as_str().unwrap().to_owned()
}

/// Runs `sql` on `app`'s database behind the gateways' backs: no notice announces it.
async fn behind_their_backs(app: &TestApp, sql: &str) {
    let db = Database::connect(&app.database_url).await.unwrap();
    db.execute_unprepared(sql).await.unwrap();
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_of_a_profile_this_replica_wrote_last_starts_from_what_it_wrote_without_reading_it() {
    let Some(app) = TestApp::postgres().await else { return };
    let id = create(&app).await;
    slim(&app, &id, json!({"scrip": {"attributes": {"a": 1}}})).await;
    // No gateway writes like this (the version stays), so only an update that does not read
    // the profile first can miss it.
    behind_their_backs(&app, &format!("UPDATE profiles SET name = 'Unseen' WHERE id = '{id}'")).await;
    let profile = slim(&app, &id, json!({"scrip": {"attributes": {"b": 2}}})).await;
    assert_eq!(profile["name"], "Ann", "{profile}");
    assert_eq!(profile["version"], 3);
    assert_eq!(profile["attributes"], json!({"a": 1, "b": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_from_a_stale_snapshot_reads_the_profile_and_keeps_the_change_it_had_missed() {
    let Some(app) = TestApp::postgres().await else { return };
    let id = create(&app).await;
    slim(&app, &id, json!({"scrip": {"attributes": {"a": 1}}})).await;
    // Another writer's change whose notice has not arrived yet.
    behind_their_backs(
        &app,
        &format!("UPDATE profiles SET name = 'Bea', version = version + 1 WHERE id = '{id}'"),
    )
    .await;
    let profile = slim(&app, &id, json!({"scrip": {"attributes": {"b": 2}}})).await;
    assert_eq!(profile["name"], "Bea", "{profile}");
    assert_eq!(profile["version"], 4);
    assert_eq!(profile["attributes"], json!({"a": 1, "b": 2}));
    assert_eq!(app.profile(&id).await["name"], "Bea");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_from_a_stale_snapshot_keeps_the_tags_written_since() {
    let Some(app) = TestApp::postgres().await else { return };
    let id = create(&app).await;
    slim(&app, &id, json!({"scrip": {"attributes": {"a": 1}, "tags": ["kept"]}})).await;
    behind_their_backs(
        &app,
        &format!(
            "INSERT INTO profile_tags (profile_id, key, value) VALUES ('{id}', 'since', NULL); \
             UPDATE profiles SET version = version + 1 WHERE id = '{id}'"
        ),
    )
    .await;
    let profile = slim(&app, &id, json!({"scrip": {"attributes": {"b": 2}}})).await;
    assert_eq!(profile["tags"], json!([{"key": "kept"}, {"key": "since"}]), "{profile}");
    assert_eq!(profile["version"], 4);
    assert_eq!(profile["attributes"], json!({"a": 1, "b": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_from_a_stale_snapshot_of_a_profile_closed_or_deleted_since_changes_nothing() {
    let Some(app) = TestApp::postgres().await else { return };
    let update = json!({"scrip": {"attributes": {"b": 2}}});
    let since = [
        (
            "UPDATE profiles SET status = 'CLOSED', version = version + 1",
            "PROFILE_CLOSED",
            json!({"status": "CLOSED", "version": 3, "attributes": {"a": 1}}),
        ),
        ("DELETE FROM profiles", "NOT_FOUND", Value::Null),
    ];
    for (sql, code, left) in since {
        let id = create(&app).await;
        slim(&app, &id, json!({"scrip": {"attributes": {"a": 1}}})).await;
        behind_their_backs(&app, &format!("{sql} WHERE id = '{id}'")).await;
        let error = app.error(SLIM, json!({ "id": id, "update": update })).await;
        assert_eq!(error["extensions"]["code"], code, "{sql}: {error}");
        let profile = app
            .ok(
                "query($id: ID!) { profile(ref: {id: $id}) { status version attributes } }",
                json!({ "id": id }),
            )
            .await;
        assert_eq!(profile["profile"], left, "{sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_through_two_replicas_in_turn_each_start_from_the_other_replica_s_last_change() {
    let Some(a) = TestApp::postgres().await else { return };
    let b = a.replica().await;
    let id = create(&a).await;
    for n in 0..8 {
        let replica = if n % 2 == 0 { &a } else { &b };
        let key = format!("k{n}");
        let profile = slim(
            replica,
            &id,
            json!({"scrip": {"attributes": { &key: n }, "tags": [&key]}}),
        )
        .await;
        assert_eq!(profile["attributes"].as_object().unwrap().len(), n + 1, "{profile}");
        assert_eq!(profile["version"], n + 2);
        assert_eq!(profile["tags"], json!([{ "key": key }]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_closed_or_deleted_through_another_replica_takes_no_update_through_the_first() {
    let Some(a) = TestApp::postgres().await else { return };
    let b = a.replica().await;
    let update = json!({"scrip": {"attributes": {"a": 1}}});

    let writes_through_b = [
        (
            "mutation($id: ID!) { setProfileStatus(ref: {id: $id}, status: CLOSED) { id } }",
            "PROFILE_CLOSED",
        ),
        (
            "mutation($id: ID!) { deleteProfile(ref: {id: $id}) { id } }",
            "NOT_FOUND",
        ),
    ];
    for (write, code) in writes_through_b {
        let id = create(&a).await;
        slim(&a, &id, update.clone()).await;
        b.ok(write, json!({ "id": id })).await;
        let error = a.error(SLIM, json!({ "id": id, "update": update })).await;
        assert_eq!(error["extensions"]["code"], code, "{write}: {error}");
    }
}
