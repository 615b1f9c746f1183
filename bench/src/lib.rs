//! profile-gateway's benchmark: profile-gateway on PostgreSQL and on SQLite against
//! PostGraphile v5 (its write with and without a change notice in the transaction), a raw SQL
//! baseline and a plain-axum HTTP floor.
//!
//! Layout:
//!
//! - [`load`]: the load generator: connections as fast as they go, or a fixed request rate.
//! - [`clients`]: how each contender is asked for a request, and how its answer is checked.
//! - [`reference`] and `sql/reference.sql`: the SQL of the contenders that are not
//!   profile-gateway; [`floor`]: the HTTP floor's routes over it.
//! - this module: setting the contenders up over the same seeded data, running the rounds,
//!   and the report.
//!
//! Every PostgreSQL contender works on one freshly seeded database (profile-gateway's own
//! tables, filled by its own store), so all of them read and write the same data; the SQLite
//! contender has its own file with the same seed. Contenders take turns (A B A B …) in every
//! round; each turn warms up, then measures every workload at each connection count
//! (throughput) and at half the first count's throughput (latency at a fixed rate). The report
//! gives the median over rounds with the spread, as markdown and CSV.

pub mod clients;
pub mod floor;
pub mod load;
pub mod reference;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::Json;
use profile_gateway::auth::{Keys, Scope};
use profile_gateway::dialects::{CreateProfileInput, TagInput};
use profile_gateway::domain::ChangeSet;
use profile_gateway::http::{self, EdgeConfig};
use profile_gateway::store::{Actor, Store};
use rand::Rng;
use sea_orm::ConnectionTrait;
use sea_orm::sqlx::{self, PgPool, postgres::PgPoolOptions};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

use load::{Client, Op, Sample, Workload};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The contenders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Kind {
    /// profile-gateway on PostgreSQL.
    GatewayPostgres,
    /// profile-gateway on PostgreSQL, each request with an end user's token (the person whose
    /// profile it reads or writes) instead of an API key.
    GatewayPostgresToken,
    /// profile-gateway on SQLite.
    GatewaySqlite,
    /// PostGraphile v5 (Node) over the same tables, its write a PostgreSQL function that sends
    /// a change notice in its transaction.
    Postgraphile,
    /// PostGraphile v5 as above, its write the same function without the change notice.
    PostgraphileQuiet,
    /// Plain axum routes running the reference SQL.
    Floor,
    /// The reference SQL from this process: no HTTP, no GraphQL.
    Raw,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::GatewayPostgres,
        Kind::GatewayPostgresToken,
        Kind::GatewaySqlite,
        Kind::Postgraphile,
        Kind::PostgraphileQuiet,
        Kind::Floor,
        Kind::Raw,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::GatewayPostgres => "profile-gateway (PostgreSQL)",
            Kind::GatewayPostgresToken => "profile-gateway (PostgreSQL, tokens)",
            Kind::GatewaySqlite => "profile-gateway (SQLite)",
            Kind::Postgraphile => "PostGraphile v5",
            Kind::PostgraphileQuiet => "PostGraphile v5 (no notice)",
            Kind::Floor => "HTTP floor (axum + SQL)",
            Kind::Raw => "raw SQL (no HTTP)",
        }
    }

    pub fn on_postgres(self) -> bool {
        self != Kind::GatewaySqlite
    }
}

/// The workloads (see [`workloads`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum WorkloadId {
    /// A random profile with its tags and attributes.
    W1,
    /// A scrip update of a random profile.
    W2,
    /// A scrip update of one hot profile.
    W3,
    /// 50 profiles with their tags.
    W4,
}

impl WorkloadId {
    pub const ALL: [WorkloadId; 4] = [WorkloadId::W1, WorkloadId::W2, WorkloadId::W3, WorkloadId::W4];
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub contenders: Vec<Kind>,
    pub workloads: Vec<WorkloadId>,
    /// A PostgreSQL URL whose server may create the benchmark's database.
    pub postgres_url: String,
    /// The gateway binary to start; `None` serves profile-gateway (and the floor) in process.
    pub server_binary: Option<PathBuf>,
    /// The HTTP floor's binary; `None` serves it in process.
    pub floor_binary: Option<PathBuf>,
    /// The folder of `postgraphile/server.mjs` with its `node_modules` installed.
    pub postgraphile_dir: PathBuf,
    pub profiles: usize,
    pub rounds: usize,
    /// The first turn's warm-up; later turns warm up for at most [`REWARM`].
    pub warmup: Duration,
    pub duration: Duration,
    pub connections: Vec<usize>,
    /// Where the report goes.
    pub out: PathBuf,
}

/// Warm-up of every turn after a contender's first: its process, JIT and caches are warm
/// already; this refills connection pools after the other contenders' turns.
const REWARM: Duration = Duration::from_secs(3);

/// One measurement of one contender.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub contender: Kind,
    pub workload: &'static str,
    /// `c16`, `c64`, … or `rate`.
    pub mode: String,
    pub sample: Sample,
    /// The server's and the database's CPU seconds per successful request, when measurable.
    pub server_cpu_per_request: Option<f64>,
    pub database_cpu_per_request: Option<f64>,
    /// Statements PostgreSQL executed per request (pg_stat_statements), when measurable.
    pub round_trips: Option<f64>,
}

