//! Two gateways on one PostgreSQL behave as one.

use std::collections::HashSet;

use futures::future::join_all;
use serde_json::json;

use crate::concurrency::hot_slim_updates;
use crate::helpers::TestApp;
use crate::subscriptions::{EVERY_CHANGE, Subscriber};

async fn two_replicas() -> Option<(TestApp, TestApp)> {
    let first = TestApp::postgres().await?;
    let second = first.replica().await;
    Some((first, second))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_through_two_replicas_lose_nothing() {
    let Some((a, b)) = two_replicas().await else { return };
    let id = a.create(json!({})).await["id"].as_str().unwrap().to_owned();
    let clients = (0..8).map(|client| {
        let (replica, id) = (if client % 2 == 0 { &a } else { &b }, id.clone());
        async move {
            for n in 0..25 {
                let response = replica
                    .update(&id, json!({"scrip": {"attributes": { format!("c{client}_{n}"): n }}}))
                    .await;
                assert!(response.get("errors").is_none(), "{response}");
            }
        }
    });
    join_all(clients).await;
    let profile = b.profile(&id).await;
    assert_eq!(profile["attributes"].as_object().unwrap().len(), 200);
    assert_eq!(profile["version"], 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_updates_through_two_replicas_each_start_from_every_earlier_update() {
    // Each replica's turn remembers the profile as it last wrote it; the other replica's
    // writes make that stale, which must cost round trips, never an update.
    let Some((a, b)) = two_replicas().await else { return };
    let id = a.create(json!({})).await["id"].as_str().unwrap().to_owned();
    hot_slim_updates(&[&a, &b], &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_holds_across_replicas() {
    let Some((a, b)) = two_replicas().await else { return };
    let send = |replica: &TestApp, key: &str| {
        replica
            .client
            .post(format!("{}/graphql", replica.address))
            .header("X-API-Key", &replica.admin_key)
            .header("Idempotency-Key", key.to_owned())
            .json(&json!({"query": "mutation { createProfile(input: {}) { id } }"}))
            .send()
    };
    let first = send(&a, "one").await.unwrap().text().await.unwrap();
    let again = send(&b, "one").await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.text().await.unwrap(), first);
    // Racing through both replicas, one key applies once.
    let racing = join_all((0..8).map(|n| send(if n % 2 == 0 { &a } else { &b }, "two"))).await;
    let bodies: HashSet<String> = join_all(racing.into_iter().map(|r| async { r.unwrap().text().await.unwrap() }))
        .await
        .into_iter()
        .collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let count = a.ok("{ profiles { totalCount } }", json!({})).await;
    assert_eq!(count["profiles"]["totalCount"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_reaches_the_subscribers_of_the_other() {
    let Some((a, b)) = two_replicas().await else { return };
    let probe = a.create(json!({})).await["id"].as_str().unwrap().to_owned();
    let mut on_b = Subscriber::connect(&b.address, json!({"X-API-Key": b.admin_key}))
        .await
        .unwrap();
    on_b.subscribe("1", EVERY_CHANGE, json!({})).await;
    // The probe's changes go through A, so B's subscriber is live once it hears one.
    on_b.wait_until_live(&a, &a.admin_key, &probe).await;
    let created = a.create(json!({"externalId": "via-a"})).await;
    let event = on_b.next().await["data"]["profileChanged"].clone();
    assert_eq!(event["profileId"], created["id"]);
    assert_eq!(event["profile"]["externalId"], "via-a");
}
