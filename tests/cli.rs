//! The `profile-gateway` binary as a newcomer runs it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_profile-gateway");

/// Kills the server when a test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

#[test]
fn print_schema_prints_what_schema_graphql_holds() {
    let output = Command::new(BIN).arg("print-schema").output().expect("the binary runs");
    assert!(output.status.success());
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql")).unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), committed);
}

#[test]
fn migrate_creates_and_migrates_a_sqlite_database_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("migrated.db").display());
    for _ in 0..2 {
        let status = Command::new(BIN)
            .args(["migrate", "--database-url", &url])
            .status()
            .expect("the binary runs");
        assert!(status.success(), "migrate failed");
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tables = runtime.block_on(async {
        use sea_orm::{ConnectionTrait, Statement};
        let db = sea_orm::Database::connect(&url).await.unwrap();
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
            ))
            .await
            .unwrap();
        rows.iter()
            .map(|row| row.try_get::<String>("", "name").unwrap())
            .collect::<Vec<_>>()
    });
    for table in [
        "custom_field_definitions",
        "custom_field_values",
        "profile_groups",
        "profile_tags",
        "profiles",
        "tenants",
    ] {
        assert!(tables.iter().any(|t| t == table), "{table} missing from {tables:?}");
    }
}

#[test]
fn serve_creates_its_database_in_the_working_directory_and_logs_where_graphql_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("LISTEN_ADDR")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let stderr = child.stderr.take().unwrap();
    let _server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut address = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split("GraphQL at ").nth(1) {
            assert!(line.contains("GraphiQL at http://"), "{line}");
            address = rest
                .split_whitespace()
                .next()
                .map(|url| url.trim_end_matches(',').trim_end_matches("/graphql").to_owned());
            break;
        }
        assert!(Instant::now() < deadline, "the server did not say where it listens");
    }
    let address = address.expect("the log names the GraphQL address");
    assert!(
        dir.path().join("profile-gateway.db").exists(),
        "no SQLite file in the working directory"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let health = reqwest::get(format!("{address}/healthz")).await.unwrap();
        assert_eq!(health.status(), 200);
        let client = reqwest::Client::new();
        let created: serde_json::Value = client
            .post(format!("{address}/graphql"))
            .json(&serde_json::json!({"query": "mutation { createProfile(input: {}) { serialNumber } }"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(created["data"]["createProfile"]["serialNumber"], "1");
    });
}