/// A running contender.
struct Contender {
    kind: Kind,
    client: Arc<dyn Client>,
    ids: Arc<Vec<Arc<str>>>,
    process: Option<tokio::process::Child>,
}

/// A seeded database.
struct Seeded {
    url: String,
    ids: Arc<Vec<Arc<str>>>,
    tenant: Uuid,
    api_key: String,
    /// A token of each profile's person, by the profile's id.
    tokens: Arc<std::collections::HashMap<Arc<str>, String>>,
}

/// The workloads, by name: W1 reads a random profile with its tags and attributes; W2 merges
/// two attribute keys and replaces the tags of a random profile; W3 does the same to one hot
/// profile; W4 lists 50 profiles with their tags.
fn workloads(ids: &Arc<Vec<Arc<str>>>) -> Vec<(WorkloadId, &'static str, Workload)> {
    let random = {
        let ids = ids.clone();
        move || ids[rand::rng().random_range(0..ids.len())].clone()
    };
    let hot = ids[0].clone();
    vec![
        (WorkloadId::W1, "W1 read", {
            let random = random.clone();
            Arc::new(move |_| Op::Read { id: random() })
        }),
        (
            WorkloadId::W2,
            "W2 update",
            Arc::new(move |n| Op::Update { id: random(), n }),
        ),
        (
            WorkloadId::W3,
            "W3 hot update",
            Arc::new(move |n| Op::Update { id: hot.clone(), n }),
        ),
        (WorkloadId::W4, "W4 list", Arc::new(|_| Op::List)),
    ]
}

/// Creates `count` profiles, each with 3 tags and 5 attributes, through the gateway's own
/// store, an API key, and a token of each profile's person (the tenant trusts an issuer this
/// process serves); on PostgreSQL also the reference SQL's function.
async fn seed(url: &str, count: usize) -> Result<Seeded, BoxError> {
    let db = profile_gateway::db::connect(url).await?;
    profile_gateway::db::migrate(&db).await?;
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        db.execute_unprepared(reference::FUNCTION).await?;
    }
    let store = Store::new(db);
    let tenant = store.ensure_tenant(http::DEFAULT_TENANT).await?;
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let input = CreateProfileInput {
            external_id: Some(format!("bench-{n}")),
            first_name: Some(format!("Person {n}")),
            attributes: Some(Json(
                json!({"plan": "basic", "region": "eu", "visits": n, "score": n % 100, "segment": n % 7}),
            )),
            tags: Some(
                (0..3)
                    .map(|t| TagInput {
                        key: format!("tag{t}"),
                        value: format!("v{}", (n + t) % 10),
                    })
                    .collect(),
            ),
            ..Default::default()
        };
        let change = ChangeSet::try_from(input).map_err(profile_gateway::error::Error::from)?;
        let created = store.create(tenant, &change, &Actor::default()).await?;
        ids.push(Arc::from(created.profile.id.to_string()));
    }
    let api_key = Keys::new(store.clone())
        .create(http::DEFAULT_TENANT, Scope::Write, Some("bench".into()))
        .await?
        .key;
    let tokens = issue_tokens(&store, &ids).await?;
    // Statistics and a checkpoint now, so that no autovacuum or checkpoint of the fresh rows
    // runs (and takes CPU) during a measurement. Not ANALYZE on SQLite: its bundled build has
    // STAT4, with which statistics make every statement whose key is bound anew re-prepare.
    let maintenance: &[&str] = match store.connection().get_database_backend() {
        sea_orm::DbBackend::Postgres => &["VACUUM (ANALYZE)", "CHECKPOINT"],
        _ => &["PRAGMA wal_checkpoint(TRUNCATE)"],
    };
    for statement in maintenance {
        store.connection().execute_unprepared(statement).await?;
    }
    store.connection().clone().close().await?;
    Ok(Seeded {
        url: url.to_owned(),
        ids: Arc::new(ids),
        tenant: tenant.0,
        api_key,
        tokens: Arc::new(tokens),
    })
}

/// The test key that signs the benchmark's tokens (EdDSA), and its public half.
const SIGNING_KEY: &str = include_str!("../../tests/fixtures/jwt/ed25519.pem");
const SIGNING_KEY_X: &str = include_str!("../../tests/fixtures/jwt/ed25519.x");
const ISSUER: &str = "https://bench.invalid/";

/// Serves the signing key's JWKS from this process, makes the default tenant trust its
/// issuer, and signs a day-long token for the person of each profile of `ids` (whose
/// externalIds `seed` made `bench-<n>`).
async fn issue_tokens(
    store: &Store,
    ids: &[Arc<str>],
) -> Result<std::collections::HashMap<Arc<str>, String>, BoxError> {
    let jwks =
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": SIGNING_KEY_X.trim(), "kid": "bench", "alg": "EdDSA"}]});
    let jwks_url = format!(
        "{}/jwks.json",
        serve_in_process(axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        ))
        .await?
    );
    let jwt = profile_gateway::tenant::Jwt {
        issuer: ISSUER.to_owned(),
        jwks_url,
        audience: "bench".to_owned(),
    };
    let change = profile_gateway::tenant::Change {
        allowed_origins: None,
        jwt: Some(Some(jwt)),
    };
    profile_gateway::tenant::Tenants::cached(store.clone(), Duration::ZERO)
        .set(http::DEFAULT_TENANT, change)
        .await?;
    let key = jsonwebtoken::EncodingKey::from_ed_pem(SIGNING_KEY.as_bytes())?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("bench".to_owned());
    let now = jsonwebtoken::get_current_timestamp();
    ids.iter()
        .enumerate()
        .map(|(n, id)| {
            let claims = json!({"iss": ISSUER, "aud": "bench", "sub": format!("bench-{n}"), "exp": now + 86_400});
            Ok((id.clone(), jsonwebtoken::encode(&header, &claims, &key)?))
        })
        .collect()
}

