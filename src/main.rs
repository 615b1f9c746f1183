use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's malloc: a request allocates and frees many small objects
/// across worker threads, where glibc spends a quarter of the server's CPU (a page of 50
/// profiles, profiled with perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(profile_gateway::http::WORKER_STACK_BYTES)
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run()),
        Err(err) => {
            eprintln!("cannot start the runtime: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> std::process::ExitCode {
    // Lines go to stderr from a thread of their own, in batches, formatted as the default
    // format's but with less work (`profile_gateway::logging`).
    // `_flushed` writes what is queued when `main` returns.
    let (log, _flushed) = match profile_gateway::logging::Batched::new(std::io::stderr()) {
        Ok(writer) => writer,
        Err(err) => {
            eprintln!("cannot start the log's thread: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(log)
        // Before `event_format`, which keeps it: only the default format's builder sets it.
        .with_ansi(std::io::stderr().is_terminal())
        .event_format(profile_gateway::logging::Lines::new())
        .fmt_fields(profile_gateway::logging::Fields)
        .init();
    match profile_gateway::cli::run(profile_gateway::cli::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            std::process::ExitCode::FAILURE
        }
    }
}
