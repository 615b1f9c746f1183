//! The HTTP edge: GraphQL over HTTP, limits, and what refusals reveal.

use futures::{StreamExt, stream};
use profile_gateway::http::{EdgeConfig, Limits};
use serde_json::{Value, json};

use crate::helpers::TestApp;

const COUNT: &str = "{ profiles { totalCount } }";
const CREATE: &str = "mutation { createProfile(input: {}) { id } }";

impl TestApp {
    /// A POST of JSON `body` to /graphql with the admin key, to be sent.
    fn post_json(&self, body: reqwest::Body) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/graphql", self.address))
            .header("X-API-Key", &self.admin_key)
            .header("Content-Type", "application/json")
            .body(body)
    }

    /// Posts raw `body` with `content_type` and `accept`, with the admin key.
    async fn send(&self, body: &str, content_type: Option<&str>, accept: Option<&str>) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/graphql", self.address))
            .header("X-API-Key", &self.admin_key)
            .body(body.to_owned());
        if let Some(content_type) = content_type {
            request = request.header("Content-Type", content_type);
        }
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        request.send().await.unwrap()
    }

    async fn profile_count(&self) -> i64 {
        self.ok(COUNT, json!({})).await["profiles"]["totalCount"]
            .as_i64()
            .unwrap()
    }
}

async fn json_of(response: reqwest::Response) -> (u16, String, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.json().await.unwrap())
}

fn body(query: &str) -> String {
    json!({ "query": query }).to_string()
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"].as_str().unwrap_or_default()
}

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

#[tokio::test]
async fn the_response_media_type_follows_accept() {
    let app = TestApp::sqlite().await;
    let json_type = Some("application/json");
    for (accept, expected) in [
        (None, "application/json"),
        (Some("*/*"), "application/json"),
        (Some(GRAPHQL_RESPONSE), GRAPHQL_RESPONSE),
        (
            Some("application/graphql-response+json, application/json;q=0.9"),
            GRAPHQL_RESPONSE,
        ),
        (Some("application/json"), "application/json"),
    ] {
        let (status, content_type, _) = json_of(app.send(&body(COUNT), json_type, accept).await).await;
        assert_eq!(status, 200);
        assert!(content_type.starts_with(expected), "{accept:?} gave {content_type}");
    }
    let refused = app.send(&body(COUNT), json_type, Some("text/html")).await;
    assert_eq!(refused.status(), 406);
}

#[tokio::test]
async fn request_errors_are_400_without_data_in_the_graphql_response_type_and_200_in_json() {
    let app = TestApp::sqlite().await;
    let json_type = Some("application/json");
    let invalid = [
        body("{ profiles { nope } }"),
        body("{ profiles { "),
        json!({"query": "query($n: Int!) { profiles(first: $n) { totalCount } }", "variables": {"n": "ten"}})
            .to_string(),
        json!({"query": "query($e: String) { profile(ref: {externalId: $e}) { id } }", "variables": {"e": "x"}})
            .to_string(),
    ];
    for request in &invalid {
        let (status, _, response) = json_of(app.send(request, json_type, Some(GRAPHQL_RESPONSE)).await).await;
        assert_eq!(status, 400, "{request}: {response}");
        assert!(response.get("data").is_none(), "{response}");
        assert!(code(&response).starts_with("GRAPHQL_"), "{response}");
        let (status, _, response) = json_of(app.send(request, json_type, Some("application/json")).await).await;
        assert_eq!(status, 200, "{request}: {response}");
        assert!(response["errors"].is_array());
    }
    // An executed operation with a field error is 200 in both.
    let failing = body("mutation { deleteProfile(ref: {externalId: \"nobody\"}) { id } }");
    let (status, _, response) = json_of(app.send(&failing, json_type, Some(GRAPHQL_RESPONSE)).await).await;
    assert_eq!((status, code(&response)), (200, "NOT_FOUND"));
    assert!(response.get("data").is_some());
}

