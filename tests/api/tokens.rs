//! End-user tokens: a person acts in the `self` scope, on their own profile only; bad tokens
//! are 401 (or 503 while the issuer cannot be reached), whatever check failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use profile_gateway::http::EdgeConfig;
use profile_gateway::store::Store;
use profile_gateway::tenant::{Change, Jwt, Tenants};
use serde_json::{Value, json};

use crate::helpers::{TestApp, UPDATE};
use crate::subscriptions::Subscriber;

const RSA: &str = include_str!("../fixtures/jwt/rsa.pem");
const EC: &str = include_str!("../fixtures/jwt/ec.pem");
pub const ISSUER: &str = "https://id.example.com/";
const OTHER_ISSUER: &str = "https://id.other.example/";
pub const AUDIENCE: &str = "shop-app";

/// A JWKS server of the test's own, whose answer the test can change.
#[derive(Default)]
pub struct Issuer {
    pub fetches: AtomicUsize,
    /// 0 answers the keys; anything else answers that status.
    status: AtomicU16,
    delay_ms: AtomicU64,
    garbage: std::sync::atomic::AtomicBool,
}

impl Issuer {
    /// Serves the public half of the RSA test key as `kid` "rsa"; its URL.
    pub async fn serve(self: &Arc<Self>) -> String {
        let issuer = self.clone();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let issuer = issuer.clone();
                async move {
                    issuer.fetches.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(issuer.delay_ms.load(Ordering::SeqCst))).await;
                    match issuer.status.load(Ordering::SeqCst) {
                        0 if issuer.garbage.load(Ordering::SeqCst) => "<html>not a key set</html>".into_response(),
                        0 => {
                            let mut jwk = Jwk::from_encoding_key(&rsa(), Algorithm::RS256).unwrap();
                            jwk.common.key_id = Some("rsa".to_owned());
                            axum::Json(json!({"keys": [jwk]})).into_response()
                        }
                        status => StatusCode::from_u16(status).unwrap().into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}/jwks.json")
    }
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA.as_bytes()).unwrap()
}

/// Good claims for `sub` of [`ISSUER`].
pub fn claims(sub: &str) -> Value {
    let now = get_current_timestamp();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": now + 600, "nbf": now - 10, "iat": now})
}

/// `claims` signed with the RSA test key, `kid` "rsa".
pub fn token_of(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa".to_owned());
    encode(&header, claims, &rsa()).unwrap()
}

/// A good token of [`ISSUER`] for `sub`.
pub fn token(sub: &str) -> String {
    token_of(&claims(sub))
}

/// Sets tenant `name` to trust `issuer`'s tokens with `allowed_origins`, as
/// `profile-gateway tenant set` does.
pub async fn trust(app: &TestApp, name: &str, issuer: &str, jwks_url: &str, allowed_origins: Vec<String>) {
    let tenants = Tenants::cached(
        Store::new(profile_gateway::db::connect(&app.database_url).await.unwrap()),
        Duration::ZERO,
    );
    let jwt = Jwt {
        issuer: issuer.to_owned(),
        jwks_url: jwks_url.to_owned(),
        audience: AUDIENCE.to_owned(),
    };
    let change = Change {
        allowed_origins: Some(allowed_origins),
        jwt: Some(Some(jwt)),
    };
    tenants.set(name, change).await.unwrap();
}

/// A gateway whose tenant `default` trusts [`ISSUER`] and tenant `other` [`OTHER_ISSUER`], with
/// the JWKS server both publish their keys on.
async fn with_issuers(app: TestApp) -> (TestApp, Arc<Issuer>) {
    let issuer = Arc::new(Issuer::default());
    let jwks_url = issuer.serve().await;
    trust(&app, "default", ISSUER, &jwks_url, vec![]).await;
    trust(&app, "other", OTHER_ISSUER, &jwks_url, vec![]).await;
    (app, issuer)
}

