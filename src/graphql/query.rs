use async_graphql::{Context, Object, Result, ResultExt};

use super::types::{CustomFieldDefinition, Profile, ProfileConnection, ProfileFilter, ProfileRef};
use super::{cursor, scope};
use crate::store;

/// Most profiles one page may hold.
pub const MAX_PAGE_SIZE: i32 = 100;

pub struct Query;

/// Reads, always within the caller's tenant.
#[Object]
impl Query {
    /// The profile `ref` names in the caller's tenant, or null when there is none.
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
        Ok(store.find(tenant, &key, parts).await.extend()?.map(Profile::from))
    }

    /// The caller's profiles, oldest first, `first` at a time (at most 100), after the cursor
    /// `after`; `filter` narrows them and `totalCount` counts every match.
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
