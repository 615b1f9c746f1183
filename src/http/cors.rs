//! Cross-origin requests from browsers (CORS), by the tenants' allowed origins.
//!
//! A preflight carries no credentials, so it is answered for any origin some tenant allows
//! (tower-http's `CorsLayer` over [`Tenants::snapshot`]): 204 with the origin echoed, the
//! methods, the headers the gateway reads and a max-age; a preflight from any other origin
//! gets 204 with no `Access-Control-*` header, which the browser takes as a refusal. Once the
//! caller is known, [`check`] refuses a request whose `Origin` its own tenant does not allow
//! (403 ORIGIN_NOT_ALLOWED), before anything runs. Credentials mode is never allowed: keys and
//! tokens travel in headers. A request without `Origin` (a server, curl), or from the gateway's
//! own origin (GraphiQL), is not a cross-origin request and passes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tower::{Layer, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::tenant::Tenants;

/// How long a browser may keep a preflight's answer.
const MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS layer of `/graphql`, shared: [`handle`] clones it only for a request with an
/// `Origin`.
pub fn layer(tenants: Tenants) -> Arc<CorsLayer> {
    let layer = CorsLayer::new()
        .allow_origin(AllowOrigin::async_predicate(move |origin: HeaderValue, _| {
            let tenants = tenants.clone();
            async move {
                let Ok(origin) = origin.to_str() else {
                    return false;
                };
                match tenants.snapshot().await {
                    Ok(snapshot) => snapshot.allows_any(origin),
                    Err(err) => {
                        tracing::warn!(error = %err, "could not read the tenants' origins");
                        false
                    }
                }
            }
        }))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::ACCEPT,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("idempotent-replayed"),
            header::RETRY_AFTER,
        ])
        .max_age(MAX_AGE);
    Arc::new(layer)
}

/// CORS for `/graphql` through `layer`. A request without `Origin` (a server's, or the
/// benchmark's) goes straight on: it is not a browser's cross-origin request, and the layer
/// costs every request a copy of its lists. A preflight is answered with 204, and one from an
/// origin no tenant allows without any `Access-Control-*` header (tower-http answers 200 and
/// names the methods and headers to every origin).
pub async fn handle(State(layer): State<Arc<CorsLayer>>, request: Request, next: Next) -> Response {
    if !request.headers().contains_key(header::ORIGIN) {
        return next.run(request).await;
    }
    let preflight = request.method() == Method::OPTIONS;
    let mut response = match layer.as_ref().clone().layer(next).oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if preflight {
        *response.status_mut() = StatusCode::NO_CONTENT;
        if !response.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            let names: Vec<HeaderName> = response
                .headers()
                .keys()
                .filter(|name| name.as_str().starts_with("access-control-"))
                .cloned()
                .collect();
            for name in names {
                response.headers_mut().remove(name);
            }
        }
    }
    response
}

/// The `Origin` of a cross-origin request: `None` for a request without one, or from the
/// gateway's own origin (its `Host`).
pub fn cross_origin(headers: &HeaderMap) -> Option<&str> {
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("null");
    let host = headers.get(header::HOST).and_then(|host| host.to_str().ok());
    let own = origin
        .split_once("://")
        .is_some_and(|(_, authority)| Some(authority) == host);
    (!own).then_some(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn only_a_request_from_another_origin_is_cross_origin() {
        assert_eq!(cross_origin(&headers(None, "127.0.0.1:8080")), None);
        assert_eq!(
            cross_origin(&headers(Some("http://127.0.0.1:8080"), "127.0.0.1:8080")),
            None
        );
        assert_eq!(
            cross_origin(&headers(Some("http://127.0.0.1:18182"), "127.0.0.1:8080")),
            Some("http://127.0.0.1:18182")
        );
        assert_eq!(cross_origin(&headers(Some("null"), "127.0.0.1:8080")), Some("null"));
    }
}