/// Starts `command` and waits for the line, on stdout or stderr as `on_stderr` says, from
/// which `address` reads where it listens; keeps draining its output.
async fn spawn(
    mut command: tokio::process::Command,
    on_stderr: bool,
    address: impl Fn(&str) -> Option<String>,
) -> Result<(String, tokio::process::Child), BoxError> {
    let (watched, other) = if on_stderr {
        (Stdio::piped(), Stdio::null())
    } else {
        (Stdio::piped(), Stdio::inherit())
    };
    if on_stderr {
        command.stderr(watched).stdout(other);
    } else {
        command.stdout(watched).stderr(other);
    }
    let mut child = command.kill_on_drop(true).spawn()?;
    let output: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if on_stderr {
        Box::new(child.stderr.take().ok_or("no stderr")?)
    } else {
        Box::new(child.stdout.take().ok_or("no stdout")?)
    };
    let mut lines = BufReader::new(output).lines();
    let found = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(found) = address(&line) {
                return Ok::<_, std::io::Error>(Some(found));
            }
        }
        Ok(None)
    })
    .await;
    let found = match found {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return Err("the server exited before it said where it listens".into()),
        Ok(Err(err)) => return Err(err.into()),
        Err(_) => return Err("the server did not say where it listens within 2 minutes".into()),
    };
    // Keep draining the output so the server never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((found, child))
}

fn listening_on(line: &str) -> Option<String> {
    let port = line.strip_prefix("listening on ")?.trim();
    Some(format!("http://127.0.0.1:{port}"))
}

async fn pool(url: &str) -> Result<PgPool, BoxError> {
    // As many connections as profile-gateway's pool (sqlx's default of 10).
    Ok(pool_options(10).connect(url).await?)
}

/// The raw baseline's and the HTTP floor's pool: `max` connections, pinged before use only after
/// a second idle, exactly as profile-gateway's pool (`src/db.rs`), so that no contender pays a
/// round trip per query that another does not.
pub fn pool_options(max: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= Duration::from_secs(1) {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

async fn start(kind: Kind, seeded: &Seeded, options: &Options) -> Result<Contender, BoxError> {
    let list_len = seeded.ids.len().min(50);
    let (client, process) = match kind {
        Kind::GatewayPostgres | Kind::GatewayPostgresToken | Kind::GatewaySqlite => {
            let (address, process) = match &options.server_binary {
                Some(binary) => {
                    let mut command = tokio::process::Command::new(binary);
                    command
                        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &seeded.url])
                        .env("RUST_LOG", "info");
                    let (address, child) = spawn(command, true, |line| {
                        let rest = line.split("GraphQL at ").nth(1)?;
                        Some(rest.split(',').next()?.trim_end_matches("/graphql").to_owned())
                    })
                    .await?;
                    (address, Some(child))
                }
                None => {
                    let store = Store::new(profile_gateway::db::connect(&seeded.url).await?);
                    let router = http::router(store, EdgeConfig::default())?;
                    (serve_in_process(router).await?, None)
                }
            };
            let client = match kind {
                // A person lists only their own profile.
                Kind::GatewayPostgresToken => clients::Gateway::with_tokens(&address, seeded.tokens.clone(), 1),
                _ => clients::Gateway::client(&address, &seeded.api_key, list_len),
            };
            (client, process)
        }
        Kind::Postgraphile | Kind::PostgraphileQuiet => {
            let dir = &options.postgraphile_dir;
            let node = dir.join("node_modules/.bin/node");
            if !node.exists() {
                return Err(format!(
                    "{} is missing: run `npm ci --prefix {}` (bench/run does)",
                    node.display(),
                    dir.display()
                )
                .into());
            }
            // Absolute, as the child runs in `dir`.
            let mut command = tokio::process::Command::new(std::path::absolute(&node)?);
            command
                .arg("server.mjs")
                .current_dir(dir)
                .env("NODE_ENV", "production")
                .env("DATABASE_URL", &seeded.url)
                .env("PORT", "0");
            let (address, child) = spawn(command, false, listening_on).await?;
            let notice = kind == Kind::Postgraphile;
            (
                clients::PostGraphile::client(&address, seeded.tenant, list_len, notice),
                Some(child),
            )
        }
        Kind::Floor => match &options.floor_binary {
            Some(binary) => {
                let mut command = tokio::process::Command::new(binary);
                command.args(["--database-url", &seeded.url]);
                let (address, child) = spawn(command, false, listening_on).await?;
                (clients::Floor::client(&address, seeded.tenant, list_len), Some(child))
            }
            None => {
                let address = serve_in_process(floor::router(pool(&seeded.url).await?)).await?;
                (clients::Floor::client(&address, seeded.tenant, list_len), None)
            }
        },
        Kind::Raw => (
            clients::Raw::client(pool(&seeded.url).await?, seeded.tenant, list_len),
            None,
        ),
    };
    Ok(Contender {
        kind,
        client,
        ids: seeded.ids.clone(),
        process,
    })
}

