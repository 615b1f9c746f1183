use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use profile_gateway_bench::{Backend, Options};

/// Measures profile-gateway's throughput and latency on its four workloads.
#[derive(Parser)]
#[command(name = "profile-gateway-bench")]
struct Cli {
    /// The profile-gateway binary to benchmark; without it the gateway runs in this process.
    #[arg(long)]
    server_binary: Option<PathBuf>,
    /// A PostgreSQL URL on whose server a database per contender may be created.
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// Leave out the PostgreSQL contender.
    #[arg(long)]
    no_postgres: bool,
    /// Profiles to seed per contender.
    #[arg(long, default_value_t = 10_000)]
    profiles: usize,
    /// Rounds; contenders alternate within each.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Warm-up per contender and round, in seconds.
    #[arg(long, default_value_t = 30)]
    warmup_secs: u64,
    /// Length of each measurement, in seconds.
    #[arg(long, default_value_t = 15)]
    duration_secs: u64,
    /// Connection counts to measure throughput at; latency is measured at half the first one's.
    #[arg(long, value_delimiter = ',', default_values_t = [16, 64])]
    connections: Vec<usize>,
    /// A run of seconds on tiny data, to check that the benchmark works.
    #[arg(long)]
    smoke: bool,
    /// Where the report goes.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut options = Options {
        backends: if cli.no_postgres {
            vec![Backend::Sqlite]
        } else {
            vec![Backend::Postgres, Backend::Sqlite]
        },
        postgres_url: cli.postgres_url,
        server_binary: cli.server_binary,
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
            warmup: Duration::from_millis(200),
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
