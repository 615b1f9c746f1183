//! `/graphql`: GraphQL over HTTP, as its specification says.
//!
//! - The response media type follows `Accept`: `application/graphql-response+json` when asked
//!   for, `application/json` when asked for, when `Accept` is missing or is a wildcard (as
//!   legacy clients expect); anything else is 406.
//! - With `application/graphql-response+json`, a request that fails before execution (parse,
//!   validation, variables, scope) is 4xx and has no `data`; one that executed is 200. With
//!   `application/json`, every well-formed request is 200.
//! - POST takes `application/json` only (415 otherwise), so that no browser form and no
//!   `text/plain` request can run a mutation without a CORS preflight. GET runs queries only
//!   (a mutation is 405).
//! - Before anything executes: the API key (401), the body size (413, read at most that far),
//!   the limits (400 with a specific code), and the key's scope (FORBIDDEN).

use std::borrow::Cow;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use async_graphql::parser::types::{ExecutableDocument, OperationDefinition, OperationType};
use async_graphql::{Request, Variables};
use axum::Extension as RequestExtension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Value, json};

use super::analysis::{
    Analysis, Refusal, analyze_operation, check_variables, fragment_chain, has_one_operation, select, too_complex,
    variables_surely_valid, vouches,
};
use super::credentials::{self, Presented};
use super::trusted::{self, TrustedDocuments};
use super::{AppState, RequestId, scan};
use crate::auth::{Caller, Scope};
use crate::error::Code;
use crate::graphql::ResponseBudget;
use crate::idempotency::{self, Claim, StoredResponse};
use crate::store::TenantId;

/// The media types a GraphQL response can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    GraphqlResponse,
    Json,
}

impl Media {
    fn content_type(self) -> &'static str {
        match self {
            Media::GraphqlResponse => "application/graphql-response+json; charset=utf-8",
            Media::Json => "application/json; charset=utf-8",
        }
    }
}

/// The media type to answer in, from the `Accept` header; `None` when none is acceptable.
pub fn negotiate(accept: Option<&str>) -> Option<Media> {
    let Some(accept) = accept else {
        return Some(Media::Json);
    };
    let mut best: Option<(f32, Media)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let quality = parts
            .filter_map(|param| param.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let media = match essence.as_str() {
            "application/graphql-response+json" => Media::GraphqlResponse,
            "application/json" | "application/*" | "*/*" => Media::Json,
            _ => continue,
        };
        let better = match best {
            None => true,
            Some((q, current)) => {
                quality > q || (quality == q && media == Media::GraphqlResponse && current == Media::Json)
            }
        };
        if quality > 0.0 && better {
            best = Some((quality, media));
        }
    }
    best.map(|(_, media)| media)
}

/// Whether the POST body is declared as JSON in UTF-8.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        && parts.all(|param| match param.trim().split_once('=') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
                value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            }
            _ => true,
        })
}

/// A response that refuses the whole request.
pub(super) struct Refuse {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds to wait, for a 429.
    retry_after: Option<u64>,
}

impl Refuse {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Refuse {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429 RATE_LIMITED: try again after `wait`.
    pub(super) fn rate_limited(wait: std::time::Duration, message: &str) -> Self {
        Refuse {
            retry_after: Some(super::rate::retry_after(wait)),
            ..Refuse::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", message)
        }
    }

    pub(super) fn status(&self) -> StatusCode {
        self.status
    }

    pub(super) fn code(&self) -> &'static str {
        self.code
    }

    pub(super) fn message(&self) -> &str {
        &self.message
    }

    fn into_response(self, media: Media, request_id: RequestId) -> Response {
        let body = json!({ "errors": [{ "message": self.message, "extensions": { "code": self.code } }] });
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, media.content_type())],
            named(body, request_id),
        )
            .into_response();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                let seconds = HeaderValue::from(self.retry_after.unwrap_or(1));
                response.headers_mut().insert(header::RETRY_AFTER, seconds);
            }
            _ => {}
        }
        response
    }
}

/// What a scan before parsing refuses refuses the whole request, with 400.
impl From<scan::Flaw> for Refuse {
    fn from(flaw: scan::Flaw) -> Self {
        let (code, message) = flaw.refusal();
        Refuse::new(StatusCode::BAD_REQUEST, code, message)
    }
}

/// Most bytes of GraphQL text whose parsed documents are kept.
const CACHED_DOCUMENT_BYTES: u64 = 1024 * 1024;

/// Parsed GraphQL documents by their text. An app sends the same few documents again and again
/// with other variables, and parsing and validating are a large share of a small request's
/// work; the cache keeps the most used within [`CACHED_DOCUMENT_BYTES`] of text.
#[derive(Clone)]
pub(crate) struct Documents(moka::sync::Cache<String, Arc<Parsed>>);

/// A parsed document, what [`analyze_operation`] found in it, and whether async-graphql's full
/// validation has accepted it.
pub(crate) struct Parsed {
    document: ExecutableDocument,
    /// The analysis of the document's operation, when it has only one (which every request
    /// with the document then selects); it depends on the document and the limits alone.
    analysis: OnceLock<Result<Analysis, Refusal>>,
    /// Set once a request that [`vouches`](super::analysis::vouches) for the whole document
    /// passed the full validation: from then on only its variables need checking.
    validated: AtomicBool,
}

impl Parsed {
    fn validated(&self) -> bool {
        self.validated.load(Ordering::Relaxed)
    }