#[tokio::test]
async fn a_document_validated_before_answers_bad_variables_as_a_new_document_does() {
    let app = TestApp::sqlite().await;
    let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
    let update =
        "mutation($id: ID!, $u: ProfileUpdate!) { updateProfile(ref: {id: $id}, update: $u) { profile { version } } }";
    let list = "query($n: Int!, $f: ProfileFilter) { profiles(first: $n, filter: $f) { totalCount } }";
    // Each document once with good variables: from then on the server knows it is valid.
    let version = app.ok(update, json!({"id": id, "u": {"scrip": {"tags": ["a"]}}})).await["updateProfile"]["profile"]
        ["version"]
        .clone();
    app.ok(list, json!({"n": 5, "f": {"tag": "a"}})).await;
    let bad = [
        (update, json!({"id": id, "u": {"scrip": {"tags": [1]}}})),
        (update, json!({"id": id, "u": {"scrip": {"tags": ["a"]}, "spruce": {}}})),
        (update, json!({"id": id, "u": {"scrip": {"nope": 1}}})),
        (update, json!({"id": id, "u": {}})),
        (update, json!({"id": id, "u": null})),
        (update, json!({"id": id})),
        (update, json!({"id": true, "u": {"scrip": {}}})),
        (list, json!({"n": 2_147_483_648_i64})),
        (list, json!({"n": "5"})),
        (list, json!({"n": 5, "f": {"status": "GONE"}})),
        (list, json!({"n": 5, "f": "vip"})),
    ];
    let answer = |query: String, variables: &Value| {
        let request = json!({"query": query, "variables": variables}).to_string();
        let app = &app;
        async move {
            let (status, _, mut body) = json_of(
                app.send(&request, Some("application/json"), Some(GRAPHQL_RESPONSE))
                    .await,
            )
            .await;
            body["extensions"].as_object_mut().unwrap().remove("requestId");
            (status, body)
        }
    };
    for (n, (query, variables)) in bad.iter().enumerate() {
        let known = answer(query.to_string(), variables).await;
        // With a comment added, the document is new to the server, so validated in full.
        let new = answer(format!("{query}\n# {n}"), variables).await;
        assert!(known.1["errors"].is_array(), "{variables}: {known:?}");
        assert_eq!(known, new, "{variables}");
    }
    assert_eq!(app.profile(&id).await["version"], version);
}

#[tokio::test]
async fn a_post_that_is_not_json_is_415_and_runs_nothing() {
    let app = TestApp::sqlite().await;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let response = app.send(&body(CREATE), content_type, None).await;
        assert_eq!(response.status(), 415, "{content_type:?}");
    }
    assert_eq!(app.profile_count().await, 0);
}

