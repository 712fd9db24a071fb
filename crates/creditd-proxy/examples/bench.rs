//! The metering proxy's added latency and throughput (BENCHMARKS.md), run by
//! `scripts/bench-proxy`, which starts the three processes it needs:
//!
//! - `bench standin [ADDR]`: the stand-in provider (`creditd_proxy::standin`,
//!   instant answers) on its own, printing `listening on http://ADDR`;
//! - `creditd serve` (release, SQLite, durable) with its OpenAI upstream at
//!   the stand-in;
//! - `bench load CREDITD_URL STANDIN_URL ADMIN_KEY [connections…] [--seconds S]
//!   [--rounds R]`: the load driver. It sets up one account (a wallet and a
//!   proxy key) per connection, then for each connection count, round,
//!   and whole or streaming answers, runs the same load against the
//!   stand-in directly (`/v1/chat/completions`) and through creditd
//!   (`/openai/v1/chat/completions`), one run after the other, so that the
//!   machine's noise falls on both. Every connection sends its next request
//!   when the last one's answer has been read to the end.
//!
//! It prints each run (requests/s, p50, p99, time to first byte, failures)
//! and the added p50/p99 (proxied − direct) with the throughput ratio, as
//! Markdown tables, and exits non-zero if any request failed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Direct,
    Proxied,
}

struct Run {
    latencies_us: Vec<u64>,
    first_byte_us: Vec<u64>,
    failures: u64,
    elapsed: Duration,
}

/// The `p`th percentile of sorted microseconds, in milliseconds.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    match args.first().map(String::as_str) {
        Some("standin") => runtime.block_on(standin(args.get(1).map_or("127.0.0.1:0", String::as_str))),
        Some("load") => {
            let failed = runtime.block_on(load(&args[1..]));
            if failed {
                std::process::exit(1);
            }
        }
        _ => {
            eprintln!(
                "usage: bench standin [ADDR] | bench load CREDITD_URL STANDIN_URL ADMIN_KEY [connections…] [--seconds S] [--rounds R]"
            );
            std::process::exit(2);
        }
    }
}

async fn standin(addr: &str) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let running = creditd_proxy::standin::StandIn::start_on(listener).expect("stand-in");
    println!("listening on http://{}", running.addr);
    std::future::pending::<()>().await;
}

async fn admin(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Value {
    let response =
        http.request(method, format!("{base}{path}")).bearer_auth(key).json(&body).send().await.expect("admin call");
    let status = response.status();
    let text = response.text().await.expect("body");
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).expect("json")
}

