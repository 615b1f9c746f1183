//! Load generation: a fixed number of connections as fast as they go (throughput), or a fixed
//! request rate over a fixed number of connections (latency). At a fixed rate every request's
//! latency counts from when it was due, not from when it was sent, so a stalled server cannot
//! hide its stall by delaying the requests that would have measured it (no coordinated
//! omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// One request of a workload, whatever the contender speaks.
#[derive(Debug, Clone)]
pub enum Op {
    /// Read a profile with its tags and attributes.
    Read { id: Arc<str> },
    /// Merge two attribute keys (`a` = `n`, `b` = `n % 7`) and replace the tags with
    /// `t{n % 5}` and `vip`.
    Update { id: Arc<str>, n: u64 },
    /// The first 50 profiles with their tags.
    List,
}

/// Makes the `n`th request of a workload.
pub type Workload = Arc<dyn Fn(u64) -> Op + Send + Sync>;

/// A contender's side of the wire: runs one request and says whether its answer was right.
pub trait Client: Send + Sync + 'static {
    /// Runs `op`; `true` only for a complete, correct answer.
    fn call<'a>(&'a self, op: &'a Op) -> BoxFuture<'a, bool>;
}

/// What one measurement saw.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Latencies in microseconds of the requests that succeeded.
    pub latencies: Histogram<u64>,
    pub ok: u64,
    /// Requests that failed: transport or database errors, non-200 statuses, bodies with
    /// `errors`, or answers without the expected data.
    pub failed: u64,
    pub elapsed: Duration,
}

impl Sample {
    fn new() -> Self {
        Sample {
            latencies: histogram(),
            ok: 0,
            failed: 0,
            elapsed: Duration::ZERO,
        }
    }

    /// Counts one request: its latency since `since` when it succeeded (`ok`), a failure
    /// otherwise.
    fn count(&mut self, ok: bool, since: Instant) {
        match ok {
            true => {
                self.ok += 1;
                self.latencies.saturating_record(since.elapsed().as_micros() as u64);
            }
            false => self.failed += 1,
        }
    }

    fn merge(&mut self, other: &Sample) {
        self.latencies.add(&other.latencies).ok();
        self.ok += other.ok;
        self.failed += other.failed;
    }

    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The latency at `quantile` in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latencies.value_at_quantile(quantile) as f64 / 1000.0
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at three significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// The samples of `tasks`, which run at once, added up over the time since `started`.
async fn gather(started: Instant, tasks: impl Iterator<Item = JoinHandle<Sample>>) -> Sample {
    let mut total = Sample::new();
    for sample in futures::future::join_all(tasks).await.into_iter().flatten() {
        total.merge(&sample);
    }
    total.elapsed = started.elapsed();
    total
}

/// `connections` clients, each sending its next request as soon as the last one is answered,
/// for `duration`.
pub async fn closed_loop(
    client: &Arc<dyn Client>,
    workload: &Workload,
    connections: usize,
    duration: Duration,
) -> Sample {
    let started = Instant::now();
    let deadline = started + duration;
    let counter = Arc::new(AtomicU64::new(0));
    let clients = (0..connections).map(|_| {
        let (client, workload, counter) = (client.clone(), workload.clone(), counter.clone());
        tokio::spawn(async move {
            let mut sample = Sample::new();
            while Instant::now() < deadline {
                let op = workload(counter.fetch_add(1, Ordering::Relaxed));
                let sent = Instant::now();
                sample.count(client.call(&op).await, sent);
            }
            sample
        })
    });
    gather(started, clients).await
}

/// Requests due at a fixed `rate` per second for `duration`, sent by `senders` tasks: each takes
/// the next request, waits until it is due, sends it and waits for its answer. Latency counts
/// from when a request was due, so while a stalled server keeps every sender waiting, the
/// requests falling due meanwhile count that wait (no coordinated omission, as wrk2 measures).
///
/// At most `senders` requests are in flight, on as many connections. One task per request, each
/// sent the moment it is due, made the client open a connection for every request beyond those
/// in flight: after a stall of a few milliseconds, a hundred or more at once (the SQLite gateway
/// went from 16 to 280 sockets in W1), whose handshakes and accepts then queued in front of the
/// requests, so the latency measured the load generator's connection storm as well as the
/// server. A real deployment's clients reach a server over connections they keep, and behind a
/// proxy over a pool of them, which is what `senders` connections model.
///
/// Tokio's timers fire on millisecond ticks, so a request goes out up to a millisecond after it
/// is due, and that wait counts in its latency, alike for every contender.
pub async fn open_loop(
    client: &Arc<dyn Client>,
    workload: &Workload,
    rate: f64,
    duration: Duration,
    senders: usize,
) -> Sample {
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total_requests = (duration.as_secs_f64() * rate.max(1.0)) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let senders = (0..senders.max(1)).map(|_| {
        let (client, workload, next) = (client.clone(), workload.clone(), next.clone());
        tokio::spawn(async move {
            let mut sample = Sample::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total_requests {
                    return sample;
                }
                let due = started + interval.mul_f64(n as f64);
                tokio::time::sleep_until(due).await;
                sample.count(client.call(&workload(n)).await, due);
            }
        })
    });
    gather(started, senders).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use futures::FutureExt as _;

    use super::*;

    /// Answers every request after `delay`, counting how many it holds at once.
    struct Slow {
        delay: Duration,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
    }

    impl Slow {
        fn new(delay: Duration) -> Arc<Self> {
            Arc::new(Slow {
                delay,
                in_flight: AtomicUsize::new(0),
                most_in_flight: AtomicUsize::new(0),
            })
        }
    }

    impl Client for Slow {
        fn call<'a>(&'a self, _: &'a Op) -> BoxFuture<'a, bool> {
            async move {
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.most_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(self.delay).await;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                true
            }
            .boxed()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_rate_beyond_what_its_senders_can_send_keeps_to_them_and_counts_the_wait() {
        let slow = Slow::new(Duration::from_millis(10));
        let client: Arc<dyn Client> = slow.clone();
        let workload: Workload = Arc::new(|_| Op::List);
        // 1,000 requests due over a second; 4 senders answer 400 a second, so the last one is
        // sent about 1.5 s after it was due.
        let sample = open_loop(&client, &workload, 1000.0, Duration::from_secs(1), 4).await;
        assert_eq!((sample.ok, sample.failed), (1000, 0));
        assert_eq!(slow.most_in_flight.load(Ordering::SeqCst), 4);
        assert!(sample.latency_ms(1.0) >= 1400.0, "{}", sample.latency_ms(1.0));
        assert!(sample.latency_ms(0.0) >= 10.0, "{}", sample.latency_ms(0.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_rate_its_senders_keep_up_with_is_sent_on_time() {
        let client: Arc<dyn Client> = Slow::new(Duration::from_millis(1));
        let workload: Workload = Arc::new(|_| Op::List);
        let sample = open_loop(&client, &workload, 100.0, Duration::from_secs(2), 4).await;
        assert_eq!(sample.ok, 200);
        // Each answered a millisecond after it was sent, and sent by the next millisecond tick.
        assert!(sample.latency_ms(1.0) <= 2.1, "{}", sample.latency_ms(1.0));
        assert!((1.9..2.1).contains(&sample.elapsed.as_secs_f64()));
    }
}
