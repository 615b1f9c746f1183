//! Concurrent writers: nothing lost, nothing doubled, no "database is locked".

use futures::future::join_all;
use serde_json::json;

use crate::helpers::TestApp;
use crate::on_both_databases;

const CLIENTS: usize = 8;
const UPDATES_PER_CLIENT: usize = 25;

on_both_databases! {
    async fn concurrent_scrip_merges_of_distinct_keys_lose_nothing(app) {
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        let clients = (0..CLIENTS).map(|client| {
            let (app, id) = (&app, id.clone());
            async move {
                for n in 0..UPDATES_PER_CLIENT {
                    let key = format!("c{client}_{n}");
                    let response = app.update(&id, json!({"scrip": {"attributes": { key: n }}})).await;
                    assert!(response.get("errors").is_none(), "client {client} update {n}: {response}");
                }
            }
        });
        join_all(clients).await;
        let profile = app.profile(&id).await;
        assert_eq!(profile["attributes"].as_object().unwrap().len(), CLIENTS * UPDATES_PER_CLIENT);
        assert_eq!(profile["version"], 1 + CLIENTS * UPDATES_PER_CLIENT);
    }

    async fn concurrent_tag_writes_keep_every_tag_and_record_each_version_once(app) {
        // Contended writers conflict on the version they read and fall back to the row lock:
        // every tag must land, and history must hold each version exactly once.
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        let updates_per_client = 10;
        let clients = (0..CLIENTS).map(|client| {
            let (app, id) = (&app, id.clone());
            async move {
                for n in 0..updates_per_client {
                    let set = json!([{"key": format!("c{client}_{n}"), "value": format!("{n}")}]);
                    let response = app.update(&id, json!({"fragment": {"tags": {"set": set}}})).await;
                    assert!(response.get("errors").is_none(), "client {client} update {n}: {response}");
                }
            }
        });
        join_all(clients).await;
        let writes = CLIENTS * updates_per_client;
        let profile = app.profile(&id).await;
        assert_eq!(profile["tags"].as_array().unwrap().len(), writes);
        assert_eq!(profile["version"], 1 + writes);
        assert_each_version_recorded_once(&app, &id, writes).await;
    }

    async fn hot_updates_that_show_no_custom_fields_each_start_from_every_earlier_update(app) {
        // Such updates of a contended profile start from the profile as the previous one wrote
        // it, without reading it: each result must still hold every earlier update.
        let id = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        hot_slim_updates(&[&app], &id).await;
    }

    async fn concurrent_creates_get_distinct_serial_numbers_and_one_external_id_wins(app) {
        let creates = (0..CLIENTS).map(|n| {
            let app = &app;
            async move {
                let plain = app.graphql("mutation { createProfile(input: {}) { serialNumber } }", json!({})).await;
                let contested = app.graphql("mutation { createProfile(input: {externalId: \"same\"}) { serialNumber } }", json!({})).await;
                (n, plain, contested)
            }
        });
        let results = join_all(creates).await;
        let mut serials = Vec::new();
        let mut winners = 0;
        for (n, plain, contested) in results {
            assert!(plain.get("errors").is_none(), "create {n}: {plain}");
            serials.push(plain["data"]["createProfile"]["serialNumber"].as_str().unwrap().parse::<u32>().unwrap());
            match contested.get("errors") {
                None => {
                    winners += 1;
                    serials.push(contested["data"]["createProfile"]["serialNumber"].as_str().unwrap().parse().unwrap());
                }
                Some(errors) => assert_eq!(errors[0]["extensions"]["code"], "DUPLICATE_EXTERNAL_ID", "create {n}: {contested}"),
            }
        }
        assert_eq!(winners, 1);
        serials.sort_unstable();
        serials.dedup();
        assert_eq!(serials.len(), CLIENTS + 1, "serial numbers repeat: {serials:?}");
    }
}

/// Slim scrip updates of the profile `id` (showing neither groups nor custom fields) from
/// [`CLIENTS`] clients at once, each through the next of `replicas` in turn: each adds an
/// attribute of its own and replaces the tags with one of its own. Every result must show
/// every earlier update, and nothing may be lost or recorded twice.
pub async fn hot_slim_updates(replicas: &[&TestApp], id: &str) {
    const SLIM: &str = "mutation($id: ID!, $update: ProfileUpdate!) { updateProfile(ref: {id: $id}, update: $update) { profile { version attributes tags { key } } } }";
    let updates_per_client = 10;
    let clients = (0..CLIENTS).map(|client| {
        let app = replicas[client % replicas.len()];
        async move {
            for n in 0..updates_per_client {
                let key = format!("c{client}_{n}");
                let update = json!({"scrip": {"attributes": { &key: n }, "tags": [&key]}});
                let data = app.ok(SLIM, json!({"id": id, "update": update})).await;
                let profile = &data["updateProfile"]["profile"];
                let attributes = profile["attributes"].as_object().unwrap();
                assert!(attributes.contains_key(&key), "{profile}");
                assert_eq!(
                    attributes.len() as u64 + 1,
                    profile["version"].as_u64().unwrap(),
                    "{profile}"
                );
                assert_eq!(profile["tags"], json!([{"key": key}]));
            }
        }
    });
    join_all(clients).await;
    let writes = CLIENTS * updates_per_client;
    let profile = replicas[0].profile(id).await;
    assert_eq!(profile["attributes"].as_object().unwrap().len(), writes);
    assert_eq!(profile["version"], 1 + writes);
    assert_each_version_recorded_once(replicas[0], id, writes).await;
}

/// The history of the profile `id` holds versions `writes + 1` down to 1, each once.
async fn assert_each_version_recorded_once(app: &TestApp, id: &str, writes: usize) {
    let history = app
        .ok(
            "query($id: ID!) { profile(ref: {id: $id}) { history(first: 100) { nodes { version } } } }",
            json!({"id": id}),
        )
        .await;
    let versions: Vec<u64> = history["profile"]["history"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| node["version"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=1 + writes as u64).rev().collect();
    assert_eq!(versions, expected);
}
