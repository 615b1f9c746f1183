//! End users' tokens (JWT), verified against the signing keys their tenant's issuer publishes.
//!
//! A token's `iss` selects the tenant configured with that issuer (`tenant set --jwt-issuer`);
//! its signature is checked against that tenant's JWKS with RS256, ES256 or EdDSA (`none` and
//! every HMAC algorithm are refused, so a published key can never serve as an HMAC secret),
//! and `exp`, `nbf` (60 s leeway), `iss`, `aud` and a non-empty `sub` are required and checked.
//!
//! Keys are fetched over HTTP (5 s timeout) and kept as the JWKS response's `Cache-Control:
//! max-age` says, at least a minute and at most a day. A token naming a `kid` the kept keys do
//! not hold makes a refetch, at most once per 30 s per JWKS. When the issuer cannot be reached,
//! the keys kept before go on serving, stale or not; with none kept, the token is refused as
//! [`Refusal::Unavailable`] (503). Any other fault is [`Refusal::Invalid`] (401), without
//! saying which check failed.
//!
//! A token that passed is remembered (while it is used, at most ten minutes idle), and passes
//! again without its signature checked while it has not expired, its tenant's token settings
//! are those it passed with, and the issuer's keys as kept hold the key that signed it: checking
//! a signature costs several times a read's own work, and a frontend sends the same token with
//! every request. So a key the issuer withdraws, or a change of the tenant's settings, stops a
//! remembered token exactly when it would stop a new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::dangerous::insecure_decode;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use crate::auth::Person;
use crate::tenant::{Jwt, Snapshot};

/// The algorithms accepted: asymmetric only.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
/// Clock skew allowed for `exp` and `nbf`.
const LEEWAY_SECS: u64 = 60;
/// How long a JWKS may take to arrive.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds of how long fetched keys are kept.
const KEEP_AT_LEAST: Duration = Duration::from_secs(60);
const KEEP_AT_MOST: Duration = Duration::from_secs(24 * 60 * 60);
/// Least time between two fetches of one JWKS for unknown `kid`s.
const REFETCH_AFTER: Duration = Duration::from_secs(30);

/// Why a token is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 401 UNAUTHENTICATED, whatever the check that failed.
    Invalid,
    /// 503 UNAVAILABLE: the issuer's keys cannot be fetched and none are kept.
    Unavailable,
}

/// The keys of one JWKS as last fetched.
#[derive(Debug)]
struct Kept {
    keys: Option<JwkSet>,
    fresh_until: Instant,
    /// When a fetch was last tried, so that unknown `kid`s refetch at most every
    /// [`REFETCH_AFTER`].
    tried_at: Instant,
    /// Whether a fetch is running: with no keys kept yet, a token waits for it.
    fetching: bool,
}

/// Most bytes of tokens remembered at once.
const REMEMBERED_BYTES: u64 = 16 * 1024 * 1024;
/// How long a token unused is remembered.
const REMEMBERED_IDLE: Duration = Duration::from_secs(10 * 60);

/// A token that passed: whom it stands for, the tenant's settings it passed with, and the `kid`
/// of the key that signed it.
#[derive(Debug, Clone)]
struct Passed {
    person: Arc<Person>,
    jwt: Arc<Jwt>,
    kid: Option<String>,
}

/// Verifies tokens, keeping each issuer's keys and the tokens that passed.
#[derive(Debug)]
pub struct Verifier {
    client: reqwest::Client,
    kept: Mutex<HashMap<String, Kept>>,
    /// A lock per JWKS, held while it is fetched.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Tokens that passed (none when the verifier does not remember).
    passed: Option<moka::sync::Cache<String, Passed>>,
}

