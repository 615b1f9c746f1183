//! Load generation: a fixed number of connections as fast as they go (throughput), or a fixed
//! request rate (latency). At a fixed rate every request's latency counts from when it was
//! due, not from when it was sent, so a stalled server cannot hide its stall by delaying the
//! requests that would have measured it (no coordinated omission).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::Value;

/// One request of a workload, and what its response must say.
pub struct Call {
    pub body: String,
    pub check: Box<dyn Fn(&Value) -> bool + Send + Sync>,
}

/// Makes the `n`th call of a workload.
pub type Workload = Arc<dyn Fn(u64) -> Call + Send + Sync>;

/// What one measurement saw.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Latencies in microseconds of the requests that succeeded.
    pub latencies: Histogram<u64>,
    pub ok: u64,
    /// Requests that failed: transport errors, non-200 statuses, bodies with `errors`, or
    /// bodies their check refused.
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

/// A client aimed at one server's `/graphql`.
#[derive(Clone)]
pub struct Target {
    pub client: reqwest::Client,
    pub url: String,
    pub api_key: String,
}

impl Target {
    pub fn new(address: &str, api_key: &str) -> Self {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("an HTTP client");
        Target {
            client,
            url: format!("{address}/graphql"),
            api_key: api_key.to_owned(),
        }
    }

    /// Sends `call`; whether it succeeded as the workload expects.
    async fn send(&self, call: &Call) -> bool {
        let response = self
            .client
            .post(&self.url)
            .header("X-API-Key", &self.api_key)
            .header("Content-Type", "application/json")
            .header("Accept", "application/graphql-response+json")
            .body(call.body.clone())
            .send()
            .await;
        let Ok(response) = response else { return false };
        if response.status() != 200 {
            return false;
        }
        match response.json::<Value>().await {
            Ok(body) => body.get("errors").is_none() && (call.check)(&body),
            Err(_) => false,
        }
    }
}

/// `connections` clients, each sending its next request as soon as the last one is answered,
/// for `duration`.
pub async fn closed_loop(target: &Target, workload: &Workload, connections: usize, duration: Duration) -> Sample {
    let started = Instant::now();
    let deadline = started + duration;
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients = (0..connections).map(|_| {
        let (target, workload, counter) = (target.clone(), workload.clone(), counter.clone());
        tokio::spawn(async move {
            let mut sample = Sample::new();
            while Instant::now() < deadline {
                let call = workload(counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                let sent = Instant::now();
                if target.send(&call).await {
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
    for client in futures::future::join_all(clients).await {
        if let Ok(sample) = client {
            total.merge(&sample);
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// Requests due at a fixed `rate` per second for `duration`, each sent when due whatever the
/// others are doing; latency counts from when it was due.
pub async fn open_loop(target: &Target, workload: &Workload, rate: f64, duration: Duration) -> Sample {
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total_requests = (duration.as_secs_f64() * rate.max(1.0)) as u64;
    let mut tasks = Vec::with_capacity(total_requests as usize);
    for n in 0..total_requests {
        let due = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let (target, call) = (target.clone(), workload(n));
        tasks.push(tokio::spawn(async move {
            let ok = target.send(&call).await;
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
