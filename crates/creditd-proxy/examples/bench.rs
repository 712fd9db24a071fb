//! The proxy's added latency and throughput (BENCHMARKS.md): the same load
//! against the stand-in provider directly, then through creditd's proxy
//! (SQLite store, durable holds and settles), streaming and not, in one run.
//!
//! `cargo run --release -p creditd-proxy --example bench -- [connections] [seconds] [rounds]`
//! (defaults 64, 8, 2). Every connection is its own account. Rounds
//! alternate direct and proxied runs so that the machine's noise falls on
//! both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use creditd_proxy::standin::StandIn;
use creditd_proxy::{Proxy, ProxyConfig, Upstream};
use creditd_server::{App, ServerConfig};
use creditd_store::sqlite::SqliteStore;
use creditd_store::{EngineConfig, Store, SystemClock, WriterLimits};
use serde_json::{Value, json};

const ADMIN: &str = "bench-admin";

#[derive(Clone, Copy, Debug)]
enum Target {
    Direct,
    Proxy,
}

struct Run {
    latencies_us: Vec<u64>,
    first_byte_us: Vec<u64>,
    failures: u64,
    elapsed: Duration,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

async fn admin(http: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    let method = if path.starts_with("/v1/models/") { reqwest::Method::PUT } else { reqwest::Method::POST };
    let response =
        http.request(method, format!("{base}{path}")).bearer_auth(ADMIN).json(&body).send().await.expect("admin call");
    assert!(response.status().is_success(), "{path}: {}", response.status());
    response.json().await.expect("json")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let connections = arg(0, 64) as usize;
    let seconds = arg(1, 8);
    let rounds = arg(2, 2);

    let standin = StandIn::start().await.expect("stand-in");
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(
            &dir.path().join("creditd.db"),
            EngineConfig::default(),
            WriterLimits::default(),
            Arc::new(SystemClock),
        )
        .expect("store"),
    );
    let app = App::new(
        store.clone(),
        Arc::new(SystemClock),
        None,
        ServerConfig { admin_key: Some(ADMIN.into()), ..ServerConfig::default() },
    );
    let proxy = Proxy::new(
        app.state(),
        ProxyConfig {
            openai: Some(Upstream { base_url: standin.openai_base(), api_key: "sk-bench".into() }),
            ..ProxyConfig::default()
        },
    )
    .expect("proxy");
    let router = app.router().merge(proxy.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });

    let http = reqwest::Client::builder().pool_max_idle_per_host(connections * 2).tcp_nodelay(true).build().unwrap();
    admin(
        &http,
        &base,
        "/v1/models/gpt-4o",
        json!({"cost_usd_per_mtok": {"input": "2.5", "output": "10", "cache_read": "1.25"}}),
    )
    .await;
    let mut tokens = Vec::new();
    for i in 0..connections {
        let id = format!("bench_{i}");
        admin(&http, &base, "/v1/accounts", json!({"id": id})).await;
        admin(
            &http,
            &base,
            &format!("/v1/accounts/{id}/wallet/topups"),
            json!({"amount_usd": "100000", "provider": "manual"}),
        )
        .await;
        let token = admin(&http, &base, &format!("/v1/accounts/{id}/tokens"), json!({"ttl_seconds": 86400})).await;
        tokens.push(token["token"].as_str().expect("token").to_string());
    }

    println!("connections {connections}, {seconds} s per run, {rounds} rounds; creditd on SQLite (durable)");
    println!("| round | scenario | target | requests/s | p50 ms | p99 ms | first byte p50 ms | failures |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut summary: Vec<(bool, f64, f64, f64, f64, f64)> = Vec::new();
    for round in 1..=rounds {
        for stream in [false, true] {
            let mut pair = Vec::new();
            for target in [Target::Direct, Target::Proxy] {
                let run = load(&http, &standin.openai_base(), &base, &tokens, target, stream, seconds).await;
                let mut sorted = run.latencies_us.clone();
                sorted.sort_unstable();
                let mut first = run.first_byte_us.clone();
                first.sort_unstable();
                let rate = sorted.len() as f64 / run.elapsed.as_secs_f64();
                let (p50, p99, fb50) = (percentile(&sorted, 50.0), percentile(&sorted, 99.0), percentile(&first, 50.0));
                println!(
                    "| {round} | {} | {target:?} | {rate:.0} | {p50:.2} | {p99:.2} | {fb50:.2} | {} |",
                    if stream { "stream" } else { "whole" },
                    run.failures
                );
                pair.push((rate, p50, p99));
                standin.forget();
            }
            summary.push((stream, pair[0].1, pair[1].1, pair[0].2, pair[1].2, pair[1].0 / pair[0].0));
        }
    }
    println!();
    println!("| round | scenario | added p50 ms | added p99 ms | proxied / direct throughput |");
    println!("|---|---|---|---|---|");
    for (i, (stream, d50, p50, d99, p99, ratio)) in summary.iter().enumerate() {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} |",
            i / 2 + 1,
            if *stream { "stream" } else { "whole" },
            p50 - d50,
            p99 - d99,
            ratio
        );
    }
    let records = store.usage_count(None, Default::default()).await.expect("count");
    println!("\nusage records written: {records}");
}

async fn load(
    http: &reqwest::Client,
    standin_base: &str,
    base: &str,
    tokens: &[String],
    target: Target,
    stream: bool,
    seconds: u64,
) -> Run {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for token in tokens {
        let http = http.clone();
        let url = match target {
            Target::Direct => format!("{standin_base}/chat/completions"),
            Target::Proxy => format!("{base}/openai/v1/chat/completions"),
        };
        let token = token.clone();
        let body = json!({"model": "gpt-4o", "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": "Write one short sentence about foxes."}]})
        .to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut first_bytes = Vec::new();
            let mut failures = 0u64;
            while Instant::now() < deadline {
                let start = Instant::now();
                let sent = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .header("x-standin-forget", "1")
                    .body(body.clone())
                    .send()
                    .await;
                let Ok(mut response) = sent else {
                    failures += 1;
                    continue;
                };
                if !response.status().is_success() {
                    failures += 1;
                    let _ = response.bytes().await;
                    continue;
                }
                let mut first = None;
                let mut ok = true;
                loop {
                    match response.chunk().await {
                        Ok(Some(_)) => {
                            first.get_or_insert_with(|| start.elapsed());
                        }
                        Ok(None) => break,
                        Err(_) => {
                            ok = false;
                            break;
                        }
                    }
                }
                if !ok {
                    failures += 1;
                    continue;
                }
                latencies.push(start.elapsed().as_micros() as u64);
                first_bytes.push(first.unwrap_or_default().as_micros() as u64);
            }
            (latencies, first_bytes, failures)
        }));
    }
    let mut run = Run { latencies_us: Vec::new(), first_byte_us: Vec::new(), failures: 0, elapsed: Duration::ZERO };
    for task in tasks {
        let (l, f, n) = task.await.expect("task");
        run.latencies_us.extend(l);
        run.first_byte_us.extend(f);
        run.failures += n;
    }
    run.elapsed = started.elapsed();
    run
}