async fn serve_in_process(router: axum::Router) -> Result<String, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            eprintln!("an in-process server stopped: {err}");
        }
    });
    Ok(address)
}

impl Contender {
    async fn stop(mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill().await;
        }
    }

    fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(|p| p.id())
    }
}

/// The benchmark's PostgreSQL database, dropped at the end.
struct Database {
    admin_url: String,
    name: String,
    url: String,
}

impl Database {
    async fn create(admin_url: &str) -> Result<Self, BoxError> {
        let name = format!("pgw_bench_{}", Uuid::new_v4().simple());
        let admin = sea_orm::Database::connect(admin_url).await?;
        admin
            .execute_unprepared(&format!(r#"CREATE DATABASE "{name}""#))
            .await?;
        admin.close().await?;
        let (without_query, query) = admin_url.split_once('?').unwrap_or((admin_url, ""));
        let (base, _) = without_query
            .rsplit_once('/')
            .ok_or("a PostgreSQL URL ends with /DATABASE")?;
        // Every contender connects alike; unless the URL says otherwise, in plain TCP (the
        // drivers disagree on whether to try TLS first, and on loopback it buys nothing).
        let query = match query {
            "" => "sslmode=disable",
            query => query,
        };
        Ok(Database {
            admin_url: admin_url.to_owned(),
            url: format!("{base}/{name}?{query}"),
            name,
        })
    }

    async fn drop(self) {
        if let Ok(admin) = sea_orm::Database::connect(&self.admin_url).await {
            let _ = admin
                .execute_unprepared(&format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name))
                .await;
        }
    }
}

/// Statement counts from pg_stat_statements, when the server loads it.
struct StatementCounter {
    admin: PgPool,
    database: String,
}

impl StatementCounter {
    /// `Err` says why statements cannot be counted on this server.
    async fn new(admin_url: &str, database: &str) -> Result<Self, String> {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(admin_url)
            .await
            .map_err(|err| err.to_string())?;
        let loaded: Option<String> = sqlx::query_scalar("SHOW shared_preload_libraries")
            .fetch_optional(&admin)
            .await
            .map_err(|err| err.to_string())?;
        if !loaded.is_some_and(|libraries| libraries.contains("pg_stat_statements")) {
            return Err(
                "pg_stat_statements is not in shared_preload_libraries (bench/run adds it on a local server)".into(),
            );
        }
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&admin)
            .await
            .map_err(|err| err.to_string())?;
        Ok(StatementCounter {
            admin,
            database: database.to_owned(),
        })
    }

    async fn reset(&self) {
        if let Err(err) = sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&self.admin)
            .await
        {
            eprintln!("could not reset pg_stat_statements: {err}");
        }
    }

    /// Statements executed in the benchmark's database since the last reset.
    async fn count(&self) -> Option<f64> {
        sqlx::query_scalar::<_, f64>(
            "SELECT coalesce(sum(s.calls), 0)::float8 FROM pg_stat_statements AS s \
             JOIN pg_database AS d ON d.oid = s.dbid WHERE d.datname = $1",
        )
        .bind(&self.database)
        .fetch_one(&self.admin)
        .await
        .map_err(|err| eprintln!("could not read pg_stat_statements: {err}"))
        .ok()
    }
}

/// CPU seconds a process has used, from /proc (Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_seconds(pid, 11)
}

/// CPU seconds of a process's exited and reaped children.
fn reaped_children_cpu_seconds(pid: u32) -> Option<f64> {
    stat_seconds(pid, 13)
}

/// The sum of two adjacent tick counters of `/proc/PID/stat` (user and system time), in
/// seconds; `first` counts the fields after the command name from 0.
fn stat_seconds(pid: u32, first: usize) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(first)?.parse::<f64>().ok()? + fields.get(first + 1)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// Ticks per second of /proc's CPU counters, asked of `getconf` once.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::LazyLock<f64> = std::sync::LazyLock::new(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    });
    *TICKS
}

/// CPU seconds of every PostgreSQL process on this machine, those that have exited included:
/// a backend that ends (a pool closing a connection) leaves its CPU to the postmaster's
/// reaped-children count, so the total never goes backwards.
fn postgres_cpu_seconds() -> Option<f64> {
    let mut total = 0.0;
    let mut found = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            found = true;
            total += cpu_seconds(pid).unwrap_or(0.0) + reaped_children_cpu_seconds(pid).unwrap_or(0.0);
        }
    }
    found.then_some(total)
}

