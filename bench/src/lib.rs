//! profile-gateway's benchmark.
//!
//! Each contender is a gateway over its own freshly seeded database (profiles with tags and
//! attributes), started as the real binary (full runs, so that its CPU time and peak memory are
//! its own) or in process (smoke runs, in the test suite). Contenders take turns (A B A B …) for
//! every round; each round warms up, then measures every workload at each connection count
//! (throughput) and at half the first count's throughput (latency at a fixed rate). The report
//! gives the median over rounds with the spread, as markdown and CSV.

pub mod load;

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
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use load::{Call, Sample, Target, Workload};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The databases a contender can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "profile-gateway (PostgreSQL)",
            Backend::Sqlite => "profile-gateway (SQLite)",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub backends: Vec<Backend>,
    /// A PostgreSQL URL whose server may create a database per contender.
    pub postgres_url: String,
    /// The gateway binary to start; `None` serves in process.
    pub server_binary: Option<PathBuf>,
    pub profiles: usize,
    pub rounds: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub connections: Vec<usize>,
    /// Where the report goes.
    pub out: PathBuf,
}

/// One measurement of one contender.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub contender: &'static str,
    pub workload: &'static str,
    /// `c16`, `c64`, … or `rate N/s`.
    pub mode: String,
    pub sample: Sample,
    /// The server's and the database's CPU seconds per successful request, when measurable.
    pub server_cpu_per_request: Option<f64>,
    pub database_cpu_per_request: Option<f64>,
}

/// A running contender.
struct Contender {
    backend: Backend,
    target: Target,
    /// The seeded profiles' ids.
    ids: Arc<Vec<String>>,
    process: Option<tokio::process::Child>,
    _sqlite_dir: Option<tempfile::TempDir>,
    postgres_database: Option<(String, String)>,
}

/// The workloads, by name: W1 reads a random profile with its tags and attributes; W2 merges
/// two attribute keys and replaces the tags of a random profile; W3 does the same to one hot
/// profile; W4 lists 50 profiles with their tags.
fn workloads(ids: &Arc<Vec<String>>) -> Vec<(&'static str, Workload)> {
    let random = {
        let ids = ids.clone();
        move || ids[rand::rng().random_range(0..ids.len())].clone()
    };
    let read = {
        let random = random.clone();
        Arc::new(move |_: u64| {
            let id = random();
            Call {
                body: json!({"query": "query($id: ID!) { profile(ref: {id: $id}) { id tags { key value } attributes } }", "variables": {"id": id}}).to_string(),
                check: Box::new(move |body: &Value| body["data"]["profile"]["id"] == id.as_str()),
            }
        }) as Workload
    };
    let update = |pick: Arc<dyn Fn() -> String + Send + Sync>| {
        Arc::new(move |n: u64| {
            let id = pick();
            let update = json!({"scrip": {"attributes": {"a": n, "b": n % 7}, "tags": [format!("t{}", n % 5), "vip"]}});
            Call {
                body: json!({
                    "query": "mutation($id: ID!, $u: ProfileUpdate!) { updateProfile(ref: {id: $id}, update: $u) { profile { id version } } }",
                    "variables": {"id": id, "u": update},
                })
                .to_string(),
                check: Box::new(move |body: &Value| body["data"]["updateProfile"]["profile"]["id"] == id.as_str()),
            }
        }) as Workload
    };
    let hot = ids[0].clone();
    let expected = ids.len().min(50);
    let list = Arc::new(move |_: u64| Call {
        body: json!({"query": "{ profiles(first: 50) { nodes { id tags { key value } } } }"}).to_string(),
        check: Box::new(move |body: &Value| {
            body["data"]["profiles"]["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == expected)
        }),
    }) as Workload;
    vec![
        ("W1 read", read),
        ("W2 update", update(Arc::new(random))),
        ("W3 hot update", update(Arc::new(move || hot.clone()))),
        ("W4 list", list),
    ]
}

/// Creates `count` profiles, each with 3 tags and 5 attributes, through the gateway's own store.
async fn seed(store: &Store, count: usize) -> Result<Vec<String>, BoxError> {
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
        ids.push(
            store
                .create(tenant, &change, &Actor::default())
                .await?
                .profile
                .id
                .to_string(),
        );
    }
    Ok(ids)
}

