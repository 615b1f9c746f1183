//! Connecting to the database and applying the migrations.

use std::time::Duration;

use migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

/// How long a SQLite writer waits for the write lock before giving up. Writers queue on
/// `BEGIN IMMEDIATE`; this bounds the wait under heavy contention.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request waits for a database connection. While the database is down, opening
/// one fails at once and is retried until then; a request then fails with UNAVAILABLE well
/// within its own timeout.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A pooled connection idle this long is pinged before it is handed out.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// Opens a pool on `url` (`sqlite://…` or `postgres://…`). A SQLite file is created when
/// missing and put in WAL mode, so readers never wait for the one writer.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url);
    options
        .sqlx_logging(false)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // A connection that has been busy is handed out as it is; one idle for a while is
        // pinged first, as a restarted server or a proxy may have dropped it. (Pinging on every
        // acquire would add a round trip to every query.)
        .test_before_acquire_if_idle_for(PING_WHEN_IDLE_FOR)
        .map_sqlx_sqlite_opts(|sqlite| {
            sqlite
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
        });
    Database::connect(options).await
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}