/// The peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Sets the contenders up, runs every round, stops them and writes the report.
pub async fn run(options: &Options) -> Result<Report, BoxError> {
    let mut notes = Vec::new();
    let on_postgres = options.contenders.iter().any(|kind| kind.on_postgres());
    let database = match on_postgres {
        true => Some(Database::create(&options.postgres_url).await?),
        false => None,
    };
    let result = run_on(options, database.as_ref(), &mut notes).await;
    if let Some(database) = database {
        database.drop().await;
    }
    let (measurements, peak_rss) = result?;
    let report = Report {
        measurements,
        peak_rss,
        options: options.clone(),
        postgres_version: match on_postgres {
            true => postgres_version(&options.postgres_url).await,
            false => None,
        },
        notes,
    };
    report.write(&options.out)?;
    Ok(report)
}

type Measured = (Vec<Measurement>, BTreeMap<Kind, f64>);

async fn run_on(options: &Options, database: Option<&Database>, notes: &mut Vec<String>) -> Result<Measured, BoxError> {
    let profiles = options.profiles.max(1);
    let mut seeded = BTreeMap::new();
    if let Some(database) = database {
        eprintln!("seeding PostgreSQL with {profiles} profiles");
        seeded.insert(true, seed(&database.url, profiles).await?);
    }
    let sqlite_dir = tempfile::Builder::new().prefix("pgw-bench-").tempdir()?;
    if options.contenders.contains(&Kind::GatewaySqlite) {
        eprintln!("seeding SQLite with {profiles} profiles");
        let url = format!("sqlite://{}", sqlite_dir.path().join("bench.db").display());
        seeded.insert(false, seed(&url, profiles).await?);
    }
    let counter = match database {
        Some(database) => match StatementCounter::new(&database.admin_url, &database.name).await {
            Ok(counter) => Some(counter),
            Err(why) => {
                notes.push(format!("SQL round trips not measured: {why}."));
                None
            }
        },
        None => None,
    };
    let mut contenders = Vec::new();
    for &kind in &options.contenders {
        eprintln!("starting {}", kind.name());
        let data = seeded
            .get(&kind.on_postgres())
            .ok_or("no seeded database for a contender")?;
        contenders.push(start(kind, data, options).await?);
    }
    let mut measurements = Vec::new();
    for round in 1..=options.rounds {
        for contender in &contenders {
            eprintln!("round {round}: {}", contender.kind.name());
            let mut workloads = workloads(&contender.ids);
            workloads.retain(|(id, ..)| options.workloads.contains(id));
            let warmup = match round {
                1 => options.warmup,
                _ => options.warmup.min(REWARM),
            };
            // Every workload warms up, so that each code path is compiled and cached.
            let share = warmup / workloads.len() as u32;
            for (_, name, workload) in &workloads {
                let warm = load::closed_loop(&contender.client, workload, options.connections[0], share).await;
                if warm.ok == 0 {
                    return Err(format!("{} answered no {name} request during warm-up", contender.kind.name()).into());
                }
            }
            for (_, name, workload) in &workloads {
                let mut first_throughput = None;
                for &connections in &options.connections {
                    let mut measured = measure(contender, counter.as_ref(), || {
                        load::closed_loop(&contender.client, workload, connections, options.duration)
                    })
                    .await;
                    first_throughput.get_or_insert(measured.sample.throughput());
                    measured.workload = name;
                    measured.mode = format!("c{connections}");
                    measurements.push(measured);
                }
                let rate = (first_throughput.unwrap_or(1.0) / 2.0).max(1.0);
                // As many connections as the most the throughput runs used.
                let senders = options.connections.iter().copied().max().unwrap_or(1);
                let mut measured = measure(contender, counter.as_ref(), || {
                    load::open_loop(&contender.client, workload, rate, options.duration, senders)
                })
                .await;
                measured.workload = name;
                measured.mode = RATE.to_owned();
                measurements.push(measured);
            }
        }
    }
    let peak_rss = contenders
        .iter()
        .filter_map(|c| Some((c.kind, peak_rss_mib(c.pid()?)?)))
        .collect();
    for contender in contenders {
        contender.stop().await;
    }
    Ok((measurements, peak_rss))
}

/// The fixed-rate measurement's mode.
pub const RATE: &str = "rate ½ max";

/// Runs one measurement, with the CPU the server and PostgreSQL spent on it and the
/// statements PostgreSQL ran, per request.
///
/// The machine's dirty pages are written out first ([`write_out`]), so that no measurement
/// pays for the writes of the one before it.
async fn measure<F, Fut>(contender: &Contender, counter: Option<&StatementCounter>, run: F) -> Measurement
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Sample>,
{
    write_out().await;
    let pid = contender.pid();
    let counter = counter.filter(|_| contender.kind.on_postgres());
    let on_postgres = contender.kind.on_postgres();
    if let Some(counter) = counter {
        counter.reset().await;
    }
    let server_before = pid.and_then(cpu_seconds);
    let database_before = on_postgres.then(postgres_cpu_seconds).flatten();
    let sample = run().await;
    let server_after = pid.and_then(cpu_seconds);
    let database_after = on_postgres.then(postgres_cpu_seconds).flatten();
    let requests = (sample.ok + sample.failed).max(1) as f64;
    let per_request = |before: Option<f64>, after: Option<f64>| Some((after? - before?) / sample.ok.max(1) as f64);
    let round_trips = match counter {
        Some(counter) => counter.count().await.map(|count| count / requests),
        None => None,
    };
    Measurement {
        contender: contender.kind,
        workload: "",
        mode: String::new(),
        server_cpu_per_request: per_request(server_before, server_after),
        database_cpu_per_request: per_request(database_before, database_after),
        round_trips,
        sample,
    }
}

