//! Live profile changes: who changed which profile to which version, announced to every
//! subscriber of every replica.
//!
//! Each replica keeps one in-process broadcast channel. On SQLite (one process), the store
//! announces a change on it after the commit. On PostgreSQL, the writing transaction sends a
//! `NOTIFY`, which PostgreSQL delivers on commit to every replica's listener (this one too),
//! and each listener relays it to its own channel. A notice carries only ids; subscribers read
//! the change itself from the history, so a notice always fits NOTIFY's 8000 bytes.

use std::time::Duration;

use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{DatabaseConnection, DbBackend};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

/// The PostgreSQL channel changes are announced on.
pub const CHANNEL: &str = "profile_changes";
/// How many notices a slow subscriber may fall behind before it skips some.
const BACKLOG: usize = 1024;

/// A profile reached a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub tenant: Uuid,
    pub profile_id: Uuid,
    pub version: i32,
}

/// This replica's side of the change feed.
#[derive(Debug, Clone)]
pub struct Feed {
    sender: broadcast::Sender<Notice>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            sender: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Feed {
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.sender.subscribe()
    }

    /// Tells this replica's subscribers; having none is fine.
    pub fn publish(&self, notice: Notice) {
        let _ = self.sender.send(notice);
    }

    /// On PostgreSQL, relays every replica's notices to this replica's subscribers, for as long
    /// as the process runs, listening again whenever the connection is lost.
    pub fn relay_from(&self, db: &DatabaseConnection) {
        if db.get_database_backend() != DbBackend::Postgres {
            return;
        }
        let pool = db.get_postgres_connection_pool().clone();
        let feed = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(err) = relay(&pool, &feed).await {
                    tracing::warn!(%err, "lost the change feed's connection; listening again shortly");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

async fn relay(pool: &sea_orm::sqlx::PgPool, feed: &Feed) -> Result<(), sea_orm::sqlx::Error> {
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
