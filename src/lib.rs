//! profile-gateway: one GraphQL API over five vendor dialects of profile updates.
//!
//! Layout, from the edge inwards:
//!
//! - [`cli`]: the `profile-gateway` command line (`serve`, `migrate`, `print-schema`, `apikey`,
//!   `tenant`).
//! - [`http`]: the edge: `/graphql` over HTTP and WebSocket, `/graphiql`, `/healthz`,
//!   `/readyz`; API keys, limits, request ids, graceful shutdown.
//! - [`graphql`]: the schema, its client-facing types and thin resolvers.
//! - [`dialects`]: each vendor's `updateProfile` input and its `TryFrom` translation into the
//!   canonical change set; pure, with the unit tests of DIALECTS.md beside them.
//! - [`domain`]: the canonical profile, the change set and the pure function applying it.
//! - [`store`]: the engine that loads, applies and saves a change set in one transaction.
//! - [`entity`]: SeaORM entities; [`db`]: connecting and migrating (migrations live in the
//!   `migrations/` crate).
//! - [`auth`]: API keys, scopes and the principal a request acts as; [`tenant`]: what a tenant
//!   allows browsers (origins, end-user tokens); [`jwt`]: verifying end users' tokens.
//! - [`idempotency`]: `Idempotency-Key`s, kept in the database for every replica.
//! - [`feed`]: live change notices, across replicas through PostgreSQL's LISTEN/NOTIFY.
//! - [`error`]: the one error type and its mapping to `extensions.code`.
//! - [`logging`]: the log's writer, which writes lines to stderr in batches.

pub mod auth;
pub mod cli;
pub mod db;
pub mod dialects;
pub mod domain;
pub mod entity;
pub mod error;
pub mod feed;
pub mod graphql;
pub mod http;
pub mod idempotency;
pub mod jwt;
pub mod logging;
pub mod store;
pub mod tenant;

pub use graphql::{AppSchema, schema, sdl};