/// Returns whether any request failed.
async fn load(args: &[String]) -> bool {
    let (creditd, standin, admin_key) = match args {
        [c, s, k, ..] => (c.trim_end_matches('/'), s.trim_end_matches('/'), k.as_str()),
        _ => panic!("load needs CREDITD_URL STANDIN_URL ADMIN_KEY"),
    };
    let mut connections = Vec::new();
    let (mut seconds, mut rounds) = (8u64, 2u64);
    let mut rest = args[3..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--seconds" => seconds = rest.next().and_then(|v| v.parse().ok()).expect("--seconds N"),
            "--rounds" => rounds = rest.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            n => connections.push(n.parse::<usize>().expect("a connection count")),
        }
    }
    if connections.is_empty() {
        connections.push(64);
    }
    let most = connections.iter().copied().max().unwrap_or(64);
    let http = reqwest::Client::builder().pool_max_idle_per_host(most * 2).tcp_nodelay(true).build().expect("client");

    use reqwest::Method;
    let rates = json!({"input": "2.5", "output": "10", "cache_read": "1.25", "cache_write": "0"});
    admin(&http, creditd, admin_key, Method::PUT, "/v1/models/gpt-4o", json!({"cost_usd_per_mtok": rates})).await;
    let mut keys = Vec::new();
    for i in 0..most {
        let id = format!("bench_{i}");
        admin(&http, creditd, admin_key, Method::POST, "/v1/accounts", json!({"id": id})).await;
        let topup = json!({"amount_usd": "100000", "provider": "manual"});
        admin(&http, creditd, admin_key, Method::POST, &format!("/v1/accounts/{id}/wallet/topups"), topup).await;
        let key =
            admin(&http, creditd, admin_key, Method::POST, &format!("/v1/accounts/{id}/proxy-keys"), json!({})).await;
        keys.push(key["secret"].as_str().expect("secret").to_string());
    }

    println!(
        "{seconds} s per run, {rounds} rounds, connections {connections:?}; one account and proxy key per connection"
    );
    println!();
    println!("| connections | round | answer | target | requests/s | p50 ms | p99 ms | first byte p50 ms | failures |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    let mut failed = false;
    for &n in &connections {
        for round in 1..=rounds {
            for stream in [false, true] {
                let mut pair = Vec::new();
                for target in [Target::Direct, Target::Proxied] {
                    let url = match target {
                        Target::Direct => format!("{standin}/v1/chat/completions"),
                        Target::Proxied => format!("{creditd}/openai/v1/chat/completions"),
                    };
                    let run = drive(&http, &url, &keys[..n], stream, seconds).await;
                    let mut sorted = run.latencies_us.clone();
                    sorted.sort_unstable();
                    let mut first = run.first_byte_us.clone();
                    first.sort_unstable();
                    let rate = sorted.len() as f64 / run.elapsed.as_secs_f64();
                    let (p50, p99, fb50) =
                        (percentile(&sorted, 50.0), percentile(&sorted, 99.0), percentile(&first, 50.0));
                    println!(
                        "| {n} | {round} | {} | {} | {rate:.0} | {p50:.2} | {p99:.2} | {fb50:.2} | {} |",
                        if stream { "stream" } else { "whole" },
                        if target == Target::Direct { "direct" } else { "creditd" },
                        run.failures
                    );
                    failed |= run.failures > 0;
                    pair.push((rate, p50, p99));
                }
                summary.push((n, round, stream, pair[1].1 - pair[0].1, pair[1].2 - pair[0].2, pair[1].0 / pair[0].0));
            }
        }
    }
    println!();
    println!("| connections | round | answer | added p50 ms | added p99 ms | creditd / direct requests/s |");
    println!("|---|---|---|---|---|---|");
    for (n, round, stream, p50, p99, ratio) in summary {
        let answer = if stream { "stream" } else { "whole" };
        println!("| {n} | {round} | {answer} | {p50:.2} | {p99:.2} | {ratio:.2} |");
    }
    failed
}

/// One run: every key is a connection sending requests back to back until
/// the deadline.
async fn drive(http: &reqwest::Client, url: &str, keys: &[String], stream: bool, seconds: u64) -> Run {
    let body = json!({"model": "gpt-4o", "max_tokens": 64, "stream": stream,
        "messages": [{"role": "user", "content": "Write one short sentence about foxes."}]})
    .to_string();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for key in keys {
        let (http, url, key, body) = (http.clone(), url.to_string(), key.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut first_bytes, mut failures) = (Vec::new(), Vec::new(), 0u64);
            while Instant::now() < deadline {
                let start = Instant::now();
                let sent = http
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    // The stand-in keeps no record of these requests.
                    .header("x-standin-forget", "1")
                    .body(body.clone())
                    .send()
                    .await;
                let Ok(mut response) = sent else {
                    failures += 1;
                    continue;
                };
                let ok = response.status().is_success();
                let mut first = None;
                let mut whole = true;
                loop {
                    match response.chunk().await {
                        Ok(Some(_)) => {
                            first.get_or_insert_with(|| start.elapsed());
                        }
                        Ok(None) => break,
                        Err(_) => {
                            whole = false;
                            break;
                        }
                    }
                }
                if !(ok && whole) {
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