/// Posts `body` with `Authorization: Bearer <token>`.
pub async fn post(app: &TestApp, token: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(format!("{}/graphql", app.address))
        .header("Authorization", format!("Bearer {token}"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The response body of `query` sent with `token`, without its top-level `extensions` (the
/// request id).
async fn as_person(app: &TestApp, token: &str, query: &str, variables: Value) -> Value {
    let mut body: Value = post(app, token, &json!({"query": query, "variables": variables}))
        .await
        .json()
        .await
        .unwrap();
    body.as_object_mut().map(|body| body.remove("extensions"));
    body
}

fn code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"].as_str().unwrap_or_default()
}

/// A token's status and error code.
async fn refused(app: &TestApp, token: &str) -> (u16, String) {
    let response = post(app, token, &json!({"query": "{ me { id } }"})).await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, code(&body).to_owned())
}

const ME: &str = "{ me { id externalId version name tags { key value } } }";
const CREATE: &str = "mutation($input: CreateProfileInput!) { createProfile(input: $input) { id externalId } }";

macro_rules! on_both_databases_with_issuers {
    ($(async fn $name:ident($app:ident, $issuer:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn run($app: TestApp, $issuer: Arc<Issuer>) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sqlite() {
                    let (app, issuer) = with_issuers(TestApp::sqlite().await).await;
                    run(app, issuer).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_postgres() {
                    if let Some(app) = TestApp::postgres().await {
                        let (app, issuer) = with_issuers(app).await;
                        run(app, issuer).await;
                    }
                }
            }
        )*
    };
}

on_both_databases_with_issuers! {
    async fn a_person_signs_up_once_then_reads_and_updates_their_profile_in_every_dialect(app, _issuer) {
        let ana = token("ana");
        assert_eq!(as_person(&app, &ana, ME, json!({})).await, json!({"data": {"me": null}}));
        let created = as_person(&app, &ana, CREATE, json!({"input": {"name": "Ana"}})).await;
        assert_eq!(created["data"]["createProfile"]["externalId"], "ana", "{created}");
        let id = created["data"]["createProfile"]["id"].as_str().unwrap().to_owned();
        let again = as_person(&app, &ana, CREATE, json!({"input": {"externalId": "ana"}})).await;
        assert_eq!(code(&again), "DUPLICATE_EXTERNAL_ID", "{again}");

        let updates = [
            json!({"scrip": {"attributes": {"plan": "gold"}, "tags": ["vip"]}}),
            json!({"spruce": {"profile": {"city": "Lisbon"}}}),
            json!({"fragment": {"tags": {"update": [{"key": "vip", "value": "2"}]}}}),
            json!({"profileValues": {"values": [{"name": "First_Name", "value": "Ana"}]}}),
            json!({"competitionLabs": {"id": id, "memberType": "INDIVIDUAL", "memberRefId": "ana", "name": "Ana G."}}),
        ];
        for (n, update) in updates.into_iter().enumerate() {
            let response = as_person(&app, &ana, UPDATE, json!({"ref": {"externalId": "ana"}, "update": update})).await;
            assert!(response.get("errors").is_none(), "{response:#}");
            assert_eq!(response["data"]["updateProfile"]["profile"]["version"], n + 2, "{response:#}");
        }
        // By its id or serial number too.
        let by_id = as_person(&app, &ana, UPDATE, json!({"ref": {"id": id}, "update": {"scrip": {"tags": []}}})).await;
        assert!(by_id.get("errors").is_none(), "{by_id:#}");

        let me = as_person(&app, &ana, ME, json!({})).await["data"]["me"].clone();
        assert_eq!((me["id"].as_str(), me["name"].as_str(), me["version"].as_i64()), (Some(id.as_str()), Some("Ana G."), Some(7)));
        let history = as_person(&app, &ana, "{ me { history(first: 2) { nodes { operation actor actorIssuer actorSubject } } } }", json!({})).await;
        assert_eq!(
            history["data"]["me"]["history"]["nodes"][1],
            json!({"operation": "updateProfile.competitionLabs", "actor": null, "actorIssuer": ISSUER, "actorSubject": "ana"}),
            "{history:#}"
        );
        // The tenant's own key sees who did it.
        let seen = app.ok("query($id: ID!) { profile(ref: {id: $id}) { history(first: 1) { nodes { actorSubject } } } }", json!({"id": id})).await;
        assert_eq!(seen["profile"]["history"]["nodes"][0]["actorSubject"], "ana");
    }

    async fn a_person_sees_and_changes_no_other_profile_of_their_tenant_or_another(app, _issuer) {
        let bo = app.create(json!({"externalId": "bo"})).await;
        let bo_id = bo["id"].as_str().unwrap().to_owned();
        let ana = token("ana");
        let created = as_person(&app, &ana, CREATE, json!({"input": {}})).await;
        let ana_id = created["data"]["createProfile"]["id"].as_str().unwrap().to_owned();

        for r#ref in [json!({"externalId": "bo"}), json!({"id": bo_id}), json!({"serialNumber": bo["serialNumber"]})] {
            let read = as_person(&app, &ana, "query($r: ProfileRef!) { profile(ref: $r) { id } }", json!({"r": r#ref})).await;
            assert_eq!(read, json!({"data": {"profile": null}}), "{ref}");
            let update = as_person(&app, &ana, UPDATE, json!({"ref": r#ref, "update": {"scrip": {"tags": ["x"]}}})).await;
            assert_eq!(code(&update), "NOT_FOUND", "{update}");
        }
        let own = as_person(&app, &ana, "query($id: ID!) { profile(ref: {id: $id}) { externalId } }", json!({"id": ana_id})).await;
        assert_eq!(own["data"]["profile"]["externalId"], "ana");
        let listed = as_person(&app, &ana, "{ profiles { totalCount nodes { externalId } } }", json!({})).await;
        assert_eq!(listed["data"]["profiles"], json!({"totalCount": 1, "nodes": [{"externalId": "ana"}]}));

        // Creating another's profile, or re-keying one's own, is forbidden.
        let squat = as_person(&app, &ana, CREATE, json!({"input": {"externalId": "cy"}})).await;
        assert_eq!(code(&squat), "FORBIDDEN", "{squat}");
        for rekey in [
            json!({"scrip": {"externalId": "bo"}}),
            json!({"scrip": {"externalId": null}}),
            json!({"competitionLabs": {"id": ana_id, "memberType": "INDIVIDUAL", "memberRefId": "zed"}}),
        ] {
            let response = as_person(&app, &ana, UPDATE, json!({"ref": {"id": ana_id}, "update": rekey})).await;
            assert_eq!(code(&response), "FORBIDDEN", "{rekey}: {response}");
        }
        // The tenant's own mutations are forbidden, even on one's own profile.
        for mutation in [
            "mutation($id: ID!) { setProfileStatus(ref: {id: $id}, status: SUSPENDED) { id } }",
            "mutation($id: ID!) { deleteProfile(ref: {id: $id}) { id } }",
            "mutation { defineCustomField(input: {name: \"Size\", type: TEXT}) { name } }",
        ] {
            let response = post(&app, &ana, &json!({"query": mutation, "variables": {"id": ana_id}})).await;
            let body: Value = response.json().await.unwrap();
            assert_eq!(code(&body), "FORBIDDEN", "{mutation}: {body}");
        }
        assert_eq!(app.profile(&bo_id).await["version"], 1, "bo's profile is untouched");
        assert_eq!(app.profile(&ana_id).await["externalId"], "ana");

        // A person of another tenant with the same subject finds nothing here.
        let mut of_other = claims("ana");
        of_other["iss"] = json!(OTHER_ISSUER);
        let other = token_of(&of_other);
        assert_eq!(as_person(&app, &other, ME, json!({})).await, json!({"data": {"me": null}}));
        let read = as_person(&app, &other, "query($id: ID!) { profile(ref: {id: $id}) { id } }", json!({"id": ana_id})).await;
        assert_eq!(read, json!({"data": {"profile": null}}));
        let update = as_person(&app, &other, UPDATE, json!({"ref": {"id": ana_id}, "update": {"scrip": {"tags": ["x"]}}})).await;
        assert_eq!(code(&update), "NOT_FOUND", "{update}");
    }

    async fn a_persons_socket_receives_their_own_changes_and_no_one_elses(app, _issuer) {
        let bo = app.create(json!({"externalId": "bo"})).await["id"].as_str().unwrap().to_owned();
        let ana = token("ana");
        let id = as_person(&app, &ana, CREATE, json!({"input": {}})).await["data"]["createProfile"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let payload = json!({"Authorization": format!("Bearer {ana}")});
        let mut subscriber = Subscriber::connect(&app.address, payload).await.unwrap();
        subscriber.subscribe("bo", crate::subscriptions::EVERY_CHANGE, json!({"r": {"id": bo}})).await;
        let refused = subscriber.next().await;
        assert_eq!((refused["type"].as_str(), refused["payload"][0]["extensions"]["code"].as_str()), (Some("error"), Some("NOT_FOUND")), "{refused}");
        subscriber.subscribe("me", crate::subscriptions::EVERY_CHANGE, json!({})).await;
        // Changes of another profile come first; only the person's own reaches them.
        for attempt in 0..100 {
            app.update(&bo, json!({"scrip": {"attributes": {"n": attempt}}})).await;
            let update = json!({"ref": {"id": id}, "update": {"scrip": {"attributes": {"n": attempt}}}});
            as_person(&app, &ana, UPDATE, update).await;
            if let Some(message) = subscriber.message(Duration::from_millis(100)).await {
                assert_eq!(message["payload"]["data"]["profileChanged"]["profileId"], id.as_str(), "{message}");
                return;
            }
        }
        panic!("the subscription never went live");
    }
}

#[tokio::test]
async fn every_bad_token_is_401_without_saying_why() {
    let (app, issuer) = with_issuers(TestApp::sqlite().await).await;
    let now = get_current_timestamp();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = claims("ana");
        change(&mut claims);
        token_of(&claims)
    };
    let good = token("ana");
    let (head, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let b64 = |value: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    };
    let mut admin = claims("ana");
    admin["sub"] = json!("bo");
    let public_key = Jwk::from_encoding_key(&rsa(), Algorithm::RS256).unwrap();
    let public_pem = serde_json::to_vec(&public_key).unwrap();
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("rsa".to_owned());
    let mut unknown_kid = Header::new(Algorithm::RS256);
    unknown_kid.kid = Some("rotated".to_owned());
    let mut es = Header::new(Algorithm::ES256);
    es.kid = Some("rsa".to_owned());
    let bad = [
        ("expired", with(&|c| c["exp"] = json!(now - 120))),
        ("not yet valid", with(&|c| c["nbf"] = json!(now + 120))),
        ("wrong issuer", with(&|c| c["iss"] = json!("https://evil.example/"))),
        ("wrong audience", with(&|c| c["aud"] = json!("another-app"))),
        ("no subject", with(&|c| c["sub"] = json!(""))),
        (
            "no expiry",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "kid": "rsa"})),
                b64(&claims("ana"))
            ),
        ),
        (
            "HS256 with the public key",
            encode(&hs_header, &claims("ana"), &EncodingKey::from_secret(&public_pem)).unwrap(),
        ),
        (
            "another algorithm's key",
            encode(&es, &claims("ana"), &EncodingKey::from_ec_pem(EC.as_bytes()).unwrap()).unwrap(),
        ),
        ("tampered payload", format!("{head}.{}.{signature}", b64(&admin))),
        ("unknown kid", encode(&unknown_kid, &claims("ana"), &rsa()).unwrap()),
        ("not a token", "pgw-nothing".to_owned()),
        ("three dots", "a.b.c".to_owned()),
    ];
    for (what, token) in &bad {
        assert_eq!(
            refused(&app, token).await,
            (401, "UNAUTHENTICATED".to_owned()),
            "{what}"
        );
    }
    // Every token above came within 30 s of the first fetch, so the unknown kid did not make
    // the issuer's keys be fetched again (the unit tests of `jwt` show the refetch after that).
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1);
    // Every 401 said the same.
    let messages: std::collections::BTreeSet<String> =
        futures::future::join_all(bad.iter().take(11).map(|(_, token)| async {
            let body: Value = post(&app, token, &json!({"query": "{ me { id } }"}))
                .await
                .json()
                .await
                .unwrap();
            body["errors"][0]["message"].as_str().unwrap().to_owned()
        }))
        .await
        .into_iter()
        .collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    // The good one passes.
    assert_eq!(refused(&app, &good).await, (200, String::new()));
}

#[tokio::test]
async fn an_issuer_that_is_down_slow_or_answers_garbage_is_503_until_its_keys_are_kept_then_they_serve() {
    let (app, issuer) = with_issuers(TestApp::sqlite().await).await;
    let ana = token("ana");
    issuer.status.store(503, Ordering::SeqCst);
    assert_eq!(refused(&app, &ana).await, (503, "UNAVAILABLE".to_owned()));
    let (app, issuer) = with_issuers(TestApp::sqlite().await).await;
    issuer.garbage.store(true, Ordering::SeqCst);
    assert_eq!(refused(&app, &ana).await, (503, "UNAVAILABLE".to_owned()));
    let (app, issuer) = with_issuers(TestApp::sqlite().await).await;
    issuer.delay_ms.store(6_000, Ordering::SeqCst);
    let started = std::time::Instant::now();
    assert_eq!(refused(&app, &ana).await, (503, "UNAVAILABLE".to_owned()));
    assert!(
        started.elapsed() < Duration::from_millis(5_900),
        "gave up after 5 s: {:?}",
        started.elapsed()
    );

    // Keys fetched once keep serving through an outage.
    let (app, issuer) = with_issuers(TestApp::sqlite().await).await;
    assert_eq!(refused(&app, &ana).await.0, 200);
    issuer.status.store(500, Ordering::SeqCst);
    assert_eq!(refused(&app, &token("bo")).await.0, 200);
}

#[tokio::test]
async fn a_person_past_their_rate_gets_429_and_others_do_not() {
    let app = TestApp::sqlite_with(EdgeConfig {
        rates: profile_gateway::http::rate::Rates {
            token_rate: 1,
            ..Default::default()
        },
        ..EdgeConfig::default()
    })
    .await;
    let (app, _issuer) = with_issuers(app).await;
    let ana = token("ana");
    for _ in 0..3 {
        assert_eq!(refused(&app, &ana).await.0, 200);
    }
    let response = post(&app, &ana, &json!({"query": "{ me { id } }"})).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key(header::RETRY_AFTER));
    let body: Value = response.json().await.unwrap();
    assert_eq!(code(&body), "RATE_LIMITED");
    assert_eq!(refused(&app, &token("bo")).await.0, 200);
}

#[tokio::test]
async fn one_persons_idempotency_key_never_answers_another_person() {
    let (app, _issuer) = with_issuers(TestApp::sqlite().await).await;
    let body = json!({"query": CREATE, "variables": {"input": {}}});
    let send = |token: String| {
        app.client
            .post(format!("{}/graphql", app.address))
            .header("Authorization", format!("Bearer {token}"))
            .header("Idempotency-Key", "signup")
            .json(&body)
            .send()
    };
    let ana: Value = send(token("ana")).await.unwrap().json().await.unwrap();
    let bo: Value = send(token("bo")).await.unwrap().json().await.unwrap();
    assert_eq!(ana["data"]["createProfile"]["externalId"], "ana");
    assert_eq!(bo["data"]["createProfile"]["externalId"], "bo", "{bo}");
    let replayed = send(token("ana")).await.unwrap();
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
}

#[tokio::test]
async fn an_api_key_has_no_me() {
    let app = TestApp::sqlite().await;
    let error = app.error("{ me { id } }", json!({})).await;
    assert_eq!(error["extensions"]["code"], "FORBIDDEN");
}

#[tokio::test]
async fn a_socket_opened_with_a_token_closes_when_the_token_expires() {
    let app = TestApp::sqlite_with(EdgeConfig {
        api_key_cache: Duration::from_millis(200),
        ..EdgeConfig::default()
    })
    .await;
    let (app, _issuer) = with_issuers(app).await;
    // Within the 60 s of clock skew allowed for another 2 s.
    let mut expiring = claims("ana");
    expiring["exp"] = json!(get_current_timestamp() - 58);
    let payload = json!({"Authorization": format!("Bearer {}", token_of(&expiring))});
    let mut subscriber = Subscriber::connect(&app.address, payload).await.unwrap();
    let closed = subscriber.message(Duration::from_secs(10)).await.expect("closed");
    assert_eq!(
        (closed["type"].as_str(), closed["code"].as_u64()),
        (Some("close"), Some(4403)),
        "{closed}"
    );
    assert_eq!(closed["reason"], "Forbidden: the token expired");
}

#[tokio::test]
async fn a_flood_of_bad_tokens_is_refused_by_address_before_any_issuer_is_asked() {
    let app = TestApp::sqlite_with(EdgeConfig {
        rates: profile_gateway::http::rate::Rates {
            failed_auth_rate: 1,
            ..Default::default()
        },
        ..EdgeConfig::default()
    })
    .await;
    let (app, issuer) = with_issuers(app).await;
    let mut header = Header::new(Algorithm::RS256);
    let mut statuses = Vec::new();
    for n in 0..10 {
        // Each names a key the issuer never published.
        header.kid = Some(format!("rotated-{n}"));
        let forged = encode(&header, &claims("ana"), &rsa()).unwrap();
        statuses.push(refused(&app, &forged).await.0);
    }
    assert_eq!(statuses[..3], [401, 401, 401], "{statuses:?}");
    assert!(statuses[4..].iter().all(|&status| status == 429), "{statuses:?}");
    assert_eq!(issuer.fetches.load(Ordering::SeqCst), 1, "the issuer was asked once");
    // A good token from that address waits too; one from elsewhere would not.
    assert_eq!(refused(&app, &token("ana")).await, (429, "RATE_LIMITED".to_owned()));
}
