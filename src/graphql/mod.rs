//! The GraphQL API: client-facing types and thin resolvers over [`crate::store::Store`].
//!
//! [`schema`] builds the schema without a database; the server attaches the [`Store`] and each
//! request's [`TenantId`] afterwards, so `print-schema` and the schema test need no database.

mod budget;
mod cursor;
mod mutation;
mod query;
mod subscription;
mod types;

use async_graphql::{Context, Schema, SchemaBuilder};

pub use budget::{ResponseBudget, too_large};
pub use mutation::Mutation;
pub use query::Query;
pub use subscription::{Events, ProfileChangeEvent, Subscription};
pub use types::{CustomFieldType, MemberType, ProfileStatus};

use crate::store::{Actor, Store, TenantId};

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// Mutation root fields that need an admin key; every other mutation needs write.
pub const ADMIN_FIELDS: &[&str] = &["defineCustomField"];

/// The schema with nothing attached: add `.data(store)` before `.finish()` to serve it.
pub fn schema() -> SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(Query, Mutation, Subscription)
}

/// The schema as SDL, what `schema.graphql` holds: types, fields and enum values sorted,
/// arguments in their declared order (as the contract has them), with descriptions.
pub fn sdl() -> String {
    let options = async_graphql::SDLExportOptions::new()
        .sorted_fields()
        .sorted_enum_items();
    schema().finish().sdl_with_options(options)
}

/// The store and the tenant of the request being resolved.
fn scope<'a>(ctx: &Context<'a>) -> async_graphql::Result<(&'a Store, TenantId)> {
    Ok((ctx.data::<Store>()?, *ctx.data::<TenantId>()?))
}

/// Who the request acts as, for the history of what it changes.
fn actor(ctx: &Context<'_>) -> Actor {
    ctx.data_opt::<Actor>().cloned().unwrap_or_default()
}