    /// [`analyze_operation`] of `operation`, kept when it is the document's only one.
    fn analyze(&self, state: &AppState, operation: &OperationDefinition) -> Cow<'_, Result<Analysis, Refusal>> {
        let analyze = || analyze_operation(&state.index, &state.limits, &self.document, operation);
        if has_one_operation(&self.document) {
            Cow::Borrowed(self.analysis.get_or_init(analyze))
        } else {
            Cow::Owned(analyze())
        }
    }
}

impl Documents {
    pub(crate) fn new() -> Self {
        Documents(
            moka::sync::Cache::builder()
                .weigher(|query: &String, _: &Arc<Parsed>| u32::try_from(query.len()).unwrap_or(u32::MAX))
                .max_capacity(CACHED_DOCUMENT_BYTES)
                .build(),
        )
    }

    /// `request`'s parsed document, parsed only if its text was not seen lately (and then
    /// only once [`scan::document`] found its nesting within `max_nesting`); the request gets
    /// a copy to execute.
    fn parse(&self, request: &mut Request, max_nesting: usize) -> Result<Arc<Parsed>, Unparsed> {
        let parsed = self.parsed(&request.query, max_nesting)?;
        request.set_parsed_query(parsed.document.clone());
        Ok(parsed)
    }

    /// The parsed document of `text`, from the cache or parsed now (and kept).
    fn parsed(&self, text: &str, max_nesting: usize) -> Result<Arc<Parsed>, Unparsed> {
        if let Some(parsed) = self.0.get(text) {
            return Ok(parsed);
        }
        let parsed = Arc::new(Parsed {
            document: parse_bounded(text, max_nesting)?,
            analysis: OnceLock::new(),
            validated: AtomicBool::new(false),
        });
        self.0.insert(text.to_owned(), parsed.clone());
        Ok(parsed)
    }
}

/// Parses `text` once [`scan::document`] found its brackets nested within `max_nesting`,
/// and refuses it if fragments spread one another deeper than that ([`fragment_chain`]):
/// whatever walks the document after this recurses no deeper.
pub(super) fn parse_bounded(text: &str, max_nesting: usize) -> Result<ExecutableDocument, Unparsed> {
    scan::document(text, max_nesting).map_err(Unparsed::Flaw)?;
    let document = async_graphql::parser::parse_query(text)
        .map_err(|err| Unparsed::Syntax(async_graphql::ServerError::from(err).message))?;
    if fragment_chain(&document) > max_nesting {
        return Err(Unparsed::Flaw(scan::Flaw::TooDeep));
    }
    Ok(document)
}

/// Why a document was not parsed.
#[derive(Debug)]
pub(super) enum Unparsed {
    /// The scan before parsing refused it: the whole request is refused.
    Flaw(scan::Flaw),
    /// A syntax error, with the parser's message.
    Syntax(String),
}

/// How much of async-graphql's validation a request needs.
enum Validation {
    /// All of it; when the request vouches for its document, a pass is remembered.
    Full { vouching_for: Option<Arc<Parsed>> },
    /// None: the document passed before, and the variables surely pass.
    Done,
}

/// Gives each of `errors` that has no `extensions.code` the code `code`: every refusal has one.
pub(super) fn with_code(errors: &mut [async_graphql::ServerError], code: &str) {
    for error in errors {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_none() {
            extensions.set("code", code);
        }
    }
}

/// Whether `response` comes from an executed operation rather than a request error (parse,
/// validation, variables, no such operation), which the spec answers with no `data` and
/// 4xx. Execution gives `data`, unless a non-null root field failed, and then that field's
/// error has a path; the errors of a request that never ran have none.
pub(super) fn executed(response: &async_graphql::Response) -> bool {
    response.data != async_graphql::Value::Null || response.errors.iter().any(|error| !error.path.is_empty())
}

/// How the request arrived; GET may not run mutations.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
}

pub async fn post(
    State(state): State<Arc<AppState>>,
    RequestExtension(request_id): RequestExtension<RequestId>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let peer = super::Peer::address(&parts.extensions);
    let headers = parts.headers;
    let Some(media) = negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())) else {
        return not_acceptable(request_id);
    };
    let result = async {
        let _in_flight = admit(&state)?;
        let caller = authenticate(&state, &headers, peer).await?;
        if !is_json(&headers) {
            return Err(Refuse::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "Send the request as Content-Type: application/json.",
            ));
        }
        let body = read_body(&state, &headers, body).await?;
        // serde_json would read a number it cannot hold as the nearest one it can.
        scan::json_numbers(&body)?;
        let key = idempotency_key(&headers)?;
        let (requests, batch) = parse_body(&body, state.trusted.as_deref())?;
        // Only a mutation that this caller may run claims its key: a query is safe to repeat
        // (and its stored answer could be large), and a caller whose scope is too small gets
        // FORBIDDEN, as without the header, rather than another caller's stored response.
        let key = key
            .filter(|_| !batch && requests.first().is_some_and(|r| may_mutate(&state, &caller, r)))
            .map(|key| idempotency::scoped(caller.person().map(|person| person.subject.as_str()), key));
        let respond = run(&state, &caller, requests, batch, Method::Post, media, request_id);
        Ok::<_, Refuse>(match key {
            // Boxed: its database round trips' futures would make every request's larger
            // (axum moves each request's future into a box, and that copies all of it).
            Some(key) => {
                Box::pin(idempotent(
                    &state,
                    caller.tenant(),
                    &key,
                    &body,
                    respond,
                    media,
                    request_id,
                ))
                .await
            }
            None => respond.await,
        })
    };
    within_time(&state, Box::pin(result), media, request_id).await
}

