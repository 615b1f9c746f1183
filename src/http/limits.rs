//! Limits on what one request may ask for, each refused before execution.

use std::time::Duration;

/// Every limit of the GraphQL edge; each has a flag and an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Largest request body in bytes; a larger one is refused with 413 before it is read.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest GraphQL document (the `query` text) in bytes.
    #[arg(long, env = "MAX_DOCUMENT_BYTES", default_value_t = 32 * 1024)]
    pub max_document_bytes: usize,
    /// Deepest nesting of fields in an operation.
    #[arg(long, env = "MAX_QUERY_DEPTH", default_value_t = 16)]
    pub max_depth: usize,
    /// Deepest nesting of brackets in a document (selection sets, lists, objects, arguments),
    /// checked before the document is parsed.
    #[arg(long, env = "MAX_NESTING", default_value_t = 64)]
    pub max_nesting: usize,
    /// Most fields one operation, or all operations of a batch, may answer: every fragment use
    /// counts, and whatever is inside a page counts once per item the page asks for (`first`,
    /// its default when left out, the largest page when it is a variable).
    #[arg(long, env = "MAX_QUERY_COMPLEXITY", default_value_t = 5000)]
    pub max_complexity: usize,
    /// Most aliased fields in an operation.
    #[arg(long, env = "MAX_QUERY_ALIASES", default_value_t = 30)]
    pub max_aliases: usize,
    /// Most root fields in an operation.
    #[arg(long, env = "MAX_ROOT_FIELDS", default_value_t = 10)]
    pub max_root_fields: usize,
    /// Most operations in one batch; a batch may hold queries only.
    #[arg(long, env = "MAX_BATCH_OPERATIONS", default_value_t = 10)]
    pub max_batch_operations: usize,
    /// Longest list in any input, inline or in variables (tags, values, groups, ...).
    #[arg(long, env = "MAX_INPUT_LIST", default_value_t = 100)]
    pub max_input_list: usize,
    /// Largest response in bytes (a batch's responses together); a larger one is cut off and
    /// answered with RESPONSE_TOO_LARGE.
    #[arg(long, env = "MAX_RESPONSE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_response_bytes: usize,
    /// Most subscriptions one WebSocket may run at once; one more is refused with an `error`
    /// message (TOO_MANY_SUBSCRIPTIONS).
    #[arg(long, env = "MAX_SUBSCRIPTIONS_PER_SOCKET", default_value_t = 100)]
    pub max_subscriptions_per_socket: usize,
    /// Longest a WebSocket may take to send `connection_init`, in seconds, before it is closed
    /// with 4408.
    #[arg(long, env = "CONNECTION_INIT_TIMEOUT_SECS", default_value_t = 10)]
    pub connection_init_timeout_secs: u64,
    /// Longest a request may run, in seconds, before it is stopped.
    #[arg(long = "request-timeout-secs", env = "REQUEST_TIMEOUT_SECS", default_value_t = 10)]
    pub request_timeout_secs: u64,
    /// Most GraphQL requests over HTTP served at once; one more is refused at once with 503
    /// UNAVAILABLE and `Retry-After`, so that a server that falls behind its load sheds it
    /// instead of piling it up. (WebSocket subscriptions are not counted.)
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
}

impl Limits {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn connection_init_timeout(&self) -> Duration {
        Duration::from_secs(self.connection_init_timeout_secs)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
            max_document_bytes: 32 * 1024,
            max_depth: 16,
            max_nesting: 64,
            max_complexity: 5000,
            max_aliases: 30,
            max_root_fields: 10,
            max_batch_operations: 10,
            max_input_list: 100,
            max_response_bytes: 4 * 1024 * 1024,
            max_subscriptions_per_socket: 100,
            connection_init_timeout_secs: 10,
            request_timeout_secs: 10,
            max_in_flight: 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: Limits,
    }

    #[test]
    fn the_flag_defaults_are_the_documented_defaults() {
        let parsed = Cli::parse_from(["test"]).limits;
        let defaults = Limits::default();
        assert_eq!(format!("{parsed:?}"), format!("{defaults:?}"));
    }
}
