use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's malloc: a request allocates and frees many small objects
/// across worker threads, where glibc spends a quarter of the server's CPU (a page of 50
/// profiles, profiled with perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Log lines waiting for the log thread; past this many, logging waits (as a plain write to
/// stderr would) rather than dropping lines.
const QUEUED_LOG_LINES: usize = 8192;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Lines go to stderr from a thread of their own, written in batches: one line per request
    // written from the request's own task cost about 7% of a small read's CPU (perf, W1).
    // `_flushed` writes what is queued when `main` returns.
    let (log, _flushed) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LOG_LINES)
        .lossy(false)
        .thread_name("log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(log)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match profile_gateway::cli::run(profile_gateway::cli::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            std::process::ExitCode::FAILURE
        }
    }
}