/// Answers `handling`, or TIMEOUT (504) when all of it (the key, the body, waiting for an
/// idempotent twin, execution) takes longer than the time limit: execution has a limit of its
/// own, and this bounds the rest, a moment later so that execution's own answer (which frees
/// an idempotency key) comes first.
///
/// `handling` comes boxed: its future holds the whole request's (execution and all), and
/// axum and the layers around the handler move the handler's future several times before it
/// runs, each move a copy of all of it.
async fn within_time(
    state: &AppState,
    handling: Pin<Box<impl Future<Output = Result<Response, Refuse>>>>,
    media: Media,
    request_id: RequestId,
) -> Response {
    let limit = state.limits.request_timeout() + std::time::Duration::from_millis(500);
    match tokio::time::timeout(limit, handling).await {
        Ok(result) => result.unwrap_or_else(|refusal| refusal.into_response(media, request_id)),
        Err(_) => {
            tracing::warn!("request timed out");
            timed_out().into_response(media, request_id)
        }
    }
}

fn timed_out() -> Refuse {
    Refuse::new(
        StatusCode::GATEWAY_TIMEOUT,
        "TIMEOUT",
        "The request took too long and was stopped.",
    )
}

/// A place among the requests served at once, held until the response is made; refused
/// (503, `Retry-After: 1`) when every place is taken, rather than queued: a server that falls
/// behind an open stream of requests would otherwise hold more and more of them, each with its
/// connection and memory, until they time out.
fn admit(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, Refuse> {
    state.in_flight.clone().try_acquire_owned().map_err(|_| {
        Refuse::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "The server is serving as many requests as it takes at once; retry shortly.",
        )
    })
}

/// The request's `Idempotency-Key`, if it sent one.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Refuse> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if idempotency::valid_key(key) => Ok(Some(key.to_owned())),
        _ => Err(Refuse::new(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "An Idempotency-Key has 1 to 255 visible ASCII characters.",
        )),
    }
}

/// Whether `request` is a mutation that `caller` may run (`false` when its document does not
/// parse or select one operation: [`run`] answers that).
fn may_mutate(state: &AppState, caller: &Caller, request: &Request) -> bool {
    let Ok(parsed) = state.documents.parsed(&request.query, state.limits.max_nesting) else {
        return false;
    };
    let Some(operation) = select(&parsed.document, request.operation_name.as_deref()) else {
        return false;
    };
    match &*parsed.analyze(state, operation) {
        Ok(analysis) => {
            analysis.kind == OperationType::Mutation && permits(caller, analysis.kind, &analysis.root_fields).is_ok()
        }
        Err(_) => false,
    }
}

