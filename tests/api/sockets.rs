//! The graphql-transport-ws protocol's rules on a socket: each fault closes it with the
//! protocol's code, and a socket's subscriptions are bounded.

use std::time::Duration;

use profile_gateway::auth::Scope;
use profile_gateway::http::{EdgeConfig, Limits};
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::subscriptions::{EVERY_CHANGE, Subscriber};

const WAIT: Duration = Duration::from_secs(10);

/// The close code the socket ends with next, skipping other messages.
async fn closed_with(subscriber: &mut Subscriber) -> u64 {
    loop {
        let message = subscriber.message(WAIT).await.expect("a close frame");
        if message["type"] == "close" {
            return message["code"].as_u64().unwrap_or_default();
        }
    }
}

#[tokio::test]
async fn each_protocol_fault_closes_the_socket_with_its_graphql_transport_ws_code() {
    let app = TestApp::sqlite().await;
    let init = json!({"type": "connection_init", "payload": {"X-API-Key": app.admin_key}});
    // Not JSON, or not a message of the protocol: 4400.
    for bad in [
        json!("not an object"),
        json!({"type": "start", "id": "1"}),
        json!({"type": "subscribe"}),
    ] {
        let mut subscriber = Subscriber::connect(&app.address, json!({"X-API-Key": app.admin_key}))
            .await
            .unwrap();
        subscriber.send(bad.clone()).await;
        assert_eq!(closed_with(&mut subscriber).await, 4400, "{bad}");
    }
    // subscribe before connection_ack: 4401.
    let mut subscriber = Subscriber::open(&app.address).await.unwrap();
    subscriber.subscribe("1", EVERY_CHANGE, json!({})).await;
    assert_eq!(closed_with(&mut subscriber).await, 4401);
    // A key refused at connection_init: 4403.
    for payload in [json!({}), json!({"X-API-Key": "pgw_nonsense"})] {
        let mut subscriber = Subscriber::open(&app.address).await.unwrap();
        subscriber
            .send(json!({"type": "connection_init", "payload": payload}))
            .await;
        assert_eq!(closed_with(&mut subscriber).await, 4403, "{payload}");
    }
    // The id of a running subscription: 4409.
    let mut subscriber = Subscriber::connect(&app.address, json!({"X-API-Key": app.admin_key}))
        .await
        .unwrap();
    subscriber.subscribe("1", EVERY_CHANGE, json!({})).await;
    subscriber.subscribe("1", EVERY_CHANGE, json!({})).await;
    assert_eq!(closed_with(&mut subscriber).await, 4409);
    // A second connection_init: 4429.
    let mut subscriber = Subscriber::connect(&app.address, json!({"X-API-Key": app.admin_key}))
        .await
        .unwrap();
    subscriber.send(init.clone()).await;
    assert_eq!(closed_with(&mut subscriber).await, 4429);
    // A client that does not ask for graphql-transport-ws: 4406.
    let url = format!("{}/graphql", app.address.replacen("http://", "ws://", 1));
    let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut subscriber = Subscriber::from_socket(socket);
    assert_eq!(closed_with(&mut subscriber).await, 4406);
}

#[tokio::test]
async fn a_completed_id_may_be_used_again_and_a_ping_gets_a_pong() {
    let app = TestApp::sqlite().await;
    let probe = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
    let mut subscriber = Subscriber::connect(&app.address, json!({"X-API-Key": app.admin_key}))
        .await
        .unwrap();
    subscriber.send(json!({"type": "ping"})).await;
    assert_eq!(subscriber.message(WAIT).await, Some(json!({"type": "pong"})));
    subscriber.subscribe("1", EVERY_CHANGE, json!({})).await;
    subscriber.wait_until_live(&app, &app.admin_key, &probe).await;
    subscriber.send(json!({"type": "complete", "id": "1"})).await;
    subscriber.subscribe("1", EVERY_CHANGE, json!({})).await;
    subscriber.wait_until_live(&app, &app.admin_key, &probe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_runs_at_most_its_limit_of_subscriptions_each_of_which_sees_every_change() {
    let app = TestApp::sqlite_with(EdgeConfig {
        limits: Limits {
            max_subscriptions_per_socket: 3,
            ..Limits::default()
        },
        ..EdgeConfig::default()
    })
    .await;
    let probe = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
    let mut subscriber = Subscriber::connect(&app.address, json!({"X-API-Key": app.admin_key}))
        .await
        .unwrap();
    subscriber.subscribe("probe", EVERY_CHANGE, json!({})).await;
    subscriber.wait_until_live(&app, &app.admin_key, &probe).await;
    for id in ["a", "b", "c"] {
        subscriber.subscribe(id, EVERY_CHANGE, json!({})).await;
    }
    let refused = subscriber.message(WAIT).await.expect("an answer");
    assert_eq!(
        (&refused["type"], &refused["id"]),
        (&json!("error"), &json!("c")),
        "{refused}"
    );
    assert_eq!(refused["payload"][0]["extensions"]["code"], "TOO_MANY_SUBSCRIPTIONS");
    // The socket goes on: each running subscription gets the next change once.
    let id = app.create(json!({"externalId": "seen"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..3 {
        let message = subscriber.message(WAIT).await.expect("an event");
        assert_eq!(
            message["payload"]["data"]["profileChanged"]["profileId"],
            json!(id),
            "{message}"
        );
        seen.push(message["id"].as_str().unwrap().to_owned());
    }
    seen.sort();
    assert_eq!(seen, ["a", "b", "probe"]);
    // Completing one makes room for another, which goes live in a moment.
    subscriber.send(json!({"type": "complete", "id": "a"})).await;
    subscriber.subscribe("c", EVERY_CHANGE, json!({})).await;
    let mut seen: Vec<String> = Vec::new();
    while !seen.iter().any(|id| id == "c") {
        assert!(seen.len() < 300, "c never went live");
        app.create(json!({})).await;
        while let Some(message) = subscriber.message(Duration::from_millis(200)).await {
            assert_eq!(message["type"], "next", "{message}");
            seen.push(message["id"].as_str().unwrap().to_owned());
        }
    }
    assert!(!seen.iter().any(|id| id == "a"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_elsewhere_closes_its_sockets_within_the_key_cache_time() {
    let app = TestApp::sqlite_with(EdgeConfig {
        api_key_cache: Duration::from_millis(300),
        ..EdgeConfig::default()
    })
    .await;
    let key = app.key("default", Scope::Read).await;
    let id = app.keys().list().await.unwrap().last().unwrap().id;
    let mut subscriber = Subscriber::connect(&app.address, json!({"X-API-Key": key}))
        .await
        .unwrap();
    subscriber.subscribe("1", EVERY_CHANGE, json!({})).await;
    let mut other = Subscriber::connect(&app.address, json!({"X-API-Key": app.admin_key}))
        .await
        .unwrap();
    // Another process revokes the key: this server does not hear of it.
    assert!(app.keys().revoke(id).await.unwrap());
    let revoked = std::time::Instant::now();
    let message: Value = subscriber.message(WAIT).await.expect("a close frame");
    assert_eq!(message["type"], "close", "{message}");
    assert_eq!(message["code"], 4403, "{message}");
    assert!(
        revoked.elapsed() < Duration::from_millis(600),
        "closed after {:?}",
        revoked.elapsed()
    );
    // Sockets of other keys stay open.
    other.send(json!({"type": "ping"})).await;
    assert_eq!(other.message(WAIT).await, Some(json!({"type": "pong"})));
}
