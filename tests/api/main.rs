//! Integration tests: each starts the gateway on port 0 over a fresh database and speaks HTTP.

mod helpers;

mod auth;
mod bad_input;
mod browser;
mod chromium;
mod concurrency;
mod custom_fields;
mod dialects;
mod edge;
mod faults;
mod fuzz;
mod graphiql;
mod history;
mod hostile;
mod idempotency;
mod profiles;
mod rates;
mod readme;
mod replicas;
mod sockets;
mod subscriptions;
mod tokens;
mod trusted;
mod written;