/// Writes every dirty page of the machine's file systems to disk (`sync(2)`) and waits for it.
///
/// The kernel writes a dirty page back about 30 s after it was dirtied
/// (`vm.dirty_expire_centisecs`), in batches. PostgreSQL leaves its table and index writes in
/// the page cache until a checkpoint, so what an update run at full speed dirties (about 100 MB
/// in one traced run) is written back in the middle of whichever measurement runs 30 s later,
/// often a fixed-rate one, of the same contender or of the next. The batch queues ahead of the
/// commits' WAL flushes: one traced batch held every commit for 32 ms (step 48 of
/// `bench/results/README.md`). Written out before each measurement, every measurement starts
/// from the same clean page cache, and which contender pays for the writes of the measurement
/// before it no longer depends on the order they run in.
async fn write_out() {
    if let Err(err) = tokio::task::spawn_blocking(rustix::fs::sync).await {
        eprintln!("could not write the page cache out before a measurement: {err}");
    }
}

async fn postgres_version(url: &str) -> Option<String> {
    let pool = PgPoolOptions::new().max_connections(1).connect(url).await.ok()?;
    sqlx::query_scalar("SELECT version()").fetch_one(&pool).await.ok()
}

/// The results of a run.
pub struct Report {
    pub measurements: Vec<Measurement>,
    /// Peak resident memory of each contender that runs as its own process, in MiB.
    pub peak_rss: BTreeMap<Kind, f64>,
    pub options: Options,
    pub postgres_version: Option<String>,
    /// What could not be measured, and why.
    pub notes: Vec<String>,
}

/// The median over rounds of one contender, workload and mode.
#[derive(Debug, Clone)]
pub struct Summary {
    pub contender: Kind,
    pub workload: &'static str,
    pub mode: String,
    pub throughput: f64,
    pub throughput_min: f64,
    pub throughput_max: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Over all rounds.
    pub failures: u64,
    pub server_cpu_ms: Option<f64>,
    pub database_cpu_ms: Option<f64>,
    pub round_trips: Option<f64>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn optional_median(values: Vec<f64>) -> Option<f64> {
    (!values.is_empty()).then(|| median(values))
}

/// One of issue #5's targets, judged on this run's medians.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub target: String,
    pub measured: String,
    /// `None` when a figure it needs was not measured.
    pub met: Option<bool>,
}

impl Report {
    pub fn summaries(&self) -> Vec<Summary> {
        let mut groups: BTreeMap<(Kind, &str, String), Vec<&Measurement>> = BTreeMap::new();
        for m in &self.measurements {
            groups
                .entry((m.contender, m.workload, m.mode.clone()))
                .or_default()
                .push(m);
        }
        groups
            .into_iter()
            .map(|((contender, workload, mode), ms)| {
                let of = |f: &dyn Fn(&Measurement) -> f64| median(ms.iter().map(|m| f(m)).collect());
                let optional =
                    |f: &dyn Fn(&Measurement) -> Option<f64>| optional_median(ms.iter().filter_map(|m| f(m)).collect());
                let throughputs: Vec<f64> = ms.iter().map(|m| m.sample.throughput()).collect();
                Summary {
                    contender,
                    workload,
                    mode,
                    throughput: median(throughputs.clone()),
                    throughput_min: throughputs.iter().copied().fold(f64::INFINITY, f64::min),
                    throughput_max: throughputs.iter().copied().fold(0.0, f64::max),
                    p50_ms: of(&|m| m.sample.latency_ms(0.5)),
                    p99_ms: of(&|m| m.sample.latency_ms(0.99)),
                    p999_ms: of(&|m| m.sample.latency_ms(0.999)),
                    failures: ms.iter().map(|m| m.sample.failed).sum(),
                    server_cpu_ms: optional(&|m| m.server_cpu_per_request).map(|s| s * 1000.0),
                    database_cpu_ms: optional(&|m| m.database_cpu_per_request).map(|s| s * 1000.0),
                    round_trips: optional(&|m| m.round_trips),
                }
            })
            .collect()
    }

