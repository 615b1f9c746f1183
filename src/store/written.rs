//! Profiles as this replica last wrote them (PostgreSQL), so that the next update of one can
//! start from it instead of reading it first: one round trip instead of two.
//!
//! A snapshot may be stale: another replica, or a write other than an update, may have
//! changed the profile since. That costs a round trip, never a change: an update's write
//! applies only at the version it started from ([`super::write_postgres`]), and one that
//! does not apply reads the profile back in the same statement, to be planned and written
//! again. So that stale snapshots stay rare with many replicas, each replica forgets a
//! snapshot when the change feed announces a later version of its profile
//! ([`Written::follow`]); only a change that lands between a write and its snapshot being
//! kept, or while the replica's listener reconnects, or one that bypasses the gateways, can
//! slip past.
//!
//! Snapshots with custom values are not kept: a custom field defined since would be missing
//! from their definitions, and defining one changes no profile's version.

use std::sync::Arc;

use moka::ops::compute::Op;
use serde_json::Value;
use tokio::sync::broadcast::{self, error::RecvError};
use uuid::Uuid;

use super::{ProfileView, TenantId};
use crate::domain::{Profile, Scalar};
use crate::feed::Notice;

/// Most bytes (as [`weight`] estimates them) of profiles kept at once: 10,000 profiles with a
/// handful of tags and attributes each, or fewer larger ones.
pub(super) const WRITTEN_BYTES: u64 = 16 * 1024 * 1024;

/// The profiles this replica wrote lately, by tenant and profile id; cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Written(moka::sync::Cache<(Uuid, Uuid), Arc<ProfileView>>);

impl Written {
    pub(super) fn new(max_bytes: u64) -> Self {
        Written(
            moka::sync::Cache::builder()
                .weigher(|_, view: &Arc<ProfileView>| weight(&view.profile))
                .max_capacity(max_bytes)
                .build(),
        )
    }

    /// The profile `id` as this replica last wrote it, if kept; taken out, so that of two
    /// updates at once only one starts from it (the other reads).
    pub(super) fn take(&self, tenant: TenantId, id: Uuid) -> Option<Arc<ProfileView>> {
        self.0.remove(&(tenant.0, id))
    }

    /// Keeps `view`, just written, unless it holds custom values (see the module's header) or
    /// a later version of the profile is kept already (checked and kept in one step, so that
    /// of two updates of the profile finishing at once the later version stays).
    pub(super) fn keep(&self, tenant: TenantId, view: &Arc<ProfileView>) {
        if view.parts.custom {
            return;
        }
        self.0
            .entry((tenant.0, view.profile.id))
            .and_compute_with(|kept| match kept {
                Some(kept) if kept.value().profile.version >= view.profile.version => Op::Nop,
                _ => Op::Put(Arc::clone(view)),
            });
    }

    /// Forgets the profile `notice` names if what is kept of it is older than the version
    /// the notice announces (checked and forgotten in one step, so that a later version kept
    /// meanwhile stays).
    pub(super) fn forget_older(&self, notice: &Notice) {
        self.0
            .entry((notice.tenant, notice.profile_id))
            .and_compute_with(|kept| match kept {
                Some(kept) if kept.value().profile.version < notice.version => Op::Remove,
                _ => Op::Nop,
            });
    }

