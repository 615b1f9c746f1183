//! Tokens good and bad against a JWKS server of the test's own (a real HTTP server on port 0).

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, OctetKeyPairParameters, OctetKeyPairType,
};
use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
use proptest::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

use super::*;
use crate::store::TenantId;
use crate::tenant::{Jwt, Settings};

const RSA: &str = include_str!("../../tests/fixtures/jwt/rsa.pem");
const EC: &str = include_str!("../../tests/fixtures/jwt/ec.pem");
const ED25519: &str = include_str!("../../tests/fixtures/jwt/ed25519.pem");
const ED25519_X: &str = include_str!("../../tests/fixtures/jwt/ed25519.x");

const ISSUER: &str = "https://auth.example.com/";
const AUDIENCE: &str = "shop-app";

/// A JWKS server whose answer the test can change, counting the fetches it serves.
#[derive(Default)]
struct Issuer {
    keys: std::sync::Mutex<Value>,
    fetches: AtomicUsize,
    /// 0 answers the keys; anything else answers that status.
    status: AtomicU16,
    delay_ms: AtomicU64,
    garbage: std::sync::atomic::AtomicBool,
}

async fn serve(issuer: Arc<Issuer>) -> String {
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let issuer = issuer.clone();
            async move {
                issuer.fetches.fetch_add(1, Ordering::SeqCst);
                let delay = issuer.delay_ms.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let status = issuer.status.load(Ordering::SeqCst);
                if status != 0 {
                    return StatusCode::from_u16(status).unwrap().into_response();
                }
                if issuer.garbage.load(Ordering::SeqCst) {
                    return "not a key set".into_response();
                }
                let keys = issuer.keys.lock().unwrap().clone();
                ([(header::CACHE_CONTROL, "public, max-age=600")], axum::Json(keys)).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/jwks.json")
}

fn signer(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC.as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED25519.as_bytes()).unwrap(),
        other => panic!("no test key for {other:?}"),
    }
}

/// The public key of `alg`'s test key, as a JWK named `kid`.
fn public(alg: Algorithm, kid: &str) -> Value {
    let mut jwk = match alg {
        Algorithm::EdDSA => Jwk {
            common: CommonParameters::default(),
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: ED25519_X.trim().to_owned(),
            }),
        },
        alg => Jwk::from_encoding_key(&signer(alg), alg).unwrap(),
    };
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

fn claims(sub: &str) -> Value {
    let now = get_current_timestamp();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": now + 600, "nbf": now - 10, "iat": now})
}

fn token(alg: Algorithm, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    encode(&header, claims, &signer(alg)).unwrap()
}

struct Setup {
    issuer: Arc<Issuer>,
    verifier: Verifier,
    tenants: Snapshot,
    tenant: TenantId,
}

async fn setup() -> Setup {
    let issuer = Arc::new(Issuer::default());
    *issuer.keys.lock().unwrap() = json!({"keys": [
        public(Algorithm::RS256, "rsa"), public(Algorithm::ES256, "ec"), public(Algorithm::EdDSA, "ed"),
    ]});
    let jwks_url = serve(issuer.clone()).await;
    let tenant = TenantId(Uuid::new_v4());
    let tenants = Snapshot::of([Settings {
        tenant,
        name: "shop".to_owned(),
        allowed_origins: vec![],
        jwt: Some(Jwt {
            issuer: ISSUER.to_owned(),
            jwks_url,
            audience: AUDIENCE.to_owned(),
        }),
    }]);
    Setup {
        issuer,
        verifier: Verifier::new(false).unwrap(),
        tenants,
        tenant,
    }
}

