use async_graphql::{Context, ID, Object, Result, ResultExt};

use super::types::{
    CustomFieldDefinition, CustomFieldInput, DeletedProfile, Profile, ProfileRef, ProfileStatus, UpdateProfilePayload,
};
use super::{actor, person, scope};
use crate::dialects::{CreateProfileInput, ProfileUpdate};
use crate::domain::{ChangeSet, NewCustomField, ProfileKey};
use crate::error::{Code, Fault};
use crate::store::Update;

pub struct Mutation;

/// Writes, always within the caller's tenant; each mutation is all or nothing.
#[Object]
impl Mutation {
    /// Creates a profile in the caller's tenant at version 1, status ACTIVE, with the next
    /// serial number. externalId must be unique in the tenant (DUPLICATE_EXTERNAL_ID). With an
    /// end-user token, a person creates their own profile: externalId is the token's `sub`
    /// (omitted, it is taken from there; any other is FORBIDDEN).
    async fn create_profile(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The new profile's fields; all optional.")] mut input: CreateProfileInput,
    ) -> Result<Profile> {
        let (store, tenant) = scope(ctx)?;
        if let Some(person) = person(ctx) {
            match &input.external_id {
                None => input.external_id = Some(person.subject.clone()),
                Some(id) if *id == person.subject => {}
                Some(_) => {
                    return Err(Fault::new(
                        Code::Forbidden,
                        "An end-user token creates only its own profile: externalId must be the token's subject.",
                    )
                    .at("input.externalId"))
                    .extend();
                }
            }
        }
        let change = ChangeSet::try_from(input).extend()?;
        Ok(Profile::from(
            store.create(tenant, &change, &actor(ctx)).await.extend()?,
        ))
    }

    /// Updates a profile in one vendor's dialect, all or nothing. With `expectedVersion`, the
    /// update applies only to that version (VERSION_CONFLICT otherwise); with `dryRun`, it is
    /// checked and its result computed, and nothing is stored. An update that changes nothing
    /// keeps the version and returns no changes. With an end-user token, only the person's own
    /// profile can be updated, and not its externalId (memberRefId): FORBIDDEN.
    async fn update_profile(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The profile to update: exactly one of id, externalId or serialNumber.")] r#ref: ProfileRef,
        #[graphql(desc = "Exactly one vendor dialect and its input.")] update: ProfileUpdate,
        #[graphql(desc = "Apply only if the profile is at this version (VERSION_CONFLICT otherwise).")]
        expected_version: Option<i32>,
        #[graphql(
            default = false,
            desc = "Check the update and compute its result and changes, storing nothing."
        )]
        dry_run: bool,
    ) -> Result<UpdateProfilePayload> {
        let (store, tenant) = scope(ctx)?;
        let operation = update.operation();
        let change = ChangeSet::try_from(update).extend()?;
        let key = existing(&r#ref).extend()?;
        let person = person(ctx).map(|person| person.subject.as_str());
        let mut shows = Profile::parts(ctx.look_ahead().field("profile"));
        // A person's update checks the externalId, which is among the standard fields.
        shows.fields |= person.is_some();
        let updated = store
            .update(
                tenant,
                &key,
                &change,
                &Update {
                    operation,
                    expected_version,
                    dry_run,
                    shows,
                    person,
                },
                &actor(ctx),
            )
            .await
            .extend()?;
        Ok(UpdateProfilePayload {
            profile: Profile(updated.profile),
            changes: updated.changes.into_iter().map(Into::into).collect(),
            dry_run,
        })
    }

    /// Moves a profile between ACTIVE and SUSPENDED, or to CLOSED, which is final
    /// (INVALID_STATUS_TRANSITION). Setting the current status changes nothing.
    async fn set_profile_status(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The profile: exactly one of id, externalId or serialNumber.")] r#ref: ProfileRef,
        #[graphql(desc = "The status to move to.")] status: ProfileStatus,
    ) -> Result<Profile> {
        let (store, tenant) = scope(ctx)?;
        let key = existing(&r#ref).extend()?;
        Ok(Profile::from(
            store
                .set_status(tenant, &key, status.into(), &actor(ctx))
                .await
                .extend()?,
        ))
    }

    /// Deletes a profile in any status, with its tags, groups and custom values; afterwards
    /// every lookup of it finds nothing.
    async fn delete_profile(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The profile: exactly one of id, externalId or serialNumber.")] r#ref: ProfileRef,
    ) -> Result<DeletedProfile> {
        let (store, tenant) = scope(ctx)?;
        let key = existing(&r#ref).extend()?;
        let id = store.delete(tenant, &key, &actor(ctx)).await.extend()?;
        Ok(DeletedProfile { id: ID(id.to_string()) })
    }

    /// Defines a custom field for the caller's tenant, or redefines the one of that name (its
    /// options and maxLength; its type only while no stored value uses it).
    async fn define_custom_field(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The field's name, type, and options or maxLength.")] input: CustomFieldInput,
    ) -> Result<CustomFieldDefinition> {
        let (store, tenant) = scope(ctx)?;
        let field =
            NewCustomField::new(input.name, input.field_type.into(), input.options, input.max_length).extend()?;
        Ok(store.define_custom_field(tenant, field).await.extend()?.into())
    }
}

/// The key of a profile a mutation must find; a reference that cannot name one is NOT_FOUND.
fn existing(r#ref: &ProfileRef) -> Result<ProfileKey, Fault> {
    r#ref.key().ok_or_else(|| Fault::not_found("profile"))
}