/// Runs `respond` at most once per tenant and `key`: a repeat of the same body gets the first
/// response byte for byte (waiting for it if the first is still running), another body with the
/// same key is refused.
async fn idempotent(
    state: &AppState,
    tenant: TenantId,
    key: &str,
    body: &[u8],
    respond: impl Future<Output = Response>,
    media: Media,
    request_id: RequestId,
) -> Response {
    let fingerprint = idempotency::fingerprint(body);
    let deadline = tokio::time::Instant::now() + state.limits.request_timeout();
    let mut respond = Some(respond);
    loop {
        let claim = match state.idempotency.claim(tenant, key, &fingerprint).await {
            Ok(claim) => claim,
            Err(err) => return server_fault(&err).into_response(media, request_id),
        };
        match claim {
            Claim::Run => {
                let Some(respond) = respond.take() else {
                    return internal().into_response(media, request_id);
                };
                return remember(state, tenant, key, respond.await).await;
            }
            Claim::Done {
                same_request: true,
                response,
            } => {
                let mut replay = (
                    StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK),
                    response.body,
                )
                    .into_response();
                if let Ok(content_type) = HeaderValue::from_str(&response.content_type) {
                    replay.headers_mut().insert(header::CONTENT_TYPE, content_type);
                }
                replay
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
                return replay;
            }
            Claim::Done {
                same_request: false, ..
            }
            | Claim::Running { same_request: false } => {
                return Refuse::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "IDEMPOTENCY_KEY_REUSED",
                    "This Idempotency-Key was used for another request; use a new key for a new request.",
                )
                .into_response(media, request_id);
            }
            Claim::Running { same_request: true } => {
                if tokio::time::Instant::now() >= deadline {
                    return Refuse::new(
                        StatusCode::CONFLICT,
                        "IDEMPOTENCY_KEY_IN_PROGRESS",
                        "A request with this Idempotency-Key is still running; retry later.",
                    )
                    .into_response(media, request_id);
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
}

/// Stores the response of a claimed key (or frees the key after a failure on our side).
async fn remember(state: &AppState, tenant: TenantId, key: &str, response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            tracing::error!(%err, "a response could not be read back");
            bytes::Bytes::new()
        }
    };
    let stored = if parts.status.is_server_error() {
        state.idempotency.release(tenant, key).await
    } else if bytes.len() > idempotency::MAX_STORED_RESPONSE_BYTES {
        // The mutation ran: a retry must not run it again, but need not get all of it back.
        let note = json!({ "errors": [{
            "message": "The first request with this Idempotency-Key was applied, but its response was too \
                        large to keep; read the result with a query.",
            "extensions": { "code": "IDEMPOTENT_RESPONSE_NOT_KEPT" }
        }] });
        let response = StoredResponse {
            status: parts.status.as_u16(),
            content_type: media_of(&parts.headers),
            body: note.to_string(),
        };
        state.idempotency.complete(tenant, key, &response).await
    } else {
        let response = StoredResponse {
            status: parts.status.as_u16(),
            content_type: media_of(&parts.headers),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        };
        state.idempotency.complete(tenant, key, &response).await
    };
    if let Err(err) = stored {
        tracing::error!(error = %err, "the idempotency key's outcome could not be stored");
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn media_of(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// GET: a query in the query string, or a WebSocket upgrade for subscriptions.
pub async fn get(
    State(state): State<Arc<AppState>>,
    RequestExtension(request_id): RequestExtension<RequestId>,
    request: axum::extract::Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let peer = super::Peer::address(&parts.extensions);
    let upgrade = parts.headers.get(header::UPGRADE).and_then(|v| v.to_str().ok());
    if upgrade.is_some_and(|protocol| protocol.eq_ignore_ascii_case("websocket")) {
        return super::ws::subscribe(state, parts).await;
    }
    let headers = parts.headers;
    let query = parts.uri.query();
    let Some(media) = negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())) else {
        return not_acceptable(request_id);
    };
    let result = async {
        let _in_flight = admit(&state)?;
        let caller = authenticate(&state, &headers, peer).await?;
        let request = parse_query_string(query.unwrap_or_default(), state.trusted.as_deref())?;
        Ok::<_, Refuse>(run(&state, &caller, vec![request], false, Method::Get, media, request_id).await)
    };
    within_time(&state, Box::pin(result), media, request_id).await
}

fn not_acceptable(request_id: RequestId) -> Response {
    Refuse::new(
        StatusCode::NOT_ACCEPTABLE,
        "NOT_ACCEPTABLE",
        "Accept application/graphql-response+json or application/json.",
    )
    .into_response(Media::Json, request_id)
}

/// Who the request acts as ([`super::credentials`]).
async fn authenticate(state: &AppState, headers: &HeaderMap, peer: Option<IpAddr>) -> Result<Caller, Refuse> {
    let presented = Presented::in_headers(headers);
    credentials::authenticate(state, presented, peer, super::cors::cross_origin(headers)).await
}

/// The refusal for a failure on our side: UNAVAILABLE (503) while the database is out of
/// reach, INTERNAL (500) otherwise. Logged here; the client learns nothing more.
pub(super) fn server_fault(err: &crate::error::Error) -> Refuse {
    match err {
        crate::error::Error::Unavailable(source) => {
            tracing::warn!(error = %source, "database unavailable");
            Refuse::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Unavailable.as_str(),
                "The database is unavailable right now; please retry shortly.",
            )
        }
        _ => {
            tracing::error!(error = %err, "request failed");
            internal()
        }
    }
}

fn internal() -> Refuse {
    Refuse::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal.as_str(),
        "Something went wrong on our side. Please try again later.",
    )
}

/// Reads the body, at most `max_body_bytes` of it.
async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, Refuse> {
    let max = state.limits.max_body_bytes;
    let too_large = || {
        Refuse::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "The request body is too large.",
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max as u64) {
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(Refuse::new(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "The request body could not be read.",
        )),
    }
}

/// One request or a batch (a JSON array of requests).
fn parse_body(body: &[u8], trusted: Option<&TrustedDocuments>) -> Result<(Vec<Request>, bool), Refuse> {
    // Well-formed bodies, the usual case, are read straight into requests; the rest go
    // through a JSON value first, to say what is wrong with them. (A request without a
    // query reads as one with an empty query, so those go that way too, and so do those that
    // name a trusted document instead.)
    match body.iter().find(|byte| !byte.is_ascii_whitespace()) {
        Some(b'{') => {
            if let Ok(request) = serde_json::from_slice::<Request>(body)
                && !request.query.is_empty()
            {
                return Ok((vec![request], false));
            }
        }
        Some(b'[') => {
            if let Ok(requests) = serde_json::from_slice::<Vec<Request>>(body)
                && !requests.is_empty()
                && requests.iter().all(|request| !request.query.is_empty())
            {
                return Ok((requests, true));
            }
        }
        _ => {}
    }
    parse_value(body, trusted)
}

/// [`parse_body`] through a JSON value, which tells what is wrong with a body.
fn parse_value(body: &[u8], trusted: Option<&TrustedDocuments>) -> Result<(Vec<Request>, bool), Refuse> {
    let value: Value =
        serde_json::from_slice(body).map_err(|err| bad(format!("The body is not valid JSON: {err}.")))?;
    match value {
        Value::Array(items) if items.is_empty() => Err(bad("The batch is empty.".to_owned())),
        Value::Array(items) => Ok((
            items
                .into_iter()
                .map(|item| request_of(item, trusted))
                .collect::<Result<_, _>>()?,
            true,
        )),
        Value::Object(_) => Ok((vec![request_of(value, trusted)?], false)),
        _ => Err(bad(
            "The body must be a JSON object such as {\"query\": \"{ __typename }\"}.".to_owned(),
        )),
    }
}

fn bad(message: String) -> Refuse {
    Refuse::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
}

