//! PostgreSQL connections that profile reads, pages of profiles and updates keep between
//! requests.
//!
//! sqlx checks every connection that goes back to its pool with a round trip (`return_to_pool`
//! pings it, and no option turns that off), so a read through the pool costs the database two
//! round trips, and the server a wake-up more, where one would do. perf put it at about a
//! tenth of the server's CPU per read. This pool keeps up to [`Held::new`]'s `size`
//! connections of its own (opened as sqlx's pool opens its connections, then detached from it,
//! so the pool's own connections all stay for everything else) and lends them to reads, pages
//! without their count and updates in turn, the one used last first, with no round trip
//! between two loans.
//!
//! sqlx's ping is there for connections whose use was cut short: a request cancelled in the
//! middle of a statement, a failed statement, a transaction dropped without its `COMMIT`
//! (whose `ROLLBACK` sqlx queues until the next round trip). So a loan ends in one of two ways:
//! [`Loan::done`] after a use that finished, which keeps the connection as it is; and anything
//! else (an error, or the loan dropped while in use), after which a task of its own pings the
//! connection, sending that `ROLLBACK` on its way, and keeps it if it answers and closes it if
//! not. A connection idle for [`PING_WHEN_IDLE_FOR`] is pinged before it is lent again, as
//! sqlx's pool does before it hands one out, since a restarted server or a proxy may have
//! dropped it.

use std::ops::{Deref, DerefMut};

use deadpool::managed::{self, Metrics, Object, PoolError, QueueMode, RecycleResult};
use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::{self, Connection, PgConnection, PgPool};
use sea_orm::{ConnAcquireErr, DbErr};

use super::acquire_err;
use crate::db::PING_WHEN_IDLE_FOR;

/// Connections opened as a sqlx pool opens its own, kept and lent in turn; cheap to clone.
#[derive(Debug, Clone)]
pub struct Held {
    pool: managed::Pool<Lender>,
}

impl Held {
    /// Keeps up to `size` connections, opened through `pool` and then detached from it. A
    /// loan waits for a connection, and a ping for its answer, as long as `pool` waits for a
    /// connection.
    pub fn new(pool: PgPool, size: usize) -> Self {
        let wait = pool.options().get_acquire_timeout();
        let pool = managed::Pool::builder(Lender(pool))
            .max_size(size)
            .queue_mode(QueueMode::Lifo)
            .wait_timeout(Some(wait))
            // A ping that times out drops its connection, and the loan takes another.
            .recycle_timeout(Some(wait))
            .runtime(deadpool::Runtime::Tokio1);
        Held {
            // Building fails only without a runtime, or with a timeout and no runtime to run
            // it; the runtime is set just above.
            pool: pool.build().unwrap_or_else(|err| unreachable!("{err}")),
        }
    }

    /// Lends a connection, waiting for one as long as sqlx's pool would.
    pub async fn lend(&self) -> Result<Loan, DbErr> {
        match self.pool.get().await {
            Ok(object) => Ok(Loan(Some(object))),
            Err(PoolError::Backend(err)) => Err(acquire_err(err)),
            Err(PoolError::Timeout(_)) => Err(DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)),
            Err(PoolError::Closed) => Err(DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed)),
            Err(err @ (PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_))) => {
                Err(DbErr::Custom(format!("the connection pool is misbuilt: {err}")))
            }
        }
    }
}

/// A connection on loan: kept as it is when [`Loan::done`] ends the loan, pinged first when it
/// is dropped without.
#[derive(Debug)]
pub struct Loan(Option<Object<Lender>>);

impl Loan {
    /// Ends a use of the connection that finished: no statement is under way and no
    /// transaction open, so the connection is lent again as it is.
    pub fn done(mut self) {
        // Dropping the object returns it to the pool it came from.
        self.0.take();
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        let Some(mut object) = self.0.take() else { return };
        // Not done: the ping sends any queued `ROLLBACK` and tells whether the connection still
        // answers in time. Without a runtime to run it on, or a pool to go back to (only while
        // the process stops), the connection is closed, which ends its transaction too.
        if let (Ok(runtime), Some(pool)) = (tokio::runtime::Handle::try_current(), Object::pool(&object)) {
            let wait = pool.timeouts().recycle.unwrap_or(PING_WHEN_IDLE_FOR);
            runtime.spawn(async move {
                match tokio::time::timeout(wait, object.ping()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        tracing::warn!(error = %err, "a kept database connection broke off and is closed");
                        drop(Object::take(object));
                    }
                    Err(_) => {
                        tracing::warn!("a kept database connection did not answer a ping and is closed");
                        drop(Object::take(object));
                    }
                }
            });
        } else {
            drop(Object::take(object));
        }
    }
}