    /// Forgets what later notices make stale, until the feed closes; when notices were
    /// missed (this replica fell behind), forgets everything.
    pub(super) async fn follow(self, mut notices: broadcast::Receiver<Notice>) {
        loop {
            match notices.recv().await {
                Ok(notice) => self.forget_older(&notice),
                // Not `invalidate_all`, which `remove` (in `take`) does not heed.
                Err(RecvError::Lagged(_)) => {
                    for (key, _) in &self.0 {
                        self.0.invalidate(&*key);
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// About how many bytes `profile` holds, for the cache's bound.
fn weight(profile: &Profile) -> u32 {
    const ENTRY: usize = 64;
    let fields: usize = profile
        .fields
        .values()
        .map(|value| {
            ENTRY
                + match value {
                    Scalar::Text(text) => text.len(),
                    _ => 0,
                }
        })
        .sum();
    let attributes: usize = profile
        .attributes
        .iter()
        .map(|(key, value)| ENTRY + key.len() + json_weight(value))
        .sum();
    let tags: usize = profile
        .tags
        .iter()
        .map(|(key, value)| ENTRY + key.len() + value.as_ref().map_or(0, String::len))
        .sum();
    let groups: usize = profile.groups.iter().map(|group| ENTRY + group.len()).sum();
    let total = std::mem::size_of::<ProfileView>() + fields + attributes + tags + groups;
    u32::try_from(total).unwrap_or(u32::MAX)
}

fn json_weight(value: &Value) -> usize {
    const NODE: usize = 32;
    NODE + match value {
        Value::String(text) => text.len(),
        Value::Array(items) => items.iter().map(json_weight).sum(),
        Value::Object(map) => map.iter().map(|(key, value)| key.len() + json_weight(value)).sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::store::Parts;

    fn view(id: Uuid, version: i32, parts: Parts) -> Arc<ProfileView> {
        let mut profile = Profile::new(id, 1, Utc::now());
        profile.version = version;
        Arc::new(ProfileView {
            profile,
            custom_fields: Arc::from([]),
            parts,
        })
    }

    const TENANT: TenantId = TenantId(Uuid::nil());

    #[test]
    fn a_kept_profile_is_taken_once() {
        let written = Written::new(WRITTEN_BYTES);
        let id = Uuid::new_v4();
        written.keep(TENANT, &view(id, 2, Parts::ROW));
        assert_eq!(written.take(TENANT, id).map(|view| view.profile.version), Some(2));
        assert!(written.take(TENANT, id).is_none());
        assert!(written.take(TenantId(Uuid::new_v4()), id).is_none());
    }

    #[test]
    fn an_older_version_does_not_replace_a_later_one() {
        let written = Written::new(WRITTEN_BYTES);
        let id = Uuid::new_v4();
        written.keep(TENANT, &view(id, 3, Parts::ROW));
        written.keep(TENANT, &view(id, 2, Parts::ROW));
        assert_eq!(written.take(TENANT, id).map(|view| view.profile.version), Some(3));
    }

    #[test]
    fn a_profile_with_custom_values_is_not_kept() {
        let written = Written::new(WRITTEN_BYTES);
        let id = Uuid::new_v4();
        written.keep(TENANT, &view(id, 2, Parts::ALL));
        assert!(written.take(TENANT, id).is_none());
    }

    #[test]
    fn a_notice_of_a_later_version_forgets_the_profile_and_one_of_its_own_does_not() {
        let written = Written::new(WRITTEN_BYTES);
        let id = Uuid::new_v4();
        let notice = |version| Notice {
            tenant: TENANT.0,
            profile_id: id,
            version,
        };
        written.keep(TENANT, &view(id, 2, Parts::ROW));
        written.forget_older(&notice(2));
        written.forget_older(&notice(1));
        assert!(written.take(TENANT, id).is_some());
        written.keep(TENANT, &view(id, 2, Parts::ROW));
        written.forget_older(&notice(3));
        assert!(written.take(TENANT, id).is_none());
    }

    #[tokio::test]
    async fn following_the_feed_forgets_what_it_makes_stale_and_everything_when_it_falls_behind() {
        let written = Written::new(WRITTEN_BYTES);
        let (stale, fresh, missed) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for id in [stale, fresh, missed] {
            written.keep(TENANT, &view(id, 2, Parts::ROW));
        }
        // A feed of `notices` (profile, version) through a channel of `capacity`, then closed.
        let follow = |capacity: usize, notices: &[(Uuid, i32)]| {
            let (sender, receiver) = broadcast::channel(capacity);
            for &(profile_id, version) in notices {
                let notice = Notice {
                    tenant: TENANT.0,
                    profile_id,
                    version,
                };
                sender.send(notice).unwrap();
            }
            written.clone().follow(receiver)
        };
        follow(4, &[(stale, 3), (fresh, 2)]).await;
        assert!(written.take(TENANT, stale).is_none());
        assert!(written.take(TENANT, fresh).is_some());
        assert!(written.take(TENANT, missed).is_some());

        written.keep(TENANT, &view(missed, 2, Parts::ROW));
        follow(1, &[(stale, 4), (stale, 5)]).await;
        assert!(written.take(TENANT, missed).is_none());
    }

    #[test]
    fn a_profile_weighs_about_what_it_holds() {
        let mut profile = Profile::new(Uuid::new_v4(), 1, Utc::now());
        let empty = weight(&profile);
        profile
            .attributes
            .insert("note".to_owned(), Value::String("x".repeat(10_000)));
        profile.tags.insert("vip".to_owned(), Some("y".repeat(1_000)));
        let full = weight(&profile);
        assert!(full >= empty + 11_000, "{empty} {full}");
        assert!(full < empty + 12_000, "{empty} {full}");
    }
}
