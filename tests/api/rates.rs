//! Rate limits per API key and per address of failing credentials.

use profile_gateway::auth::Scope;
use profile_gateway::http::EdgeConfig;
use profile_gateway::http::rate::Rates;
use serde_json::{Value, json};

use crate::helpers::TestApp;

const COUNT: &str = "{ profiles { totalCount } }";

async fn app_with(rates: Rates) -> TestApp {
    TestApp::sqlite_with(EdgeConfig {
        rates,
        ..EdgeConfig::default()
    })
    .await
}

async fn ask(app: &TestApp, key: &str) -> (u16, Option<u64>, Value) {
    let response = app.post(Some(key), &json!({"query": COUNT})).await;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok()?.parse().ok());
    (status, retry_after, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_key_past_its_rate_gets_429_rate_limited_with_retry_after_and_other_keys_do_not() {
    let app = app_with(Rates {
        api_key_rate: 2,
        ..Rates::default()
    })
    .await;
    // A burst of three seconds' worth passes.
    for _ in 0..6 {
        let (status, _, body) = ask(&app, &app.admin_key).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, retry_after, body) = ask(&app, &app.admin_key).await;
    assert_eq!((status, retry_after), (429, Some(1)), "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED", "{body}");
    let other = app.key("default", Scope::Read).await;
    assert_eq!(ask(&app, &other).await.0, 200);
}

#[tokio::test]
async fn an_address_sending_failing_credentials_is_refused_before_any_key_is_looked_up() {
    let app = app_with(Rates {
        failed_auth_rate: 1,
        ..Rates::default()
    })
    .await;
    for _ in 0..4 {
        assert_eq!(ask(&app, "pgw_nonsense_key").await.0, 401);
    }
    // Now even a valid key from this address waits: nothing is looked up.
    let (status, retry_after, body) = ask(&app, &app.admin_key).await;
    assert_eq!((status, retry_after), (429, Some(1)), "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED", "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(ask(&app, &app.admin_key).await.0, 200);
}

#[tokio::test]
async fn a_socket_from_an_address_past_its_rate_of_failing_credentials_is_closed_with_4429() {
    use crate::subscriptions::Subscriber;

    let app = app_with(Rates {
        failed_auth_rate: 1,
        ..Rates::default()
    })
    .await;
    for _ in 0..4 {
        assert!(
            Subscriber::connect(&app.address, json!({"X-API-Key": "pgw_nonsense_key"}))
                .await
                .is_err()
        );
    }
    let Err(refused) = Subscriber::connect(&app.address, json!({"X-API-Key": app.admin_key})).await else {
        panic!("a socket from a blocked address was acknowledged");
    };
    assert!(refused.contains("4429"), "{refused}");
}
