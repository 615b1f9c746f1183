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

/// Runs `profile-gateway ARGS` and returns its stdout, failing the test if it fails.
fn run(args: &[&str]) -> String {
    let output = Command::new(BIN).args(args).output().expect("the binary runs");
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn apikey_create_prints_the_key_alone_on_the_last_line_and_list_never_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    let created = run(&[
        "apikey",
        "create",
        "--tenant",
        "acme",
        "--scope",
        "write",
        "--label",
        "shop",
        "--database-url",
        &url,
    ]);
    let key = created.lines().last().unwrap();
    assert!(key.starts_with("pgw_") && !key.contains(' '), "{created}");
    let list = run(&["apikey", "list", "--database-url", &url]);
    assert!(
        !list.contains(key) && !list.contains(key.splitn(3, '_').nth(2).unwrap()),
        "{list}"
    );
    let row = list
        .lines()
        .find(|line| line.contains("acme"))
        .expect("the key is listed");
    assert!(row.contains("write") && row.contains("shop"), "{row}");
    let id = row.split_whitespace().next().unwrap();
    let revoked = run(&["apikey", "revoke", id, "--database-url", &url]);
    assert!(revoked.contains(id));
    let list = run(&["apikey", "list", "--database-url", &url]);
    let row = list.lines().find(|line| line.contains("acme")).unwrap();
    assert!(!row.trim_end().ends_with('-'), "revocation time missing: {row}");
    let again = Command::new(BIN)
        .args(["apikey", "revoke", id, "--database-url", &url])
        .output()
        .unwrap();
    assert!(!again.status.success(), "revoking twice should fail");
}

#[test]
fn apikey_create_refuses_a_bad_tenant_name_or_scope() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keys.db").display());
    for args in [
        ["--tenant", "has space", "--scope", "read"],
        ["--tenant", "acme", "--scope", "root"],
    ] {
        let output = Command::new(BIN)
            .args(["apikey", "create"])
            .args(args)
            .args(["--database-url", &url])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
    }
}

#[test]
fn tenant_set_changes_what_a_tenant_allows_browsers_and_show_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tenants.db").display());
    let set = run(&[
        "tenant",
        "set",
        "--tenant",
        "shop",
        "--allow-origin",
        "https://app.example.com",
        "--allow-origin",
        "http://127.0.0.1:18182",
        "--jwt-issuer",
        "https://auth.example.com/",
        "--jwt-jwks-url",
        "https://auth.example.com/.well-known/jwks.json",
        "--jwt-audience",
        "shop-app",
        "--database-url",
        &url,
    ]);
    assert!(set.contains("https://app.example.com http://127.0.0.1:18182"), "{set}");
    assert!(
        set.contains("https://auth.example.com/.well-known/jwks.json") && set.contains("shop-app"),
        "{set}"
    );
    // A part left out stays; --no-jwt removes the tokens' settings.
    let set = run(&["tenant", "set", "--tenant", "shop", "--no-jwt", "--database-url", &url]);
    assert!(
        set.contains("https://app.example.com") && set.contains("none (API keys only)"),
        "{set}"
    );
    let shown = run(&["tenant", "show", "--tenant", "shop", "--database-url", &url]);
    assert_eq!(shown, set);
    let missing = Command::new(BIN)
        .args(["tenant", "show", "--tenant", "nobody", "--database-url", &url])
        .output()
        .unwrap();
    assert!(!missing.status.success());
}

