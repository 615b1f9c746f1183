use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use profile_gateway_bench::{Kind, Options, WorkloadId};

/// Measures profile-gateway against PostGraphile v5, a raw SQL baseline and a plain-axum HTTP
/// floor on four workloads, and writes a markdown and CSV report.
#[derive(Parser)]
#[command(name = "profile-gateway-bench")]
struct Cli {
    /// The profile-gateway binary to benchmark; without it the gateway runs in this process.
    #[arg(long)]
    server_binary: Option<PathBuf>,
    /// The HTTP floor's binary (profile-gateway-floor); without it the floor runs in this process.
    #[arg(long)]
    floor_binary: Option<PathBuf>,
    /// The folder of PostGraphile's server.mjs, its node_modules installed (`npm ci`).
    #[arg(long, default_value = "bench/postgraphile")]
    postgraphile_dir: PathBuf,
    /// A PostgreSQL URL on whose server the benchmark may create its database.
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// The contenders, in turn order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Kind::ALL)]
    contenders: Vec<Kind>,
    /// The workloads to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = WorkloadId::ALL)]
    workloads: Vec<WorkloadId>,
    /// Leave out every PostgreSQL contender.
    #[arg(long)]
    no_postgres: bool,
    /// Profiles to seed.
    #[arg(long, default_value_t = 10_000)]
    profiles: usize,
    /// Rounds; contenders alternate within each.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Warm-up of a contender's first turn, in seconds (Node needs 30 or more).
    #[arg(long, default_value_t = 30)]
    warmup_secs: u64,
    /// Length of each measurement, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Connection counts to measure throughput at; latency is measured at half the first one's.
    #[arg(long, value_delimiter = ',', default_values_t = [16, 64])]
    connections: Vec<usize>,
    /// A run of seconds on tiny data with the profile-gateway contenders only, to check that
    /// the benchmark works.
    #[arg(long)]
    smoke: bool,
    /// Where the report goes.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut contenders = cli.contenders;
    if cli.smoke {
        contenders.retain(|kind| matches!(kind, Kind::GatewayPostgres | Kind::GatewaySqlite));
    }
    if cli.no_postgres {
        contenders.retain(|kind| !kind.on_postgres());
    }
    if contenders.is_empty() || cli.workloads.is_empty() || cli.connections.is_empty() || cli.rounds == 0 {
        eprintln!("nothing to measure: name a contender, a workload, a connection count and at least one round");
        return std::process::ExitCode::FAILURE;
    }
    let mut options = Options {
        contenders,
        workloads: cli.workloads,
        postgres_url: cli.postgres_url,
        server_binary: cli.server_binary,
        floor_binary: cli.floor_binary,
        postgraphile_dir: cli.postgraphile_dir,
        profiles: cli.profiles,
        rounds: cli.rounds,
        warmup: Duration::from_secs(cli.warmup_secs),
        duration: Duration::from_secs(cli.duration_secs),
        connections: cli.connections,
        out: cli.out,
    };
    if cli.smoke {
        options = Options {
            profiles: 20,
            rounds: 1,
            warmup: Duration::from_millis(400),
            duration: Duration::from_millis(500),
            connections: vec![2, 4],
            ..options
        };
    }
    match profile_gateway_bench::run(&options).await {
        Ok(report) => {
            println!("{}", report.markdown());
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("benchmark failed: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