async fn start(backend: Backend, options: &Options) -> Result<Contender, BoxError> {
    let (url, sqlite_dir, postgres_database) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::Builder::new().prefix("pgw-bench-").tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            (url, Some(dir), None)
        }
        Backend::Postgres => {
            let name = format!("pgw_bench_{}", uuid::Uuid::new_v4().simple());
            let admin = sea_orm::Database::connect(&options.postgres_url).await?;
            admin
                .execute_unprepared(&format!(r#"CREATE DATABASE "{name}""#))
                .await?;
            admin.close().await?;
            let (base, _) = options
                .postgres_url
                .rsplit_once('/')
                .ok_or("a PostgreSQL URL ends with /DATABASE")?;
            (
                format!("{base}/{name}"),
                None,
                Some((options.postgres_url.clone(), name)),
            )
        }
    };
    let db = profile_gateway::db::connect(&url).await?;
    profile_gateway::db::migrate(&db).await?;
    let store = Store::new(db);
    let ids = seed(&store, options.profiles.max(1)).await?;
    let api_key = Keys::new(store.clone())
        .create(http::DEFAULT_TENANT, Scope::Write, Some("bench".into()))
        .await?
        .key;
    let (address, process) = match &options.server_binary {
        Some(binary) => {
            let mut child = tokio::process::Command::new(binary)
                .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let stderr = child.stderr.take().ok_or("no stderr")?;
            let mut lines = BufReader::new(stderr).lines();
            let mut address = None;
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.split("GraphQL at ").nth(1) {
                    address = rest
                        .split(',')
                        .next()
                        .map(|url| url.trim_end_matches("/graphql").to_owned());
                    break;
                }
            }
            // Keep draining the log so the server never blocks on it.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            (address.ok_or("the server did not say where it listens")?, Some(child))
        }
        None => {
            let router = http::router(
                store,
                EdgeConfig {
                    introspection: true,
                    ..EdgeConfig::default()
                },
            )?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let address = format!("http://{}", listener.local_addr()?);
            tokio::spawn(async move {
                if let Err(err) = axum::serve(listener, router).await {
                    eprintln!("the in-process server stopped: {err}");
                }
            });
            (address, None)
        }
    };
    Ok(Contender {
        backend,
        target: Target::new(&address, &api_key),
        ids: Arc::new(ids),
        process,
        _sqlite_dir: sqlite_dir,
        postgres_database,
    })
}

impl Contender {
    async fn stop(mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill().await;
        }
        if let Some((admin_url, name)) = self.postgres_database.take()
            && let Ok(admin) = sea_orm::Database::connect(&admin_url).await
        {
            let _ = admin
                .execute_unprepared(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                .await;
        }
    }

    fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(|p| p.id())
    }
}

/// CPU seconds a process has used, from /proc (Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds of every PostgreSQL process on this machine.
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
            total += cpu_seconds(pid).unwrap_or(0.0);
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

