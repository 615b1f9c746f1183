//! API keys, scopes, and the isolation of tenants from each other.

use std::time::Duration;

use profile_gateway::auth::{Keys, Scope};
use profile_gateway::http::EdgeConfig;
use profile_gateway::store::Store;
use serde_json::{Value, json};

use crate::helpers::{TestApp, UPDATE};
use crate::on_both_databases;

const CREATE: &str = "mutation { createProfile(input: {externalId: \"same\"}) { id serialNumber } }";
const COUNT: &str = "{ profiles { totalCount } }";

fn code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"].as_str().unwrap_or_default()
}

async fn count(app: &TestApp) -> i64 {
    app.ok(COUNT, json!({})).await["profiles"]["totalCount"]
        .as_i64()
        .unwrap()
}

on_both_databases! {
    async fn a_request_without_a_valid_key_is_401_and_runs_nothing(app) {
        let revoked = app.key("default", Scope::Admin).await;
        let revoked_id = app.keys().list().await.unwrap().last().unwrap().id;
        assert!(app.keys().revoke(revoked_id).await.unwrap());
        let well_formed_unknown = format!("pgw_0123456789abcdef_{}", "A".repeat(43));
        for key in [None, Some("nonsense"), Some(well_formed_unknown.as_str()), Some(revoked.as_str())] {
            let response = app.post(key, &json!({"query": CREATE})).await;
            assert_eq!(response.status(), 401, "with {key:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let body: Value = response.json().await.unwrap();
            assert_eq!(code(&body), "UNAUTHENTICATED", "{body}");
            assert!(body.get("data").is_none());
        }
        assert_eq!(count(&app).await, 0);
    }

    async fn a_key_may_come_as_a_bearer_token(app) {
        let response = app
            .client
            .post(format!("{}/graphql", app.address))
            .header("Authorization", format!("Bearer {}", app.admin_key))
            .json(&json!({"query": COUNT}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    async fn a_read_key_reads_and_may_not_write(app) {
        let read = app.key("default", Scope::Read).await;
        assert!(app.graphql_as(&read, COUNT, json!({})).await.get("errors").is_none());
        let refused = app.graphql_as(&read, CREATE, json!({})).await;
        assert_eq!(code(&refused), "FORBIDDEN");
        assert!(refused["errors"][0]["message"].as_str().unwrap().contains("write"));
        assert_eq!(count(&app).await, 0);
    }

    async fn a_write_key_writes_profiles_but_defines_no_custom_field(app) {
        let write = app.key("default", Scope::Write).await;
        assert!(app.graphql_as(&write, CREATE, json!({})).await.get("errors").is_none());
        let define = "mutation { defineCustomField(input: {name: \"Size\", type: TEXT}) { name } }";
        let refused = app.graphql_as(&write, define, json!({})).await;
        assert_eq!(code(&refused), "FORBIDDEN");
        assert!(refused["errors"][0]["message"].as_str().unwrap().contains("admin"));
        // A mutation with both runs neither.
        let both = "mutation { createProfile(input: {}) { id } defineCustomField(input: {name: \"Size\", type: TEXT}) { name } }";
        assert_eq!(code(&app.graphql_as(&write, both, json!({})).await), "FORBIDDEN");
        assert_eq!(count(&app).await, 1);
        assert_eq!(app.ok("{ customFields { name } }", json!({})).await["customFields"], json!([]));
        let admin = app.graphql(define, json!({})).await;
        assert!(admin.get("errors").is_none(), "{admin}");
    }

    async fn a_key_records_when_it_was_last_used(app) {
        let key = app.key("acme", Scope::Read).await;
        app.graphql_as(&key, COUNT, json!({})).await;
        let mut used = None;
        for _ in 0..50 {
            let keys = app.keys().list().await.unwrap();
            used = keys.iter().find(|k| k.tenant == "acme").and_then(|k| k.last_used_at);
            if used.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(used.is_some(), "last use not recorded");
    }

    async fn tenants_see_only_their_own_profiles_and_serial_numbers(app) {
        let other = app.key("other", Scope::Admin).await;
        let mine = app.ok(CREATE, json!({})).await["createProfile"].clone();
        app.ok("mutation { createProfile(input: {tags: [{key: \"t\", value: \"v\"}], groups: [\"g\"]}) { id } }", json!({})).await;
        // The same externalId is free in another tenant, whose serial numbers start at 1.
        let theirs = app.graphql_as(&other, CREATE, json!({})).await;
        assert_eq!(theirs["data"]["createProfile"]["serialNumber"], "1", "{theirs}");
        let theirs_id = theirs["data"]["createProfile"]["id"].clone();
        for reference in [json!({"id": mine["id"]}), json!({"serialNumber": "2"})] {
            let found = app.graphql_as(&other, "query($r: ProfileRef!) { profile(ref: $r) { id } }", json!({"r": reference})).await;
            assert_eq!(found["data"]["profile"], Value::Null, "{reference}");
        }
        let by_external = app.graphql_as(&other, "{ profile(ref: {externalId: \"same\"}) { id } }", json!({})).await;
        assert_eq!(by_external["data"]["profile"]["id"], theirs_id);
        let list = app.graphql_as(&other, "{ profiles { totalCount nodes { id } } }", json!({})).await;
        assert_eq!(list["data"]["profiles"], json!({"totalCount": 1, "nodes": [{"id": theirs_id}]}));
        for filter in [json!({"tag": "t"}), json!({"group": "g"})] {
            let filtered = app
                .graphql_as(&other, "query($f: ProfileFilter) { profiles(filter: $f) { totalCount } }", json!({"f": filter}))
                .await;
            assert_eq!(filtered["data"]["profiles"]["totalCount"], 0);
        }
        assert_eq!(count(&app).await, 2);
    }

    async fn a_tenant_cannot_change_or_delete_another_tenants_profile(app) {
        let other = app.key("other", Scope::Admin).await;
        let id = app.ok(CREATE, json!({})).await["createProfile"]["id"].as_str().unwrap().to_owned();
        let before = app.profile(&id).await;
        let attempts = [
            (UPDATE, json!({"ref": {"id": id}, "update": {"scrip": {"tags": ["x"]}}})),
            (UPDATE, json!({"ref": {"externalId": "same"}, "update": {"scrip": {"tags": ["x"]}}})),
            ("mutation($r: ProfileRef!) { setProfileStatus(ref: $r, status: CLOSED) { id } }", json!({"r": {"id": id}})),
            ("mutation($r: ProfileRef!) { deleteProfile(ref: $r) { id } }", json!({"r": {"id": id}})),
            ("mutation($r: ProfileRef!) { deleteProfile(ref: $r) { id } }", json!({"r": {"serialNumber": "1"}})),
        ];
        for (query, variables) in attempts {
            let response = app.graphql_as(&other, query, variables.clone()).await;
            assert_eq!(code(&response), "NOT_FOUND", "{variables}: {response}");
        }
        assert_eq!(app.profile(&id).await, before);
    }

    async fn custom_fields_belong_to_their_tenant(app) {
        let other = app.key("other", Scope::Admin).await;
        app.ok("mutation { defineCustomField(input: {name: \"Size\", type: DROPDOWN, options: [\"S\"]}) { name } }", json!({})).await;
        let theirs = app
            .graphql_as(&other, "mutation { defineCustomField(input: {name: \"Size\", type: NUMBER}) { type } }", json!({}))
            .await;
        assert_eq!(theirs["data"]["defineCustomField"]["type"], "NUMBER", "{theirs}");
        assert_eq!(app.ok("{ customFields { type } }", json!({})).await["customFields"], json!([{"type": "DROPDOWN"}]));
        let id = app.graphql_as(&other, CREATE, json!({})).await["data"]["createProfile"]["id"].clone();
        let write = json!({"ref": {"id": id}, "update": {"profileValues": {"values": [{"name": "Size", "value": "S"}]}}});
        // "S" fits this tenant's DROPDOWN, not the other tenant's NUMBER.
        assert_eq!(code(&app.graphql_as(&other, UPDATE, write).await), "INVALID_FIELD_VALUE");
        let fields = app.graphql_as(&other, "{ customFields { name type } }", json!({})).await;
        assert_eq!(fields["data"]["customFields"], json!([{"name": "Size", "type": "NUMBER"}]));
    }
}

/// A replica remembers a valid key for `api_key_cache`; a revocation made elsewhere (another
/// replica, `apikey revoke`) reaches it when the entry expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_elsewhere_stops_working_when_the_cache_forgets_it() {
    let app = TestApp::sqlite_with(EdgeConfig {
        introspection: true,
        api_key_cache: Duration::from_millis(300),
        ..EdgeConfig::default()
    })
    .await;
    let key = app.key("default", Scope::Read).await;
    let id = app.keys().list().await.unwrap().last().unwrap().id;
    assert_eq!(app.post(Some(&key), &json!({"query": COUNT})).await.status(), 200);
    // `app.keys()` is another process's view of the keys: this server does not hear of it.
    assert!(app.keys().revoke(id).await.unwrap());
    assert_eq!(app.post(Some(&key), &json!({"query": COUNT})).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.post(Some(&key), &json!({"query": COUNT})).await.status(), 401);
}

#[tokio::test]
async fn a_key_revoked_through_the_remembering_keys_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    let db = profile_gateway::db::connect(&url).await.unwrap();
    profile_gateway::db::migrate(&db).await.unwrap();
    let keys = Keys::cached(Store::new(db), Duration::from_secs(60));
    let made = keys.create("default", Scope::Write, None).await.unwrap();
    let principal = keys.authenticate(&made.key).await.unwrap().expect("a valid key");
    assert_eq!((principal.key_id, principal.scope), (made.info.id, Scope::Write));
    // The remembered prefix with another secret is still a wrong key.
    let (prefix, secret) = made.key.rsplit_once('_').unwrap();
    let other_secret = if secret.starts_with('A') { "B" } else { "A" }.repeat(secret.len());
    let wrong = format!("{prefix}_{other_secret}");
    assert!(keys.authenticate(&wrong).await.unwrap().is_none());
    assert!(keys.authenticate(&made.key).await.unwrap().is_some());
    assert!(keys.revoke(made.info.id).await.unwrap());
    assert!(keys.authenticate(&made.key).await.unwrap().is_none());
}
