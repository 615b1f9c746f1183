//! Connecting to the database and applying the migrations.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqlitePool, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr, FromQueryResult, Statement};
use tokio::sync::Mutex;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::feed::Notice;

/// How long a SQLite writer waits for the write lock before giving up. Writers queue on
/// `BEGIN IMMEDIATE`; this bounds the wait under heavy contention.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request waits for a database connection. While the database is down, opening
/// one fails at once and is retried until then; a request then fails with UNAVAILABLE well
/// within its own timeout.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections in a PostgreSQL pool (sqlx's default). Profile reads and updates keep as many
/// of their own besides (see `crate::store`'s `held` module).
const POSTGRES_POOL_SIZE: u32 = 10;

/// Connections in a SQLite pool. SeaORM's default for SQLite is one, which queues every read
/// behind every other statement; in WAL mode readers run beside the one writer. Each
/// connection is a thread of its own with its own page cache, so a few are enough.
const SQLITE_POOL_SIZE: u32 = 4;

/// A pooled connection idle this long is pinged before it is handed out (here, and by the
/// store's kept connections).
pub(crate) const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// How long after a write [`spawn_checkpoints`] copies SQLite's write-ahead log into the
/// database file (so at most this often while writes go on, and never while none come). The
/// smaller each checkpoint, the shorter the writers' tail: at half the maximum rate of updates
/// (benchmark W2), p99 was 11–16 ms with checkpoints every 100 ms, 22–30 ms every second, and
/// 5–7 ms every 25 ms.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(25);

/// The write-ahead log's length (in pages, 4 KiB each) at which a committing SQLite writer
/// checkpoints it itself: a backstop for when no [`spawn_checkpoints`] runs. (SQLite's default
/// of 1,000 makes every few hundred updates wait for a checkpoint, and every writer queued
/// behind them.)
pub(crate) const WAL_BACKSTOP_PAGES: u32 = 10_000;

/// Opens a pool on `url` (`sqlite://…` or `postgres://…`). A SQLite file is created when
/// missing and put in WAL mode, so readers never wait for the one writer.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url);
    options
        .sqlx_logging(false)
        .max_connections(match url.starts_with("sqlite:") {
            true => SQLITE_POOL_SIZE,
            false => POSTGRES_POOL_SIZE,
        })
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
                // Checkpoints run beside the writers ([`spawn_checkpoints`]); a writer
                // checkpoints only when the log has grown this far (pages) without them.
                .pragma("wal_autocheckpoint", WAL_BACKSTOP_PAGES.to_string())
        });
    Database::connect(options).await
}

/// The write-ahead log's length (in frames, a page each) past which [`spawn_checkpoints`]
/// checkpoints it once more in the writers' turn, so that the log starts over.
const FINISH_PAST_FRAMES: i64 = 2_000;

/// Checkpoints SQLite's write-ahead log [`CHECKPOINT_EVERY`] after a change is announced in
/// `writes`, beside the writers rather than in one's commit (`PASSIVE`: it waits for no one and
/// no one waits for it), for as long as `writes` is open. Writes that announce nothing (API keys,
/// idempotency keys) wait for the next change, or for the backstop. Does nothing on PostgreSQL.
///
/// The log starts over (from its first frame, rather than growing) only when a writer begins
/// its transaction after a checkpoint has copied all of it. Writers that never pause add frames
/// while each checkpoint copies; and when one copies all of the log, a writer that began before
/// it ended adds its frames after the copied ones. So the log would grow to the backstop, where
/// a writer checkpoints it in its commit, on a request's thread for updates ([`crate::store`]'s
/// `direct` writer). Once the log is past [`FINISH_PAST_FRAMES`], a second checkpoint therefore
/// runs in this process's write `turn`, where no writer is in a transaction. It copies what the
/// writers added since the first, and the writers wait for it; so the database file is synced
/// just before ([`sync`]), and that checkpoint's own sync writes out only what it copied.
pub fn spawn_checkpoints(db: DatabaseConnection, mut writes: broadcast::Receiver<Notice>, turn: Arc<Mutex<()>>) {
    if db.get_database_backend() != DbBackend::Sqlite {
        return;
    }
    tokio::spawn(async move {
        // The database's file, to sync before the checkpoint in the turn.
        let file = match database_file(db.get_sqlite_connection_pool()).await {
            Ok(Some(path)) => File::open(&path)
                .inspect_err(
                    |err| tracing::warn!(error = %err, path = %path.display(), "could not open the database file"),
                )
                .ok()
                .map(Arc::new),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(error = %err, "could not find the database's file");
                None
            }
        };
        loop {
            match writes.recv().await {
                // Having missed some notices is having had writes.
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
            tokio::time::sleep(CHECKPOINT_EVERY).await;
            // This checkpoint takes in the writes announced while it waited.
            writes = writes.resubscribe();
            let wal = match checkpoint(&db).await {
                Ok(wal) => wal,
                Err(err) => {
                    tracing::warn!(error = %err, "could not checkpoint the write-ahead log");
                    continue;
                }
            };
            if wal.log > FINISH_PAST_FRAMES {
                if let Some(file) = &file {
                    sync(file.clone()).await;
                }
                let _turn = turn.lock().await;
                if let Err(err) = checkpoint(&db).await {
                    tracing::warn!(error = %err, "could not checkpoint the write-ahead log");
                }
            }
        }
    });
}

