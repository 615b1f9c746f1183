use async_graphql::{Context, Object, Result, ResultExt};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::scope;
use super::types::{
    CustomFieldDefinition, PageInfo, Profile, ProfileConnection, ProfileEdge, ProfileFilter, ProfileRef,
};
use crate::error::Fault;
use crate::store;

/// Most profiles one page may hold.
pub const MAX_PAGE_SIZE: i32 = 100;
const CURSOR_PREFIX: &str = "profile:";

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
        Ok(store.find(tenant, &key).await.extend()?.map(Profile))
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
        let page_size = u64::try_from(first)
            .ok()
            .filter(|n| *n <= MAX_PAGE_SIZE as u64)
            .ok_or_else(|| Fault::validation("first", format!("first must be between 0 and {MAX_PAGE_SIZE}.")))
            .extend()?;
        let after = after.as_deref().map(decode_cursor).transpose().extend()?;
        let filter = filter.unwrap_or_default();
        let filter = store::ProfileFilter {
            status: filter.status.map(Into::into),
            tag: filter.tag,
            group: filter.group,
        };
        let page = store.list(tenant, page_size, after, &filter).await.extend()?;
        let edges: Vec<ProfileEdge> = page
            .profiles
            .into_iter()
            .map(|view| ProfileEdge {
                cursor: encode_cursor(view.profile.serial_number),
                node: Profile(view),
            })
            .collect();
        Ok(ProfileConnection {
            page_info: PageInfo {
                has_next_page: page.has_next_page,
                end_cursor: edges.last().map(|edge| edge.cursor.clone()),
            },
            nodes: edges.iter().map(|edge| edge.node.clone()).collect(),
            edges,
            total_count: i64::try_from(page.total_count).unwrap_or(i64::MAX),
        })
    }

    /// The custom fields the caller's tenant defined, by name.
    async fn custom_fields(&self, ctx: &Context<'_>) -> Result<Vec<CustomFieldDefinition>> {
        let (store, tenant) = scope(ctx)?;
        let fields = store.custom_fields(tenant).await.extend()?;
        Ok(fields.iter().cloned().map(Into::into).collect())
    }
}

/// Cursors are opaque to clients: the serial number behind a prefix, base64url-encoded.
fn encode_cursor(serial_number: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{serial_number}"))
}

fn decode_cursor(cursor: &str) -> Result<i64, Fault> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(CURSOR_PREFIX).and_then(|serial| serial.parse().ok()))
        .ok_or_else(|| {
            Fault::validation(
                "after",
                "after is not a cursor this API handed out; use pageInfo.endCursor.",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_strings_are_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)).unwrap(), 42);
        assert!(decode_cursor("42").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("profile:x")).is_err());
        assert!(decode_cursor("!!!").is_err());
    }
}
