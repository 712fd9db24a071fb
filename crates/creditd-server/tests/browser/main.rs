//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`) against the real router on a local socket, on the
//! backend `CREDITD_TEST_BACKEND` selects. Signs in with a token, checks the
//! numbers against the API's, the currency picker, keyboard use, the chart,
//! filters, paging, the export download, the credit record, signing out,
//! and the pages with JavaScript off. Writes screenshots of every page at
//! desktop and phone widths into `target/dashboard-screenshots/`.
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`,
//! `chromium-driver`; `scripts/test-deps` installs them). Without them the
//! test is skipped with a message, except under `CI=true`, where it fails.

#[allow(dead_code)]
#[path = "../api/support.rs"]
mod support;
mod webdriver;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use creditd_core::units::Factor;
use serde_json::json;
use support::{Api, SONNET, config};
use webdriver::Browser;

fn shots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")));
    target.join("dashboard-screenshots")
}

/// `false` (after saying why) when the browser is missing and this is not CI.
fn browser_available() -> bool {
    match webdriver::tools() {
        Ok(_) => true,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI=true and {why}"),
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            false
        }
    }
}

/// Runs an async API call from the browser's (blocking) thread.
fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Handle::current().block_on(f)
}

async fn usage(api: &Api, id: &str, model: &str, project: &str, input: u64) {
    api.post(
        "/v1/usage",
        json!({"account_id": "u_42", "request_id": id, "model": model, "request_type": "chat", "project": project,
               "conversation": format!("conv-{}", input % 3), "latency_ms": 900 + input % 700,
               "usage": {"input_tokens": input, "cache_read_tokens": input / 4, "output_tokens": input / 10}}),
    )
    .await
    .expect(201);
}

/// An account with a plan, a wallet, grants (one expiring in 3 days) and
/// two weeks of requests on two models.
async fn story(api: &Api) {
    api.sonnet().await;
    api.put(
        "/v1/models/gpt-4o",
        json!({"cost_usd_per_mtok": {"input": "2.5", "output": "10", "cache_read": "1.25", "cache_write": "2.5"},
               "multiplier": "1", "max_output_tokens": 4096}),
    )
    .await
    .expect(200);
    for (id, name, price, credits, rate, daily, weekly) in
        [("starter", "Starter", "10", "1000", 20, 100, 300), ("pro", "Pro", "50", "5000", 60, 500, 1500)]
    {
        api.put(
            &format!("/v1/plans/{id}"),
            json!({"name": name, "price_usd": price, "monthly_credits": credits, "rate_per_minute": rate,
                   "daily_requests": daily, "weekly_requests": weekly, "model_access": "all"}),
        )
        .await
        .expect(200);
    }
    api.account("u_42").await;
    api.post("/v1/accounts/u_42/subscription", json!({"plan": "pro", "kind": "monthly", "external_id": "pay_1"}))
        .await
        .expect(201);
    api.topup("u_42", "20").await;
    api.post(
        "/v1/accounts/u_42/grants",
        json!({"amount": "500", "kind": "purchased", "source": "pack_500", "reason": "credit pack"}),
    )
    .await
    .expect(201);
    for day in 0..14u64 {
        for i in 0..3u64 {
            let model = if i == 2 { "gpt-4o" } else { SONNET };
            let project = if i == 0 { "alpha" } else { "beta" };
            usage(api, &format!("r{day:02}-{i}"), model, project, 20_000 + day * 3_000 + i * 1_000).await;
        }
        api.clock.advance(86_400).unwrap();
    }
    api.post(
        "/v1/accounts/u_42/grants",
        json!({"amount": "25", "kind": "promo", "source": "github_star", "expires_after": "P3D"}),
    )
    .await
    .expect(201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    if !browser_available() {
        return;
    }
    let mut cfg = config();
    cfg.dashboard.currencies =
        vec![("EUR".into(), Factor::parse("0.92").unwrap()), ("GBP".into(), Factor::parse("0.79").unwrap())];
    let api = Arc::new(Api::build(true, cfg).await);
    story(&api).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = api.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let token = api.post("/v1/accounts/u_42/tokens", json!({"ttl_seconds": 86400})).await.expect(201)["token"]
        .as_str()
        .unwrap()
        .to_string();

    let api2 = api.clone();
    tokio::task::spawn_blocking(move || browse(&api2, &base, &token)).await.unwrap();
}

fn shot(b: &mut Browser, name: &str) {
    let dir = shots_dir();
    b.screenshot(1280, &dir.join(format!("{name}-desktop.png")));
    b.screenshot(390, &dir.join(format!("{name}-phone.png")));
}

fn amount(b: &Browser, css: &str) -> String {
    let el = b.find(&format!("{css} [data-amount]"));
    b.attr(&el, "data-amount").unwrap()
}

fn rows(b: &Browser, css: &str) -> usize {
    b.find_all(css).len()
}

fn browse(api: &Api, base: &str, token: &str) {
    let mut b = Browser::start(true);

    // Sign in: the token leaves the URL.
    b.go(&format!("{base}/dashboard?token={token}"));
    b.wait_for("the overview", |b| b.try_find("#available").is_some());
    assert_eq!(b.url(), format!("{base}/dashboard"));

    // The overview's numbers are the API's.
    let balance = block(api.balance("u_42"));
    assert_eq!(amount(&b, "#available"), balance["available"].as_str().unwrap());
    assert_eq!(amount(&b, "#held"), balance["held"].as_str().unwrap());
    assert_eq!(amount(&b, "#wallet-balance"), balance["wallet"]["balance"].as_str().unwrap());
    assert_eq!(amount(&b, "#wallet-usd"), balance["wallet"]["usd"].as_str().unwrap());
    let grants = balance["grants"].as_array().unwrap();
    assert_eq!(rows(&b, "#pools tbody tr"), grants.len() + 1);
    for (i, g) in grants.iter().enumerate() {
        let row = b.find(&format!("#pools tbody tr:nth-child({})", i + 1));
        assert_eq!(b.attr(&row, "data-grant").as_deref(), g["id"].as_str(), "burn order");
    }
    let soon = b.find("#pools .soon");
    assert_eq!(b.text(&soon), "in 3 days");
    assert_eq!(b.text(&b.find("#plan-name")), "Pro");
    assert_eq!(b.text(&b.find("#plan-fate")), "Renews");
    shot(&mut b, "overview");

    // The display currency: chosen, shown with its rate, nothing stored.
    b.click(&b.find("#currency option[value=\"EUR\"]"));
    b.click(&b.find("form.inline button"));
    b.wait_for("the converted wallet", |b| b.try_find("#wallet-converted").is_some());
    assert!(b.url().ends_with("/dashboard?currency=EUR"));
    assert_eq!(b.text(&b.find("#wallet-converted")), "≈ 18.40 EUR");
    assert_eq!(block(api.balance("u_42"))["wallet"], balance["wallet"]);

    // The keyboard: the first Tab reaches the skip link, Enter skips to main.
    b.go(&format!("{base}/dashboard"));
    b.keys("\u{E004}");
    assert_eq!(b.script("return document.activeElement.className"), json!("skip"));
    b.keys("\u{E007}");
    b.wait_for("focus on main", |b| b.script("return document.activeElement.id") == json!("main"));

    // Usage: the chart is drawn, and its days add up to the API's summary.
    b.go(&format!("{base}/dashboard/usage"));
    b.wait_for("the chart", |b| !b.find_all("#usage-chart svg rect").is_empty());
    let summary = block(api.get("/v1/accounts/u_42/usage/summary?group_by=model")).body.clone();
    let legend = b.text(&b.find("#usage-chart .legend"));
    for row in summary["rows"].as_array().unwrap() {
        let line = format!("{} — {}", row["key"].as_str().unwrap(), row["credits"].as_str().unwrap());
        assert!(legend.contains(&line), "{line:?} not in {legend:?}");
    }
    assert_eq!(rows(&b, "#requests tbody tr[data-request]"), 25);
    shot(&mut b, "usage");

    // Paging.
    b.click(&b.find("#older"));
    b.wait_for("the older page", |b| b.url().contains("cursor="));
    assert_eq!(rows(&b, "#requests tbody tr[data-request]"), 42 - 25);

    // Filters, held in the URL.
    b.go(&format!("{base}/dashboard/usage"));
    let project = b.find("input[name=\"project\"]");
    b.type_into(&project, "alpha");
    b.click(&b.find(".filters button[type=\"submit\"]"));
    b.wait_for("the filtered page", |b| b.url().contains("project=alpha"));
    let listed =
        block(api.get("/v1/accounts/u_42/usage?project=alpha&limit=1000")).body["data"].as_array().unwrap().len();
    assert_eq!(rows(&b, "#requests tbody tr[data-request]"), listed);
    assert_eq!(listed, 14);
    let by_project = b.text(&b.find("#by-project"));
    assert!(by_project.contains("alpha"), "{by_project}");

    // The export downloads the API's bytes for the same filter.
    b.click(&b.find("#export-csv"));
    let file = b.downloads.path().join("usage-u_42.csv");
    b.wait_for("the download", |_| file.exists());
    std::thread::sleep(Duration::from_millis(300));
    let theirs = block(api.get("/v1/accounts/u_42/usage/export?format=csv&project=alpha")).raw;
    assert_eq!(std::fs::read(&file).unwrap(), theirs.to_vec());

    // The credit record, filtered by type.
    b.go(&format!("{base}/dashboard/ledger"));
    assert_eq!(rows(&b, "#ledger tbody tr[data-entry]"), 25);
    shot(&mut b, "ledger");
    b.click(&b.find("select[name=\"type\"] option[value=\"topup\"]"));
    b.click(&b.find(".filters button[type=\"submit\"]"));
    b.wait_for("topups only", |b| b.url().contains("type=topup"));
    assert_eq!(rows(&b, "#ledger tbody tr[data-entry]"), 1);
    assert_eq!(rows(&b, "#ledger tbody tr[data-type=\"topup\"]"), 1);

    // Signing out ends the session.
    b.click(&b.find(".signout button"));
    // One script reads the heading: a find then a text could straddle the
    // navigation and hold an element of the page that is gone.
    b.wait_for("signed out", |b| {
        b.script("var h = document.querySelector('h1'); return h ? h.innerText : ''") == json!("Signed out")
    });
    b.go(&format!("{base}/dashboard"));
    assert!(b.text(&b.find("h1")).contains("not signed in"));
    shot(&mut b, "signed-out");
    drop(b);

    // JavaScript off: everything but the chart, whose numbers are a table.
    let mut b = Browser::start(false);
    b.go(&format!("{base}/dashboard?token={token}"));
    b.wait_for("the overview", |b| b.try_find("#available").is_some());
    assert_eq!(amount(&b, "#available"), block(api.balance("u_42"))["available"].as_str().unwrap());
    b.go(&format!("{base}/dashboard/usage"));
    assert!(b.find_all("#usage-chart svg").is_empty());
    assert_eq!(rows(&b, "#by-day tbody tr"), 30);
    assert_eq!(rows(&b, "#requests tbody tr[data-request]"), 25);
    b.click(&b.find("#older"));
    b.wait_for("the older page", |b| b.url().contains("cursor="));
    shot(&mut b, "usage-no-javascript");
}
