//! Frontend apps in browsers: CORS by each tenant's allowed origins.

use std::time::Duration;

use profile_gateway::auth::Scope;
use profile_gateway::http::EdgeConfig;
use profile_gateway::store::Store;
use profile_gateway::tenant::{Change, Tenants};
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::subscriptions::Subscriber;

const APP: &str = "http://127.0.0.1:18182";
const OTHER_APP: &str = "http://127.0.0.1:18183";

/// A server whose tenant `default` allows [`APP`], and whose tenant `other` allows
/// [`OTHER_APP`], set as another process would (`profile-gateway tenant set`).
async fn app_with_origins() -> TestApp {
    let app = TestApp::sqlite_with(EdgeConfig {
        api_key_cache: Duration::from_millis(100),
        ..EdgeConfig::default()
    })
    .await;
    let tenants = Tenants::cached(
        Store::new(profile_gateway::db::connect(&app.database_url).await.unwrap()),
        Duration::ZERO,
    );
    for (tenant, origin) in [("default", APP), ("other", OTHER_APP)] {
        let change = Change {
            allowed_origins: Some(vec![origin.to_owned()]),
            ..Change::default()
        };
        tenants.set(tenant, change).await.unwrap();
    }
    app
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(reqwest::Method::OPTIONS, format!("{}/graphql", app.address))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "content-type, authorization, idempotency-key",
        )
        .send()
        .await
        .unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|value| value.to_str().ok())
}

