//! Load generation: a fixed number of connections as fast as they go (throughput), or a fixed
//! request rate (latency). At a fixed rate every request's latency counts from when it was
//! due, not from when it was sent, so a stalled server cannot hide its stall by delaying the
//! requests that would have measured it (no coordinated omission).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hdrhistogram::Histogram;

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
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients = (0..connections).map(|_| {
        let (client, workload, counter) = (client.clone(), workload.clone(), counter.clone());
        tokio::spawn(async move {
            let mut sample = Sample::new();
            while Instant::now() < deadline {
                let op = workload(counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                let sent = Instant::now();
                if client.call(&op).await {
                    sample.ok += 1;
                    sample.latencies.saturating_record(sent.elapsed().as_micros() as u64);
                } else {
                    sample.failed += 1;
                }
            }
            sample
        })
    });
    let mut total = Sample::new();
    for sample in futures::future::join_all(clients).await.into_iter().flatten() {
        total.merge(&sample);
    }
    total.elapsed = started.elapsed();
    total
}

/// Requests due at a fixed `rate` per second for `duration`, each sent when due whatever the
/// others are doing; latency counts from when it was due.
pub async fn open_loop(client: &Arc<dyn Client>, workload: &Workload, rate: f64, duration: Duration) -> Sample {
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total_requests = (duration.as_secs_f64() * rate.max(1.0)) as u64;
    let mut tasks = Vec::with_capacity(total_requests as usize);
    for n in 0..total_requests {
        let due = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let (client, op) = (client.clone(), workload(n));
        tasks.push(tokio::spawn(async move {
            let ok = client.call(&op).await;
            (ok, due.elapsed())
        }));
    }
    let mut sample = Sample::new();
    for task in futures::future::join_all(tasks).await {
        match task {
            Ok((true, latency)) => {
                sample.ok += 1;
                sample.latencies.saturating_record(latency.as_micros() as u64);
            }
            _ => sample.failed += 1,
        }
    }
    sample.elapsed = started.elapsed();
    sample
}