impl Verifier {
    /// A verifier; one that will `remember` the tokens that passed.
    pub fn new(remember: bool) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let passed = remember.then(|| {
            moka::sync::Cache::builder()
                .weigher(|token: &String, _| u32::try_from(token.len()).unwrap_or(u32::MAX))
                .max_capacity(REMEMBERED_BYTES)
                .time_to_idle(REMEMBERED_IDLE)
                .build()
        });
        Ok(Verifier {
            client,
            kept: Mutex::default(),
            fetching: Mutex::default(),
            passed,
        })
    }

    /// Whom `token` stands for, with the tenants' settings of `tenants`.
    pub async fn verify(&self, token: &str, tenants: &Snapshot) -> Result<Arc<Person>, Refusal> {
        if let Some(Passed { person, jwt, kid }) = self.passed.as_ref().and_then(|passed| passed.get(token)) {
            if expired(&person) {
                return Err(Refusal::Invalid);
            }
            let unchanged = tenants
                .by_issuer(&person.issuer)
                .is_some_and(|settings| settings.tenant == person.tenant && settings.jwt.as_ref() == Some(&*jwt));
            let key_kept = matches!(self.kept_answer(&jwt.jwks_url, kid.as_deref()), Ok(Some(Ok(_))));
            if unchanged && key_kept {
                return Ok(person);
            }
        }
        let passed = self.check(token, tenants).await?;
        let person = passed.person.clone();
        if let Some(remembered) = &self.passed {
            remembered.insert(token.to_owned(), passed);
        }
        Ok(person)
    }

    /// [`Verifier::verify`] without the tokens remembered.
    /// Whom `token` stands for, with what it passed with.
    async fn check(&self, token: &str, tenants: &Snapshot) -> Result<Passed, Refusal> {
        let header = decode_header(token).map_err(|_| Refusal::Invalid)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(Refusal::Invalid);
        }
        #[derive(Deserialize)]
        struct Issuer {
            iss: String,
        }
        let issuer = insecure_decode::<Issuer>(token)
            .map_err(|_| Refusal::Invalid)?
            .claims
            .iss;
        let settings = tenants.by_issuer(&issuer).ok_or(Refusal::Invalid)?;
        let jwt = settings.jwt.as_ref().ok_or(Refusal::Invalid)?;
        let jwk = self.key(&jwt.jwks_url, header.kid.as_deref()).await?;
        // A key published for one algorithm verifies that one only.
        if let Some(published) = jwk.common.key_algorithm {
            let published = match published {
                KeyAlgorithm::RS256 => Some(Algorithm::RS256),
                KeyAlgorithm::ES256 => Some(Algorithm::ES256),
                KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
                _ => None,
            };
            if published != Some(header.alg) {
                return Err(Refusal::Invalid);
            }
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| Refusal::Invalid)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&jwt.issuer]);
        validation.set_audience(&[&jwt.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        #[derive(Deserialize)]
        struct Subject {
            sub: String,
            exp: u64,
        }
        let claims = decode::<Subject>(token, &key, &validation)
            .map_err(|_| Refusal::Invalid)?
            .claims;
        if claims.sub.is_empty() {
            return Err(Refusal::Invalid);
        }
        let person = Person {
            tenant: settings.tenant,
            issuer,
            subject: claims.sub,
            expires_at: claims.exp,
        };
        Ok(Passed {
            person: Arc::new(person),
            jwt: Arc::new(jwt.clone()),
            kid: header.kid,
        })
    }

    /// The key `kid` names in the JWKS at `url` (the only key, when the token names none),
    /// from the kept keys or fetched. One fetch of a JWKS runs at a time; meanwhile the other
    /// requests answer from the keys kept, or, with none kept yet, wait for it.
    async fn key(&self, url: &str, kid: Option<&str>) -> Result<Jwk, Refusal> {
        if let Some(answer) = self.kept_answer(url, kid)? {
            return answer;
        }
        let fetching = {
            let mut fetching = self.fetching.lock().map_err(|_| Refusal::Unavailable)?;
            fetching.entry(url.to_owned()).or_default().clone()
        };
        let _turn = fetching.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(answer) = self.kept_answer(url, kid)? {
            return answer;
        }
        {
            let mut kept = self.kept.lock().map_err(|_| Refusal::Unavailable)?;
            let now = Instant::now();
            let entry = kept.entry(url.to_owned()).or_insert(Kept {
                keys: None,
                fresh_until: now,
                tried_at: now,
                fetching: true,
            });
            entry.tried_at = now;
            entry.fetching = true;
        }
        let fetched = self.fetch(url).await;
        let mut kept = self.kept.lock().map_err(|_| Refusal::Unavailable)?;
        let now = Instant::now();
        let entry = kept.get_mut(url).ok_or(Refusal::Unavailable)?;
        entry.fetching = false;
        match fetched {
            Ok((keys, keep_for)) => {
                entry.keys = Some(keys);
                entry.fresh_until = now + keep_for;
            }
            Err(err) => tracing::warn!(%url, error = %err, "could not fetch an issuer's keys; keeping those kept"),
        }
        match &entry.keys {
            Some(keys) => find(keys, kid).ok_or(Refusal::Invalid),
            None => Err(Refusal::Unavailable),
        }
    }

    /// What the kept keys answer without a fetch: the key when they are fresh and hold it, or
    /// when a fetch was tried lately (at most every [`REFETCH_AFTER`]), the key if they hold
    /// it and a refusal if not; `None` when a fetch is due.
    fn kept_answer(&self, url: &str, kid: Option<&str>) -> Result<Option<Result<Jwk, Refusal>>, Refusal> {
        let kept = self.kept.lock().map_err(|_| Refusal::Unavailable)?;
        let Some(entry) = kept.get(url) else {
            return Ok(None);
        };
        if entry.keys.is_none() && entry.fetching {
            return Ok(None);
        }
        let now = Instant::now();
        let found = entry.keys.as_ref().and_then(|keys| find(keys, kid));
        Ok(match found {
            Some(jwk) if now < entry.fresh_until => Some(Ok(jwk)),
            found if now.duration_since(entry.tried_at) < REFETCH_AFTER => Some(found.ok_or(match entry.keys {
                Some(_) => Refusal::Invalid,
                None => Refusal::Unavailable,
            })),
            _ => None,
        })
    }

    /// The JWKS at `url`, and how long to keep it.
    async fn fetch(&self, url: &str) -> Result<(JwkSet, Duration), String> {
        let response = self.client.get(url).send().await.map_err(|err| err.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let keep_for = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|value| value.to_str().ok())
            .and_then(max_age)
            .unwrap_or(KEEP_AT_LEAST)
            .clamp(KEEP_AT_LEAST, KEEP_AT_MOST);
        let body = response.bytes().await.map_err(|err| err.to_string())?;
        let keys: JwkSet = serde_json::from_slice(&body).map_err(|err| format!("not a JWKS: {err}"))?;
        Ok((keys, keep_for))
    }
}

/// Whether the token that named `person` has expired, with the clock skew allowed.
pub fn expired(person: &Person) -> bool {
    jsonwebtoken::get_current_timestamp() >= person.expires_at.saturating_add(LEEWAY_SECS)
}

/// The key `kid` names, or the only key when there is no `kid`.
fn find(keys: &JwkSet, kid: Option<&str>) -> Option<Jwk> {
    match kid {
        Some(kid) => keys.find(kid).cloned(),
        None if keys.keys.len() == 1 => keys.keys.first().cloned(),
        None => None,
    }
}

/// `max-age` of a `Cache-Control` value.
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| value.trim().trim_matches('"').parse().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests;