    /// The target figures, judged.
    pub fn verdicts(&self) -> Vec<Verdict> {
        let summaries = self.summaries();
        let find = |kind: Kind, workload: &str, mode: &str| {
            summaries
                .iter()
                .find(|s| s.contender == kind && s.workload == workload && s.mode == mode)
        };
        let first = self
            .options
            .connections
            .first()
            .map(|c| format!("c{c}"))
            .unwrap_or_default();
        let most = self
            .options
            .connections
            .last()
            .map(|c| format!("c{c}"))
            .unwrap_or_default();
        let mut verdicts = Vec::new();
        let mut judge = |target: String, measured: Option<(String, bool)>| {
            verdicts.push(match measured {
                Some((measured, met)) => Verdict {
                    target,
                    measured,
                    met: Some(met),
                },
                None => Verdict {
                    target,
                    measured: "not measured".into(),
                    met: None,
                },
            });
        };
        let gateway = Kind::GatewayPostgres;
        for (workload, factor) in [("W1 read", 2.0), ("W2 update", 1.5)] {
            judge(
                format!("{workload}: ≥ {factor}× PostGraphile's req/s at {first}, p99 no worse"),
                find(gateway, workload, &first)
                    .zip(find(Kind::Postgraphile, workload, &first))
                    .map(|(g, p)| {
                        let ratio = g.throughput / p.throughput.max(f64::EPSILON);
                        (
                            format!("{ratio:.2}×; p99 {:.2} ms vs {:.2} ms", g.p99_ms, p.p99_ms),
                            ratio >= factor && g.p99_ms <= p.p99_ms,
                        )
                    }),
            );
            judge(
                format!("{workload}: ≥ 80% of the HTTP floor's req/s at {first}"),
                find(gateway, workload, &first)
                    .zip(find(Kind::Floor, workload, &first))
                    .map(|(g, f)| {
                        let ratio = g.throughput / f.throughput.max(f64::EPSILON);
                        (format!("{:.0}%", ratio * 100.0), ratio >= 0.8)
                    }),
            );
        }
        judge(
            format!("W1 read with end-user tokens: server CPU per read within 10% of the API key's at {first}"),
            find(Kind::GatewayPostgresToken, "W1 read", &first)
                .zip(find(gateway, "W1 read", &first))
                .and_then(|(t, k)| t.server_cpu_ms.zip(k.server_cpu_ms))
                .map(|(t, k)| {
                    let ratio = t / k.max(f64::EPSILON);
                    (format!("{t:.3} ms vs {k:.3} ms ({ratio:.2}×)"), ratio <= 1.1)
                }),
        );
        judge(
            "≤ 3 SQL round trips per updateProfile on PostgreSQL (W2)".into(),
            find(gateway, "W2 update", &first)
                .and_then(|s| s.round_trips)
                .map(|rt| (format!("{rt:.2}"), rt <= 3.0)),
        );
        for kind in [Kind::GatewayPostgres, Kind::GatewaySqlite] {
            for (_, workload, _) in workloads(&Arc::new(vec![Arc::from("")])) {
                judge(
                    format!("{}, {workload}: p99 ≤ 10 ms at half the maximum rate", kind.name()),
                    find(kind, workload, RATE).map(|s| (format!("{:.2} ms", s.p99_ms), s.p99_ms <= 10.0)),
                );
                // With one connection count there is no larger one to name.
                let larger = if most == first {
                    "more connections'"
                } else {
                    most.as_str()
                };
                judge(
                    format!("{}, {workload}: {larger} req/s ≥ 90% of {first}'s", kind.name()),
                    find(kind, workload, &most)
                        .zip(find(kind, workload, &first))
                        // Only one connection count measured: nothing to compare.
                        .filter(|_| most != first)
                        .map(|(m, f)| {
                            let ratio = m.throughput / f.throughput.max(f64::EPSILON);
                            (format!("{:.0}%", ratio * 100.0), ratio >= 0.9)
                        }),
                );
            }
        }
        let sqlite = Kind::GatewaySqlite;
        for (workload, floor) in [("W1 read", 10_000.0), ("W2 update", 4_000.0)] {
            judge(
                format!("SQLite {workload}: ≥ {floor:.0} req/s"),
                find(sqlite, workload, &first)
                    .zip(find(sqlite, workload, &most))
                    .map(|(a, b)| {
                        let best = a.throughput.max(b.throughput);
                        (format!("{best:.0}/s"), best >= floor)
                    }),
            );
        }
        judge(
            format!("SQLite W3 hot update: no error at {most}"),
            find(sqlite, "W3 hot update", &most).map(|s| (format!("{} failures", s.failures), s.failures == 0)),
        );
        for kind in [Kind::GatewayPostgres, Kind::GatewaySqlite] {
            judge(
                format!("{}: peak RSS ≤ 100 MB", kind.name()),
                self.peak_rss
                    .get(&kind)
                    .map(|mib| (format!("{mib:.1} MiB"), *mib * 1.048_576 <= 100.0)),
            );
        }
        verdicts
    }

