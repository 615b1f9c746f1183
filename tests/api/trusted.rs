//! Trusted documents: requests that name a document of the manifest instead of sending it.

use std::sync::Arc;

use profile_gateway::http::trusted::{TrustedDocuments, sha256_hex};
use profile_gateway::http::{EdgeConfig, Limits};
use serde_json::{Value, json};

use crate::helpers::TestApp;

const READ: &str = "query Profile($id: ID!) { profile(ref: {id: $id}) { id externalId } }";
const CREATE: &str = "mutation Create($x: String) { createProfile(input: {externalId: $x}) { id externalId } }";
const CHANGES: &str = "subscription Changes { profileChanged { profileId version } }";
/// Asks for more than the complexity limit of the app below allows.
const HEAVY: &str = "{ profiles(first: 100) { nodes { id externalId } } }";

/// A server that loaded a manifest of [`READ`], [`CREATE`], [`CHANGES`] and [`HEAVY`].
async fn app_with_manifest() -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let manifest: serde_json::Map<String, Value> = [READ, CREATE, CHANGES, HEAVY]
        .into_iter()
        .map(|document| (sha256_hex(document), json!(document)))
        .collect();
    let path = dir.path().join("persisted-documents.json");
    std::fs::write(&path, Value::Object(manifest).to_string()).unwrap();
    let app = TestApp::sqlite_with(EdgeConfig {
        trusted_documents: Some(Arc::new(TrustedDocuments::load(&path).unwrap())),
        limits: Limits {
            max_complexity: 100,
            ..Limits::default()
        },
        ..EdgeConfig::default()
    })
    .await;
    (app, dir)
}

fn id(document: &str) -> String {
    format!("sha256:{}", sha256_hex(document))
}

#[tokio::test]
async fn a_request_may_name_a_trusted_document_by_its_id_over_post_and_get() {
    let (app, _dir) = app_with_manifest().await;
    let created = app
        .post(
            Some(&app.admin_key),
            &json!({"documentId": id(CREATE), "variables": {"x": "ana"}}),
        )
        .await;
    assert_eq!(created.status(), 200);
    let created: Value = created.json().await.unwrap();
    let profile = created["data"]["createProfile"]["id"]
        .as_str()
        .expect("created")
        .to_owned();
    // Apollo's persisted query extension.
    let apollo = json!({
        "variables": {"id": profile},
        "extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha256_hex(READ)}},
    });
    let read: Value = app.post(Some(&app.admin_key), &apollo).await.json().await.unwrap();
    assert_eq!(read["data"]["profile"]["externalId"], "ana", "{read}");
    // GET, with the id in the query string.
    let url = format!(
        "{}/graphql?documentId={}&variables={}",
        app.address,
        id(READ),
        urlencode(&json!({"id": profile}).to_string())
    );
    let got: Value = app
        .client
        .get(url)
        .header("X-API-Key", &app.admin_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["data"]["profile"]["externalId"], "ana", "{got}");
}

#[tokio::test]
async fn an_unknown_id_is_refused_with_persisted_query_not_found_and_limits_still_apply() {
    let (app, _dir) = app_with_manifest().await;
    for body in [
        json!({"documentId": id("{ __typename }")}),
        json!({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "00"}}}),
    ] {
        let response = app.post(Some(&app.admin_key), &body).await;
        assert_eq!(response.status(), 400);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            answer["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_FOUND",
            "{answer}"
        );
    }
    let response = app.post(Some(&app.admin_key), &json!({"documentId": "md5:abc"})).await;
    assert_eq!(response.status(), 400);
    let answer: Value = app
        .post(Some(&app.admin_key), &json!({"documentId": id(HEAVY)}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "QUERY_TOO_COMPLEX",
        "{answer}"
    );
    // A server without a manifest knows no id.
    let plain = TestApp::sqlite().await;
    let answer: Value = plain
        .post(Some(&plain.admin_key), &json!({"documentId": id(READ)}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_FOUND",
        "{answer}"
    );
}

/// `text` percent-encoded for a URL's query or fragment.
pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_person_may_run_only_the_manifests_documents_and_a_key_any() {
    let (app, _dir) = app_with_manifest().await;
    let issuer = Arc::new(crate::tokens::Issuer::default());
    let jwks_url = issuer.serve().await;
    crate::tokens::trust(&app, "default", crate::tokens::ISSUER, &jwks_url, vec![]).await;
    let ana = crate::tokens::token("ana");
    let code = |body: &Value| body["errors"][0]["extensions"]["code"].as_str().map(str::to_owned);

    // By id, and as the exact text.
    let by_id = json!({"documentId": id(CREATE), "variables": {"x": "ana"}});
    let created: Value = crate::tokens::post(&app, &ana, &by_id).await.json().await.unwrap();
    assert_eq!(created["data"]["createProfile"]["externalId"], "ana", "{created}");
    let own = created["data"]["createProfile"]["id"].clone();
    let as_text = json!({"query": READ, "variables": {"id": own}});
    let read: Value = crate::tokens::post(&app, &ana, &as_text).await.json().await.unwrap();
    assert_eq!(read["data"]["profile"]["externalId"], "ana", "{read}");

    // Anything else, even the same operation written otherwise, is refused before it runs.
    for document in ["{ me { id } }", &READ.replace("  ", " ").replace("{ id", "{id")] {
        let response = crate::tokens::post(&app, &ana, &json!({"query": document, "variables": {"id": own}})).await;
        assert_eq!(response.status(), 400, "{document}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(code(&body).as_deref(), Some("DOCUMENT_NOT_TRUSTED"), "{document}");
    }
    // Over a socket too.
    let payload = json!({"Authorization": format!("Bearer {ana}")});
    let mut subscriber = crate::subscriptions::Subscriber::connect(&app.address, payload)
        .await
        .unwrap();
    subscriber
        .subscribe("1", crate::subscriptions::EVERY_CHANGE, json!({}))
        .await;
    let refused = subscriber.next().await;
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "DOCUMENT_NOT_TRUSTED",
        "{refused}"
    );
    subscriber
        .send(json!({"id": "2", "type": "subscribe", "payload": {"documentId": "sha256:0000"}}))
        .await;
    let unknown = subscriber.next().await;
    assert_eq!(
        unknown["payload"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_FOUND",
        "{unknown}"
    );
    subscriber
        .send(json!({"id": "3", "type": "subscribe", "payload": {"documentId": id(CHANGES)}}))
        .await;
    for attempt in 0..100 {
        let update = json!({"ref": {"externalId": "ana"}, "update": {"scrip": {"attributes": {"n": attempt}}}});
        app.graphql(crate::helpers::UPDATE, update).await;
        if let Some(event) = subscriber.message(std::time::Duration::from_millis(100)).await {
            assert_eq!(event["payload"]["data"]["profileChanged"]["profileId"], own, "{event}");
            break;
        }
        assert!(attempt < 99, "the subscription by id never went live");
    }

    // An API key still sends any document.
    let any = app.ok("{ me: profiles { totalCount } }", json!({})).await;
    assert_eq!(any["me"]["totalCount"], 1);
}
