//! `subscription profileChanged` over graphql-transport-ws on /graphql.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use profile_gateway::auth::Scope;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::TestApp;
use crate::on_both_databases;

pub const EVERY_CHANGE: &str = "subscription($r: ProfileRef) { profileChanged(ref: $r) { profileId version operation changes { field before after } profile { id externalId } } }";

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A graphql-transport-ws client.
pub struct Subscriber {
    socket: Socket,
}

impl Subscriber {
    /// Connects and sends `connection_init` with `payload`; `Err` with the close reason when the
    /// server refuses.
    pub async fn connect(address: &str, payload: Value) -> Result<Subscriber, String> {
        let mut subscriber = Subscriber::open(address).await?;
        subscriber
            .send(json!({"type": "connection_init", "payload": payload}))
            .await;
        match subscriber.message(Duration::from_secs(10)).await {
            Some(ack) if ack["type"] == "connection_ack" => Ok(subscriber),
            other => Err(format!("{other:?}")),
        }
    }

    /// A client on a socket opened elsewhere.
    pub fn from_socket(socket: Socket) -> Subscriber {
        Subscriber { socket }
    }

    /// Opens the socket and sends nothing.
    pub async fn open(address: &str) -> Result<Subscriber, String> {
        let url = format!("{}/graphql", address.replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().unwrap());
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|err| err.to_string())?;
        Ok(Subscriber { socket })
    }

    pub async fn send(&mut self, message: Value) {
        self.socket.send(Message::text(message.to_string())).await.unwrap();
    }

    /// The next JSON message, `None` on close or after `wait`.
    pub async fn message(&mut self, wait: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(wait, self.socket.next()).await.ok()?? {
                Ok(Message::Text(text)) => {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    if message["type"] == "ping" {
                        self.send(json!({"type": "pong"})).await;
                        continue;
                    }
                    return Some(message);
                }
                Ok(Message::Close(frame)) => {
                    return frame
                        .map(|f| json!({"type": "close", "code": u16::from(f.code), "reason": f.reason.to_string()}));
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        self.send(json!({"id": id, "type": "subscribe", "payload": {"query": query, "variables": variables}}))
            .await;
    }

    /// The payload of the next `next` message, or the whole message if it is something else.
    pub async fn next(&mut self) -> Value {
        let message = self.message(Duration::from_secs(10)).await.expect("a message");
        if message["type"] == "next" {
            message["payload"].clone()
        } else {
            message
        }
    }

    /// Waits until the subscription `id` is live: changes `probe` until its first event comes.
    pub async fn wait_until_live(&mut self, app: &TestApp, key: &str, probe: &str) {
        for attempt in 0..100 {
            let update = json!({"ref": {"id": probe}, "update": {"scrip": {"attributes": {"probe": attempt}}}});
            app.graphql_as(key, crate::helpers::UPDATE, update).await;
            if let Some(message) = self.message(Duration::from_millis(100)).await {
                assert_eq!(message["type"], "next", "{message}");
                // Drain events of earlier probes.
                while self.message(Duration::from_millis(200)).await.is_some() {}
                return;
            }
        }
        panic!("the subscription never went live");
    }
}

on_both_databases! {
    async fn a_subscriber_sees_every_committed_change_of_its_tenant(app) {
        let probe = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        let mut subscriber = Subscriber::connect(&app.address, json!({"X-API-Key": app.admin_key})).await.unwrap();
        subscriber.subscribe("1", EVERY_CHANGE, json!({})).await;
        subscriber.wait_until_live(&app, &app.admin_key, &probe).await;

        let created = app.create(json!({"externalId": "ana-1"})).await;
        let id = created["id"].as_str().unwrap().to_owned();
        let event = subscriber.next().await["data"]["profileChanged"].clone();
        assert_eq!((event["profileId"].as_str(), event["version"].as_i64(), event["operation"].as_str()), (Some(id.as_str()), Some(1), Some("createProfile")));
        assert_eq!(event["profile"]["externalId"], "ana-1");

        app.update(&id, json!({"scrip": {"tags": ["vip"]}})).await;
        let event = subscriber.next().await["data"]["profileChanged"].clone();
        assert_eq!(event["operation"], "updateProfile.scrip");
        assert_eq!(event["changes"], json!([{"field": "tags.vip", "before": null, "after": {"value": null}}]));

        app.ok("mutation($id: ID!) { deleteProfile(ref: {id: $id}) { id } }", json!({"id": id})).await;
        let event = subscriber.next().await["data"]["profileChanged"].clone();
        assert_eq!((event["operation"].as_str(), event["profile"].clone()), (Some("deleteProfile"), Value::Null));
    }

    async fn a_subscriber_of_one_profile_sees_only_that_profile(app) {
        let watched = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        let other = app.create(json!({})).await["id"].as_str().unwrap().to_owned();
        let mut subscriber = Subscriber::connect(&app.address, json!({"X-API-Key": app.admin_key})).await.unwrap();
        subscriber.subscribe("1", EVERY_CHANGE, json!({"r": {"id": watched}})).await;
        subscriber.wait_until_live(&app, &app.admin_key, &watched).await;
        app.update(&other, json!({"scrip": {"tags": ["x"]}})).await;
        app.update(&watched, json!({"scrip": {"tags": ["y"]}})).await;
        let event = subscriber.next().await["data"]["profileChanged"].clone();
        assert_eq!(event["profileId"], watched.as_str());
        assert_eq!(event["changes"][0]["field"], "tags.y");
    }

    async fn a_subscriber_never_sees_another_tenant(app) {
        let theirs = app.key("other", Scope::Write).await;
        let probe = app.graphql_as(&theirs, "mutation { createProfile(input: {}) { id } }", json!({})).await["data"]["createProfile"]["id"]
            .as_str().unwrap().to_owned();
        let mut subscriber = Subscriber::connect(&app.address, json!({"apiKey": theirs})).await.unwrap();
        subscriber.subscribe("1", EVERY_CHANGE, json!({})).await;
        subscriber.wait_until_live(&app, &theirs, &probe).await;
        app.create(json!({"externalId": "mine"})).await;
        app.graphql_as(&theirs, "mutation { createProfile(input: {externalId: \"theirs\"}) { id } }", json!({})).await;
        let event = subscriber.next().await["data"]["profileChanged"].clone();
        assert_eq!(event["profile"]["externalId"], "theirs");
    }

    async fn a_subscription_needs_a_valid_key_and_the_socket_runs_subscriptions_only(app) {
        assert!(Subscriber::connect(&app.address, json!({})).await.is_err());
        assert!(Subscriber::connect(&app.address, json!({"X-API-Key": "pgw_nonsense"})).await.is_err());
        let mut subscriber =
            Subscriber::connect(&app.address, json!({"Authorization": format!("Bearer {}", app.admin_key)})).await.unwrap();
        subscriber.subscribe("1", "mutation { createProfile(input: {}) { id } }", json!({})).await;
        let refused = subscriber.next().await;
        assert_eq!((&refused["type"], &refused["id"]), (&json!("error"), &json!("1")), "{refused}");
        assert_eq!(refused["payload"][0]["extensions"]["code"], "BAD_REQUEST", "{refused}");
        assert_eq!(app.ok("{ profiles { totalCount } }", json!({})).await["profiles"]["totalCount"], 0);
    }
}