    fn machine() -> String {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .next()
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
            })
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or_else(|| "?".into(), |kib| format!("{:.0} GiB", kib / 1024.0 / 1024.0));
        format!("{cores} cores ({cpu}), {memory}")
    }

    fn postgraphile_version(&self) -> Option<String> {
        let lock = std::fs::read_to_string(self.options.postgraphile_dir.join("package-lock.json")).ok()?;
        let lock: serde_json::Value = serde_json::from_str(&lock).ok()?;
        let version = |name: &str| {
            lock["packages"][format!("node_modules/{name}")]["version"]
                .as_str()
                .map(str::to_owned)
        };
        Some(format!(
            "PostGraphile {} on Node {}",
            version("postgraphile")?,
            version("node")?
        ))
    }

    pub fn markdown(&self) -> String {
        let o = &self.options;
        let mut md = String::new();
        let _ = writeln!(md, "# profile-gateway benchmark\n");
        let _ = writeln!(md, "- date: {}", chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"));
        let _ = writeln!(md, "- machine: {}", Self::machine());
        let mut versions = vec![format!("profile-gateway {}", env!("CARGO_PKG_VERSION"))];
        if o.contenders
            .iter()
            .any(|kind| matches!(kind, Kind::Postgraphile | Kind::PostgraphileQuiet))
            && let Some(postgraphile) = self.postgraphile_version()
        {
            versions.push(postgraphile);
        }
        versions.extend(self.postgres_version.clone());
        let _ = writeln!(md, "- versions: {}", versions.join("; "));
        let _ = writeln!(
            md,
            "- {} profiles (3 tags, 5 attributes each); {} round(s), contenders alternating; warm-up {:?} on a contender's first turn, at most {:?} on later ones; {:?} per measurement; servers {}\n",
            o.profiles,
            o.rounds,
            o.warmup,
            REWARM,
            o.duration,
            if o.server_binary.is_some() {
                "as their own processes"
            } else {
                "in process (smoke run: no CPU or memory figures)"
            },
        );
        let _ = writeln!(
            md,
            "Medians over rounds; the spread is the lowest and highest round. CPU is per successful request; \
             round trips are the statements PostgreSQL ran (pg_stat_statements) per request.\n"
        );
        let _ = writeln!(
            md,
            "| contender | workload | load | req/s | req/s spread | p50 ms | p99 ms | p99.9 ms | failures | server CPU ms/req | PostgreSQL CPU ms/req | SQL round trips/req |"
        );
        let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let opt = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.3}"));
        let summaries = self.summaries();
        for s in &summaries {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0} | {:.0}–{:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |",
                s.contender.name(),
                s.workload,
                s.mode,
                s.throughput,
                s.throughput_min,
                s.throughput_max,
                s.p50_ms,
                s.p99_ms,
                s.p999_ms,
                s.failures,
                opt(s.server_cpu_ms),
                opt(s.database_cpu_ms),
                s.round_trips.map_or_else(|| "–".to_owned(), |v| format!("{v:.2}")),
            );
        }
        let ratio_to = |s: &Summary, other: Kind| {
            summaries
                .iter()
                .find(|o| o.contender == other && o.workload == s.workload && o.mode == s.mode)
                .map_or_else(
                    || "–".to_owned(),
                    |o| format!("{:.2}", s.throughput / o.throughput.max(f64::EPSILON)),
                )
        };
        let gateways: Vec<&Summary> = summaries
            .iter()
            .filter(|s| matches!(s.contender, Kind::GatewayPostgres | Kind::GatewaySqlite) && s.mode != RATE)
            .collect();
        if !gateways.is_empty() {
            let _ = writeln!(
                md,
                "\n## Ratios\n\nprofile-gateway's req/s divided by the other contender's, same workload and load.\n"
            );
            let _ = writeln!(
                md,
                "| contender | workload | load | ÷ PostGraphile | ÷ PostGraphile (no notice) | ÷ raw SQL | ÷ HTTP floor |"
            );
            let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|");
            for s in gateways {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    s.contender.name(),
                    s.workload,
                    s.mode,
                    ratio_to(s, Kind::Postgraphile),
                    ratio_to(s, Kind::PostgraphileQuiet),
                    ratio_to(s, Kind::Raw),
                    ratio_to(s, Kind::Floor)
                );
            }
        }
        let _ = writeln!(md, "\n## Targets\n\n| target | measured | met |\n|---|---|---|");
        for v in self.verdicts() {
            let met = match v.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            };
            let _ = writeln!(md, "| {} | {} | {met} |", v.target, v.measured);
        }
        let _ = writeln!(
            md,
            "\nWhat bounds each missed target, what was profiled and what was fixed: \
             bench/results/README.md, which discusses the latest committed run."
        );
        if !self.peak_rss.is_empty() {
            let _ = writeln!(md, "\n## Peak memory (RSS)\n");
            for (kind, mib) in &self.peak_rss {
                let _ = writeln!(md, "- {}: {mib:.1} MiB", kind.name());
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(md, "\n## Notes\n");
            for note in &self.notes {
                let _ = writeln!(md, "- {note}");
            }
        }
        md
    }

    pub fn csv(&self) -> String {
        let mut csv = String::from(
            "contender,workload,load,requests_per_second,rps_min,rps_max,p50_ms,p99_ms,p999_ms,failures,server_cpu_ms_per_request,postgres_cpu_ms_per_request,sql_round_trips_per_request\n",
        );
        let opt = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.4}"));
        for s in self.summaries() {
            let _ = writeln!(
                csv,
                "\"{}\",\"{}\",\"{}\",{:.1},{:.1},{:.1},{:.3},{:.3},{:.3},{},{},{},{}",
                s.contender.name(),
                s.workload,
                s.mode,
                s.throughput,
                s.throughput_min,
                s.throughput_max,
                s.p50_ms,
                s.p99_ms,
                s.p999_ms,
                s.failures,
                opt(s.server_cpu_ms),
                opt(s.database_cpu_ms),
                opt(s.round_trips)
            );
        }
        csv
    }

    /// Writes `<out>/<timestamp>.md` and `.csv`.
    pub fn write(&self, out: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(out)?;
        let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
        let (md, csv) = (out.join(format!("{stamp}.md")), out.join(format!("{stamp}.csv")));
        std::fs::write(&md, self.markdown())?;
        std::fs::write(&csv, self.csv())?;
        Ok((md, csv))
    }
}
