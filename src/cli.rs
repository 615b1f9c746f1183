//! The `profile-gateway` command line.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

/// One GraphQL API over five vendor dialects of profile updates.
#[derive(Debug, Parser)]
#[command(name = "profile-gateway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending migrations, then serve GraphQL (/graphql) and GraphiQL (/graphiql).
    Serve {
        /// Address to listen on.
        #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[command(flatten)]
        database: Database,
    },
    /// Apply pending migrations and exit.
    Migrate {
        #[command(flatten)]
        database: Database,
    },
    /// Print the GraphQL schema (SDL), as schema.graphql holds it.
    PrintSchema,
}

#[derive(Debug, Args)]
pub struct Database {
    /// Database URL: sqlite://FILE (created if missing) or postgres://USER@HOST/DB.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "sqlite://profile-gateway.db"
    )]
    pub url: String,
}

/// Runs one command to completion.
pub async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match cli.command {
        Command::Serve { listen, database } => {
            let db = crate::db::connect(&database.url).await?;
            crate::db::migrate(&db).await?;
            let router = crate::http::router(crate::store::Store::new(db)).await?;
            let listener = crate::http::bind(listen).await?;
            crate::http::serve(listener, router).await?;
        }
        Command::Migrate { database } => {
            let db = crate::db::connect(&database.url).await?;
            crate::db::migrate(&db).await?;
            tracing::info!("migrations applied");
        }
        Command::PrintSchema => print!("{}", crate::sdl()),
    }
    Ok(())
}