/// Runs every round and writes the report; returns the measurements.
pub async fn run(options: &Options) -> Result<Report, BoxError> {
    let mut contenders = Vec::new();
    for backend in &options.backends {
        eprintln!("seeding {} with {} profiles", backend.name(), options.profiles);
        contenders.push(start(*backend, options).await?);
    }
    let mut measurements = Vec::new();
    for round in 1..=options.rounds {
        for contender in &contenders {
            eprintln!("round {round}: {}", contender.backend.name());
            let workloads = workloads(&contender.ids);
            let warm = load::closed_loop(
                &contender.target,
                &workloads[0].1,
                options.connections[0],
                options.warmup,
            )
            .await;
            if warm.ok == 0 {
                return Err(format!("{} answered nothing during warm-up", contender.backend.name()).into());
            }
            for (name, workload) in &workloads {
                let mut first_throughput = None;
                for &connections in &options.connections {
                    let measured = measure(contender, options, || {
                        load::closed_loop(&contender.target, workload, connections, options.duration)
                    })
                    .await;
                    first_throughput.get_or_insert(measured.0.throughput());
                    measurements.push(Measurement {
                        contender: contender.backend.name(),
                        workload: name,
                        mode: format!("c{connections}"),
                        sample: measured.0,
                        server_cpu_per_request: measured.1,
                        database_cpu_per_request: measured.2,
                    });
                }
                let rate = (first_throughput.unwrap_or(1.0) / 2.0).max(1.0);
                let measured = measure(contender, options, || {
                    load::open_loop(&contender.target, workload, rate, options.duration)
                })
                .await;
                measurements.push(Measurement {
                    contender: contender.backend.name(),
                    workload: name,
                    mode: "rate ½ max".to_owned(),
                    sample: measured.0,
                    server_cpu_per_request: measured.1,
                    database_cpu_per_request: measured.2,
                });
            }
        }
    }
    let peak_rss: BTreeMap<&'static str, f64> = contenders
        .iter()
        .filter_map(|c| Some((c.backend.name(), peak_rss_mib(c.pid()?)?)))
        .collect();
    let postgres_version = postgres_version(&options.postgres_url, &options.backends).await;
    for contender in contenders {
        contender.stop().await;
    }
    let report = Report {
        measurements,
        peak_rss,
        options: options.clone(),
        postgres_version,
    };
    report.write(&options.out)?;
    Ok(report)
}

/// Runs one measurement and the CPU the server and PostgreSQL spent on it, per request.
async fn measure<F, Fut>(contender: &Contender, options: &Options, run: F) -> (Sample, Option<f64>, Option<f64>)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Sample>,
{
    let pid = contender.pid();
    let on_postgres = contender.backend == Backend::Postgres && options.server_binary.is_some();
    let server_before = pid.and_then(cpu_seconds);
    let database_before = on_postgres.then(postgres_cpu_seconds).flatten();
    let sample = run().await;
    let per_request = |before: Option<f64>, after: Option<f64>| Some((after? - before?) / (sample.ok.max(1) as f64));
    let server = per_request(server_before, pid.and_then(cpu_seconds));
    let database = per_request(database_before, on_postgres.then(postgres_cpu_seconds).flatten());
    (sample, server, database)
}

async fn postgres_version(url: &str, backends: &[Backend]) -> Option<String> {
    if !backends.contains(&Backend::Postgres) {
        return None;
    }
    let db = sea_orm::Database::connect(url).await.ok()?;
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT version() AS v",
        ))
        .await
        .ok()??;
    row.try_get::<String>("", "v").ok()
}

/// The results of a run.
pub struct Report {
    pub measurements: Vec<Measurement>,
    pub peak_rss: BTreeMap<&'static str, f64>,
    pub options: Options,
    pub postgres_version: Option<String>,
}

