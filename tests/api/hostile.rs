//! What a client with the lowest scope can send to crash, poison or starve the gateway, and
//! what it gets instead: a refusal with a code, and a server that goes on serving.

use std::time::Duration;

use profile_gateway::auth::Scope;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::on_both_databases;
use crate::subscriptions::Subscriber;

/// `levels` of `open`, an innermost `leaf`, and as many `close`.
fn nested(open: &str, leaf: &str, close: &str, levels: usize) -> String {
    format!("{}{leaf}{}", open.repeat(levels), close.repeat(levels))
}

/// A chain of `links` fragments, each spreading the next.
fn fragment_chain(links: usize) -> String {
    let mut text = String::from("{ ...F0 }");
    for i in 0..links {
        text.push_str(&format!(" fragment F{i} on Query {{ ...F{} }}", i + 1));
    }
    text.push_str(&format!(" fragment F{links} on Query {{ __typename }}"));
    text
}

/// Posts `body` with `key`: the status and the JSON body.
async fn post(app: &TestApp, key: &str, body: &Value) -> (u16, Value) {
    let response = app.post(Some(key), body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_document_is_refused_with_400_before_it_is_parsed() {
    let app = TestApp::sqlite().await;
    let key = app.key("default", Scope::Read).await;
    let documents = [
        format!("{{ customFields(x: {}) {{ name }} }}", nested("[", "1", "]", 2_000)),
        format!("{{ customFields(x: {}) {{ name }} }}", nested("{a: ", "1", "}", 2_000)),
        nested("{ a ", "b", "}", 2_000),
        fragment_chain(500),
    ];
    for document in documents {
        let (status, body) = post(&app, &key, &json!({ "query": document })).await;
        assert_eq!((status, code(&body)), (400, "NESTING_TOO_DEEP"), "{body}");
    }
    // A document within the limit is answered as usual.
    let (status, body) = post(&app, &key, &json!({ "query": fragment_chain(10) })).await;
    assert_eq!(
        (status, &body["data"]),
        (200, &json!({"__typename": "Query"})),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_subscription_is_refused_on_its_socket_which_goes_on_serving() {
    let app = TestApp::sqlite().await;
    let key = app.key("default", Scope::Write).await;
    let mut subscriber = Subscriber::connect(&app.address, json!({"X-API-Key": key}))
        .await
        .unwrap();
    let deep = format!(
        "subscription {{ profileChanged(ref: {{id: {}}}) {{ version }} }}",
        nested("[", "\"x\"", "]", 1_600)
    );
    subscriber.subscribe("1", &deep, json!({})).await;
    let refused = subscriber.message(Duration::from_secs(10)).await.expect("an answer");
    assert_eq!(
        (&refused["type"], &refused["id"]),
        (&json!("error"), &json!("1")),
        "{refused}"
    );
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "NESTING_TOO_DEEP",
        "{refused}"
    );
    let probe = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
    subscriber
        .subscribe("2", crate::subscriptions::EVERY_CHANGE, json!({}))
        .await;
    subscriber.wait_until_live(&app, &key, &probe).await;
}

/// Documents of random shape: brackets, fragments and selections nested and repeated, some
/// far past every limit.
fn hostile_document() -> impl Strategy<Value = String> {
    let brackets = prop::sample::select(vec![("[", "1", "]"), ("{a: ", "1", "}"), ("[{a: ", "\"x\"", "}]")]);
    prop_oneof![
        (brackets.clone(), 0usize..3_000).prop_map(|((open, leaf, close), levels)| format!(
            "{{ customFields(x: {}) {{ name }} }}",
            nested(open, leaf, close, levels)
        )),
        (0usize..3_000).prop_map(|levels| nested("{ profiles ", "{ totalCount }", "}", levels)),
        (0usize..900).prop_map(fragment_chain),
        (1usize..400, 1usize..60).prop_map(|(wide, deep)| format!(
            "{{ {} }}",
            vec![format!("p: profiles(first: 1) {{ nodes {{ id }} }} c: customFields(x: {})", nested("[", "2", "]", deep)); wide].join(" ")
        )),
        (brackets, 0usize..200).prop_map(|((open, leaf, close), levels)| format!(
            "mutation {{ updateProfile(ref: {{externalId: \"x\"}}, update: {{scrip: {{attributes: {{deep: {}}}}}}}) {{ profile {{ version }} }} }}",
            nested(open, leaf, close, levels)
        )),
    ]
}

/// Variables nested at random, past what JSON parsers take.
fn hostile_variables() -> impl Strategy<Value = String> {
    (0usize..300, prop::sample::select(vec![("[", "]"), ("{\"a\": ", "}")]))
        .prop_map(|(levels, (open, close))| format!("{{\"v\": {}}}", nested(open, "1", close, levels)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_and_wide_documents_and_variables_never_take_the_server_down() {
    let app = TestApp::sqlite().await;
    let key = app.key("default", Scope::Write).await;
    let mut runner = TestRunner::deterministic();
    for _ in 0..60 {
        let document = hostile_document().new_tree(&mut runner).unwrap().current();
        let variables = hostile_variables().new_tree(&mut runner).unwrap().current();
        let body = format!(
            "{{\"query\": {}, \"variables\": {variables}}}",
            Value::String(document.clone())
        );
        let response = app
            .client
            .post(format!("{}/graphql", app.address))
            .header("X-API-Key", &key)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        let answer: Value = response.json().await.expect("a JSON answer");
        assert!(
            status < 500,
            "{status} {answer} for {}",
            &document[..document.len().min(200)]
        );
        let coded = answer["errors"]
            .as_array()
            .is_none_or(|errors| errors.iter().all(|e| e["extensions"]["code"].is_string()));
        assert!(coded, "an error without a code: {answer}");
    }
    let (status, _) = post(&app, &key, &json!({"query": "{ __typename }"})).await;
    assert_eq!(status, 200);
}

on_both_databases! {
    async fn attribute_values_nest_at_most_32_levels_however_they_arrive(app) {
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        let deepest = serde_json::from_str::<Value>(&nested("[", "1", "]", 32)).unwrap();
        let inline = |levels: usize| format!(
            "mutation {{ updateProfile(ref: {{id: \"{id}\"}}, update: {{scrip: {{attributes: {{deep: {}}}}}}}) {{ profile {{ version }} }} }}",
            nested("[", "1", "]", levels)
        );
        let response = app.graphql(&inline(33), json!({})).await;
        assert_eq!(code(&response), "VALIDATION_FAILED", "{response}");
        assert_eq!(response["errors"][0]["extensions"]["field"], "attributes.deep", "{response}");
        let response = app.update(&id, json!({"scrip": {"attributes": {"deep": [deepest.clone()]}}})).await;
        assert_eq!(code(&response), "VALIDATION_FAILED", "{response}");
        let response = app.graphql(&inline(32), json!({})).await;
        assert!(response.get("errors").is_none(), "{response}");
        // What was stored reads back, in the profile and in its history.
        let read = app
            .ok("query($id: ID!) { profile(ref: {id: $id}) { attributes history(first: 1) { nodes { changes { after } } } } }", json!({"id": id}))
            .await;
        assert_eq!(read["profile"]["attributes"]["deep"], deepest);
        assert_eq!(read["profile"]["history"]["nodes"][0]["changes"][0]["after"], deepest);
    }

    async fn a_number_is_kept_exactly_or_refused_with_validation_failed(app) {
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        for number in ["123456789012345678901234567890", "-1e-400", "1e400", "0.1000000000000000000001"] {
            let inline = format!(
                "mutation {{ updateProfile(ref: {{id: \"{id}\"}}, update: {{scrip: {{attributes: {{n: {number}}}}}}}) {{ profile {{ version }} }} }}"
            );
            let (status, body) = post(&app, &app.admin_key, &json!({"query": inline})).await;
            assert_eq!((status, code(&body)), (400, "VALIDATION_FAILED"), "{number} inline: {body}");
            let body = format!(
                "{{\"query\": \"mutation($u: ProfileUpdate!) {{ updateProfile(ref: {{id: \\\"{id}\\\"}}, update: $u) {{ profile {{ version }} }} }}\", \
                 \"variables\": {{\"u\": {{\"scrip\": {{\"attributes\": {{\"n\": {number}}}}}}}}}}}"
            );
            let response = app
                .client
                .post(format!("{}/graphql", app.address))
                .header("X-API-Key", &app.admin_key)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            assert_eq!((status, code(&body)), (400, "VALIDATION_FAILED"), "{number} in variables: {body}");
        }
        // What is accepted reads back as the same number, on either database.
        let kept = "mutation($id: ID!) { updateProfile(ref: {id: $id}, update: {scrip: {attributes: \
                    {max: 1.7976931348623157e308, tiny: 5e-324, big: 9007199254740993, neg: -9223372036854775808, \
                    dec: 12.50, e: 2.5e-3}}}) { profile { version } } }";
        let response = app.graphql(kept, json!({"id": id})).await;
        assert!(response.get("errors").is_none(), "{response}");
        let attributes = &app.profile(&id).await["attributes"];
        assert_eq!(attributes["max"], json!(f64::MAX));
        assert_eq!(attributes["tiny"], json!(5e-324));
        assert_eq!(attributes["big"], json!(9_007_199_254_740_993_i64));
        assert_eq!(attributes["neg"], json!(i64::MIN));
        assert_eq!(attributes["dec"], json!(12.5));
        assert_eq!(attributes["e"], json!(0.0025));
        // And keeps reading back after another update.
        let response = app.update(&id, json!({"scrip": {"attributes": {"other": 1}}})).await;
        assert!(response.get("errors").is_none(), "{response}");
    }

    async fn a_profile_holds_at_most_256_attribute_keys_and_an_update_names_at_most_100(app) {
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        let keys = |from: usize, count: usize| {
            Value::Object((from..from + count).map(|i| (format!("k{i}"), json!(i))).collect())
        };
        let response = app.update(&id, json!({"scrip": {"attributes": keys(0, 101)}})).await;
        assert_eq!(code(&response), "VALIDATION_FAILED", "{response}");
        for from in [0, 100] {
            let response = app.update(&id, json!({"scrip": {"attributes": keys(from, 100)}})).await;
            assert!(response.get("errors").is_none(), "{response}");
        }
        let response = app.update(&id, json!({"scrip": {"attributes": keys(200, 57)}})).await;
        assert_eq!(code(&response), "VALIDATION_FAILED", "{response}");
        assert_eq!(response["errors"][0]["extensions"]["field"], "attributes", "{response}");
        let response = app.update(&id, json!({"scrip": {"attributes": keys(200, 56)}})).await;
        assert!(response.get("errors").is_none(), "{response}");
        assert_eq!(app.profile(&id).await["attributes"].as_object().unwrap().len(), 256);
    }
}

on_both_databases! {
    async fn tag_keys_that_look_the_same_are_one_key(app) {
        let (composed, decomposed) = ("Caf\u{e9}", "Cafe\u{301}");
        let id = app.create(json!({"tags": [{"key": decomposed, "value": "a"}]})).await["id"].as_str().unwrap().to_owned();
        let response = app.update(&id, json!({"fragment": {"tags": {"create": [{"key": composed, "value": "b"}]}}})).await;
        assert_eq!(code(&response), "TAG_ALREADY_EXISTS", "{response}");
        let response = app.update(&id, json!({"scrip": {"tags": [composed, decomposed]}})).await;
        assert!(response.get("errors").is_none(), "{response}");
        assert_eq!(app.profile(&id).await["tags"], json!([{"key": composed, "value": null}]));
        let found = app.ok("query($t: String) { profiles(filter: {tag: $t}) { totalCount } }", json!({"t": decomposed})).await;
        assert_eq!(found["profiles"]["totalCount"], 1);
        let response = app.update(&id, json!({"fragment": {"tags": {"delete": [{"key": decomposed}]}}})).await;
        assert!(response.get("errors").is_none(), "{response}");
        assert_eq!(app.profile(&id).await["tags"], json!([]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_argument_its_type_cannot_hold_is_refused_with_a_code() {
    let app = TestApp::sqlite().await;
    for (query, variables) in [
        ("{ profiles(first: 2147483648) { totalCount } }", json!({})),
        (
            "query($f: Int!) { profiles(first: $f) { totalCount } }",
            json!({"f": 2_147_483_648_i64}),
        ),
        (
            "mutation { updateProfile(ref: {id: \"x\"}, update: {scrip: {tags: []}}, expectedVersion: 99999999999) { changes { field } } }",
            json!({}),
        ),
    ] {
        let response = app.graphql(query, variables).await;
        let errors = response["errors"].as_array().expect("errors");
        assert!(errors.iter().all(|e| e["extensions"]["code"].is_string()), "{response}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_its_headers_too_slowly_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::sqlite().await;
    let mut stream = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let closed = async {
        let mut buffer = [0u8; 256];
        for byte in b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
            .iter()
            .chain(&[b'x'; 100])
        {
            if stream.write_all(&[*byte]).await.is_err() {
                return;
            }
            // A byte a second; the server may close (read 0 or an error) at any point.
            if let Ok(read) = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buffer)).await
                && !matches!(read, Ok(n) if n > 0)
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), closed)
        .await
        .expect("the connection is closed");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_sends_connection_init_is_closed_with_4408() {
    let app = TestApp::sqlite().await;
    let mut socket = Subscriber::open(&app.address).await.unwrap();
    let close = socket
        .message(Duration::from_secs(15))
        .await
        .expect("the socket is closed");
    assert_eq!(
        (&close["type"], &close["code"]),
        (&json!("close"), &json!(4408)),
        "{close}"
    );
}

#[tokio::test]
async fn the_batch_that_answered_159_mb_is_refused_before_it_runs() {
    let app = TestApp::sqlite().await;
    let key = app.key("acme", Scope::Read).await;
    let aliases: String = (0..10)
        .map(|i| format!("p{i}: profiles(first: 100) {{ nodes {{ attributes }} }} "))
        .collect();
    let batch: Vec<Value> = (0..10).map(|_| json!({"query": format!("{{ {aliases} }}")})).collect();
    let (status, body) = post(&app, &key, &Value::Array(batch)).await;
    assert_eq!((status, code(&body)), (400, "QUERY_TOO_COMPLEX"), "{body}");
    // One of its operations alone may run: it asks for 1,020 fields.
    let (status, body) = post(&app, &key, &json!({"query": format!("{{ {aliases} }}")})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"]["p9"]["nodes"].is_array(), "{body}");
}

#[tokio::test]
async fn a_response_past_max_response_bytes_is_cut_off_with_response_too_large() {
    let app = TestApp::sqlite_with(profile_gateway::http::EdgeConfig {
        limits: profile_gateway::http::Limits {
            max_response_bytes: 20_000,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let key = app.admin_key.clone();
    let mut ids = Vec::new();
    for i in 0..3 {
        let profile = app
            .create(json!({"attributes": {"note": "x".repeat(8_000), "i": i}}))
            .await;
        ids.push(profile["id"].as_str().unwrap().to_owned());
    }
    let too_large = |body: &Value| {
        assert_eq!(code(body), "RESPONSE_TOO_LARGE", "{body}");
        assert!(body["data"].is_null(), "{body}");
        assert!(body["extensions"]["requestId"].is_string(), "{body}");
    };
    // A page is charged as it is read: the third profile's attributes pass the limit.
    let page = json!({"query": "{ profiles(first: 10) { nodes { attributes } } }"});
    let (status, body) = post(&app, &key, &page).await;
    assert_eq!(status, 200);
    too_large(&body);
    // Two profiles fit.
    let (status, body) = post(
        &app,
        &key,
        &json!({"query": "{ profiles(first: 2) { nodes { attributes } } }"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["data"]["profiles"]["nodes"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );
    // Single profiles are not charged as they are read; the response is cut off as it is written.
    let three = format!(
        "{{ {} }}",
        ids.iter()
            .enumerate()
            .map(|(i, id)| format!("p{i}: profile(ref: {{id: \"{id}\"}}) {{ attributes }} "))
            .collect::<String>()
    );
    let (_, body) = post(&app, &key, &json!({"query": three})).await;
    too_large(&body);
    // A batch's responses share the limit.
    let one = |id: &str| json!({"query": format!("{{ profile(ref: {{id: \"{id}\"}}) {{ attributes }} }}")});
    let (status, body) = post(&app, &key, &json!([one(&ids[0]), one(&ids[1]), one(&ids[2])])).await;
    assert_eq!(status, 200);
    assert!(body[0]["data"]["profile"]["attributes"].is_object(), "{body}");
    assert!(body[1]["data"]["profile"]["attributes"].is_object(), "{body}");
    too_large(&body[2]);
}

on_both_databases! {
    async fn values_stored_before_the_limits_are_repaired_by_a_migration_and_read_again(app) {
        use sea_orm::ConnectionTrait;

        let id = app
            .create(json!({"tags": [{"key": "Caf\u{e9}", "value": "a"}, {"key": "x", "value": "b"}]}))
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let response = app.update(&id, json!({"scrip": {"attributes": {"k": 1}}})).await;
        assert!(response.get("errors").is_none(), "{response}");
        // What the gateway stored before the limits: a value nested past what a read parses, a
        // number no float holds, and a tag key in NFD beside the same key in NFC.
        let db = profile_gateway::db::connect(&app.database_url).await.unwrap();
        let postgres = db.get_database_backend() == sea_orm::DbBackend::Postgres;
        let deep = nested("[", "1", "]", 200);
        let attributes = format!(r#"{{"deep": {deep}, "big": 1e400, "kept": "yes"}}"#);
        let changes = format!(r#"[{{"field": "attributes.deep", "before": null, "after": {deep}}}]"#);
        let json = |text: &str| if postgres { format!("CAST('{text}' AS jsonb)") } else { format!("'{text}'") };
        let uuid = |id: &str| if postgres { format!("'{id}'") } else { format!("X'{}'", id.replace('-', "")) };
        for sql in [
            format!("UPDATE profiles SET attributes = {} WHERE id = {}", json(&attributes), uuid(&id)),
            format!("UPDATE profile_changes SET changes = {} WHERE profile_id = {} AND version = 2", json(&changes), uuid(&id)),
            format!("INSERT INTO profile_tags (profile_id, key, value) VALUES ({}, 'Cafe\u{301}', 'nfd')", uuid(&id)),
            format!("UPDATE profile_tags SET key = 'x\u{301}' WHERE key = 'x' AND profile_id = {}", uuid(&id)),
        ] {
            db.execute_unprepared(&sql).await.unwrap_or_else(|err| panic!("{sql}: {err}"));
        }
        // Forget that the repair ran, so that the next start runs it.
        db.execute_unprepared("DELETE FROM seaql_migrations WHERE version = 'm20261207_000005_repair_unreadable_values'")
            .await
            .unwrap();
        let replica = app.replica().await;
        let read = replica
            .ok(
                "query($id: ID!) { profile(ref: {id: $id}) { attributes tags { key value } history(first: 5) { nodes { version changes { field after } } } } }",
                json!({"id": id}),
            )
            .await;
        let profile = &read["profile"];
        // PostgreSQL wrote the number out in full.
        let big = if postgres { format!("1{}", "0".repeat(400)) } else { "1e400".to_owned() };
        assert_eq!(profile["attributes"], json!({"deep": deep, "big": big, "kept": "yes"}), "{read}");
        assert_eq!(profile["tags"], json!([{"key": "Caf\u{e9}", "value": "a"}, {"key": "x\u{301}", "value": "b"}]), "{read}");
        assert_eq!(profile["history"]["nodes"][0]["changes"][0]["after"], json!(deep), "{read}");
        // And the profile takes updates again.
        let response = replica.update(&id, json!({"scrip": {"attributes": {"k": 2}}})).await;
        assert!(response.get("errors").is_none(), "{response}");
    }
}
