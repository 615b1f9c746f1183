//! Idempotency-Key: at most once per tenant and key, the first response replayed byte for byte.

use futures::future::join_all;
use profile_gateway::auth::Scope;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::json;

use crate::helpers::TestApp;
use crate::on_both_databases;

const CREATE: &str = r#"{"query": "mutation { createProfile(input: {}) { id serialNumber } }"}"#;
const COUNT: &str = "{ profiles { totalCount } }";

impl TestApp {
    async fn send_once(&self, api_key: &str, idempotency_key: &str, body: &str) -> (u16, Option<String>, String) {
        let response = self
            .client
            .post(format!("{}/graphql", self.address))
            .header("X-API-Key", api_key)
            .header("Idempotency-Key", idempotency_key)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let replayed = response
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), replayed, response.text().await.unwrap())
    }

    async fn total(&self) -> i64 {
        self.ok(COUNT, json!({})).await["profiles"]["totalCount"]
            .as_i64()
            .unwrap()
    }
}

on_both_databases! {
    async fn a_repeated_request_gets_the_first_response_byte_for_byte_and_applies_once(app) {
        let key = app.admin_key.clone();
        let (status, replayed, first) = app.send_once(&key, "order-1", CREATE).await;
        assert_eq!((status, replayed), (200, None));
        let (status, replayed, second) = app.send_once(&key, "order-1", CREATE).await;
        assert_eq!((status, replayed.as_deref()), (200, Some("true")));
        assert_eq!(first, second);
        assert_eq!(app.total().await, 1);
        // A refusal is remembered as well.
        let bad = r#"{"query": "mutation { deleteProfile(ref: {externalId: \"nobody\"}) { id } }"}"#;
        let (_, _, refused) = app.send_once(&key, "delete-1", bad).await;
        assert_eq!(app.send_once(&key, "delete-1", bad).await.2, refused);
    }

    async fn the_same_key_with_another_body_is_refused(app) {
        let key = app.admin_key.clone();
        app.send_once(&key, "order-1", CREATE).await;
        let other = r#"{"query": "mutation { createProfile(input: {name: \"Eva\"}) { id } }"}"#;
        let (status, _, body) = app.send_once(&key, "order-1", other).await;
        assert_eq!(status, 422);
        assert!(body.contains("IDEMPOTENCY_KEY_REUSED"), "{body}");
        assert_eq!(app.total().await, 1);
    }

    async fn identical_requests_racing_with_one_key_apply_once(app) {
        let key = app.admin_key.clone();
        let responses = join_all((0..8).map(|_| app.send_once(&key, "race", CREATE))).await;
        let first = &responses[0].2;
        assert!(responses.iter().all(|(status, _, body)| *status == 200 && body == first), "{responses:?}");
        assert_eq!(app.total().await, 1);
    }

    async fn keys_belong_to_their_tenant(app) {
        let other = app.key("other", Scope::Write).await;
        app.send_once(&app.admin_key, "shared-key", CREATE).await;
        let (status, replayed, _) = app.send_once(&other, "shared-key", CREATE).await;
        assert_eq!((status, replayed), (200, None));
        let theirs = app.graphql_as(&other, COUNT, json!({})).await;
        assert_eq!(theirs["data"]["profiles"]["totalCount"], 1);
        assert_eq!(app.total().await, 1);
    }

    async fn an_expired_key_runs_again(app) {
        let key = app.admin_key.clone();
        app.send_once(&key, "old", CREATE).await;
        let db = profile_gateway::db::connect(&app.database_url).await.unwrap();
        let past = match db.get_database_backend() {
            sea_orm::DbBackend::Postgres => "UPDATE idempotency_keys SET expires_at = now() - interval '1 second'",
            _ => "UPDATE idempotency_keys SET expires_at = '2000-01-01T00:00:00+00:00'",
        };
        db.execute_raw(Statement::from_string(db.get_database_backend(), past)).await.unwrap();
        let (status, replayed, _) = app.send_once(&key, "old", CREATE).await;
        assert_eq!((status, replayed), (200, None));
        assert_eq!(app.total().await, 2);
    }

    async fn a_malformed_key_is_400(app) {
        let (status, _, body) = app.send_once(&app.admin_key, "has space", CREATE).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(app.total().await, 0);
    }
}

/// On PostgreSQL another transaction can hold the tenant row (as a create's serial number
/// needs it) without blocking the key's claim, so the create times out after its claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_failed_on_our_side_frees_its_key_for_a_retry() {
    use profile_gateway::http::{EdgeConfig, Limits};
    use sea_orm::TransactionTrait;
    let limits = Limits {
        request_timeout_secs: 1,
        ..Limits::default()
    };
    let Some(app) = TestApp::postgres_with(EdgeConfig {
        limits,
        introspection: true,
        ..EdgeConfig::default()
    })
    .await
    else {
        return;
    };
    let other = profile_gateway::db::connect(&app.database_url).await.unwrap();
    let lock = other.begin().await.unwrap();
    lock.execute_unprepared("SELECT * FROM tenants WHERE name = 'default' FOR NO KEY UPDATE")
        .await
        .unwrap();
    let key = app.admin_key.clone();
    let (status, _, body) = app.send_once(&key, "retry-me", CREATE).await;
    assert_eq!(status, 504, "{body}");
    lock.rollback().await.unwrap();
    let (status, replayed, body) = app.send_once(&key, "retry-me", CREATE).await;
    assert_eq!((status, replayed), (200, None), "{body}");
    assert_eq!(app.total().await, 1);
}

on_both_databases! {
    async fn a_replay_checks_the_callers_scope_first(app) {
        let (status, _, first) = app.send_once(&app.admin_key, "signup-1", CREATE).await;
        assert_eq!(status, 200, "{first}");
        let reader = app.key("default", Scope::Read).await;
        let (status, replayed, body) = app.send_once(&reader, "signup-1", CREATE).await;
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(replayed, None);
        assert_eq!(body["errors"][0]["extensions"]["code"], "FORBIDDEN", "{body} ({status})");
        assert_eq!(app.total().await, 1);
    }

    async fn a_query_with_an_idempotency_key_runs_each_time_and_stores_nothing(app) {
        let query = json!({"query": COUNT}).to_string();
        let (_, replayed, before) = app.send_once(&app.admin_key, "read-1", &query).await;
        assert_eq!(replayed, None);
        app.send_once(&app.admin_key, "create-1", CREATE).await;
        let (_, replayed, after) = app.send_once(&app.admin_key, "read-1", &query).await;
        assert_eq!(replayed, None);
        assert_ne!(before, after);
        let db = profile_gateway::db::connect(&app.database_url).await.unwrap();
        let count = Statement::from_string(db.get_database_backend(), "SELECT COUNT(*) AS n FROM idempotency_keys");
        let stored: i64 = db.query_one_raw(count).await.unwrap().unwrap().try_get("", "n").unwrap();
        assert_eq!(stored, 1);
    }
}
