//! The HTTP floor: plain axum JSON routes that run the reference SQL, with no GraphQL and no
//! API keys; what any HTTP service running the same statements costs at the least.
//!
//! - `GET /profiles/{id}`: W1's read.
//! - `POST /profiles/{id}/scrip` with `{"attributes": {…}, "tags": […]}`: W2's update, which
//!   sends no change notice.
//! - `GET /tenants/{tenant}/profiles`: W4's list.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sea_orm::sqlx::{self, PgPool};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::reference;

/// The floor's routes over `pool`.
pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/profiles/{id}", get(read))
        .route("/profiles/{id}/scrip", post(update))
        .route("/tenants/{tenant}/profiles", get(list))
        .with_state(pool)
}

struct Failed(sqlx::Error);

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.0.to_string()).into_response()
    }
}

impl From<sqlx::Error> for Failed {
    fn from(err: sqlx::Error) -> Self {
        Failed(err)
    }
}

async fn read(State(pool): State<PgPool>, Path(id): Path<Uuid>) -> Result<Response, Failed> {
    Ok(match reference::read(&pool, id).await? {
        Some(profile) => Json(profile).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    })
}

#[derive(Deserialize)]
struct Scrip {
    attributes: Value,
    tags: Vec<String>,
}

async fn update(
    State(pool): State<PgPool>,
    Path(id): Path<Uuid>,
    Json(scrip): Json<Scrip>,
) -> Result<Json<Value>, Failed> {
    Ok(Json(
        reference::update(&pool, id, &scrip.attributes, &scrip.tags).await?,
    ))
}

async fn list(State(pool): State<PgPool>, Path(tenant): Path<Uuid>) -> Result<Json<Value>, Failed> {
    Ok(Json(reference::list(&pool, tenant).await?))
}