/// One GraphQL request of a body (or of a socket's `subscribe`): its document sent as `query`,
/// or named by id from the trusted documents.
pub(super) fn request_of(value: Value, trusted: Option<&TrustedDocuments>) -> Result<Request, Refuse> {
    let named = if value.get("query").is_some_and(Value::is_string) {
        None
    } else {
        let hash = trusted::named_hash(value.get("documentId"), value.get("extensions")).map_err(bad)?;
        let Some(hash) = hash else {
            return Err(bad(
                "The request has no query: send {\"query\": \"...\"} with the document as a string.".to_owned(),
            ));
        };
        Some(trusted_document(trusted, hash)?.to_owned())
    };
    let mut request = serde_json::from_value::<Request>(value).map_err(|err| {
        bad(format!(
            "The body is not a GraphQL request ({{\"query\": \"...\"}}): {err}."
        ))
    })?;
    if let Some(document) = named {
        request.query = document;
    }
    Ok(request)
}

/// The text of the trusted document `hash` names, or PERSISTED_QUERY_NOT_FOUND.
fn trusted_document<'a>(trusted: Option<&'a TrustedDocuments>, hash: &str) -> Result<&'a str, Refuse> {
    trusted.and_then(|documents| documents.get(hash)).ok_or_else(|| {
        Refuse::new(
            StatusCode::BAD_REQUEST,
            "PERSISTED_QUERY_NOT_FOUND",
            "No trusted document has this id; send the document itself, or an id from the manifest the server loaded.",
        )
    })
}

/// A GET request's parameters: `query` (or `documentId`, or `extensions` naming a persisted
/// query), `operationName` and `variables`.
fn parse_query_string(query: &str, trusted: Option<&TrustedDocuments>) -> Result<Request, Refuse> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Params {
        query: Option<String>,
        operation_name: Option<String>,
        variables: Option<String>,
        document_id: Option<String>,
        extensions: Option<String>,
    }
    let bad = |message: String| Refuse::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message);
    let params: Params =
        serde_urlencoded::from_str(query).map_err(|err| bad(format!("The query string cannot be read: {err}.")))?;
    let document = match params.query {
        Some(document) => document,
        None => {
            let extensions = params
                .extensions
                .as_deref()
                .map(serde_json::from_str::<Value>)
                .transpose()
                .map_err(|err| bad(format!("The extensions parameter is not JSON: {err}.")))?;
            let id = params.document_id.map(Value::String);
            let hash = trusted::named_hash(id.as_ref(), extensions.as_ref())
                .map_err(bad)?
                .ok_or_else(|| bad("The query parameter is missing.".to_owned()))?;
            trusted_document(trusted, hash)?.to_owned()
        }
    };
    let mut request = Request::new(document);
    if let Some(name) = params.operation_name.filter(|name| !name.is_empty()) {
        request = request.operation_name(name);
    }
    if let Some(variables) = params.variables.filter(|v| !v.is_empty()) {
        let value: Value = serde_json::from_str(&variables)
            .map_err(|err| bad(format!("The variables parameter is not JSON: {err}.")))?;
        match value {
            Value::Object(_) | Value::Null => request = request.variables(Variables::from_json(value)),
            _ => return Err(bad("The variables parameter must be a JSON object.".to_owned())),
        }
    }
    Ok(request)
}

/// Whether `caller` may run an operation of `kind` with `root_fields`: an API key by its scope
/// (queries read, subscriptions and mutations write, `defineCustomField` admin), a person any
/// but the mutations [`crate::graphql::NOT_FOR_PERSONS`] names; why not, when it may not.
fn permits(caller: &Caller, kind: OperationType, root_fields: &[String]) -> Result<(), String> {
    match caller {
        Caller::Key(principal) => {
            let needed = match kind {
                OperationType::Mutation
                    if root_fields
                        .iter()
                        .any(|f| crate::graphql::ADMIN_FIELDS.contains(&f.as_str())) =>
                {
                    Scope::Admin
                }
                OperationType::Mutation | OperationType::Subscription => Scope::Write,
                OperationType::Query => Scope::Read,
            };
            match principal.scope >= needed {
                true => Ok(()),
                false => Err(format!(
                    "This operation needs an API key with the {needed} scope; this key has {}.",
                    principal.scope
                )),
            }
        }
        Caller::Person(_) => match root_fields
            .iter()
            .find(|f| kind == OperationType::Mutation && crate::graphql::NOT_FOR_PERSONS.contains(&f.as_str()))
        {
            None => Ok(()),
            Some(field) => Err(format!(
                "An end-user token may not run {field}; it takes an API key of the tenant."
            )),
        },
    }
}

/// One request, ready to execute or already answered before execution.
enum Prepared {
    Execute(Box<Request>, Validation),
    Answered { body: Value, status: StatusCode },
}

