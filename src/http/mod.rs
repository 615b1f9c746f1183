//! The HTTP edge: routes, request ids, API keys, limits, and serving until shutdown.

mod analysis;
mod cors;
mod credentials;
mod graphiql;
mod graphql;
pub mod limits;
pub mod rate;
mod scan;
pub mod trusted;
mod ws;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_graphql::ValidationMode;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;
use uuid::Uuid;

pub use analysis::SchemaIndex;
pub use graphql::{Media, negotiate};
pub use limits::Limits;

use crate::auth::Keys;
use crate::graphql::AppSchema;
use crate::idempotency::IdempotencyKeys;
use crate::store::Store;
use crate::tenant::Tenants;

/// The stack of each thread that serves requests. The scan before parsing keeps every walk
/// over a document within [`Limits::max_nesting`] levels, which need far less; this much
/// (address space, of which a thread uses only what it touches) lets even a document of the
/// default size nested throughout be parsed, so a path that recursed past the limit by mistake
/// could not abort the process by overflowing its stack.
pub const WORKER_STACK_BYTES: usize = 256 * 1024 * 1024;

/// The tenant a newcomer's first key belongs to.
pub const DEFAULT_TENANT: &str = "default";

/// How the edge behaves.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    pub limits: Limits,
    /// Whether introspection (and "Did you mean …" suggestions) are on.
    pub introspection: bool,
    /// A key GraphiQL sends for the user: only for a key made on this start, on loopback.
    pub graphiql_key: Option<String>,
    /// Ends subscriptions when the server shuts down, and waits for their sockets to close.
    pub lifecycle: Lifecycle,
    /// How long a valid API key is remembered without asking the database (zero: never).
    pub api_key_cache: std::time::Duration,
    /// The documents requests may name by id (`serve --trusted-documents`).
    pub trusted_documents: Option<Arc<trusted::TrustedDocuments>>,
    pub rates: rate::Rates,
}

/// How long `serve` remembers a valid API key unless told otherwise.
pub const DEFAULT_API_KEY_CACHE: std::time::Duration = std::time::Duration::from_secs(5);

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            limits: Limits::default(),
            introspection: true,
            graphiql_key: None,
            lifecycle: Lifecycle::default(),
            api_key_cache: DEFAULT_API_KEY_CACHE,
            trusted_documents: None,
            rates: rate::Rates::default(),
        }
    }
}

/// What a shutdown must end and wait for beyond HTTP requests: upgraded WebSocket
/// connections, which the HTTP server no longer tracks.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    shutdown: CancellationToken,
    sockets: TaskTracker,
}

impl Lifecycle {
    /// Tells every socket to close.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
    }

    /// Waits (at most `grace`) for every socket to close.
    pub async fn closed(&self, grace: std::time::Duration) {
        self.sockets.close();
        if tokio::time::timeout(grace, self.sockets.wait()).await.is_err() {
            tracing::warn!("some sockets did not close in time");
        }
    }
}

/// The address a connection comes from, in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Peer {
    /// The client's address of a request, whose failing credentials are counted; none when
    /// the router is served some other way than by [`serve_until`].
    pub fn address(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
        extensions.get::<Peer>().map(|Peer(address)| address.ip())
    }
}

/// Forgets full buckets every minute, for as long as the limiter is in use.
fn spawn_pruning(limiter: std::sync::Weak<rate::Limiter>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            every.tick().await;
            match limiter.upgrade() {
                Some(limiter) => limiter.prune(),
                None => return,
            }
        }
    });
}