/// The median over rounds of one contender, workload and mode.
#[derive(Debug, Clone)]
pub struct Summary {
    pub contender: &'static str,
    pub workload: &'static str,
    pub mode: String,
    pub throughput: f64,
    pub throughput_min: f64,
    pub throughput_max: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub failures: u64,
    pub server_cpu_ms: Option<f64>,
    pub database_cpu_ms: Option<f64>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

impl Report {
    pub fn summaries(&self) -> Vec<Summary> {
        let mut groups: BTreeMap<(&str, &str, String), Vec<&Measurement>> = BTreeMap::new();
        for m in &self.measurements {
            groups
                .entry((m.contender, m.workload, m.mode.clone()))
                .or_default()
                .push(m);
        }
        groups
            .into_iter()
            .map(|((_, _, mode), ms)| {
                let of = |f: &dyn Fn(&Measurement) -> f64| median(ms.iter().map(|m| f(m)).collect());
                let optional = |f: &dyn Fn(&Measurement) -> Option<f64>| {
                    let values: Vec<f64> = ms.iter().filter_map(|m| f(m)).collect();
                    (!values.is_empty()).then(|| median(values) * 1000.0)
                };
                let throughputs: Vec<f64> = ms.iter().map(|m| m.sample.throughput()).collect();
                Summary {
                    contender: ms[0].contender,
                    workload: ms[0].workload,
                    mode,
                    throughput: median(throughputs.clone()),
                    throughput_min: throughputs.iter().copied().fold(f64::INFINITY, f64::min),
                    throughput_max: throughputs.iter().copied().fold(0.0, f64::max),
                    p50_ms: of(&|m| m.sample.latency_ms(0.5)),
                    p99_ms: of(&|m| m.sample.latency_ms(0.99)),
                    p999_ms: of(&|m| m.sample.latency_ms(0.999)),
                    failures: ms.iter().map(|m| m.sample.failed).sum(),
                    server_cpu_ms: optional(&|m| m.server_cpu_per_request),
                    database_cpu_ms: optional(&|m| m.database_cpu_per_request),
                }
            })
            .collect()
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

    pub fn markdown(&self) -> String {
        let o = &self.options;
        let mut md = String::new();
        let _ = writeln!(md, "# profile-gateway benchmark\n");
        let _ = writeln!(md, "- date: {}", chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"));
        let _ = writeln!(md, "- machine: {}", Self::machine());
        let _ = writeln!(
            md,
            "- profile-gateway {}; {}",
            env!("CARGO_PKG_VERSION"),
            self.postgres_version.as_deref().unwrap_or("no PostgreSQL contender")
        );
        let _ = writeln!(
            md,
            "- {} profiles (3 tags, 5 attributes each); {} round(s), contenders alternating; warm-up {:?}, {:?} per measurement; server {}\n",
            o.profiles,
            o.rounds,
            o.warmup,
            o.duration,
            if o.server_binary.is_some() {
                "as its own process"
            } else {
                "in process (smoke run: no CPU or memory figures)"
            },
        );
        let _ = writeln!(
            md,
            "| contender | workload | load | req/s (median) | req/s spread | p50 ms | p99 ms | p99.9 ms | failures | server CPU ms/req | PostgreSQL CPU ms/req |"
        );
        let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let cpu = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.3}"));
        for s in self.summaries() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.0} | {:.0}–{:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
                s.contender,
                s.workload,
                s.mode,
                s.throughput,
                s.throughput_min,
                s.throughput_max,
                s.p50_ms,
                s.p99_ms,
                s.p999_ms,
                s.failures,
                cpu(s.server_cpu_ms),
                cpu(s.database_cpu_ms)
            );
        }
        if !self.peak_rss.is_empty() {
            let _ = writeln!(md, "\nPeak server memory (RSS):\n");
            for (contender, mib) in &self.peak_rss {
                let _ = writeln!(md, "- {contender}: {mib:.1} MiB");
            }
        }
        let _ = writeln!(
            md,
            "\nNot measured yet: PostGraphile, the raw SQL baseline and the plain-axum HTTP floor, SQL round trips per request \
             (pg_stat_statements), and the ratios to them (see the README)."
        );
        md
    }

    pub fn csv(&self) -> String {
        let mut csv = String::from(
            "contender,workload,load,requests_per_second,rps_min,rps_max,p50_ms,p99_ms,p999_ms,failures,server_cpu_ms_per_request,postgres_cpu_ms_per_request\n",
        );
        let cpu = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.4}"));
        for s in self.summaries() {
            let _ = writeln!(
                csv,
                "\"{}\",\"{}\",\"{}\",{:.1},{:.1},{:.1},{:.3},{:.3},{:.3},{},{},{}",
                s.contender,
                s.workload,
                s.mode,
                s.throughput,
                s.throughput_min,
                s.throughput_max,
                s.p50_ms,
                s.p99_ms,
                s.p999_ms,
                s.failures,
                cpu(s.server_cpu_ms),
                cpu(s.database_cpu_ms)
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
