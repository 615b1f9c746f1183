use async_graphql::{Context, Object, Result, ResultExt};

use super::types::{CustomFieldDefinition, Profile, ProfileConnection, ProfileFilter, ProfileRef};
use super::{cursor, find_visible, person, scope};
use crate::domain::ProfileKey;
use crate::error::{Code, Fault};
use crate::store;

/// Most profiles one page may hold.
pub const MAX_PAGE_SIZE: i32 = 100;

pub struct Query;

/// Reads, always within the caller's tenant.
#[Object]
impl Query {
    /// The profile of the person the request's end-user token names: the one of the token's
    /// tenant whose externalId is the token's `sub`; null until they create it. Only for
    /// tokens: an API key acts for no person (FORBIDDEN).
    async fn me(&self, ctx: &Context<'_>) -> Result<Option<Profile>> {
        let (store, tenant) = scope(ctx)?;
        let Some(person) = person(ctx) else {
            return Err(Fault::new(
                Code::Forbidden,
                "me is the profile of the person an end-user token names; an API key acts for no person.",
            ))
            .extend();
        };
        let key = ProfileKey::ExternalId(person.subject.clone());
        let parts = Profile::parts(ctx.look_ahead());
        Ok(store.find(tenant, &key, parts).await.extend()?.map(Profile::from))
    }

    /// The profile `ref` names in the caller's tenant, or null when there is none (with an
    /// end-user token, any but the person's own is none).
    async fn profile(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Exactly one of id, externalId or serialNumber.")] r#ref: ProfileRef,
    ) -> Result<Option<Profile>> {
        let (store, tenant) = scope(ctx)?;
        let Some(key) = r#ref.key() else {
            return Ok(None);
        };
        let parts = Profile::parts(ctx.look_ahead());
        Ok(find_visible(ctx, store, tenant, &key, parts)
            .await
            .extend()?
            .map(Profile::from))
    }

    /// The caller's profiles, oldest first, `first` at a time (at most 100), after the cursor
    /// `after`; `filter` narrows them and `totalCount` counts every match. With an end-user
    /// token, only the person's own profile is listed.
    async fn profiles(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20, desc = "How many profiles to return, 0 to 100.")] first: i32,
        #[graphql(desc = "The `endCursor` of the previous page; omit it for the first page.")] after: Option<String>,
        #[graphql(desc = "Only the profiles that match every filter given.")] filter: Option<ProfileFilter>,
    ) -> Result<ProfileConnection> {
        let (store, tenant) = scope(ctx)?;
        super::budget::check(ctx)?;
        let page_size = cursor::page_size(first, MAX_PAGE_SIZE).extend()?;
        let after = after
            .as_deref()
            .map(|after| cursor::decode(Profile::CURSOR_KIND, after, "after"))
            .transpose()
            .extend()?;
        let filter = filter.unwrap_or_default();
        let filter = store::ProfileFilter {
            status: filter.status.map(Into::into),
            tag: filter.tag.map(crate::domain::rules::nfc),
            group: filter.group,
            external_id: person(ctx).map(|person| person.subject.clone()),
        };
        // Counting every match costs a query of its own: only when the client asks.
        let selection = ctx.look_ahead();
        let count = selection.field("totalCount").exists();
        let parts =
            Profile::parts(selection.field("nodes")).union(Profile::parts(selection.field("edges").field("node")));
        let page = store
            .list(tenant, page_size, after, &filter, parts, count)
            .await
            .extend()?;
        for view in &page.profiles {
            super::budget::charge(ctx, || super::budget::profile_bytes(&view.profile))?;
        }
        // A page is read on the request's own thread, which a large one holds for
        // milliseconds: other requests (a health check, a small query) run before the next.
        tokio::task::yield_now().await;
        Ok(ProfileConnection {
            nodes: page.profiles.into_iter().map(Profile::from).collect(),
            has_next_page: page.has_next_page,
            total_count: page.total_count.map(|count| i64::try_from(count).unwrap_or(i64::MAX)),
        })
    }

    /// The custom fields the caller's tenant defined, by name.
    async fn custom_fields(&self, ctx: &Context<'_>) -> Result<Vec<CustomFieldDefinition>> {
        let (store, tenant) = scope(ctx)?;
        let fields = store.custom_fields(tenant).await.extend()?;
        Ok(fields.iter().cloned().map(Into::into).collect())
    }
}
