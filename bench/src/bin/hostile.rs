//! The gateway under clients that send the most expensive request its limits allow (issue #37):
//! how much memory the server takes, how fast `/healthz` and a one-field query answer beside
//! them, whether every refusal has a code, and how far past its time limit a request runs.
//!
//! `bench/hostile` builds the release binary and runs this; it writes `bench/results/hostile.md`,
//! replacing the last report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use profile_gateway::auth::{Keys, Scope};
use profile_gateway::dialects::CreateProfileInput;
use profile_gateway::domain::ChangeSet;
use profile_gateway::store::{Actor, Store};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
#[command(name = "profile-gateway-hostile")]
struct Cli {
    /// The profile-gateway binary (a release build).
    #[arg(long)]
    server_binary: PathBuf,
    /// Clients sending the expensive request at once.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long they send it, in seconds.
    #[arg(long, default_value_t = 20)]
    duration_secs: u64,
    /// Profiles to seed, each with about 16 KiB of attributes.
    #[arg(long, default_value_t = 500)]
    profiles: usize,
    /// Where the report goes (replacing the last one).
    #[arg(long, default_value = "bench/results/hostile.md")]
    out: PathBuf,
}

/// What one expensive request got.
struct Answer {
    status: u16,
    /// The code of each error, or "none" for an answer without errors.
    codes: Vec<String>,
    took: Duration,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("hostile.db").display());
    let key = seed(&url, cli.profiles).await?;

    let mut command = tokio::process::Command::new(&cli.server_binary);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut server = command.spawn()?;
    let pid = server.id().ok_or("the server has no pid")?;
    let mut lines = BufReader::new(server.stderr.take().ok_or("no stderr")?).lines();
    let address = loop {
        let line = lines.next_line().await?.ok_or("the server exited")?;
        if let Some(rest) = line.split("GraphQL at ").nth(1) {
            break rest.split('/').take(3).collect::<Vec<_>>().join("/");
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let client = reqwest::Client::new();
    let expensive = Arc::new(expensive_batch());
    let deadline = Instant::now() + Duration::from_secs(cli.duration_secs);
    let mut senders = Vec::new();
    for _ in 0..cli.clients {
        let (client, key, address, body) = (client.clone(), key.clone(), address.clone(), expensive.clone());
        senders.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let response = client
                    .post(format!("{address}/graphql"))
                    .header("X-API-Key", &key)
                    .header("Content-Type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                let answer = match response {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let body: Value = response.json().await.unwrap_or(Value::Null);
                        Answer {
                            status,
                            codes: codes(&body),
                            took: started.elapsed(),
                        }
                    }
                    Err(err) => Answer {
                        status: 0,
                        codes: vec![format!("transport: {err}")],
                        took: started.elapsed(),
                    },
                };
                answers.push(answer);
            }
            answers
        }));
    }
    // Beside them: /healthz and a one-field query, one after the other, and the server's memory.
    let mut healthz = Histogram::<u64>::new(3)?;
    let mut one_field = Histogram::<u64>::new(3)?;
    let mut probe_failures = 0usize;
    let mut peak_rss_kib = 0u64;
    let one = json!({"query": "{ profile(ref: {serialNumber: \"1\"}) { id } }"}).to_string();
    while Instant::now() < deadline {
        peak_rss_kib = peak_rss_kib.max(rss_kib(pid).unwrap_or(0));
        let started = Instant::now();
        let ok = client
            .get(format!("{address}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        healthz.record(started.elapsed().as_micros() as u64)?;
        probe_failures += usize::from(!ok);
        let started = Instant::now();
        let ok = match client
            .post(format!("{address}/graphql"))
            .header("X-API-Key", &key)
            .header("Content-Type", "application/json")
            .body(one.clone())
            .send()
            .await
        {
            Ok(response) => response
                .json::<Value>()
                .await
                .is_ok_and(|body| body["data"]["profile"]["id"].is_string()),
            Err(_) => false,
        };
        one_field.record(started.elapsed().as_micros() as u64)?;
        probe_failures += usize::from(!ok);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answers = Vec::new();
    for sender in senders {
        answers.extend(sender.await?);
    }
    peak_rss_kib = peak_rss_kib.max(peak_kib(pid).unwrap_or(0));
    server.kill().await.ok();

    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut uncoded = 0usize;
    let mut longest = Duration::ZERO;
    for answer in &answers {
        longest = longest.max(answer.took);
        uncoded += answer.codes.iter().filter(|code| code.is_empty()).count();
        let outcome = format!("{} {}", answer.status, answer.codes.join(", "));
        *outcomes.entry(outcome).or_default() += 1;
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let mut report = String::new();
    report.push_str("# Hostile load\n\n");
    report.push_str(&format!(
        "`bench/hostile` on {}: {} clients sent the batch below for {} s to a release build on SQLite \
         ({} profiles of about 16 KiB of attributes), with the default limits; one more client asked \
         `/healthz` and a one-field query in turn all the while.\n\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        cli.clients,
        cli.duration_secs,
        cli.profiles
    ));
    report.push_str("| measure | target | result |\n|---|---|---|\n");
    let mib = peak_rss_kib as f64 / 1024.0;
    report.push_str(&format!(
        "| server peak memory (VmHWM) | < 512 MiB | {mib:.0} MiB {} |\n",
        verdict(mib < 512.0)
    ));
    report.push_str(&format!(
        "| `/healthz` p99 ({} asked) | < 200 ms | {:.1} ms {} |\n",
        healthz.len(),
        ms(&healthz, 0.99),
        verdict(ms(&healthz, 0.99) < 200.0)
    ));
    report.push_str(&format!(
        "| one-field query p99 ({} asked) | < 200 ms | {:.1} ms {} |\n",
        one_field.len(),
        ms(&one_field, 0.99),
        verdict(ms(&one_field, 0.99) < 200.0)
    ));
    report.push_str(&format!(
        "| probes that failed | 0 | {probe_failures} {} |\n",
        verdict(probe_failures == 0)
    ));
    report.push_str(&format!(
        "| refusals without a code | 0 | {uncoded} {} |\n",
        verdict(uncoded == 0)
    ));
    report.push_str(&format!(
        "| longest expensive request | < 11 s (limit 10 s + 1 s) | {:.2} s {} |\n\n",
        longest.as_secs_f64(),
        verdict(longest < Duration::from_secs(11))
    ));
    report.push_str("What the expensive requests got (HTTP status and error codes):\n\n");
    for (outcome, count) in outcomes {
        report.push_str(&format!("- {count} × {outcome}\n"));
    }
    report.push_str(&format!(
        "\nThe batch, {} bytes:\n\n```json\n{}\n```\n",
        expensive.to_string().len(),
        serde_json::to_string_pretty(&*expensive)?
    ));
    if let Some(parent) = cli.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&cli.out, &report)?;
    println!("{report}");
    Ok(())
}

/// The most expensive batch the default limits let through: five operations of up to ten root
/// fields each (the root field limit), together 49 full pages of attributes, 4,998 fields of
/// the 5,000 a batch may ask for (each page counts its `nodes` and the page, then 100
/// attribute maps). Each answer would be 1.6 MB; the response limit cuts it off.
fn expensive_batch() -> Value {
    let page = |i: usize| format!("p{i}: profiles(first: 100) {{ nodes {{ attributes }} }}");
    let operations: Vec<Value> = [10, 10, 10, 10, 9]
        .iter()
        .enumerate()
        .map(|(op, &aliases)| {
            let fields: Vec<String> = (0..aliases).map(|i| page(op * 10 + i)).collect();
            json!({"query": format!("{{ {} }}", fields.join(" "))})
        })
        .collect();
    Value::Array(operations)
}

/// The error codes of a response (or of each response of a batch); `none` when it has none, and
/// an empty string for an error without a code.
fn codes(body: &Value) -> Vec<String> {
    let answers: Vec<&Value> = match body {
        Value::Array(answers) => answers.iter().collect(),
        other => vec![other],
    };
    let mut codes: Vec<String> = answers
        .iter()
        .flat_map(|answer| answer["errors"].as_array().into_iter().flatten())
        .map(|error| error["extensions"]["code"].as_str().unwrap_or_default().to_owned())
        .collect();
    codes.sort();
    codes.dedup();
    if codes.is_empty() {
        codes.push("none".to_owned());
    }
    codes
}

fn verdict(met: bool) -> &'static str {
    if met { "(met)" } else { "(**missed**)" }
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

fn peak_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Seeds `count` profiles of about 16 KiB of attributes each; an API key of the lowest scope.
async fn seed(url: &str, count: usize) -> Result<String, BoxError> {
    let db = profile_gateway::db::connect(url).await?;
    profile_gateway::db::migrate(&db).await?;
    let store = Store::new(db);
    let tenant = store.ensure_tenant(profile_gateway::http::DEFAULT_TENANT).await?;
    for n in 0..count {
        let attributes: serde_json::Map<String, Value> = (0..100)
            .map(|k| (format!("k{k:02}"), json!(format!("{n:06}{}", "x".repeat(144)))))
            .collect();
        let input = CreateProfileInput {
            external_id: Some(format!("hostile-{n}")),
            attributes: Some(async_graphql::Json(Value::Object(attributes))),
            ..Default::default()
        };
        let change = ChangeSet::try_from(input).map_err(profile_gateway::error::Error::from)?;
        store.create(tenant, &change, &Actor::default()).await?;
    }
    let key = Keys::new(store.clone())
        .create(
            profile_gateway::http::DEFAULT_TENANT,
            Scope::Read,
            Some("hostile".into()),
        )
        .await?
        .key;
    store.connection().clone().close().await?;
    Ok(key)
}