#[tokio::test]
async fn a_token_signed_with_rs256_es256_or_eddsa_names_its_tenant_and_subject() {
    let setup = setup().await;
    for (alg, kid) in [
        (Algorithm::RS256, "rsa"),
        (Algorithm::ES256, "ec"),
        (Algorithm::EdDSA, "ed"),
    ] {
        let claims = claims("ana");
        let person = setup
            .verifier
            .verify(&token(alg, kid, &claims), &setup.tenants)
            .await
            .unwrap_or_else(|refusal| panic!("{alg:?}: {refusal:?}"));
        assert_eq!(
            *person,
            Person {
                tenant: setup.tenant,
                issuer: ISSUER.to_owned(),
                subject: "ana".to_owned(),
                expires_at: claims["exp"].as_u64().unwrap(),
            }
        );
    }
    // The keys were fetched once and kept.
    assert_eq!(setup.issuer.fetches.load(Ordering::SeqCst), 1);
    // An audience given as a list that names ours passes.
    let mut listed = claims("ana");
    listed["aud"] = json!(["other", AUDIENCE]);
    assert!(
        setup
            .verifier
            .verify(&token(Algorithm::RS256, "rsa", &listed), &setup.tenants)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn expired_early_foreign_or_tampered_tokens_are_refused_alike() {
    let setup = setup().await;
    let now = get_current_timestamp();
    let with = |key: &str, value: Value| {
        let mut claims = claims("ana");
        claims[key] = value;
        token(Algorithm::ES256, "ec", &claims)
    };
    let mut without_sub = claims("ana");
    without_sub.as_object_mut().unwrap().remove("sub");
    let good = token(Algorithm::ES256, "ec", &claims("ana"));
    let (head, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let forged_payload = base64_url(&claims("bob").to_string());
    let tampered = format!("{head}.{forged_payload}.{signature}");
    let unsigned = format!(
        "{}.{}.",
        base64_url(r#"{"alg":"none","typ":"JWT"}"#),
        base64_url(&claims("ana").to_string())
    );
    // HS256 with the published RSA key's modulus as the secret: the classic confusion.
    let public_as_secret = encode(
        &Header::new(Algorithm::HS256),
        &claims("ana"),
        &EncodingKey::from_secret(public(Algorithm::RS256, "rsa")["n"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    let bad = [
        ("expired", with("exp", json!(now - 120))),
        ("not yet valid", with("nbf", json!(now + 120))),
        ("another issuer", with("iss", json!("https://evil.example/"))),
        ("another audience", with("aud", json!("other-app"))),
        ("no subject", token(Algorithm::ES256, "ec", &without_sub)),
        ("an empty subject", with("sub", json!(""))),
        ("tampered", tampered),
        ("alg none", unsigned),
        ("HS256 with the public key", public_as_secret),
        (
            "a key of another algorithm",
            token(Algorithm::RS256, "ec", &claims("ana")),
        ),
        ("garbage", "not.a.token".to_owned()),
        ("empty", String::new()),
    ];
    for (what, token) in bad {
        assert_eq!(
            setup.verifier.verify(&token, &setup.tenants).await,
            Err(Refusal::Invalid),
            "{what}"
        );
    }
    // Within the leeway is fine.
    assert!(
        setup
            .verifier
            .verify(&with("exp", json!(now - 30)), &setup.tenants)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_token_that_passed_is_remembered_while_its_key_and_its_tenants_settings_stay_and_never_past_its_expiry() {
    let setup = setup().await;
    let verifier = Verifier::new(true).unwrap();
    let good = token(Algorithm::EdDSA, "ed", &claims("ana"));
    assert!(verifier.verify(&good, &setup.tenants).await.is_ok());
    // Remembered: even with the issuer down, it passes without its keys.
    setup.issuer.status.store(500, Ordering::SeqCst);
    let fetches = setup.issuer.fetches.load(Ordering::SeqCst);
    assert!(verifier.verify(&good, &setup.tenants).await.is_ok());
    assert_eq!(setup.issuer.fetches.load(Ordering::SeqCst), fetches);
    // Once the issuer withdraws the key that signed it, it does not (after the kept keys' time).
    let withdrawn = token(Algorithm::RS256, "rsa", &claims("bo"));
    assert!(verifier.verify(&withdrawn, &setup.tenants).await.is_ok());
    setup.issuer.status.store(0, Ordering::SeqCst);
    *setup.issuer.keys.lock().unwrap() = json!({"keys": [public(Algorithm::EdDSA, "ed")]});
    verifier.kept.lock().unwrap().values_mut().for_each(|kept| {
        kept.fresh_until = Instant::now();
        kept.tried_at = Instant::now() - REFETCH_AFTER;
    });
    assert_eq!(verifier.verify(&withdrawn, &setup.tenants).await, Err(Refusal::Invalid));
    assert!(verifier.verify(&good, &setup.tenants).await.is_ok());
    // Once the tenant no longer trusts the issuer, or expects another audience, it does not.
    assert_eq!(
        verifier.verify(&good, &Snapshot::default()).await,
        Err(Refusal::Invalid)
    );
    let mut settings = (*setup.tenants.by_issuer(ISSUER).unwrap().clone()).clone();
    if let Some(jwt) = &mut settings.jwt {
        jwt.audience = "another-app".to_owned();
    }
    assert_eq!(
        verifier.verify(&good, &Snapshot::of([settings])).await,
        Err(Refusal::Invalid)
    );
    assert!(verifier.verify(&good, &setup.tenants).await.is_ok());

    // A token past its expiry (and the leeway) is refused even while remembered.
    let mut expiring = claims("cy");
    expiring["exp"] = json!(get_current_timestamp() - 59);
    let expiring = token(Algorithm::EdDSA, "ed", &expiring);
    assert!(verifier.verify(&expiring, &setup.tenants).await.is_ok());
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert!(verifier.passed.as_ref().unwrap().contains_key(&expiring));
    assert_eq!(verifier.verify(&expiring, &setup.tenants).await, Err(Refusal::Invalid));
}

#[tokio::test]
async fn tokens_that_arrive_while_the_keys_are_fetched_wait_for_that_fetch() {
    let setup = setup().await;
    setup.issuer.delay_ms.store(200, Ordering::SeqCst);
    let tokens: Vec<String> = (0..20)
        .map(|n| token(Algorithm::EdDSA, "ed", &claims(&format!("p{n}"))))
        .collect();
    let verified =
        futures::future::join_all(tokens.iter().map(|token| setup.verifier.verify(token, &setup.tenants))).await;
    assert!(verified.iter().all(Result::is_ok), "{verified:?}");
    assert_eq!(setup.issuer.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn while_stale_keys_are_fetched_again_other_tokens_are_answered_from_them_at_once() {
    let setup = Arc::new(setup().await);
    let good = |sub: &str| token(Algorithm::EdDSA, "ed", &claims(sub));
    assert!(setup.verifier.verify(&good("ana"), &setup.tenants).await.is_ok());
    setup.verifier.kept.lock().unwrap().values_mut().for_each(|kept| {
        kept.fresh_until = Instant::now();
        kept.tried_at = Instant::now() - REFETCH_AFTER;
    });
    setup.issuer.delay_ms.store(2_000, Ordering::SeqCst);
    let refetching = {
        let setup = setup.clone();
        tokio::spawn(async move { setup.verifier.verify(&good("bo"), &setup.tenants).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    assert!(setup.verifier.verify(&good("cy"), &setup.tenants).await.is_ok());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(refetching.await.unwrap().is_ok());
    assert_eq!(setup.issuer.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_unknown_kid_refetches_at_most_once_per_30_seconds_then_is_refused() {
    let setup = setup().await;
    let stranger = token(Algorithm::RS256, "rotated", &claims("ana"));
    assert_eq!(
        setup.verifier.verify(&stranger, &setup.tenants).await,
        Err(Refusal::Invalid)
    );
    let fetched = setup.issuer.fetches.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(
            setup.verifier.verify(&stranger, &setup.tenants).await,
            Err(Refusal::Invalid)
        );
    }
    assert_eq!(
        setup.issuer.fetches.load(Ordering::SeqCst),
        fetched,
        "refetched within 30 s"
    );
}

#[tokio::test]
async fn a_rotated_key_is_found_by_refetching() {
    let setup = setup().await;
    assert!(
        setup
            .verifier
            .verify(&token(Algorithm::RS256, "rsa", &claims("ana")), &setup.tenants)
            .await
            .is_ok()
    );
    *setup.issuer.keys.lock().unwrap() = json!({"keys": [public(Algorithm::EdDSA, "ed-2")]});
    // Long enough since the last fetch: as if 30 s had passed.
    if let Some(kept) = setup.verifier.kept.lock().unwrap().values_mut().next() {
        kept.tried_at -= REFETCH_AFTER;
    }
    let rotated = token(Algorithm::EdDSA, "ed-2", &claims("ana"));
    assert!(setup.verifier.verify(&rotated, &setup.tenants).await.is_ok());
}

#[tokio::test]
async fn an_issuer_that_is_down_slow_or_garbled_leaves_the_kept_keys_or_unavailable() {
    for fault in ["down", "slow", "garbage"] {
        let setup = setup().await;
        let good = token(Algorithm::ES256, "ec", &claims("ana"));
        match fault {
            "down" => setup.issuer.status.store(500, Ordering::SeqCst),
            "slow" => setup.issuer.delay_ms.store(6_000, Ordering::SeqCst),
            _ => setup.issuer.garbage.store(true, Ordering::SeqCst),
        }
        // Nothing kept yet: unavailable, not invalid.
        assert_eq!(
            setup.verifier.verify(&good, &setup.tenants).await,
            Err(Refusal::Unavailable),
            "{fault}"
        );
        // Keys fetched while it worked keep serving once they are stale.
        setup.issuer.status.store(0, Ordering::SeqCst);
        setup.issuer.delay_ms.store(0, Ordering::SeqCst);
        setup.issuer.garbage.store(false, Ordering::SeqCst);
        if let Some(kept) = setup.verifier.kept.lock().unwrap().values_mut().next() {
            kept.tried_at -= REFETCH_AFTER;
        }
        assert!(setup.verifier.verify(&good, &setup.tenants).await.is_ok(), "{fault}");
        match fault {
            "down" => setup.issuer.status.store(503, Ordering::SeqCst),
            "slow" => setup.issuer.delay_ms.store(6_000, Ordering::SeqCst),
            _ => setup.issuer.garbage.store(true, Ordering::SeqCst),
        }
        if let Some(kept) = setup.verifier.kept.lock().unwrap().values_mut().next() {
            kept.fresh_until = Instant::now();
            kept.tried_at -= REFETCH_AFTER;
        }
        assert!(
            setup.verifier.verify(&good, &setup.tenants).await.is_ok(),
            "{fault}: stale keys"
        );
    }
}

#[test]
fn max_age_is_read_from_cache_control() {
    assert_eq!(max_age("public, max-age=600"), Some(Duration::from_secs(600)));
    assert_eq!(max_age("MAX-AGE=\"60\""), Some(Duration::from_secs(60)));
    assert_eq!(max_age("no-store"), None);
    assert_eq!(max_age("max-age=soon"), None);
}

fn base64_url(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| (n << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever a client sends as a token, verifying it ends in a refusal, never a panic.
    #[test]
    fn any_text_as_a_token_is_refused_without_panicking(
        parts in proptest::collection::vec("[A-Za-z0-9_=+/-]{0,40}", 0..5),
        header in "\\{.{0,40}\\}",
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let verifier = Verifier::new(false).unwrap();
        let tenants = Snapshot::default();
        let mut token = parts.join(".");
        token.insert_str(0, &format!("{}.", base64_url(&header)));
        let result = runtime.block_on(verifier.verify(&token, &tenants));
        prop_assert_eq!(result, Err(Refusal::Invalid));
    }
}
