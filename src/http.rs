//! The HTTP edge: routes, the per-request tenant, and serving until shutdown.

use std::net::SocketAddr;

use async_graphql::http::GraphiQLSource;
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Redirect};
use axum::routing::get;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::graphql::AppSchema;
use crate::store::{Store, TenantId};

/// The tenant every request acts for until API keys exist.
pub const DEFAULT_TENANT: &str = "default";

#[derive(Clone)]
struct AppState {
    schema: AppSchema,
    tenant: TenantId,
}

/// The service's routes over a migrated store.
pub async fn router(store: Store) -> crate::error::Result<Router> {
    let tenant = store.ensure_tenant(DEFAULT_TENANT).await?;
    let schema = crate::schema().data(store).finish();
    Ok(Router::new()
        .route("/", get(|| async { Redirect::temporary("/graphiql") }))
        .route("/graphql", get(graphql).post(graphql))
        .route("/graphiql", get(graphiql))
        .route("/healthz", get(|| async { "ok" }))
        .layer(TraceLayer::new_for_http())
        .with_state(AppState { schema, tenant }))
}

async fn graphql(State(state): State<AppState>, request: GraphQLRequest) -> GraphQLResponse {
    state
        .schema
        .execute(request.into_inner().data(state.tenant))
        .await
        .into()
}

async fn graphiql() -> impl IntoResponse {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .title("profile-gateway")
            .finish(),
    )
}

/// Serves `router` on `listener` until ctrl-c or SIGTERM.
pub async fn serve(listener: TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
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
