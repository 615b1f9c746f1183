//! A bounded, deterministic fuzz run against a live server: random and malformed bodies,
//! documents, variables and headers. No response may be a 5xx, and no stored profile may
//! change (updates carry an expectedVersion no profile has, deletes name no stored profile).

use profile_gateway::auth::Scope;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::on_both_databases;

const ROUNDS: usize = 300;

const SEEDS: &[&str] = &[
    "query($r: ProfileRef!) { profile(ref: $r) { id serialNumber tags { key value } attributes values customFields { name value } } }",
    "{ profiles(first: 5, filter: {tag: \"vip\"}) { totalCount edges { cursor node { id groups } } pageInfo { endCursor } } }",
    "query($f: Int!, $a: String) { profiles(first: $f, after: $a) { nodes { id } } }",
    "{ customFields { name type options maxLength } __typename }",
    "mutation($r: ProfileRef!, $u: ProfileUpdate!) { updateProfile(ref: $r, update: $u, expectedVersion: -1) { changes { field } } }",
    "mutation { setProfileStatus(ref: {externalId: \"nobody\"}, status: CLOSED) { status } }",
    "query Q { ...F } fragment F on Query { profiles { nodes { ...P } } } fragment P on Profile { id name }",
    "{ __schema { types { name fields { name args { name type { name ofType { name } } } } } } }",
];

const NOISE: &[char] = &[
    '{', '}', '(', ')', '[', ']', ':', '$', '!', '@', '.', '"', '\\', ' ', '\n', '#', ',', '=', '…', '\u{0}',
];

/// Draws one value of `strategy`.
fn draw<S: Strategy>(runner: &mut TestRunner, strategy: S) -> S::Value {
    strategy.new_tree(runner).expect("a value").current()
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        prop::sample::select(vec!["S", "vip", "ACTIVE", "1", "", "2025-01-01", "true"]).prop_map(Value::from),
    ];
    let keys = prop::sample::select(vec![
        "scrip",
        "spruce",
        "fragment",
        "profileValues",
        "competitionLabs",
        "id",
        "externalId",
        "serialNumber",
        "tags",
        "attributes",
        "values",
        "name",
        "value",
        "key",
        "create",
        "update",
        "set",
        "delete",
        "profile",
        "latitude",
        "memberRefId",
        "memberType",
        "groups",
        "metadata",
    ]);
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..5)
                .prop_map(|entries| Value::Object(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

/// A seed document with a few random edits: deletions, repeats, noise, truncation.
fn mangle(runner: &mut TestRunner, document: &str) -> String {
    let mut chars: Vec<char> = document.chars().collect();
    for _ in 0..draw(runner, 1usize..5) {
        if chars.is_empty() {
            break;
        }
        let at = draw(runner, 0..chars.len());
        match draw(runner, 0u8..4) {
            0 => {
                let end = (at + draw(runner, 1usize..8)).min(chars.len());
                chars.drain(at..end);
            }
            1 => {
                let end = (at + draw(runner, 1usize..12)).min(chars.len());
                let copy: Vec<char> = chars[at..end].to_vec();
                chars.splice(at..at, copy);
            }
            2 => chars.insert(at, NOISE[draw(runner, 0..NOISE.len())]),
            _ => chars.truncate(at),
        }
    }
    chars.into_iter().collect()
}

async fn snapshot(app: &TestApp) -> Value {
    app.ok(
        "{ profiles(first: 100) { totalCount nodes { id serialNumber externalId status version firstName attributes tags { key value } groups values } } }",
        json!({}),
    )
    .await
}

on_both_databases! {
    async fn random_and_malformed_requests_get_no_5xx_and_change_no_profile(app) {
        app.ok("mutation { defineCustomField(input: {name: \"Size\", type: DROPDOWN, options: [\"S\", \"M\"]}) { name } }", json!({})).await;
        for n in 0..3 {
            app.create(json!({"externalId": format!("ext-{n}"), "tags": [{"key": "vip", "value": "1"}], "attributes": {"n": n}, "groups": ["g"]})).await;
        }
        let before = snapshot(&app).await;
        let write = app.key("default", Scope::Write).await;
        let mut runner = TestRunner::deterministic();
        let refs = [json!({"externalId": "ext-1"}), json!({"serialNumber": "2"}), json!({"id": "nope"})];
        let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
        for round in 0..ROUNDS {
            let seed = SEEDS[round % SEEDS.len()];
            let variables = json!({
                "r": refs[round % refs.len()].clone(),
                "u": draw(&mut runner, json_value()),
                "f": draw(&mut runner, json_value()),
            });
            let (body, content_type, accept): (Vec<u8>, &str, Option<&str>) = match round % 6 {
                0 => (draw(&mut runner, prop::collection::vec(any::<u8>(), 0..200)), "application/json", None),
                1 => (draw(&mut runner, json_value()).to_string().into_bytes(), "application/json", None),
                2 => (json!({"query": mangle(&mut runner, seed), "variables": variables}).to_string().into_bytes(), "application/json", None),
                3 => (json!({"query": seed, "variables": variables}).to_string().into_bytes(), "application/json", Some("application/json")),
                4 => {
                    let batch: Vec<Value> = (0..draw(&mut runner, 0usize..4)).map(|i| json!({"query": SEEDS[(round + i) % 4]})).collect();
                    (Value::Array(batch).to_string().into_bytes(), "application/json", Some("*/*"))
                }
                _ => {
                    let content_type = ["text/plain", "application/json; charset=latin1", "application/graphql", "application/json"][(round / 6) % 4];
                    let accept = ["text/html, */*;q=0.1", "text/html", "application/xml"][(round / 6) % 3];
                    (json!({"query": seed, "variables": variables}).to_string().into_bytes(), content_type, Some(accept))
                }
            };
            let mut request = app
                .client
                .post(format!("{}/graphql", app.address))
                .header("X-API-Key", &write)
                .header("Content-Type", content_type)
                .body(body.clone());
            if let Some(accept) = accept {
                request = request.header("Accept", accept);
            }
            let response = request.send().await.expect("the server answers");
            let status = response.status();
            *statuses.entry(status.as_u16()).or_default() += 1;
            let text = response.text().await.unwrap_or_default();
            assert!(status.as_u16() < 500, "round {round}: {status} for {}: {text}", String::from_utf8_lossy(&body));
            assert!(serde_json::from_str::<Value>(&text).is_ok(), "round {round}: not JSON: {text}");
            if round % 10 == 0 {
                let mangled = mangle(&mut runner, seed);
                let get = app
                    .client
                    .get(format!("{}/graphql", app.address))
                    .header("X-API-Key", &write)
                    .query(&[("query", mangled.as_str()), ("variables", &variables.to_string())])
                    .send()
                    .await
                    .expect("the server answers");
                assert!(get.status().as_u16() < 500, "round {round}: GET {mangled}: {}", get.status());
            }
        }
        eprintln!("statuses: {statuses:?}");
        // The run reached execution as well as every kind of refusal.
        for status in [200, 400, 406, 415] {
            assert!(statuses.contains_key(&status), "no {status} in {statuses:?}");
        }
        assert_eq!(snapshot(&app).await, before);
    }
}
