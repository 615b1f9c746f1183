//! The benchmark's HTTP floor as its own process (see `profile_gateway_bench::floor`).
//! Prints `listening on <port>` once it answers.

use clap::Parser;

#[derive(Parser)]
#[command(name = "profile-gateway-floor")]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// As many connections as profile-gateway's pool.
    #[arg(long, default_value_t = 10)]
    pool_size: u32,
}

/// The allocator profile-gateway runs on, so that the floor stays a floor.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let pool = profile_gateway_bench::pool_options(cli.pool_size)
        .connect(&cli.database_url)
        .await?;
    let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
    println!("listening on {}", listener.local_addr()?.port());
    axum::serve(listener, profile_gateway_bench::floor::router(pool)).await?;
    Ok(())
}