/// Checks every request of the body, then executes what may run.
async fn run(
    state: &AppState,
    caller: &Caller,
    requests: Vec<Request>,
    batch: bool,
    method: Method,
    media: Media,
    request_id: RequestId,
) -> Response {
    let limits = &state.limits;
    if requests.len() > limits.max_batch_operations {
        return Refuse::new(
            StatusCode::BAD_REQUEST,
            "BATCH_TOO_LARGE",
            "The batch holds too many operations; send fewer.",
        )
        .into_response(media, request_id);
    }
    let request_error = |status: StatusCode, code: &str, message: String| Prepared::Answered {
        body: json!({ "errors": [{ "message": message, "extensions": { "code": code } }] }),
        status: if media == Media::GraphqlResponse {
            status
        } else {
            StatusCode::OK
        },
    };
    let mut prepared = Vec::with_capacity(requests.len());
    // The batch's operations' complexity together: bounded as one operation's is.
    let mut cost = 0usize;
    // Whether any asks for a page (when one is not selected, execution fails before it starts).
    let mut pages = false;
    for mut request in requests {
        if request.query.len() > limits.max_document_bytes {
            return Refuse::new(
                StatusCode::BAD_REQUEST,
                "DOCUMENT_TOO_LARGE",
                "The GraphQL document is too large.",
            )
            .into_response(media, request_id);
        }
        if caller.person().is_some()
            && let Some(trusted) = &state.trusted
            && !trusted.holds(&request.query)
        {
            return Refuse::new(StatusCode::BAD_REQUEST, "DOCUMENT_NOT_TRUSTED", trusted::NOT_TRUSTED)
                .into_response(media, request_id);
        }
        let parsed = match state.documents.parse(&mut request, limits.max_nesting) {
            Ok(parsed) => parsed,
            Err(Unparsed::Flaw(flaw)) => return Refuse::from(flaw).into_response(media, request_id),
            Err(Unparsed::Syntax(message)) => {
                prepared.push(request_error(StatusCode::BAD_REQUEST, "GRAPHQL_PARSE_FAILED", message));
                continue;
            }
        };
        let document = &parsed.document;
        let variables = &request.variables;
        // When no single operation is selected, execution fails before it starts.
        let Some(operation) = select(document, request.operation_name.as_deref()) else {
            prepared.push(Prepared::Execute(
                Box::new(request),
                Validation::Full { vouching_for: None },
            ));
            continue;
        };
        let analyzed = parsed.analyze(state, operation);
        let checked = match &*analyzed {
            Ok(analysis) => check_variables(limits, variables).map(|()| analysis),
            Err(refusal) => Err(refusal.clone()),
        };
        if let Ok(analysis) = checked {
            cost = cost.saturating_add(analysis.cost);
            pages |= analysis.pages;
        }
        let checked = checked.and_then(|analysis| {
            if cost > limits.max_complexity {
                Err(too_complex())
            } else {
                Ok(analysis)
            }
        });
        let analysis = match checked {
            Ok(analysis) => analysis,
            Err(Refusal::Limit { code, message }) => {
                return Refuse::new(StatusCode::BAD_REQUEST, code, message).into_response(media, request_id);
            }
            Err(Refusal::Invalid(message)) => {
                prepared.push(request_error(
                    StatusCode::BAD_REQUEST,
                    "GRAPHQL_VALIDATION_FAILED",
                    message,
                ));
                continue;
            }
        };
        if analysis.kind == OperationType::Subscription {
            return Refuse::new(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "Subscriptions run over a WebSocket on /graphql (graphql-transport-ws).",
            )
            .into_response(media, request_id);
        }
        if analysis.kind != OperationType::Query {
            if method == Method::Get {
                return Refuse::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "METHOD_NOT_ALLOWED",
                    "Mutations need POST.",
                )
                .into_response(media, request_id);
            }
            if batch {
                return Refuse::new(
                    StatusCode::BAD_REQUEST,
                    "BATCH_MUTATION_NOT_ALLOWED",
                    "A batch may hold queries only; send each mutation on its own.",
                )
                .into_response(media, request_id);
            }
        }
        if let Err(message) = permits(caller, analysis.kind, &analysis.root_fields) {
            prepared.push(request_error(StatusCode::FORBIDDEN, Code::Forbidden.as_str(), message));
            continue;
        }
        let validation = if parsed.validated() && variables_surely_valid(&state.index, operation, variables) {
            Validation::Done
        } else {
            let vouching_for = vouches(document, operation, variables).then(|| parsed.clone());
            Validation::Full { vouching_for }
        };
        prepared.push(Prepared::Execute(Box::new(request), validation));
    }

    let execution = async {
        let mut answers = Vec::with_capacity(prepared.len());
        // The batch's responses share one budget: once one is too large, the rest read nothing.
        let budget = pages.then(|| Arc::new(ResponseBudget::new(limits.max_response_bytes)));
        // What the batch's responses may still take as they are written.
        let mut room = limits.max_response_bytes;
        for item in prepared {
            let answer = match item {
                Prepared::Answered { body, status } => (named(body, request_id), status),
                Prepared::Execute(request, validation) => {
                    let spend = Spend {
                        budget: budget.clone(),
                        room,
                    };
                    execute(state, caller, *request, validation, media, request_id, spend).await
                }
            };
            room = room.saturating_sub(answer.0.len());
            answers.push(answer);
        }
        answers
    };
    let Ok(mut answers) = tokio::time::timeout(limits.request_timeout(), execution).await else {
        tracing::warn!("request timed out");
        return timed_out().into_response(media, request_id);
    };

    let (body, status) = if batch {
        let bodies: Vec<String> = answers.into_iter().map(|(body, _)| body).collect();
        (format!("[{}]", bodies.join(",")), StatusCode::OK)
    } else {
        answers.pop().unwrap_or_else(|| ("{}".to_owned(), StatusCode::OK))
    };
    (status, [(header::CONTENT_TYPE, media.content_type())], body).into_response()
}

/// A response's text, with `requestId` added to its `extensions` (keeping what is there).
fn named(mut body: Value, request_id: RequestId) -> String {
    if let Value::Object(map) = &mut body {
        let extensions = map.entry("extensions").or_insert_with(|| json!({}));
        if let Value::Object(extensions) = extensions {
            extensions.insert("requestId".to_owned(), json!(request_id.to_string()));
        }
    }
    body.to_string()
}

