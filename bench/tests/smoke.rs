//! The benchmark's smoke mode, in the test suite: seconds on tiny data, profile-gateway
//! contenders only, every workload measured without a failure and reported.

use std::time::Duration;

use profile_gateway_bench::{Kind, Options, WorkloadId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_benchmark_measures_every_workload_without_failures_and_writes_its_report() {
    let out = tempfile::tempdir().unwrap();
    let postgres_url = std::env::var("TEST_POSTGRES_URL").ok();
    let mut contenders = vec![Kind::GatewaySqlite];
    if postgres_url.is_some() {
        contenders.insert(0, Kind::GatewayPostgres);
    }
    let options = Options {
        contenders: contenders.clone(),
        workloads: WorkloadId::ALL.to_vec(),
        postgres_url: postgres_url.unwrap_or_default(),
        server_binary: None,
        floor_binary: None,
        postgraphile_dir: "postgraphile".into(),
        profiles: 20,
        rounds: 2,
        warmup: Duration::from_millis(400),
        duration: Duration::from_millis(300),
        connections: vec![2, 4],
        out: out.path().to_owned(),
    };
    let report = profile_gateway_bench::run(&options).await.expect("the benchmark runs");
    let summaries = report.summaries();
    // Four workloads, each at two connection counts and at a fixed rate, per contender.
    assert_eq!(summaries.len(), contenders.len() * 4 * 3);
    for summary in &summaries {
        assert_eq!(summary.failures, 0, "{summary:?}");
        assert!(summary.throughput > 0.0, "{summary:?}");
        assert!(
            summary.p50_ms > 0.0 && summary.p50_ms <= summary.p99_ms && summary.p99_ms <= summary.p999_ms,
            "{summary:?}"
        );
    }
    assert_eq!(report.measurements.len(), summaries.len() * 2, "two rounds of each");
    let files: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let markdown = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "md"))
        .expect("a markdown report");
    let csv = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "csv"))
        .expect("a CSV report");
    assert!(std::fs::read_to_string(markdown).unwrap().contains("| W1 read |"));
    assert_eq!(
        std::fs::read_to_string(csv).unwrap().lines().count(),
        summaries.len() + 1
    );
}