async fn post_from(
    app: &TestApp,
    origin: Option<&str>,
    key: &str,
    query: &str,
) -> (reqwest::StatusCode, Option<String>, Value) {
    let mut request = app
        .client
        .post(format!("{}/graphql", app.address))
        .header("X-API-Key", key)
        .header("Content-Type", "application/json")
        .body(json!({"query": query}).to_string());
    if let Some(origin) = origin {
        request = request.header("Origin", origin);
    }
    let response = request.send().await.unwrap();
    let allowed = header(&response, "access-control-allow-origin").map(str::to_owned);
    (response.status(), allowed, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_answered_and_one_from_any_other_is_not() {
    let app = app_with_origins().await;
    for origin in [APP, OTHER_APP] {
        let response = preflight(&app, origin).await;
        assert_eq!(response.status(), 204);
        assert_eq!(header(&response, "access-control-allow-origin"), Some(origin));
        let methods = header(&response, "access-control-allow-methods")
            .unwrap()
            .to_ascii_uppercase();
        assert!(methods.contains("GET") && methods.contains("POST"), "{methods}");
        let headers = header(&response, "access-control-allow-headers")
            .unwrap()
            .to_ascii_lowercase();
        for name in ["content-type", "authorization", "x-api-key", "idempotency-key"] {
            assert!(headers.contains(name), "{headers}");
        }
        assert!(header(&response, "access-control-max-age").is_some());
        assert!(header(&response, "access-control-allow-credentials").is_none());
        assert!(
            header(&response, "vary")
                .unwrap()
                .to_ascii_lowercase()
                .contains("origin")
        );
    }
    let response = preflight(&app, "http://evil.example").await;
    assert_eq!(response.status(), 204);
    let cors: Vec<&str> = response
        .headers()
        .keys()
        .map(|name| name.as_str())
        .filter(|name| name.starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "{cors:?}");
}

#[tokio::test]
async fn a_request_from_an_origin_its_own_tenant_does_not_allow_is_refused_before_it_runs() {
    let app = app_with_origins().await;
    let create = "mutation { createProfile(input: {}) { id } }";
    // The tenant's own origin: served, with the headers a browser needs to read the answer.
    let response = app
        .client
        .post(format!("{}/graphql", app.address))
        .header("X-API-Key", &app.admin_key)
        .header("Content-Type", "application/json")
        .header("Origin", APP)
        .body(json!({"query": create}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "access-control-allow-origin"), Some(APP));
    let exposed = header(&response, "access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("x-request-id") && exposed.contains("idempotent-replayed"),
        "{exposed}"
    );
    // Another tenant's origin, allowed for preflights: refused for this tenant's key.
    let (status, _, body) = post_from(&app, Some(OTHER_APP), &app.admin_key, create).await;
    assert_eq!(status, 403);
    assert_eq!(body["errors"][0]["extensions"]["code"], "ORIGIN_NOT_ALLOWED", "{body}");
    // An origin no tenant allows: refused too.
    let (status, allowed, body) = post_from(&app, Some("http://evil.example"), &app.admin_key, create).await;
    assert_eq!((status.as_u16(), allowed), (403, None));
    assert_eq!(body["errors"][0]["extensions"]["code"], "ORIGIN_NOT_ALLOWED", "{body}");
    let count = app.ok("{ profiles { totalCount } }", json!({})).await;
    assert_eq!(count["profiles"]["totalCount"], 1);
    // No Origin (a server, curl), or the gateway's own (GraphiQL): no check.
    let (status, _, _) = post_from(&app, None, &app.admin_key, create).await;
    assert_eq!(status, 200);
    let own = app.address.clone();
    let (status, _, _) = post_from(&app, Some(&own), &app.admin_key, create).await;
    assert_eq!(status, 200);
    // The other tenant's key from its own origin.
    let theirs = app.key("other", Scope::Write).await;
    let (status, allowed, _) = post_from(&app, Some(OTHER_APP), &theirs, create).await;
    assert_eq!((status.as_u16(), allowed.as_deref()), (200, Some(OTHER_APP)));
}

#[tokio::test]
async fn a_tenants_new_origins_reach_a_running_server_within_the_cache_time() {
    let app = app_with_origins().await;
    let later = "http://127.0.0.1:18184";
    let (status, _, _) = post_from(&app, Some(later), &app.admin_key, "{ __typename }").await;
    assert_eq!(status, 403);
    let tenants = Tenants::cached(
        Store::new(profile_gateway::db::connect(&app.database_url).await.unwrap()),
        Duration::ZERO,
    );
    let change = Change {
        allowed_origins: Some(vec![APP.to_owned(), later.to_owned()]),
        ..Change::default()
    };
    tenants.set("default", change).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, allowed, _) = post_from(&app, Some(later), &app.admin_key, "{ __typename }").await;
    assert_eq!((status.as_u16(), allowed.as_deref()), (200, Some(later)));
}

#[tokio::test]
async fn a_socket_from_an_origin_outside_its_tenants_list_is_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let app = app_with_origins().await;
    let open = |origin: &str| {
        let url = format!("{}/graphql", app.address.replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().unwrap());
        request.headers_mut().insert("Origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    // No tenant allows it: the upgrade is refused.
    let refused = open("http://evil.example").await;
    assert!(refused.is_err(), "the upgrade went through");
    // Another tenant's origin: the socket opens, and its connection_init is refused with 4403.
    let (socket, _) = open(OTHER_APP).await.unwrap();
    let mut subscriber = Subscriber::from_socket(socket);
    subscriber
        .send(json!({"type": "connection_init", "payload": {"X-API-Key": app.admin_key}}))
        .await;
    let closed = subscriber.message(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        (&closed["type"], &closed["code"]),
        (&json!("close"), &json!(4403)),
        "{closed}"
    );
    // Its own origin: acknowledged.
    let (socket, _) = open(APP).await.unwrap();
    let mut subscriber = Subscriber::from_socket(socket);
    subscriber
        .send(json!({"type": "connection_init", "payload": {"X-API-Key": app.admin_key}}))
        .await;
    let ack = subscriber.message(Duration::from_secs(10)).await.unwrap();
    assert_eq!(ack["type"], "connection_ack", "{ack}");
}

/// A page of another site that DNS points at the gateway's address (rebinding) names its own
/// host: it gets GraphiQL without the key made on the first start.
#[tokio::test]
async fn graphiql_hands_the_first_starts_key_only_to_a_page_loaded_by_a_loopback_name() {
    let key = "pgw_firststart_secretsecretsecret";
    let app = TestApp::sqlite_with(EdgeConfig {
        graphiql_key: Some(key.to_owned()),
        ..EdgeConfig::default()
    })
    .await;
    let page = |host: &'static str| {
        let mut request = app.client.get(format!("{}/graphiql", app.address));
        if !host.is_empty() {
            request = request.header("Host", host);
        }
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    // reqwest names the server as the test does: 127.0.0.1:PORT.
    let hint = "profile-gateway apikey create";
    for host in ["", "localhost:8080"] {
        let html = page(host).await;
        assert!(html.contains(key) && !html.contains(hint), "{host}");
    }
    for host in ["evil.example.com", "evil.example.com:8080", "10.0.0.7"] {
        let html = page(host).await;
        assert!(html.contains("/graphql") && !html.contains(key), "{host} got the key");
        assert!(html.contains(hint), "{host}: the page says how to make a key");
    }
}