#[tokio::test]
async fn get_runs_queries_and_refuses_mutations_with_405() {
    let app = TestApp::sqlite().await;
    let get = |query: &str| {
        app.client
            .get(format!("{}/graphql", app.address))
            .header("X-API-Key", &app.admin_key)
            .query(&[("query", query), ("variables", "{}")])
            .send()
    };
    let (status, _, response) = json_of(get(COUNT).await.unwrap()).await;
    assert_eq!(
        (status, response["data"]["profiles"]["totalCount"].as_i64()),
        (200, Some(0))
    );
    let refused = get(CREATE).await.unwrap();
    assert_eq!(refused.status(), 405);
    assert_eq!(refused.headers()["allow"], "POST");
    assert_eq!(app.profile_count().await, 0);
    let missing = app
        .client
        .get(format!("{}/graphql", app.address))
        .header("X-API-Key", &app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
}

#[tokio::test]
async fn malformed_bodies_get_a_clear_400_without_debug_text() {
    let app = TestApp::sqlite().await;
    for request in [
        "{bad",
        "",
        "[]",
        "42",
        r#"{"variables": {}}"#,
        r#"{"query": 7}"#,
        r#"{"query": "{ __typename }", "variables": [1]}"#,
    ] {
        let (status, _, response) = json_of(app.send(request, Some("application/json"), None).await).await;
        assert_eq!((status, code(&response)), (400, "BAD_REQUEST"), "{request}: {response}");
        let message = response["errors"][0]["message"].as_str().unwrap();
        assert!(
            !["Error(", "Some(", "kind:", "src/"]
                .iter()
                .any(|debug| message.contains(debug)),
            "{message}"
        );
    }
    let null_variables =
        json!({"query": COUNT, "variables": null, "operationName": null, "extensions": null}).to_string();
    assert_eq!(
        app.send(&null_variables, Some("application/json"), None).await.status(),
        200
    );
}

#[tokio::test]
async fn a_body_over_the_cap_is_413_before_it_is_read_whole() {
    let app = TestApp::sqlite().await;
    let big = format!(
        r#"{{"query": "{{ __typename }}", "pad": "{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    assert_eq!(app.send(&big, Some("application/json"), None).await.status(), 413);

    // 64 MiB streamed without a length: the server stops reading at the cap.
    let rss_before = resident_kib();
    let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
    let chunks = stream::iter((0..1024).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let response = app.post_json(reqwest::Body::wrap_stream(chunks)).send().await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 413);
    }
    let grown = resident_kib().saturating_sub(rss_before);
    assert!(grown < 8 * 1024, "the process grew by {grown} KiB");
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A page of ten profiles' ids and names: 22 fields (the page and its nodes, then two fields
/// ten times).
const PAGE_OF_TEN: &str = "{ profiles(first: 10) { nodes { id name } } }";

#[tokio::test]
async fn limits_refuse_before_execution_with_400_and_their_own_code() {
    let limits = Limits {
        max_document_bytes: 2_000,
        max_depth: 4,
        max_complexity: 40,
        max_aliases: 3,
        max_root_fields: 3,
        max_batch_operations: 2,
        max_input_list: 5,
        ..Limits::default()
    };
    let app = TestApp::sqlite_with(EdgeConfig {
        limits,
        introspection: true,
        ..EdgeConfig::default()
    })
    .await;
    let many_tags: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    let cases = [
        (body(&format!("{{ __typename }} # {}", "x".repeat(2_000))), "DOCUMENT_TOO_LARGE"),
        (body("{ profiles(first: 1) { edges { node { tags { key } } } } }"), "QUERY_TOO_DEEP"),
        // A page counts what it holds once per item it asks for; a batch, its operations together.
        (body("{ profiles(first: 50) { nodes { id } } }"), "QUERY_TOO_COMPLEX"),
        (json!([{"query": PAGE_OF_TEN}, {"query": PAGE_OF_TEN}]).to_string(), "QUERY_TOO_COMPLEX"),
        (body(&format!("{{ profiles {{ nodes {{ {} }} }} }}", "id name email city ".repeat(10))), "QUERY_TOO_COMPLEX"),
        (body("{ customFields { a: name b: name c: name d: name } }"), "TOO_MANY_ALIASES"),
        (body("{ customFields { name } profiles { totalCount } __typename profile(ref: {id: \"x\"}) { id } }"), "TOO_MANY_ROOT_FIELDS"),
        (json!([{"query": COUNT}, {"query": COUNT}, {"query": COUNT}]).to_string(), "BATCH_TOO_LARGE"),
        (json!([{"query": COUNT}, {"query": CREATE}]).to_string(), "BATCH_MUTATION_NOT_ALLOWED"),
        (
            json!({"query": "mutation($t: [String!]) { createProfile(input: {groups: $t}) { id } }", "variables": {"t": many_tags}}).to_string(),
            "INPUT_LIST_TOO_LONG",
        ),
        (
            body("mutation { updateProfile(ref: {id: \"x\"}, update: {scrip: {tags: [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\"]}}) { dryRun } }"),
            "INPUT_LIST_TOO_LONG",
        ),
    ];
    for (request, expected) in cases {
        for accept in [GRAPHQL_RESPONSE, "application/json"] {
            let (status, _, response) = json_of(app.send(&request, Some("application/json"), Some(accept)).await).await;
            assert_eq!((status, code(&response)), (400, expected), "{response}");
            let message = response["errors"][0]["message"].as_str().unwrap();
            assert!(
                !message.chars().any(|c| c.is_ascii_digit()),
                "a limit value leaked: {message}"
            );
        }
    }
    assert_eq!(app.profile_count().await, 0);
    // What a document holds is checked once; the lists in its variables, on every request.
    let groups = "mutation($t: [String!]) { createProfile(input: {groups: $t}) { id } }";
    app.ok(groups, json!({"t": ["a"]})).await;
    let too_long = json!({"query": groups, "variables": {"t": many_tags}}).to_string();
    let (status, _, response) = json_of(app.send(&too_long, Some("application/json"), None).await).await;
    assert_eq!((status, code(&response)), (400, "INPUT_LIST_TOO_LONG"), "{response}");
    assert_eq!(app.profile_count().await, 1);
    // A batch of queries within the limits runs.
    let (status, _, response) = json_of(
        app.send(
            &json!([{"query": COUNT}, {"query": COUNT}]).to_string(),
            Some("application/json"),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let answers = response.as_array().unwrap();
    assert_eq!(answers.len(), 2);
    let (status, _, response) = json_of(app.send(&body(PAGE_OF_TEN), Some("application/json"), None).await).await;
    assert_eq!(status, 200, "{response}");
    assert!(response["data"]["profiles"]["nodes"].is_array(), "{response}");
    assert!(
        answers
            .iter()
            .all(|answer| answer["extensions"]["requestId"].is_string()),
        "{response}"
    );
}

#[tokio::test]
async fn graphiql_introspection_passes_the_default_limits() {
    let app = TestApp::sqlite().await;
    let introspection = include_str!("introspection.graphql");
    let (status, _, response) = json_of(app.send(&body(introspection), Some("application/json"), None).await).await;
    assert_eq!(status, 200, "{response}");
    assert!(
        response["data"]["__schema"]["types"]
            .as_array()
            .is_some_and(|types| types.len() > 20)
    );
}

#[tokio::test]
async fn with_introspection_off_no_field_name_leaks() {
    let app = TestApp::sqlite_with(EdgeConfig {
        introspection: false,
        ..EdgeConfig::default()
    })
    .await;
    let (_, _, response) = json_of(
        app.send(&body("{ __schema { types { name } } }"), Some("application/json"), None)
            .await,
    )
    .await;
    assert_eq!(response["data"]["__schema"], Value::Null, "{response}");
    let (_, _, response) = json_of(
        app.send(
            &body("{ profil(ref: {id: \"x\"}) { id } }"),
            Some("application/json"),
            None,
        )
        .await,
    )
    .await;
    let message = response["errors"][0]["message"].as_str().unwrap();
    assert!(
        !message.contains("Did you mean") && !message.contains("\"profile\""),
        "{message}"
    );
    let (status, _, _) = json_of(app.send(&body(COUNT), Some("application/json"), None).await).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn every_response_names_its_request_id_in_a_header_and_in_extensions() {
    let app = TestApp::sqlite().await;
    let responses = [
        app.send(&body(COUNT), Some("application/json"), None).await,
        app.send(&body("{ nope }"), Some("application/json"), None).await,
        app.send(&body(COUNT), Some("text/plain"), None).await,
        app.post(None, &json!({"query": COUNT})).await,
    ];
    let mut seen = std::collections::HashSet::new();
    for response in responses {
        let header = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["extensions"]["requestId"], header, "{body}");
        assert!(seen.insert(header));
    }
}

#[tokio::test]
async fn a_request_over_its_time_is_stopped_with_504_and_writes_nothing() {
    use sea_orm::{SqliteTransactionMode, TransactionOptions, TransactionTrait};
    let limits = Limits {
        request_timeout_secs: 1,
        ..Limits::default()
    };
    let app = TestApp::sqlite_with(EdgeConfig {
        limits,
        introspection: true,
        ..EdgeConfig::default()
    })
    .await;
    // Another connection holds SQLite's write lock, so the create waits past the timeout.
    let other = profile_gateway::db::connect(&app.database_url).await.unwrap();
    let lock = other
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await
        .unwrap();
    let (status, _, response) = json_of(app.send(&body(CREATE), Some("application/json"), None).await).await;
    assert_eq!((status, code(&response)), (504, "TIMEOUT"), "{response}");
    lock.rollback().await.unwrap();
    assert_eq!(app.profile_count().await, 0);
}

#[tokio::test]
async fn a_request_beyond_the_limit_in_flight_is_refused_at_once_with_503_and_retry_after() {
    let app = TestApp::sqlite_with(EdgeConfig {
        limits: Limits {
            max_in_flight: 1,
            ..Limits::default()
        },
        ..EdgeConfig::default()
    })
    .await;
    // A request whose body comes in two parts, the second when the test says so, stays in
    // flight until then.
    let text = json!({ "query": COUNT }).to_string();
    let (head, tail) = text.split_at(5);
    let (head, tail) = (bytes::Bytes::from(head.to_owned()), bytes::Bytes::from(tail.to_owned()));
    let (finish, finished) = tokio::sync::oneshot::channel::<()>();
    let parts = stream::iter([Ok::<_, std::io::Error>(head)]).chain(stream::once(async move {
        let _ = finished.await;
        Ok(tail)
    }));
    let slow = app.post_json(reqwest::Body::wrap_stream(parts)).send();
    let slow = tokio::spawn(slow);

    // Once the slow request holds the one place, the next is refused without waiting.
    let refused = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let response = app.post(Some(&app.admin_key), &json!({ "query": COUNT })).await;
            if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                return response;
            }
            assert_eq!(response.status(), reqwest::StatusCode::OK);
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a request is refused while the slow one is in flight");
    assert_eq!(refused.headers()["retry-after"], "1");
    let refused: Value = refused.json().await.expect("a JSON body");
    assert_eq!(refused["errors"][0]["extensions"]["code"], "UNAVAILABLE", "{refused:#}");
    assert!(refused.get("data").is_none(), "{refused:#}");

    // The slow request is served in full, and its place is free again.
    finish.send(()).expect("the slow request is still waiting");
    let slow = slow
        .await
        .expect("the slow request's task")
        .expect("the slow request is sent");
    assert_eq!(slow.status(), reqwest::StatusCode::OK);
    let slow: Value = slow.json().await.expect("a JSON body");
    assert!(slow.get("errors").is_none(), "{slow:#}");
    let after = app.post(Some(&app.admin_key), &json!({ "query": COUNT })).await;
    assert_eq!(after.status(), reqwest::StatusCode::OK);
}