/// Names one request in its response (`x-request-id`, `extensions.requestId`) and its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(Uuid);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What every handler shares, behind one `Arc` (axum clones the state for every request).
pub(crate) struct AppState {
    schema: AppSchema,
    /// The same schema with async-graphql's validation cut to its few cheap rules
    /// (`ValidationMode::Fast`), for documents the full validation accepted before, sent
    /// with variables that surely pass ([`graphql::Documents`]).
    validated_schema: AppSchema,
    store: Store,
    keys: Keys,
    idempotency: IdempotencyKeys,
    limits: Arc<Limits>,
    index: Arc<SchemaIndex>,
    documents: graphql::Documents,
    lifecycle: Lifecycle,
    graphiql: graphiql::Graphiql,
    /// The documents requests may name by id.
    trusted: Option<Arc<trusted::TrustedDocuments>>,
    limiter: Arc<rate::Limiter>,
    /// What each tenant allows browsers, read at most once per key cache time.
    tenants: Tenants,
    /// Checks end users' tokens, keeping their issuers' keys.
    verifier: crate::jwt::Verifier,
    /// How long a valid key is remembered: how often an open socket asks whether its key was
    /// revoked.
    api_key_cache: std::time::Duration,
    /// A permit for each GraphQL request served at once ([`Limits::max_in_flight`]).
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// The service's routes over a migrated store.
pub fn router(store: Store, config: EdgeConfig) -> crate::error::Result<Router> {
    // No extension: with any at all, async-graphql builds resolve info (type names formatted
    // anew) for every field and list item, which cost a read a quarter of its CPU time.
    let schema = |validation| {
        let mut schema = crate::schema().validation_mode(validation);
        if !config.introspection {
            schema = schema.disable_introspection().disable_suggestions();
        }
        schema
            .data(store.clone())
            .data(crate::graphql::Events::<crate::graphql::ProfileChangeEvent>::default())
            .finish()
    };
    let index = SchemaIndex::new(&crate::sdl()).map_err(|err| crate::error::Error::Internal(Box::new(err)))?;
    // Every replica's changes: for subscribers here, and to forget kept profiles they changed.
    store.listen();
    let tenants = Tenants::cached(store.clone(), config.api_key_cache);
    let limiter = Arc::new(rate::Limiter::new(&config.rates));
    spawn_pruning(Arc::downgrade(&limiter));
    let state = Arc::new(AppState {
        schema: schema(ValidationMode::Strict),
        validated_schema: schema(ValidationMode::Fast),
        store: store.clone(),
        keys: Keys::cached(store.clone(), config.api_key_cache),
        tenants: tenants.clone(),
        verifier: crate::jwt::Verifier::new(!config.api_key_cache.is_zero())
            .map_err(|err| crate::error::Error::Internal(Box::new(err)))?,
        trusted: config.trusted_documents,
        limiter: limiter.clone(),
        api_key_cache: config.api_key_cache,
        idempotency: IdempotencyKeys::new(store, config.limits.request_timeout()),
        in_flight: Arc::new(tokio::sync::Semaphore::new(config.limits.max_in_flight as usize)),
        limits: Arc::new(config.limits),
        index: Arc::new(index),
        documents: graphql::Documents::new(),
        graphiql: graphiql::Graphiql::new(config.graphiql_key.as_deref()),
        lifecycle: config.lifecycle,
    });
    Ok(Router::new()
        .route("/", get(|| async { Redirect::temporary("/graphiql") }))
        .route(
            "/graphql",
            get(graphql::get)
                .post(graphql::post)
                .layer(middleware::from_fn_with_state(cors::layer(tenants), cors::handle)),
        )
        .route("/graphiql", get(graphiql_page))
        .route("/graphiql/assets/{name}", get(graphiql_asset))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(request_id))
        .with_state(state))
}

/// GraphiQL's page ([`graphiql`]).
async fn graphiql_page(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Response {
    state
        .graphiql
        .page(headers.get(header::HOST).and_then(|host| host.to_str().ok()))
}

/// One of GraphiQL's assets ([`graphiql`]).
async fn graphiql_asset(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    name: axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    state.graphiql.asset(name, &headers)
}

/// Ready when the database answers within two seconds: a load balancer sends no traffic to a
/// replica that cannot reach it.
async fn readyz(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Response {
    let ping = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.connection().ping()).await;
    match ping {
        Ok(Ok(())) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "not ready: the database does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the database does not answer",
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the database does not answer in time",
        )
            .into_response(),
    }
}

/// No request should be able to panic the server; if one does all the same, its client gets
/// an INTERNAL error (and the log the panic), not a dropped connection.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned());
    tracing::error!(panic = detail.as_deref().unwrap_or("unknown"), "a request panicked");
    let body = serde_json::json!({
        "errors": [{ "message": "Something went wrong on our side. Please try again later.", "extensions": { "code": "INTERNAL" } }]
    });
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Gives every request an id, sends it back in `x-request-id`, and logs one line per request
/// in a span that carries it (so every log line of the request names it).
async fn request_id(mut request: Request, next: Next) -> Response {
    let id = RequestId(Uuid::new_v4());
    request.extensions_mut().insert(id);
    let span =
        tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert("x-request-id", value);
    }
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request done"
        );
    });
    response
}

/// How long a client may take to send a request's headers; a connection that sends them
/// slower (one byte a second, say) is closed rather than kept.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `router` on `listener` until ctrl-c or SIGTERM; then stops accepting, closes every
/// subscription with a close frame, lets in-flight requests finish, and returns, within
/// `shutdown_timeout` whatever clients do.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    lifecycle: Lifecycle,
    shutdown_timeout: std::time::Duration,
) -> std::io::Result<()> {
    serve_until(listener, router, lifecycle, shutdown_timeout, shutdown_signal()).await
}

/// [`serve`], shutting down when `signal` completes rather than on a signal of the process.
pub async fn serve_until(
    listener: TcpListener,
    router: Router,
    lifecycle: Lifecycle,
    shutdown_timeout: std::time::Duration,
    signal: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut connections = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    connections
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(%err, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let service = tower::ServiceExt::map_request(router.clone(), move |mut request: axum::http::Request<_>| {
            request.extensions_mut().insert(Peer(peer));
            request
        });
        let service = hyper_util::service::TowerToHyperService::new(service);
        let connection = connections
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "a connection ended with an error");
            }
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + shutdown_timeout;
    lifecycle.shut_down();
    if tokio::time::timeout_at(deadline, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open at the shutdown timeout were dropped");
    }
    lifecycle
        .closed(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    tracing::info!("stopped");
    Ok(())
}

/// Binds `addr`, logging where GraphQL and GraphiQL are.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!("GraphQL at http://{local}/graphql, GraphiQL at http://{local}/graphiql");
    Ok(listener)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(%err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
