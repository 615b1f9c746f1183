//! Live profile changes: who changed which profile to which version, announced to every
//! subscriber of every replica.
//!
//! Each replica keeps one in-process broadcast channel. On SQLite (one process), the store
//! announces a change on it after the commit. On PostgreSQL, the store hands each committed
//! change's notice to this replica's notifier, which sends the notices it has in one `NOTIFY`
//! statement of their own; PostgreSQL delivers them to every replica's listener (this one
//! too), and each listener relays them to its own channel. A notice carries only ids;
//! subscribers read the change itself from the history, so a notice always fits NOTIFY's 8000
//! bytes.
//!
//! The notices are not sent by the transaction that makes the change, because a transaction
//! that sends a `NOTIFY` holds one lock of the whole database from its commit until the commit
//! is on disk (it keeps notices in commit order): every writer that notifies then commits one
//! after the other, each waiting for its own `fsync`, where commits otherwise share them. The
//! notifier's statement commits without waiting for the disk (`synchronous_commit = off`):
//! the changes it announces are already durable, and PostgreSQL keeps no notice across a
//! restart in any case.
//!
//! What that costs: a notice leaves up to [`GATHER`] after its change commits, so a replica
//! that stops in between (or whose notifier cannot reach PostgreSQL until it stops) leaves that
//! change unannounced. Subscribers then miss the event, as they do one sent while their
//! replica's listener is reconnecting; replicas that kept the profile find it stale on their
//! next update of it, which applies only at the version they kept (see `store::written`). A
//! statement that timed out may have been delivered, and is sent again: a notice may then come
//! twice.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sea_orm::sqlx::postgres::{PgConnectOptions, PgListener, PgPool};
use sea_orm::sqlx::{self, Connection, PgConnection};
use sea_orm::{DatabaseConnection, DbBackend};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

/// The PostgreSQL channel changes are announced on.
pub const CHANNEL: &str = "profile_changes";
/// How many notices a slow subscriber may fall behind before it skips some.
const BACKLOG: usize = 1024;
/// How many committed changes may wait for the notifier; past that, the next change's update
/// waits for room before it returns.
const UNSENT: usize = 4096;
/// Most notices sent in one statement.
const BATCH: usize = 256;
/// How long the notifier waits, once a notice has come, for more to send with it: each
/// statement is a transaction, which costs PostgreSQL more than the notices in it.
const GATHER: Duration = Duration::from_millis(5);
/// How long the notifier gives a statement (with its connection, if it needs a new one) before
/// it tries again on a new connection.
const SEND_WITHIN: Duration = Duration::from_secs(5);
/// How long the notifier waits before it tries again to reach PostgreSQL.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// A profile reached a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Notice {
    pub tenant: Uuid,
    pub profile_id: Uuid,
    pub version: i32,
}

/// This replica's side of the change feed.
#[derive(Debug, Clone)]
pub struct Feed {
    sender: broadcast::Sender<Notice>,
    /// On PostgreSQL, what sends this replica's notices to every replica, with the pool the
    /// listener connects through.
    notifier: Option<Notifier>,
}

impl Default for Feed {
    /// A feed within this process, as on SQLite.
    fn default() -> Self {
        Feed {
            sender: broadcast::channel(BACKLOG).0,
            notifier: None,
        }
    }
}

impl Feed {
    /// The feed of `db`'s changes: within this process on SQLite, through PostgreSQL's
    /// `NOTIFY` on PostgreSQL.
    pub fn new(db: &DatabaseConnection) -> Self {
        let notifier = (db.get_database_backend() == DbBackend::Postgres).then(|| Notifier {
            pool: db.get_postgres_connection_pool().clone(),
            queue: Arc::default(),
        });
        Feed {
            notifier,
            ..Feed::default()
        }
    }

