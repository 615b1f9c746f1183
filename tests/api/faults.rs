//! PostgreSQL going away under load: requests fail fast with UNAVAILABLE, /readyz says not
//! ready, nothing is half written, and the service recovers by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use profile_gateway::http::EdgeConfig;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

use crate::helpers::TestApp;

/// A TCP proxy to PostgreSQL that the test can cut (every connection dropped, new ones
/// refused) and restore, as a restart of the database would.
struct Proxy {
    address: String,
    up: Arc<AtomicBool>,
    cut: broadcast::Sender<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = broadcast::channel(4);
        let (accepting, cuts) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accepting.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let (target, mut cut) = (target.clone(), cuts.subscribe());
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.recv() => {}
                    }
                });
            }
        });
        Proxy { address, up, cut }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let _ = self.cut.send(());
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn code(response: &Value) -> Option<&str> {
    response["errors"][0]["extensions"]["code"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_fast_with_unavailable_and_the_service_recovers_by_itself() {
    let Some(target) = TestApp::postgres_address() else {
        println!("skipped: TEST_POSTGRES_URL is not set");
        return;
    };
    let proxy = Proxy::start(target).await;
    let app = TestApp::postgres_through(
        Some(&proxy.address),
        EdgeConfig {
            introspection: true,
            ..EdgeConfig::default()
        },
    )
    .await
    .expect("PostgreSQL");
    // A profile per writer, each of whose updates adds two keys: 120 of them stay within a
    // profile's 256 keys.
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(app.create(json!({})).await["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(app.get("/readyz").await.status(), 200);

    // Load: writers that each merge two keys at once, all through the outage.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, unavailable) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = (0..4).map(|writer| {
        let (app, id, stop, served, unavailable) = (
            &app,
            ids[writer].clone(),
            stop.clone(),
            served.clone(),
            unavailable.clone(),
        );
        async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 120 {
                n += 1;
                let started = Instant::now();
                let update =
                    json!({"scrip": {"attributes": { format!("w{writer}_{n}_a"): n, format!("w{writer}_{n}_b"): n }}});
                let response: Value = app
                    .post(
                        Some(&app.admin_key),
                        &json!({"query": crate::helpers::UPDATE, "variables": {"ref": {"id": id}, "update": update}}),
                    )
                    .await
                    .json()
                    .await
                    .unwrap();
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "a request hung for {:?}",
                    started.elapsed()
                );
                match code(&response) {
                    None => served.fetch_add(1, Ordering::SeqCst),
                    Some("UNAVAILABLE") => unavailable.fetch_add(1, Ordering::SeqCst),
                    Some(other) => panic!("{other}: {response}"),
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let scenario = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(app.get("/readyz").await.status(), 503);
        let started = Instant::now();
        let during: Value = app
            .post(Some(&app.admin_key), &json!({"query": "{ profiles { totalCount } }"}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(code(&during), Some("UNAVAILABLE"), "{during}");
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(1)).await;
        proxy.restore();
        let deadline = Instant::now() + Duration::from_secs(20);
        while app.get("/readyz").await.status() != 200 {
            assert!(Instant::now() < deadline, "the service did not recover");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
    };
    let ((), _) = tokio::join!(scenario, futures::future::join_all(load));
    assert!(unavailable.load(Ordering::SeqCst) > 0, "no request saw the outage");
    assert!(served.load(Ordering::SeqCst) > 0);

    // Every update either applied whole or not at all: keys come in pairs, and the version
    // counts the updates that applied.
    for id in &ids {
        let profile = app.profile(id).await;
        let attributes = profile["attributes"].as_object().unwrap();
        for key in attributes.keys() {
            let twin = if let Some(stem) = key.strip_suffix("_a") {
                format!("{stem}_b")
            } else {
                key.replace("_b", "_a")
            };
            assert!(attributes.contains_key(&twin), "{key} without {twin}");
        }
        assert_eq!(profile["version"].as_u64().unwrap() as usize, 1 + attributes.len() / 2);
    }
}
