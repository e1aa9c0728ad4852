//! Command line and environment: every setting with its doc and default.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The local database the service uses when none is given.
pub const DEFAULT_DATABASE_URL: &str =
    "postgres://postgres:postgres@127.0.0.1:5432/ccc_callcontrol";

#[derive(Debug, Parser)]
#[command(
    name = "ccc-callcontrol",
    version,
    about = "Contact-center call control (CCC 2020-07-01) over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, env = "CCC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if missing, apply migrations, and serve gRPC.
    Serve(ServeArgs),
    /// Create the database if missing and apply migrations, then exit.
    Migrate(DatabaseArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL. The database is created if missing.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Most connections this replica keeps open. Size it so that all
    /// replicas together stay under the server's max_connections.
    #[arg(long, env = "CCC_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub max_connections: u32,

    /// How long a request waits for a free connection before it fails
    /// with ServiceUnavailable, in milliseconds.
    #[arg(long, env = "CCC_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 3000)]
    pub acquire_timeout_ms: u64,

    /// Longest a single SQL statement may run, in milliseconds (0: no
    /// limit); a statement cut off fails with ServiceUnavailable.
    #[arg(long, env = "CCC_DB_STATEMENT_TIMEOUT_MS", default_value_t = 5000)]
    pub statement_timeout_ms: u64,
}

impl DatabaseArgs {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "CCC_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["ccc-callcontrol", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        assert_eq!(args.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(args.database.max_connections, 16);
    }
}
