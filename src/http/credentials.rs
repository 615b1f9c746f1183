//! Who a request acts as, for HTTP and for a socket's `connection_init` alike.
//!
//! A caller presents an API key (`X-API-Key`, or `Authorization: Bearer pgw_…`) or an end user's
//! token (`Authorization: Bearer <JWT>`). The checks run in this order, so that the cheap ones
//! shield the costly ones:
//!
//! 1. an address past its rate of failing credentials is refused, before any key is looked up
//!    or any issuer's keys are fetched (429 RATE_LIMITED);
//! 2. the key or token is checked: 401 UNAUTHENTICATED when it is missing, unknown, revoked or
//!    fails any check of the token (which one is not said); 503 UNAVAILABLE when the token's
//!    issuer cannot be reached and none of its keys are kept;
//! 3. the caller's own rate: per API key, per person (429 RATE_LIMITED);
//! 4. a page's origin against the caller's tenant's list (403 ORIGIN_NOT_ALLOWED).

use std::net::IpAddr;

use axum::http::{HeaderMap, StatusCode, header};

use super::AppState;
use super::graphql::{Refuse, server_fault};
use crate::auth::Caller;
use crate::error::Code;
use crate::jwt;

/// A credential as a request presents it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presented<'a> {
    Key(&'a str),
    Token(&'a str),
}

impl<'a> Presented<'a> {
    /// The credential of a request's headers.
    pub fn in_headers(headers: &'a HeaderMap) -> Option<Self> {
        if let Some(key) = headers.get("x-api-key") {
            return key.to_str().ok().map(|key| Presented::Key(key.trim()));
        }
        Self::bearer(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
    }

    /// The credential of an `Authorization` value: `Bearer` and an API key or a token.
    pub fn bearer(authorization: &'a str) -> Option<Self> {
        let (scheme, credential) = authorization.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let credential = credential.trim();
        Some(match crate::auth::looks_like_key(credential) {
            true => Presented::Key(credential),
            false => Presented::Token(credential),
        })
    }
}

/// Who `presented` acts as, checked in the order the module describes; `origin` is the page's,
/// when the request comes from another origin than the gateway's.
pub(super) async fn authenticate(
    state: &AppState,
    presented: Option<Presented<'_>>,
    peer: Option<IpAddr>,
    origin: Option<&str>,
) -> Result<Caller, Refuse> {
    if let Some(wait) = peer.and_then(|peer| state.limiter.blocked(peer)) {
        return Err(Refuse::rate_limited(
            wait,
            "Too many requests with failing credentials came from this address; wait and send a valid key or token.",
        ));
    }
    let failed = |message: &str| {
        if let Some(peer) = peer {
            state.limiter.failed(peer);
        }
        Refuse::new(StatusCode::UNAUTHORIZED, Code::Unauthenticated.as_str(), message)
    };
    let caller = match presented {
        None => {
            return Err(failed(
                "Send an API key in the X-API-Key header, or a key or an end-user token as Authorization: Bearer.",
            ));
        }
        Some(Presented::Key(key)) => match state.keys.authenticate(key).await {
            Ok(Some(principal)) => Caller::Key(principal),
            Ok(None) => return Err(failed("The API key is unknown or revoked.")),
            Err(err) => return Err(server_fault(&err)),
        },
        Some(Presented::Token(token)) => {
            let tenants = state.tenants.snapshot().await.map_err(|err| server_fault(&err))?;
            match state.verifier.verify(token, &tenants).await {
                Ok(person) => Caller::Person(person),
                Err(jwt::Refusal::Invalid) => return Err(failed("The token is not valid here.")),
                Err(jwt::Refusal::Unavailable) => {
                    return Err(Refuse::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Code::Unavailable.as_str(),
                        "The token's issuer cannot be reached to check it; retry shortly.",
                    ));
                }
            }
        }
    };
    if let Err(wait) = state.limiter.take(&caller) {
        return Err(Refuse::rate_limited(
            wait,
            "This caller sent more requests than its rate allows; wait and retry.",
        ));
    }
    if let Some(origin) = origin {
        let tenants = state.tenants.snapshot().await.map_err(|err| server_fault(&err))?;
        if !tenants.allows(caller.tenant(), origin) {
            return Err(Refuse::new(
                StatusCode::FORBIDDEN,
                "ORIGIN_NOT_ALLOWED",
                "This tenant does not allow calls from this page's origin (profile-gateway tenant set --allow-origin).",
            ));
        }
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever a client sends as Authorization, reading it never panics, and only a
        /// credential with an API key's mark is taken for a key.
        #[test]
        fn any_authorization_value_is_read_without_panicking(value in "\\PC{0,80}") {
            match Presented::bearer(&value) {
                Some(Presented::Key(key)) => prop_assert!(key.starts_with("pgw_")),
                Some(Presented::Token(token)) => prop_assert!(!token.starts_with("pgw_")),
                None => {}
            }
        }
    }

    #[test]
    fn a_bearer_credential_is_a_key_when_it_has_a_keys_shape_and_a_token_otherwise() {
        let key = "pgw_0123456789abcdef_s3cret";
        assert_eq!(Presented::bearer(&format!("Bearer {key}")), Some(Presented::Key(key)));
        assert_eq!(Presented::bearer("bearer  a.b.c "), Some(Presented::Token("a.b.c")));
        assert_eq!(Presented::bearer("Basic a.b.c"), None);
        assert_eq!(Presented::bearer("Bearer"), None);
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer a.b.c".parse().unwrap());
        assert_eq!(Presented::in_headers(&headers), Some(Presented::Token("a.b.c")));
        headers.insert("x-api-key", key.parse().unwrap());
        assert_eq!(Presented::in_headers(&headers), Some(Presented::Key(key)));
    }
}
