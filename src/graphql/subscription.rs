use std::sync::Arc;
use std::time::Duration;

use async_graphql::{
    Context, ErrorExtensions, ID, Result, ResultExt, SimpleObject, Subscription as GraphQLSubscription,
};
use futures::{Stream, StreamExt};
use tokio::sync::OnceCell;
use tokio::sync::broadcast::{self, error::RecvError};

use super::types::{FieldChange, Profile, ProfileRef};
use super::{find_visible, person, scope};
use crate::domain::ProfileKey;
use crate::error::{Code, Fault};
use crate::feed::Notice;
use crate::store::{Parts, Store};

pub struct Subscription;

/// A change of a profile, pushed to subscribers once it is committed.
// Its fields are in memory and resolve one after another (see `super::types`).
#[derive(SimpleObject, Clone)]
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

/// The events of recent notices, each read once however many subscribers want it: a change
/// reaches every subscriber of its tenant at about the same moment, and reading it for each
/// would take as many database round trips (and connections) as there are subscribers.
#[derive(Clone)]
pub struct Events<T = ProfileChangeEvent> {
    /// Notice → its event, read by the first subscriber to ask (`None`: the change is gone or
    /// could not be read).
    read: moka::sync::Cache<Notice, Arc<OnceCell<Option<T>>>>,
}

impl<T: Clone + Send + Sync + 'static> Default for Events<T> {
    fn default() -> Self {
        Events {
            // Long enough for every subscriber to take a notice from the feed's backlog.
            read: moka::sync::Cache::builder()
                .max_capacity(4096)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Events<T> {
    /// The event of `notice`: what `read` gives, unless another subscriber read it already
    /// (or is reading it: this one then waits for that read).
    async fn of(&self, notice: Notice, read: impl Future<Output = Option<T>>) -> Option<T> {
        let cell = self.read.get_with(notice, || Arc::new(OnceCell::new()));
        cell.get_or_init(|| read).await.clone()
    }
}

/// The notices of `receiver` while it keeps up with the feed; one `Err` with the number it
/// missed when it fell behind, after which the stream ends.
fn notices(receiver: broadcast::Receiver<Notice>) -> impl Stream<Item = std::result::Result<Notice, u64>> {
    futures::stream::unfold(Some(receiver), |receiver| async move {
        let mut receiver = receiver?;
        match receiver.recv().await {
            Ok(notice) => Some((Ok(notice), Some(receiver))),
            Err(RecvError::Lagged(skipped)) => {
                tracing::warn!(skipped, "a subscriber fell behind; ending its subscription");
                Some((Err(skipped), None))
            }
            Err(RecvError::Closed) => None,
        }
    })
}

/// Reads the change `notice` announces and the profile as it is now (all of it: subscribers
/// show different parts).
async fn read(store: &Store, notice: Notice) -> Option<ProfileChangeEvent> {
    let tenant = crate::store::TenantId(notice.tenant);
    let record = match store.change(tenant, notice.profile_id, notice.version).await {
        Ok(record) => record?,
        Err(err) => {
            tracing::error!(error = %err, "a change event could not be read");
            return None;
        }
    };
    let profile = match store.find(tenant, &ProfileKey::Id(notice.profile_id), Parts::ALL).await {
        Ok(view) => view.map(Profile::from),
        Err(err) => {
            tracing::error!(error = %err, "a changed profile could not be read");
            None
        }
    };
    Some(ProfileChangeEvent {
        profile_id: ID(notice.profile_id.to_string()),
        version: record.version,
        operation: record.operation,
        changes: record.changes.into_iter().map(Into::into).collect(),
        profile,
    })
}

/// Live changes, over the graphql-transport-ws protocol on `/graphql`.
#[GraphQLSubscription]
impl Subscription {
    /// Every committed change of the profile `ref` names, or of every profile of the caller's
    /// tenant when `ref` is omitted, from any replica. With an end-user token, only the
    /// person's own profile can be watched, and omitting `ref` means it (NOT_FOUND before it
    /// exists). A subscriber that falls too far behind (its socket takes events more slowly
    /// than they come) gets an error with code SUBSCRIBER_TOO_SLOW, and its subscription ends.
    async fn profile_changed(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The profile to watch; omit it to watch every profile of the tenant.")] r#ref: Option<
            ProfileRef,
        >,
    ) -> Result<impl Stream<Item = Result<ProfileChangeEvent>> + use<>> {
        let (store, tenant) = scope(ctx)?;
        let events = ctx.data::<Events>()?.clone();
        let key = match (r#ref, person(ctx)) {
            (Some(r#ref), _) => Some(r#ref.key().ok_or_else(|| Fault::not_found("profile")).extend()?),
            (None, Some(person)) => Some(ProfileKey::ExternalId(person.subject.clone())),
            (None, None) => None,
        };
        let only = match key {
            None => None,
            Some(key) => {
                let view = find_visible(ctx, store, tenant, &key, Parts::NONE).await.extend()?;
                Some(view.ok_or_else(|| Fault::not_found("profile")).extend()?.profile.id)
            }
        };
        let store = store.clone();
        Ok(notices(store.feed().subscribe()).filter_map(move |notice| {
            let (store, events) = (store.clone(), events.clone());
            async move {
                let notice = match notice {
                    Ok(notice) => notice,
                    Err(skipped) => {
                        let fault = Fault::new(
                            Code::SubscriberTooSlow,
                            format!(
                                "This subscription fell behind by {skipped} changes and was ended; subscribe again \
                                 and read what changed meanwhile with a query."
                            ),
                        );
                        return Some(Err(fault.extend()));
                    }
                };
                if notice.tenant != tenant.0 || only.is_some_and(|id| id != notice.profile_id) {
                    return None;
                }
                events.of(notice, read(&store, notice)).await.map(Ok)
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use uuid::Uuid;

    use super::*;

    fn notice(version: i32) -> Notice {
        Notice {
            tenant: Uuid::nil(),
            profile_id: Uuid::nil(),
            version,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_subscribers_of_one_notice_read_it_once() {
        let events = Events::<i32>::default();
        let reads = Arc::new(AtomicUsize::new(0));
        let subscribers = (0..1000).map(|_| {
            let (events, reads) = (events.clone(), reads.clone());
            tokio::spawn(async move {
                events
                    .of(notice(7), async {
                        reads.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Some(7)
                    })
                    .await
            })
        });
        for subscriber in subscribers.collect::<Vec<_>>() {
            assert_eq!(subscriber.await.unwrap(), Some(7));
        }
        assert_eq!(reads.load(Ordering::Relaxed), 1);
        // Another notice is read on its own.
        assert_eq!(events.of(notice(8), async { Some(8) }).await, Some(8));
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_an_error_and_its_stream_ends() {
        let (sender, receiver) = broadcast::channel(2);
        let mut stream = Box::pin(notices(receiver));
        sender.send(notice(1)).unwrap();
        assert_eq!(stream.next().await, Some(Ok(notice(1))));
        for version in 2..=6 {
            sender.send(notice(version)).unwrap();
        }
        assert_eq!(stream.next().await, Some(Err(3)));
        // It let go of the feed.
        assert_eq!(sender.receiver_count(), 0);
        assert_eq!(stream.next().await, None);
    }
}