    /// Announces a committed change to every subscriber: at once to this process's on SQLite;
    /// on PostgreSQL, to every replica's (this one's through its listener) by the notifier.
    pub async fn announce(&self, notice: Notice) {
        match &self.notifier {
            None => self.publish(notice),
            Some(notifier) => notifier.send(notice).await,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.sender.subscribe()
    }

    /// Tells this replica's subscribers; having none is fine.
    pub fn publish(&self, notice: Notice) {
        let _ = self.sender.send(notice);
    }

    /// On PostgreSQL, relays every replica's notices to this replica's subscribers, for as long
    /// as the process runs, listening again whenever the connection is lost. On SQLite it does
    /// nothing.
    pub fn relay(&self) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        let pool = notifier.pool.clone();
        let feed = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(err) = listen_and_relay(&pool, &feed).await {
                    tracing::warn!(%err, "lost the change feed's connection; listening again shortly");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

async fn listen_and_relay(pool: &PgPool, feed: &Feed) -> Result<(), sea_orm::sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    loop {
        let notification = listener.recv().await?;
        match serde_json::from_str::<Notice>(notification.payload()) {
            Ok(notice) => feed.publish(notice),
            Err(err) => tracing::warn!(%err, "ignored a malformed change notice"),
        }
    }
}

/// Sends this replica's notices on PostgreSQL, in the order they come, on a connection of its
/// own: each statement carries those that came within [`GATHER`] of the first of them or while
/// the statement before was on its way (up to [`BATCH`]). Starts with the first notice.
#[derive(Debug, Clone)]
struct Notifier {
    pool: PgPool,
    queue: Arc<OnceLock<mpsc::Sender<Notice>>>,
}

impl Notifier {
    async fn send(&self, notice: Notice) {
        let queue = self.queue.get_or_init(|| {
            let (queue, unsent) = mpsc::channel(UNSENT);
            let options = (*self.pool.connect_options())
                .clone()
                .options([("synchronous_commit", "off")]);
            tokio::spawn(notify(options, unsent));
            queue
        });
        if queue.send(notice).await.is_err() {
            tracing::error!(?notice, "the change notifier has stopped; a change goes unannounced");
        }
    }
}

async fn notify(options: PgConnectOptions, mut unsent: mpsc::Receiver<Notice>) {
    let mut conn = None;
    let mut batch = Vec::with_capacity(BATCH);
    while unsent.recv_many(&mut batch, BATCH).await > 0 {
        tokio::time::sleep(GATHER).await;
        while batch.len() < BATCH
            && let Ok(notice) = unsent.try_recv()
        {
            batch.push(notice);
        }
        let payloads: Vec<String> = batch
            .drain(..)
            .filter_map(|notice| {
                serde_json::to_string(&notice)
                    .inspect_err(|err| tracing::error!(%err, ?notice, "could not write a change notice"))
                    .ok()
            })
            .collect();
        loop {
            match tokio::time::timeout(SEND_WITHIN, send(&mut conn, &options, &payloads)).await {
                Ok(Ok(())) => break,
                Ok(Err(err @ sqlx::Error::Database(_))) => {
                    tracing::error!(%err, unannounced = payloads.len(), "PostgreSQL refused change notices");
                    break;
                }
                Ok(Err(err)) => tracing::warn!(%err, "could not send change notices; trying again shortly"),
                Err(_) => {
                    tracing::warn!(within = ?SEND_WITHIN, "change notices not sent in time; trying again shortly")
                }
            }
            conn = None;
            tokio::time::sleep(RECONNECT_AFTER).await;
        }
    }
}

async fn send(conn: &mut Option<PgConnection>, options: &PgConnectOptions, payloads: &[String]) -> sqlx::Result<()> {
    let conn = match conn {
        Some(conn) => conn,
        None => conn.insert(PgConnection::connect_with(options).await?),
    };
    sqlx::query("SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload")
        .bind(CHANNEL)
        .bind(payloads)
        .execute(conn)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The next notice of `tenant` heard, within `wait`.
    async fn next_of(heard: &mut broadcast::Receiver<Notice>, tenant: Uuid, wait: Duration) -> Option<Notice> {
        tokio::time::timeout(wait, async {
            loop {
                match heard.recv().await {
                    Ok(notice) if notice.tenant == tenant => return notice,
                    Ok(_) => continue,
                    Err(err) => panic!("the feed failed: {err}"),
                }
            }
        })
        .await
        .ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgresql_every_announced_notice_reaches_the_listener_in_the_order_announced() {
        let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
            println!("skipped: TEST_POSTGRES_URL is not set");
            return;
        };
        let db = crate::db::connect(&url).await.unwrap();
        let feed = Feed::new(&db);
        let mut heard = feed.subscribe();
        feed.relay();
        // Notices sent before the listener listens are not heard: probe until one is.
        let tenant = Uuid::new_v4();
        let notice = |version| Notice {
            tenant,
            profile_id: tenant,
            version,
        };
        let mut probes = HashSet::new();
        for probe in -100..0 {
            feed.announce(notice(probe)).await;
            probes.insert(probe);
            if next_of(&mut heard, tenant, Duration::from_millis(200)).await.is_some() {
                break;
            }
        }
        // More notices than one statement carries, announced at once; the probes still on their
        // way are heard first.
        let count = 3 * BATCH as i32 + 1;
        for version in 0..count {
            feed.announce(notice(version)).await;
        }
        let mut versions = Vec::new();
        while versions.len() < count as usize {
            let Some(notice) = next_of(&mut heard, tenant, Duration::from_secs(10)).await else {
                panic!("heard only {} of {count} notices", versions.len());
            };
            if notice.version >= 0 {
                versions.push(notice.version);
            } else {
                assert!(probes.contains(&notice.version) && versions.is_empty(), "{notice:?}");
            }
        }
        assert_eq!(versions, (0..count).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn on_sqlite_a_notice_is_published_at_once() {
        let feed = Feed::default();
        let mut heard = feed.subscribe();
        let tenant = Uuid::new_v4();
        let notice = Notice {
            tenant,
            profile_id: tenant,
            version: 1,
        };
        feed.announce(notice).await;
        assert_eq!(heard.try_recv(), Ok(notice));
    }
}
