use async_graphql::{Context, ID, Result, ResultExt, SimpleObject, Subscription as GraphQLSubscription};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::scope;
use super::types::{FieldChange, Profile, ProfileRef};
use crate::domain::ProfileKey;
use crate::error::Fault;
use crate::feed::Notice;
use crate::store::Parts;

pub struct Subscription;

/// A change of a profile, pushed to subscribers once it is committed.
// Its fields are in memory and resolve one after another (see `super::types`).
#[derive(SimpleObject)]
#[graphql(serial)]
pub struct ProfileChangeEvent {
    /// The id of the profile that changed.
    pub profile_id: ID,
    /// The version the change produced.
    pub version: i32,
    /// What made the change: `createProfile`, `updateProfile.scrip` (or another dialect),
    /// `setProfileStatus` or `deleteProfile`.
    pub operation: String,
    /// Every canonical field the change set, with its value before and after.
    pub changes: Vec<FieldChange>,
    /// The profile as it is when the event is sent; null once it is deleted.
    pub profile: Option<Profile>,
}

/// Live changes, over the graphql-transport-ws protocol on `/graphql`.
#[GraphQLSubscription]
impl Subscription {
    /// Every committed change of the profile `ref` names, or of every profile of the caller's
    /// tenant when `ref` is omitted, from any replica.
    async fn profile_changed(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The profile to watch; omit it to watch every profile of the tenant.")] r#ref: Option<
            ProfileRef,
        >,
    ) -> Result<impl Stream<Item = ProfileChangeEvent> + use<>> {
        let (store, tenant) = scope(ctx)?;
        let parts = Profile::parts(ctx.look_ahead().field("profile"));
        let only = match r#ref {
            None => None,
            Some(r#ref) => {
                let key = r#ref.key().ok_or_else(|| Fault::not_found("profile")).extend()?;
                let view = store.find(tenant, &key, Parts::ROW).await.extend()?;
                Some(view.ok_or_else(|| Fault::not_found("profile")).extend()?.profile.id)
            }
        };
        let store = store.clone();
        let notices = futures::stream::unfold(store.feed().subscribe(), |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(notice) => return Some((notice, receiver)),
                    Err(RecvError::Lagged(skipped)) => tracing::warn!(skipped, "a subscriber fell behind"),
                    Err(RecvError::Closed) => return None,
                }
            }
        });
        Ok(futures::StreamExt::filter_map(notices, move |notice: Notice| {
            let store = store.clone();
            async move {
                if notice.tenant != tenant.0 || only.is_some_and(|id| id != notice.profile_id) {
                    return None;
                }
                let record = match store.change(tenant, notice.profile_id, notice.version).await {
                    Ok(record) => record?,
                    Err(err) => {
                        tracing::error!(error = %err, "a change event could not be read");
                        return None;
                    }
                };
                let profile = store
                    .find(tenant, &ProfileKey::Id(notice.profile_id), parts)
                    .await
                    .ok()
                    .flatten()
                    .map(Profile::from);
                Some(ProfileChangeEvent {
                    profile_id: ID(notice.profile_id.to_string()),
                    version: record.version,
                    operation: record.operation,
                    changes: record.changes.into_iter().map(Into::into).collect(),
                    profile,
                })
            }
        }))
    }
}