impl Deref for Loan {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match &self.0 {
            Some(object) => object,
            None => unreachable!("a loan holds its connection until it ends"),
        }
    }
}

impl DerefMut for Loan {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match &mut self.0 {
            Some(object) => object,
            None => unreachable!("a loan holds its connection until it ends"),
        }
    }
}

/// Opens connections for [`Held`] through a sqlx pool, and checks those idle for a while.
#[derive(Debug)]
struct Lender(PgPool);

impl managed::Manager for Lender {
    type Type = PgConnection;
    type Error = sqlx::Error;

    // Both futures are part of every loan's (deadpool's `get` holds them in place), and so of
    // every read's and update's, which async-graphql moves into a box of its own for each
    // field: sqlx's connect future is many kilobytes. Boxed, they cost their size only when
    // they run: a connection opened, an idle one pinged.
    async fn create(&self) -> Result<PgConnection, sqlx::Error> {
        Box::pin(self.0.acquire()).await.map(PoolConnection::detach)
    }

    async fn recycle(&self, conn: &mut PgConnection, metrics: &Metrics) -> RecycleResult<sqlx::Error> {
        if metrics.last_used() >= PING_WHEN_IDLE_FOR {
            Box::pin(conn.ping()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use sea_orm::sqlx::postgres::PgPoolOptions;

    use super::*;

    /// A pool of `size` on `TEST_POSTGRES_URL`'s database, or `None` when it is unset. Nothing
    /// here creates tables; the advisory locks taken are keyed at random.
    async fn pool(size: u32) -> Option<PgPool> {
        let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
            println!("skipped: TEST_POSTGRES_URL is not set");
            return None;
        };
        Some(PgPoolOptions::new().max_connections(size).connect(&url).await.unwrap())
    }

    async fn backend(conn: &mut PgConnection) -> i32 {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(conn)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_loan_that_is_done_keeps_its_connection_for_the_next_loan_and_out_of_sqlx_pool() {
        let Some(pool) = pool(1).await else { return };
        let held = Held::new(pool.clone(), 1);
        let mut loan = held.lend().await.unwrap();
        let first = backend(&mut loan).await;
        loan.done();
        let mut loan = held.lend().await.unwrap();
        assert_eq!(backend(&mut loan).await, first);
        loan.done();
        // The whole of sqlx's pool is left to everything else, even while the loans keep theirs.
        let mut other = tokio::time::timeout(Duration::from_secs(2), pool.acquire())
            .await
            .expect("sqlx's pool has a connection to spare")
            .unwrap();
        assert_ne!(backend(&mut other).await, first);
    }

    #[tokio::test]
    async fn a_loan_dropped_inside_a_transaction_is_pinged_which_rolls_it_back_and_keeps_it() {
        let Some(pool) = pool(1).await else { return };
        let held = Held::new(pool.clone(), 1);
        let key = i64::from_ne_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap());
        let mut loan = held.lend().await.unwrap();
        let first = backend(&mut loan).await;
        let mut tx = sqlx::Connection::begin(&mut *loan).await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut *tx)
            .await
            .unwrap();
        // As a cancelled request would: sqlx only queues the transaction's ROLLBACK.
        drop(tx);
        drop(loan);
        let mut other = pool.acquire().await.unwrap();
        let started = Instant::now();
        loop {
            let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut *other)
                .await
                .unwrap();
            if free {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "the lock is still held");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(&mut *other)
            .await
            .unwrap();
        // The connection answered, so it was kept rather than closed and opened anew.
        let mut loan = held.lend().await.unwrap();
        assert_eq!(backend(&mut loan).await, first);
        loan.done();
    }
}
