//! A frontend in a real browser: Debian's Chromium, headless, driven by playwright-core
//! (`npm ci --prefix tests/browser`), loads a page from another loopback origin that signs a
//! person up, updates them in two dialects, watches the changes over graphql-transport-ws and
//! reads `me`, all by trusted document id with an end-user token.
//!
//! Without Chromium or playwright-core the test prints "skipped: …"; with `REQUIRE_BROWSER` set
//! (CI sets it) it fails instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use profile_gateway::http::EdgeConfig;
use profile_gateway::http::trusted::{TrustedDocuments, sha256_hex};
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::tokens::{Issuer, token, trust};

const PAGE: &str = include_str!("../browser/app.html");

/// The documents the page was built with: its manifest.
const DOCUMENTS: [(&str, &str); 6] = [
    (
        "signUp",
        "mutation SignUp { createProfile(input: {}) { id externalId } }",
    ),
    (
        "scrip",
        "mutation Scrip($me: String!, $attributes: JSON) { updateProfile(ref: {externalId: $me}, update: {scrip: {attributes: $attributes}}) { profile { version attributes } } }",
    ),
    (
        "fragment",
        "mutation Fragment($me: String!, $tags: [TagInput!]) { updateProfile(ref: {externalId: $me}, update: {fragment: {tags: {set: $tags}}}) { profile { version tags { key value } } } }",
    ),
    (
        "me",
        "query Me { me { externalId version attributes tags { key value } } }",
    ),
    (
        "other",
        "query Other($externalId: String!) { profile(ref: {externalId: $externalId}) { id } }",
    ),
    (
        "changes",
        "subscription Changes { profileChanged { version operation } }",
    ),
];

/// Where Chromium and playwright-core are, or why the test cannot run.
fn find_browser() -> Result<(PathBuf, PathBuf), String> {
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()));
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !chromium.exists() {
        return Err(format!(
            "no Chromium at {} (apt-get install chromium)",
            chromium.display()
        ));
    }
    if !driver.join("node_modules/playwright-core").exists() {
        return Err("playwright-core is not installed (npm ci --prefix tests/browser)".to_owned());
    }
    Ok((chromium, driver))
}

/// Chromium and the driver's folder; `None` (having printed "skipped: …") when they are missing
/// and `REQUIRE_BROWSER` is not set. With it set (as CI sets it), a missing one fails the test.
pub fn browser() -> Option<(PathBuf, PathBuf)> {
    match find_browser() {
        Ok(found) => Some(found),
        Err(missing) if std::env::var_os("REQUIRE_BROWSER").is_some() => panic!("REQUIRE_BROWSER is set but {missing}"),
        Err(missing) => {
            println!("skipped: {missing}");
            None
        }
    }
}

/// Serves the page on a loopback port of its own: its origin.
async fn serve_page() -> String {
    let app = axum::Router::new().route("/", axum::routing::get(|| async { axum::response::Html(PAGE) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    origin
}

/// Opens `origin`'s page with `settings` in Chromium; what the page found.
async fn open(chromium: &Path, driver: &Path, origin: &str, settings: &Value, name: &str) -> Value {
    let url = format!("{origin}/#{}", crate::trusted::urlencode(&settings.to_string()));
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.png"));
    let output = drive(
        driver,
        "drive.mjs",
        [chromium.as_os_str(), url.as_ref(), screenshot.as_os_str()],
    )
    .await;
    assert!(
        output.status.success(),
        "the page did not finish (a screenshot is in {}): {}",
        env!("CARGO_TARGET_TMPDIR"),
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).expect("the driver prints JSON");
    printed["result"].clone()
}

/// Runs the driver `script` of `driver` (`tests/browser/`) with Node.js and `args`, off the
/// test's threads (the server under test runs on them).
pub async fn drive(driver: &Path, script: &str, args: [&std::ffi::OsStr; 3]) -> std::process::Output {
    let mut command = Command::new("node");
    command.current_dir(driver).arg(script).args(args);
    tokio::task::spawn_blocking(move || command.output().expect("node runs"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_signs_a_person_up_updates_watches_and_reads_them_by_document_id() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest: serde_json::Map<String, Value> = DOCUMENTS
        .iter()
        .map(|(_, document)| (sha256_hex(document), json!(document)))
        .collect();
    let path = dir.path().join("persisted-documents.json");
    std::fs::write(&path, Value::Object(manifest).to_string()).unwrap();
    let app = TestApp::sqlite_with(EdgeConfig {
        trusted_documents: Some(Arc::new(TrustedDocuments::load(&path).unwrap())),
        ..EdgeConfig::default()
    })
    .await;
    let (allowed, blocked) = (serve_page().await, serve_page().await);
    let issuer = Arc::new(Issuer::default());
    let jwks_url = issuer.serve().await;
    trust(&app, "default", crate::tokens::ISSUER, &jwks_url, vec![allowed.clone()]).await;
    let bo = app.create(json!({"externalId": "bo"})).await;

    let ids: serde_json::Map<String, Value> = DOCUMENTS
        .iter()
        .map(|(name, document)| (name.to_string(), json!(format!("sha256:{}", sha256_hex(document)))))
        .collect();
    let settings = json!({"gateway": app.address, "token": token("ana"), "me": "ana", "other": "bo", "ids": ids});
    let found = open(&chromium, &driver, &allowed, &settings, "allowed").await;

    assert_eq!(found.get("error"), None, "{found:#}");
    assert_eq!(
        found["signup"]["body"]["data"]["createProfile"]["externalId"], "ana",
        "{found:#}"
    );
    assert_eq!(found["live"], true, "{found:#}");
    let fragment = &found["fragment"]["body"]["data"]["updateProfile"]["profile"];
    assert_eq!(fragment["tags"], json!([{"key": "vip", "value": "1"}]), "{found:#}");
    let version = fragment["version"].as_i64().unwrap();
    let operations: Vec<(i64, String)> = found["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            let change = &event["payload"]["data"]["profileChanged"];
            (
                change["version"].as_i64().unwrap(),
                change["operation"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        operations[operations.len() - 2..],
        [
            (version - 1, "updateProfile.scrip".to_owned()),
            (version, "updateProfile.fragment".to_owned())
        ],
        "{found:#}"
    );
    let me = &found["me"]["body"]["data"]["me"];
    assert_eq!(
        (
            me["externalId"].as_str(),
            me["version"].as_i64(),
            me["attributes"].clone()
        ),
        (Some("ana"), Some(version), json!({"plan": "gold"})),
        "{found:#}"
    );
    assert_eq!(found["other"]["body"]["data"]["profile"], Value::Null, "{found:#}");
    assert_eq!(app.profile(bo["id"].as_str().unwrap()).await["version"], 1);

    // The same page from an origin the tenant does not allow cannot call.
    let settings = json!({"gateway": app.address, "token": token("cy"), "ids": ids, "mode": "blocked"});
    let found = open(&chromium, &driver, &blocked, &settings, "blocked").await;
    assert_eq!(found["error"], "TypeError: Failed to fetch", "{found:#}");
    let none = app.ok("{ profile(ref: {externalId: \"cy\"}) { id } }", json!({})).await;
    assert_eq!(none["profile"], Value::Null);
}