/// Writes out the pages that checkpoints copied into the database `file` and have not synced:
/// SQLite syncs the file only after a checkpoint that copied all of the log, which the one in
/// the writers' turn does, and its `fsync` would otherwise write them all while they wait
/// (8–9 ms in the benchmark, W2 at half rate, against 2 ms after this). `file` is open for
/// reading, through which Linux syncs it as through any other descriptor.
async fn sync(file: Arc<File>) {
    match tokio::task::spawn_blocking(move || file.sync_data()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "could not sync the database file"),
        Err(err) => tracing::warn!(error = %err, "the database file's sync did not finish"),
    }
}

/// What `PRAGMA wal_checkpoint` reports that is used here: the frames in the log.
#[derive(Debug, FromQueryResult)]
struct Wal {
    log: i64,
}

/// A `PASSIVE` checkpoint, which copies what it can without waiting for anyone.
async fn checkpoint(db: &DatabaseConnection) -> Result<Wal, DbErr> {
    let pragma = Statement::from_string(DbBackend::Sqlite, "PRAGMA wal_checkpoint(PASSIVE)");
    Wal::find_by_statement(pragma)
        .one(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("wal_checkpoint answered no row".to_owned()))
}

/// The file of the SQLite database under `pool`, as SQLite resolved its path, or `None` when
/// the database is in memory.
pub(crate) async fn database_file(pool: &SqlitePool) -> Result<Option<PathBuf>, DbErr> {
    let file: String = sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
        .fetch_one(pool)
        .await
        .map_err(|err| DbErr::Query(sea_orm::RuntimeErr::SqlxError(err.into())))?;
    Ok((!file.is_empty()).then(|| PathBuf::from(file)))
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

#[cfg(test)]
mod tests {
    use sea_orm::ConnectionTrait;
    use sea_orm::sqlx::Row;

    use super::*;

    async fn wal(db: &DatabaseConnection) -> Wal {
        checkpoint(db).await.unwrap()
    }

    fn notice() -> Notice {
        Notice {
            tenant: uuid::Uuid::nil(),
            profile_id: uuid::Uuid::nil(),
            version: 1,
        }
    }

    /// The log's frames, and how many of them a checkpoint has copied, as SQLite keeps them in
    /// the log's index (the `-shm` file: the first copy of its header, then the checkpoint's
    /// information; native byte order). Reading them checkpoints nothing.
    fn frames(database: &std::path::Path) -> (u32, u32) {
        let index = std::fs::read(database.with_extension("db-shm")).unwrap();
        let at = |offset: usize| u32::from_ne_bytes(index[offset..offset + 4].try_into().unwrap());
        (at(16), at(96))
    }

    /// A SQLite database in a file of its own, with a table `t`, and [`spawn_checkpoints`]
    /// running on it, told of writes by `feed`, in `turn`.
    struct Logged {
        _dir: tempfile::TempDir,
        file: PathBuf,
        db: DatabaseConnection,
        feed: crate::feed::Feed,
        turn: Arc<Mutex<()>>,
    }

    async fn logged() -> Logged {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wal.db");
        let db = connect(&format!("sqlite://{}", file.display())).await.unwrap();
        db.execute_unprepared("CREATE TABLE t (n INTEGER, b BLOB)")
            .await
            .unwrap();
        let feed = crate::feed::Feed::default();
        let turn = Arc::new(Mutex::new(()));
        spawn_checkpoints(db.clone(), feed.subscribe(), turn.clone());
        Logged {
            _dir: dir,
            file,
            db,
            feed,
            turn,
        }
    }

    /// Waits until `done`, for at most five seconds.
    async fn until(done: impl Fn() -> bool) {
        let mut waited = Duration::ZERO;
        while !done() && waited < Duration::from_secs(5) {
            tokio::time::sleep(CHECKPOINT_EVERY).await;
            waited += CHECKPOINT_EVERY;
        }
    }

    async fn write(db: &DatabaseConnection, rows: usize) {
        for n in 0..rows {
            db.execute_unprepared(&format!("INSERT INTO t VALUES ({n}, randomblob(2000))"))
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn the_database_file_is_the_path_sqlite_opened_and_none_in_memory() {
        let Logged { _dir, file, db, .. } = logged().await;
        let found = database_file(db.get_sqlite_connection_pool()).await.unwrap();
        assert_eq!(
            found.map(|path| path.canonicalize().unwrap()),
            Some(file.canonicalize().unwrap())
        );
        let memory = connect("sqlite::memory:").await.unwrap();
        assert_eq!(database_file(memory.get_sqlite_connection_pool()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn writers_leave_checkpoints_to_the_background_task_which_runs_after_announced_changes() {
        let Logged { _dir, db, feed, .. } = logged().await;
        // 1,200 commits of a page or two each: no writer checkpoints (the backstop is far), and
        // with no change announced neither does the task.
        write(&db, 1200).await;
        tokio::time::sleep(CHECKPOINT_EVERY * 4).await;
        write(&db, 1).await;
        let unannounced = wal(&db).await;
        assert!(unannounced.log > 1000, "{unannounced:?}");
        // `wal` checkpointed it, so the log starts over at the next commit: fill it again.
        write(&db, 1200).await;
        // Once a change is announced, the task checkpoints the whole log, so it starts over at
        // the next commit.
        feed.publish(notice());
        tokio::time::sleep(CHECKPOINT_EVERY * 4).await;
        write(&db, 1).await;
        let after = wal(&db).await;
        assert!(after.log < 10, "{after:?}");
    }

    #[tokio::test]
    async fn a_long_log_that_a_checkpoint_could_not_finish_is_finished_in_the_write_turn() {
        let logged = logged().await;

        // A reader's snapshot keeps any checkpoint from copying the frames written after it,
        // as writers that never pause keep it from copying the last ones.
        let reader = rusqlite::Connection::open(&logged.file).unwrap();
        reader.execute_batch("BEGIN; SELECT count(*) FROM t;").unwrap();
        write(&logged.db, FINISH_PAST_FRAMES as usize + 100).await;
        let held = logged.turn.lock().await;
        logged.feed.publish(notice());
        // Ample time for the task's checkpoint (after CHECKPOINT_EVERY) while the reader lasts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        reader.execute_batch("COMMIT").unwrap();
        tokio::time::sleep(CHECKPOINT_EVERY * 4).await;
        let (log, copied) = frames(&logged.file);
        assert!(log > FINISH_PAST_FRAMES as u32 && copied < log, "{log} {copied}");

        // The task finishes the checkpoint as soon as it has the turn.
        drop(held);
        until(|| frames(&logged.file).1 == log).await;
        assert_eq!(frames(&logged.file), (log, log));
    }

    #[tokio::test]
    async fn a_long_log_starts_over_though_a_writer_in_its_transaction_saw_a_checkpoint_copy_all_of_it() {
        let logged = logged().await;
        write(&logged.db, FINISH_PAST_FRAMES as usize + 100).await;

        // A writer of this process begins in its turn while the log is long: its transaction
        // reads the log, so the log cannot start over when it commits.
        let held = logged.turn.lock().await;
        let writer = rusqlite::Connection::open(&logged.file).unwrap();
        writer
            .execute_batch(&format!(
                "PRAGMA wal_autocheckpoint = {WAL_BACKSTOP_PAGES}; BEGIN IMMEDIATE; INSERT INTO t VALUES (-1, NULL);"
            ))
            .unwrap();
        logged.feed.publish(notice());
        // Ample time for the task's checkpoint (after CHECKPOINT_EVERY), which copies all of
        // the log: the writer has added no frame yet.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (log, copied) = frames(&logged.file);
        assert!(log > FINISH_PAST_FRAMES as u32 && copied == log, "{log} {copied}");
        writer.execute_batch("COMMIT").unwrap();
        drop(held);

        // In the turn, the task copies the frames the writer added, so the next writer, which
        // finds the whole log copied when it begins, starts the log over.
        until(|| frames(&logged.file).1 > log).await;
        write(&logged.db, 1).await;
        let (log, _) = frames(&logged.file);
        assert!(log < 10, "{log}");
    }

    /// The `CREATE TABLE` text of `table`, and its rows in key order.
    async fn table(db: &DatabaseConnection, table: &str) -> (String, Vec<Vec<String>>) {
        let sql: String = sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?")
            .bind(table)
            .fetch_one(db.get_sqlite_connection_pool())
            .await
            .unwrap();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM {table} ORDER BY 1, 2")))
            .fetch_all(db.get_sqlite_connection_pool())
            .await
            .unwrap()
            .iter()
            .map(|row| {
                (0..row.len())
                    .filter_map(|column| row.get::<Option<String>, _>(column))
                    .collect()
            })
            .collect();
        (sql, rows)
    }

    #[tokio::test]
    async fn on_sqlite_tags_and_groups_move_to_tables_without_row_ids_with_their_rows_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = connect(&format!("sqlite://{}", dir.path().join("m.db").display()))
            .await
            .unwrap();
        Migrator::up(&db, Some(3)).await.unwrap();
        db.execute_unprepared(
            "INSERT INTO tenants (id, name, last_serial, created_at) VALUES ('t', 'acme', 1, '2026-12-01');
             INSERT INTO profiles (id, tenant_id, serial_number, status, attributes, version, created_at, updated_at)
               VALUES ('p', 't', 1, 'active', '{}', 1, '2026-12-01', '2026-12-01');
             INSERT INTO profile_tags VALUES ('p', 'tier', 'gold'), ('p', 'city', NULL);
             INSERT INTO profile_groups VALUES ('p', 'vip');",
        )
        .await
        .unwrap();
        let tags = vec![
            vec!["p".to_owned(), "city".to_owned()],
            vec!["p".into(), "tier".into(), "gold".into()],
        ];
        let groups = vec![vec!["p".to_owned(), "vip".to_owned()]];

        Migrator::up(&db, Some(1)).await.unwrap();
        for (name, rows) in [("profile_tags", &tags), ("profile_groups", &groups)] {
            let (sql, kept) = table(&db, name).await;
            assert!(sql.ends_with("WITHOUT ROWID"), "{sql}");
            assert_eq!(&kept, rows, "{name}");
        }
        let indexes: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('ix_profile_tags_key', 'ix_profile_groups_name')",
        )
        .fetch_one(db.get_sqlite_connection_pool())
        .await
        .unwrap();
        assert_eq!(indexes, 2);

        Migrator::down(&db, Some(1)).await.unwrap();
        for (name, rows) in [("profile_tags", &tags), ("profile_groups", &groups)] {
            let (sql, kept) = table(&db, name).await;
            assert!(!sql.contains("WITHOUT ROWID"), "{sql}");
            assert_eq!(&kept, rows, "{name}");
        }

        // The foreign keys came along: a deleted profile takes its tags and groups with it.
        Migrator::up(&db, Some(1)).await.unwrap();
        db.execute_unprepared("DELETE FROM profiles WHERE id = 'p'")
            .await
            .unwrap();
        assert!(table(&db, "profile_tags").await.1.is_empty());
        assert!(table(&db, "profile_groups").await.1.is_empty());
    }
}
