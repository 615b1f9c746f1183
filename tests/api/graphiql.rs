//! GraphiQL from the binary: its assets, its example document, and the page in Chromium with
//! every other host unreachable.

use std::path::Path;

use profile_gateway::http::EdgeConfig;
use serde_json::{Value, json};

use crate::chromium::{browser, drive};
use crate::helpers::TestApp;

const EXAMPLE: &str = include_str!("../../graphiql/example.graphql");

/// The page's asset paths, as it links them.
fn assets(page: &str) -> Vec<String> {
    page.split(['"', '\''])
        .filter(|part| part.starts_with("/graphiql/assets/"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_page_and_its_hashed_assets_come_from_the_binary_compressed_cached_and_under_a_strict_policy() {
    let app = TestApp::sqlite().await;
    let page = app.get("/graphiql").await;
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        policy.contains("default-src 'self'") && policy.contains("script-src 'self';"),
        "{policy}"
    );
    assert!(!policy.contains("http"), "no other origin: {policy}");
    let page = page.text().await.unwrap();
    assert!(!page.contains("unpkg") && !page.contains("https://"), "{page}");
    let linked = assets(&page);
    assert_eq!(linked.len(), 2, "{page}");

    let mut compressed = page.len();
    for path in &linked {
        let response = app
            .client
            .get(format!("{}{path}", app.address))
            .header("Accept-Encoding", "gzip, deflate, br")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-encoding"], "br", "{path}");
        assert_eq!(
            response.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        compressed += response.bytes().await.unwrap().len();
        // Without brotli, gzip; without either, the file itself.
        let sizes = futures::future::join_all(["br", "gzip", "identity"].map(|encoding| {
            let request = app
                .client
                .get(format!("{}{path}", app.address))
                .header("Accept-Encoding", encoding);
            async move {
                let response = request.send().await.unwrap();
                let encoded = response
                    .headers()
                    .get("content-encoding")
                    .map(|value| value.to_str().unwrap().to_owned());
                (encoded, response.bytes().await.unwrap().len())
            }
        }))
        .await;
        assert_eq!(
            sizes.iter().map(|(encoded, _)| encoded.as_deref()).collect::<Vec<_>>(),
            [Some("br"), Some("gzip"), None]
        );
        assert!(sizes[0].1 < sizes[1].1 && sizes[1].1 < sizes[2].1, "{path}: {sizes:?}");
    }
    assert!(
        compressed < 3 * 1024 * 1024,
        "the page and its assets take {compressed} bytes compressed"
    );
    assert_eq!(app.get("/graphiql/assets/graphiql.0000.js").await.status(), 404);
}

#[tokio::test]
async fn the_example_document_runs_in_order_and_each_mutation_changes_something() {
    let app = TestApp::sqlite().await;
    let operations: Vec<&str> = EXAMPLE
        .lines()
        .filter_map(|line| line.strip_prefix("mutation ").or_else(|| line.strip_prefix("query ")))
        .map(|rest| rest.split(['(', ' ', '{']).next().unwrap())
        .collect();
    assert_eq!(
        operations,
        [
            "CreateAna",
            "Scrip",
            "Spruce",
            "Fragment",
            "ProfileValues",
            "CompetitionLabs",
            "Ana",
            "Profiles"
        ]
    );
    let mut id = Value::Null;
    for operation in operations {
        let body = json!({"query": EXAMPLE, "operationName": operation, "variables": {"id": id}});
        let response: Value = app.post(Some(&app.admin_key), &body).await.json().await.unwrap();
        assert!(response.get("errors").is_none(), "{operation}: {response:#}");
        let data = &response["data"];
        if operation == "CreateAna" {
            id = data["createProfile"]["id"].clone();
        } else if let Some(update) = data.get("updateProfile") {
            let changes = update["changes"].as_array().unwrap();
            assert!(!changes.is_empty(), "{operation} changed nothing");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_works_offline_in_chromium_docs_examples_and_subscriptions_included() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let first = TestApp::sqlite().await;
    // The page of a first start: the key made then in the Headers pane.
    let app = first
        .replica_with(EdgeConfig {
            graphiql_key: Some(first.admin_key.clone()),
            ..EdgeConfig::default()
        })
        .await;
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("graphiql.png");
    let address = std::ffi::OsString::from(&app.address);
    let output = drive(
        &driver,
        "graphiql.mjs",
        [chromium.as_os_str(), &address, screenshot.as_os_str()],
    )
    .await;
    assert!(
        output.status.success(),
        "GraphiQL failed in Chromium (screenshot: {}): {}",
        screenshot.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let found: Value = serde_json::from_slice(&output.stdout).expect("the driver prints JSON");

    let foreign: Vec<&str> = found["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|url| !url.starts_with(&app.address) && !url.starts_with(&app.address.replacen("http", "ws", 1)))
        .collect();
    assert!(foreign.is_empty(), "requests to other origins: {foreign:?}");
    assert_eq!(found["problems"], json!([]), "errors in the page: {found:#}");
    assert_eq!(found["example"], EXAMPLE);
    let headers: Value = serde_json::from_str(found["headers"].as_str().unwrap()).unwrap();
    assert_eq!(headers, json!({"X-API-Key": first.admin_key}));
    assert!(
        found["docs"]
            .as_str()
            .unwrap()
            .contains("Updates a profile in one vendor's dialect"),
        "{found:#}"
    );
    assert!(
        found["created"].as_str().unwrap().contains("\"externalId\": \"ana-1\""),
        "{found:#}"
    );
    assert!(
        found["event"]
            .as_str()
            .is_some_and(|event| event.contains("updateProfile.scrip")),
        "{found:#}"
    );
    let usable = found["usableAfterMs"].as_u64().unwrap();
    assert!(usable < 2_000, "the editor was usable only after {usable} ms");
}
