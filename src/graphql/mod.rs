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

use std::sync::Arc;

use async_graphql::{Context, Schema, SchemaBuilder};

pub use crate::dialects::MemberType;
pub use budget::{ResponseBudget, too_large};
pub use mutation::Mutation;
pub use query::Query;
pub use subscription::{Events, ProfileChangeEvent, Subscription};
pub use types::{CustomFieldType, ProfileStatus};

use crate::auth::Person;
use crate::domain::ProfileKey;
use crate::store::{Actor, Parts, ProfileView, Store, TenantId};

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// Mutation root fields that need an admin key; every other mutation needs write.
pub const ADMIN_FIELDS: &[&str] = &["defineCustomField"];

/// Mutation root fields a person (an end-user token) may not run: they are the tenant's.
pub const NOT_FOR_PERSONS: &[&str] = &["setProfileStatus", "deleteProfile", "defineCustomField"];

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

/// The person the request acts for when it comes with an end-user token: it then sees and
/// changes only their own profile (the `self` scope).
fn person<'a>(ctx: &Context<'a>) -> Option<&'a Person> {
    ctx.data_opt::<Arc<Person>>().map(|person| &**person)
}

/// The profile `key` names, with `parts`, if the caller may see it: any of its tenant's with an
/// API key; with a token, only the person's own (what `key` names otherwise is not found, so
/// that a person learns nothing of other profiles).
async fn find_visible(
    ctx: &Context<'_>,
    store: &Store,
    tenant: TenantId,
    key: &ProfileKey,
    parts: Parts,
) -> crate::error::Result<Option<ProfileView>> {
    let Some(person) = person(ctx) else {
        return store.find(tenant, key, parts).await;
    };
    let found = store
        .find(tenant, &ProfileKey::ExternalId(person.subject.clone()), parts)
        .await?;
    // Found by its externalId, the profile has the person's; its id and serial number are
    // read whatever the parts.
    let names = |view: &ProfileView| match key {
        ProfileKey::ExternalId(external_id) => *external_id == person.subject,
        ProfileKey::Id(_) | ProfileKey::SerialNumber(_) => key.names(&view.profile),
    };
    Ok(found.filter(names))
}