#[test]
fn tenant_set_refuses_bad_values_with_exit_code_2_and_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tenants.db").display());
    for (args, says) in [
        (vec!["--allow-origin", "app.example.com"], "is not an origin"),
        (
            vec!["--allow-origin", "https://app.example.com/path"],
            "is not an origin",
        ),
        (vec!["--allow-origin", "*"], "is not an origin"),
        (
            vec![
                "--jwt-issuer",
                "not a url",
                "--jwt-jwks-url",
                "https://a.example/jwks",
                "--jwt-audience",
                "x",
            ],
            "is not an http(s) URL",
        ),
        (vec!["--jwt-issuer", "https://a.example/"], "--jwt-jwks-url"),
        (vec!["--jwt-audience", "x"], "--jwt-issuer"),
    ] {
        let output = Command::new(BIN)
            .args(["tenant", "set", "--tenant", "shop"])
            .args(&args)
            .args(["--database-url", &url])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// A server started as a newcomer starts it: `serve` in an empty working directory.
struct Served {
    server: Server,
    dir: tempfile::TempDir,
    /// The admin key the first start printed.
    key: String,
    /// `http://HOST:PORT`, as the log names it.
    address: String,
    /// The server's log lines from here on.
    log: std::sync::mpsc::Receiver<String>,
}

fn serve() -> Served {
    serve_with(&[])
}

/// `serve` with `args` added.
fn serve_with(args: &[&str]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("LISTEN_ADDR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut stdout = BufReader::new(stdout).lines().map_while(Result::ok);
    let key = stdout
        .find(|line| line.starts_with("pgw_"))
        .expect("the first start prints an admin key");
    // Keep reading what the server writes, so that it never writes into a closed pipe.
    std::thread::spawn(move || stdout.for_each(drop));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut address = None;
    let mut stderr = BufReader::new(stderr).lines().map_while(Result::ok);
    for line in stderr.by_ref() {
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
    let (log_lines, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || stderr.for_each(|line| drop(log_lines.send(line))));
    let address = address.expect("the log names the GraphQL address");
    Served {
        server,
        dir,
        key,
        address,
        log,
    }
}

#[test]
fn serve_creates_its_database_and_a_first_key_and_logs_where_graphql_is() {
    let Served {
        dir, key, address, log, ..
    } = &serve();
    assert!(
        dir.path().join("profile-gateway.db").exists(),
        "no SQLite file in the working directory"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let request_id = runtime.block_on(async {
        let client = reqwest::Client::new();
        assert_eq!(
            client.get(format!("{address}/healthz")).send().await.unwrap().status(),
            200
        );
        let graphiql = client
            .get(format!("{address}/graphiql"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            graphiql.contains(key),
            "GraphiQL does not send the first key on a loopback server"
        );
        let query = serde_json::json!({"query": "mutation { createProfile(input: {}) { serialNumber } }"});
        let anonymous = client
            .post(format!("{address}/graphql"))
            .json(&query)
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 401);
        let response = client
            .post(format!("{address}/graphql"))
            .header("X-API-Key", key)
            .json(&query)
            .send()
            .await
            .unwrap();
        let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        let created: serde_json::Value = response.json().await.unwrap();
        assert_eq!(created["data"]["createProfile"]["serialNumber"], "1");
        assert_eq!(created["extensions"]["requestId"], request_id.as_str());
        request_id
    });
    let logged = std::iter::from_fn(|| log.recv_timeout(Duration::from_secs(10)).ok())
        .find(|line| line.contains(&request_id) && line.contains("request done"));
    assert!(logged.is_some(), "no log line names the request id {request_id}");
}

impl Served {
    /// Sends SIGTERM.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.server.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The exit status, once the process exits within `wait`.
    fn exit_status(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(status) = self.server.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

#[test]
fn sigterm_drains_in_flight_requests_closes_subscriptions_and_exits_0() {
    use futures::{SinkExt, StreamExt};
    use sea_orm::{SqliteTransactionMode, TransactionOptions, TransactionTrait};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let mut served = serve();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (address, key) = (served.address.clone(), served.key.clone());
    let database = format!("sqlite://{}", served.dir.path().join("profile-gateway.db").display());
    let client = reqwest::Client::new();
    let create = |client: reqwest::Client| {
        let (address, key) = (address.clone(), key.clone());
        async move {
            client
                .post(format!("{address}/graphql"))
                .header("X-API-Key", key)
                .json(&serde_json::json!({"query": "mutation { createProfile(input: {}) { id } }"}))
                .send()
                .await
        }
    };
    runtime.block_on(async {
        let mut request = format!("{}/graphql", address.replacen("http://", "ws://", 1))
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse().unwrap());
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let send = |message: serde_json::Value| Message::text(message.to_string());
        socket
            .send(send(
                serde_json::json!({"type": "connection_init", "payload": {"X-API-Key": key}}),
            ))
            .await
            .unwrap();
        let ack = socket.next().await.unwrap().unwrap();
        assert!(ack.to_text().unwrap().contains("connection_ack"), "{ack:?}");
        let subscription = serde_json::json!({"id": "1", "type": "subscribe",
            "payload": {"query": "subscription { profileChanged { version } }"}});
        socket.send(send(subscription)).await.unwrap();
        // Live once a change comes through.
        let mut live = false;
        for _ in 0..100 {
            create(client.clone()).await.unwrap();
            if let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_millis(100), socket.next()).await {
                assert!(message.to_text().unwrap().contains("next"), "{message:?}");
                live = true;
                break;
            }
        }
        assert!(live, "the subscription never went live");
        while tokio::time::timeout(Duration::from_millis(200), socket.next())
            .await
            .is_ok()
        {}

        // An in-flight request: another connection holds SQLite's write lock.
        let other = profile_gateway::db::connect(&database).await.unwrap();
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        let lock = other.begin_with_options(options).await.unwrap();
        let in_flight = tokio::spawn(create(client.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        served.terminate();

        // The subscription ends with a close frame saying the server is going away.
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match socket.next().await {
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            }
        })
        .await
        .expect("the socket closes");
        assert_eq!(closed, Some(1001));

        // The in-flight request still finishes once it can.
        lock.rollback().await.unwrap();
        let finished = in_flight.await.unwrap().expect("the in-flight request is answered");
        assert_eq!(finished.status(), 200);
        let body: serde_json::Value = finished.json().await.unwrap();
        assert!(body["data"]["createProfile"]["id"].is_string(), "{body}");
    });
    let status = served.exit_status(Duration::from_secs(10)).expect("the server exits");
    assert!(status.success(), "{status:?}");
    // The log thread writes out what was queued before the process ends.
    let last = std::iter::from_fn(|| served.log.recv_timeout(Duration::from_secs(10)).ok()).last();
    assert!(last.as_deref().is_some_and(|line| line.contains("stopped")), "{last:?}");
}

#[test]
fn sigterm_exits_within_the_shutdown_timeout_whatever_clients_do() {
    use std::io::Write;
    let mut served = serve_with(&["--shutdown-timeout-secs", "2"]);
    let address = served.address.trim_start_matches("http://").to_owned();
    // A request whose body never arrives, and one whose headers are half sent.
    let mut stuck = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stuck,
        "POST /graphql HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        served.key
    )
    .unwrap();
    let mut half = std::net::TcpStream::connect(&address).unwrap();
    write!(half, "GET /healthz HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    served.terminate();
    let status = served.exit_status(Duration::from_secs(10)).expect("the server exits");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    drop((stuck, half));
}

#[test]
fn a_server_that_cannot_open_its_database_says_why_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("no-such-folder/profiles.db").display());
    let output = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
        .env("RUST_LOG", "info")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .lines()
            .any(|line| line.contains("ERROR") && line.contains("unable to open database file")),
        "{stderr}"
    );
}

#[test]
fn a_trusted_documents_manifest_that_does_not_check_out_stops_serve_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("profiles.db").display());
    let wrong = dir.path().join("wrong.json");
    std::fs::write(
        &wrong,
        r#"{"0000000000000000000000000000000000000000000000000000000000000000": "{ __typename }"}"#,
    )
    .unwrap();
    let not_json = dir.path().join("not-json.json");
    std::fs::write(&not_json, "[").unwrap();
    for (manifest, says) in [(&wrong, "does not hash to it"), (&not_json, "not a JSON object")] {
        let output = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                &url,
                "--trusted-documents",
            ])
            .arg(manifest)
            .output()
            .expect("the binary runs");
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
}

/// graphql-http's audits of the GraphQL over HTTP specification, against the real binary.
/// `.ci/run` installs them and sets REQUIRE_GRAPHQL_JS, so that a missing install fails.
#[test]
fn the_graphql_over_http_audits_pass_every_must_and_should() {
    let checker = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/graphql-js");
    if !std::path::Path::new(checker).join("node_modules/graphql-http").exists() {
        assert!(
            std::env::var_os("REQUIRE_GRAPHQL_JS").is_none(),
            "REQUIRE_GRAPHQL_JS is set but graphql-http is missing: run `npm ci --prefix tests/graphql-js`"
        );
        println!("skipped: graphql-http is not installed (`npm ci --prefix tests/graphql-js`)");
        return;
    }
    let served = serve();
    let output = Command::new("node")
        .arg(format!("{checker}/audit-server.mjs"))
        .arg(format!("{}/graphql", served.address))
        .arg(&served.key)
        .output()
        .expect("node runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
}