/// What a response may take: the budget its pages are charged to, and the bytes it may be
/// written as.
struct Spend {
    /// None when no operation of the batch asks for a page.
    budget: Option<Arc<ResponseBudget>>,
    room: usize,
}

/// Executes `request`: its response's JSON text, named with `request_id`, and status; a
/// response past what `spend` allows is cut off and answered with RESPONSE_TOO_LARGE.
async fn execute(
    state: &AppState,
    caller: &Caller,
    request: Request,
    validation: Validation,
    media: Media,
    request_id: RequestId,
    spend: Spend,
) -> (String, StatusCode) {
    let actor = caller.actor(request_id.to_string());
    let Spend { budget, room } = spend;
    let mut request = request.data(caller.tenant()).data(actor);
    if let Some(person) = caller.person() {
        request = request.data(person.clone());
    }
    if let Some(budget) = &budget {
        request = request.data(budget.clone());
    }
    let mut response = match &validation {
        Validation::Done => state.validated_schema.execute(request).await,
        Validation::Full { .. } => state.schema.execute(request).await,
    };
    if let Validation::Full {
        vouching_for: Some(parsed),
    } = validation
        && executed(&response)
    {
        // Only a request that passed validation executes.
        parsed.validated.store(true, Ordering::Relaxed);
    }
    let failed = |err: &dyn std::fmt::Display| {
        tracing::error!(%err, "a response could not be serialised");
        let body = json!({ "errors": [{ "message": "Something went wrong on our side.", "extensions": { "code": "INTERNAL" } }] });
        (named(body, request_id), StatusCode::INTERNAL_SERVER_ERROR)
    };
    let too_large = || {
        let fault = crate::graphql::too_large();
        let body = json!({ "data": null, "errors": [{ "message": fault.message, "extensions": { "code": fault.code.as_str() } }] });
        (named(body, request_id), StatusCode::OK)
    };
    if budget.as_ref().is_some_and(|budget| budget.exceeded()) {
        return too_large();
    }
    // The usual case goes straight to text; a request error is reshaped first (below).
    if executed(&response) {
        // Every error of our resolvers has a code; one without is async-graphql's, refusing an
        // argument's value as its type (an Int past 32 bits, say).
        with_code(&mut response.errors, Code::ValidationFailed.as_str());
        response.extensions.insert(
            "requestId".to_owned(),
            async_graphql::Value::String(request_id.to_string()),
        );
        // Pages were charged as they were read, so the text is at most about the limit.
        return match serde_json::to_string(&response) {
            Ok(body) if body.len() > room => too_large(),
            Ok(body) => (body, StatusCode::OK),
            Err(err) => failed(&err),
        };
    }
    let mut body = match serde_json::to_value(&response) {
        Ok(body) => body,
        Err(err) => return failed(&err),
    };
    // A request error: the spec leaves `data` out, and every error gets a code.
    if let Value::Object(map) = &mut body {
        map.remove("data");
        if let Some(Value::Array(errors)) = map.get_mut("errors") {
            for error in errors {
                let extensions = error
                    .as_object_mut()
                    .map(|e| e.entry("extensions").or_insert_with(|| json!({})));
                if let Some(Value::Object(extensions)) = extensions {
                    extensions
                        .entry("code")
                        .or_insert_with(|| json!("GRAPHQL_VALIDATION_FAILED"));
                }
            }
        }
    }
    let status = if media == Media::GraphqlResponse {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (named(body, request_id), status)
}

#[cfg(test)]
mod tests {
    use super::super::Limits;
    use super::*;
    use crate::auth::{Person, Principal};

    #[test]
    fn a_document_is_parsed_once_and_then_served_from_the_cache() {
        let documents = Documents::new();
        let text = "query($id: ID!) { profile(ref: {id: $id}) { id } }";
        let mut first = Request::new(text);
        let parsed = documents.parse(&mut first, 64).unwrap();
        assert!(documents.0.contains_key(text));
        assert_eq!(
            format!("{:?}", first.parsed_query().unwrap()),
            format!("{:?}", parsed.document)
        );
        let mut again = Request::new(text);
        assert!(Arc::ptr_eq(&documents.parse(&mut again, 64).unwrap(), &parsed));
        assert_eq!(
            format!("{:?}", again.parsed_query().unwrap()),
            format!("{:?}", parsed.document)
        );
        let mut broken = Request::new("{ profile(");
        assert!(documents.parse(&mut broken, 64).is_err());
        let mut deep = Request::new(format!("{{ a(x: {}) }}", "[".repeat(100)));
        assert!(matches!(
            documents.parse(&mut deep, 64),
            Err(Unparsed::Flaw(scan::Flaw::TooDeep))
        ));
        assert!(!documents.0.contains_key("{ profile("));
    }

    #[test]
    fn fragments_spreading_one_another_count_as_nesting() {
        let chain = |links: usize| {
            let mut text = String::from("{ ...F0 }");
            for i in 0..links {
                text.push_str(&format!(" fragment F{i} on Query {{ ...F{} }}", i + 1));
            }
            text.push_str(&format!(" fragment F{links} on Query {{ __typename }}"));
            text
        };
        assert!(parse_bounded(&chain(63), 64).is_ok());
        assert!(matches!(
            parse_bounded(&chain(64), 64),
            Err(Unparsed::Flaw(scan::Flaw::TooDeep))
        ));
        assert!(matches!(
            parse_bounded(&chain(1_000), 64),
            Err(Unparsed::Flaw(scan::Flaw::TooDeep))
        ));
        // A cycle is left for validation to report; it is not a chain without end.
        let cycle = "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A __typename }";
        assert_eq!(fragment_chain(&async_graphql::parser::parse_query(cycle).unwrap()), 2);
    }

    #[test]
    fn a_document_of_the_default_size_nested_throughout_parses_on_a_worker_stack() {
        let levels = (Limits::default().max_document_bytes - 32) / 2;
        let text = format!("{{ a(x: {}1{}) }}", "[".repeat(levels), "]".repeat(levels));
        assert!(text.len() <= Limits::default().max_document_bytes);
        let parsed = std::thread::Builder::new()
            .stack_size(super::super::WORKER_STACK_BYTES)
            .spawn(move || async_graphql::parser::parse_query(&text).map(|document| fragment_chain(&document)))
            .unwrap()
            .join();
        assert!(matches!(parsed, Ok(Ok(0))));
    }

    #[test]
    fn a_body_read_straight_into_requests_reads_as_it_does_through_a_json_value() {
        let outcome = |parsed: Result<(Vec<Request>, bool), Refuse>| match parsed {
            Ok((requests, batch)) => {
                let requests: Vec<_> = requests
                    .iter()
                    .map(|r| format!("{:?} {:?} {:?}", r.query, r.operation_name, r.variables))
                    .collect();
                format!("{requests:?} batch={batch}")
            }
            Err(refusal) => format!("{} {} {}", refusal.status, refusal.code, refusal.message),
        };
        let bodies = [
            r#"{"query": "{ a }"}"#,
            r#" {"query": "query A($x: Int) { a(x: $x) }", "operationName": "A", "variables": {"x": 1}}"#,
            r#"{"query": "{ a }", "variables": null, "extensions": {}}"#,
            r#"[{"query": "{ a }"}, {"query": "{ b }"}]"#,
            r#"{"query": "{ a }", "query": "{ b }"}"#,
            r#"{"query": ""}"#,
            r#"{"query": null}"#,
            r#"{"variables": {}}"#,
            r#"{"query": "{ a }", "variables": [1]}"#,
            r#"[{"query": "{ a }"}, {}]"#,
            "[]",
            "{",
            "42",
        ];
        for body in bodies {
            assert_eq!(
                outcome(parse_body(body.as_bytes(), None)),
                outcome(parse_value(body.as_bytes(), None)),
                "{body}"
            );
        }
        assert!(parse_body(bodies[0].as_bytes(), None).is_ok());
    }

    #[test]
    fn accept_picks_the_preferred_graphql_media_type() {
        assert_eq!(negotiate(None), Some(Media::Json));
        assert_eq!(negotiate(Some("*/*")), Some(Media::Json));
        assert_eq!(
            negotiate(Some("application/graphql-response+json, */*")),
            Some(Media::GraphqlResponse)
        );
        assert_eq!(negotiate(Some("application/json")), Some(Media::Json));
        assert_eq!(
            negotiate(Some("application/graphql-response+json, application/json;q=0.9")),
            Some(Media::GraphqlResponse)
        );
        assert_eq!(
            negotiate(Some("application/json, application/graphql-response+json;q=0.5")),
            Some(Media::Json)
        );
        assert_eq!(negotiate(Some("application/json;q=0, text/html")), None);
        assert_eq!(negotiate(Some("text/html")), None);
        assert_eq!(negotiate(Some("Application/JSON; charset=utf-8")), Some(Media::Json));
    }

    #[test]
    fn only_json_in_utf_8_is_a_post_body() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            is_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("application/json; charset=UTF-8"));
        assert!(!with("application/json; charset=latin1"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!with("multipart/form-data; boundary=x"));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn a_key_may_run_what_its_scope_allows_and_a_person_all_but_the_tenants_own_mutations() {
        let key = |scope| {
            Caller::Key(Principal {
                key_id: uuid::Uuid::nil(),
                tenant: TenantId(uuid::Uuid::nil()),
                scope,
            })
        };
        let person = Caller::Person(Arc::new(Person {
            tenant: TenantId(uuid::Uuid::nil()),
            issuer: "https://id.example".into(),
            subject: "ana".into(),
            expires_at: 0,
        }));
        let fields = |names: &[&str]| names.iter().map(|&name| name.to_owned()).collect::<Vec<_>>();
        let (query, mutation) = (OperationType::Query, OperationType::Mutation);
        assert!(permits(&key(Scope::Read), query, &fields(&["profiles"])).is_ok());
        assert!(permits(&key(Scope::Read), mutation, &fields(&["updateProfile"])).is_err());
        assert!(permits(&key(Scope::Write), mutation, &fields(&["updateProfile"])).is_ok());
        let both = fields(&["createProfile", "defineCustomField"]);
        assert!(permits(&key(Scope::Write), mutation, &both).is_err());
        assert!(permits(&key(Scope::Admin), mutation, &both).is_ok());
        for allowed in ["createProfile", "updateProfile"] {
            assert!(permits(&person, mutation, &fields(&[allowed])).is_ok(), "{allowed}");
        }
        for refused in ["setProfileStatus", "deleteProfile", "defineCustomField"] {
            let message = permits(&person, mutation, &fields(&["updateProfile", refused])).unwrap_err();
            assert!(message.contains(refused), "{message}");
        }
        assert!(permits(&person, query, &fields(&["me", "profiles"])).is_ok());
    }
}
