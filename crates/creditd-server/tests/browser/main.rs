//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`) against the real router on a local socket, on the
//! backend `CREDITD_TEST_BACKEND` selects. Signs in with a token, checks the
//! numbers against the API's, the currency picker, keyboard use, the chart,
//! filters, paging, the export download, the credit record, signing out,
//! and the pages with JavaScript off. The Manage page against the Creem
//! stand-in (`tests/api/standin.rs`): a top-up's checkout, its signed
//! webhook and the new balance on reload; a plan switch's proration, its
//! payment, and the old Creem subscription's cancel; a cancel at period
//! end. Writes screenshots of every page at desktop and phone widths into
//! `target/dashboard-screenshots/`.
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`,
//! `chromium-driver`; `scripts/test-deps` installs them). Without them the
//! test is skipped with a message, except under `CI=true`, where it fails.

#[allow(dead_code)]
#[path = "../api/standin.rs"]
mod standin;
#[allow(dead_code)]
#[path = "../api/support.rs"]
mod support;
mod webdriver;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use creditd_core::subscription::SubscriptionKind;
use creditd_core::units::{Credits, Factor, Usd};
use creditd_server::dashboard::{ProductDisplay, ProviderApi};
use creditd_server::payments::{CreemConfig, NowPaymentsConfig, PaymentsConfig, Product, WebhookSecret};
use creditd_server::provider_calls::{self, ProviderCallConfig};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use standin::StandIn;
use support::{Api, SONNET, config};
use webdriver::Browser;

/// One browser at a time: the tests take turns (two Chromiums on a small
/// machine make each other's waits time out).
async fn one_browser() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE.lock().await
}

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
    let _one = one_browser().await;
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

// ---------------------------------------------------------------------------
// Manage: payments through the Creem stand-in.

const CREEM_SECRET: &str = "whsec_browser_test";

fn creem_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(CREEM_SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Sends a Creem event, signed, as Creem does.
async fn creem(api: &Api, event: Value) -> Value {
    let body = serde_json::to_vec(&event).unwrap();
    let sig = creem_signature(&body);
    let r = api.raw("POST", "/webhooks/creem", None, body, &[("creem-signature", &sig)]).await;
    let answer = r.expect(200).clone();
    assert_eq!(answer["status"], "applied", "{answer}");
    answer
}

/// `checkout.completed` of a one-time product, as Creem sends it.
fn checkout_completed(event: &str, checkout: &str, order: &str, product: &str, cents: u64, account: &str) -> Value {
    json!({"id": event, "eventType": "checkout.completed", "created_at": 1_772_323_200_000u64, "object": {
        "id": checkout, "object": "checkout", "status": "completed", "mode": "test",
        "order": {"id": order, "customer": "cust_1", "product": product, "amount": cents, "currency": "USD",
                  "status": "paid", "type": "onetime"},
        "product": {"id": product, "name": product, "price": cents, "currency": "USD", "billing_type": "onetime"},
        "customer": {"id": "cust_1", "email": "user@example.com"}, "metadata": {"account_id": account}}})
}

/// `subscription.paid` of a monthly product, as Creem sends it.
fn subscription_paid(event: &str, sub: &str, transaction: &str, product: &str, cents: u64, account: &str) -> Value {
    json!({"id": event, "eventType": "subscription.paid", "created_at": 1_772_323_200_000u64, "object": {
        "id": sub, "object": "subscription", "status": "active",
        "product": {"id": product, "name": product, "price": cents, "currency": "USD", "billing_type": "recurring"},
        "customer": {"id": "cust_1", "email": "user@example.com"},
        "last_transaction_id": transaction, "metadata": {"account_id": account}}})
}

fn manage_config(base: &str, standin: &StandIn) -> creditd_server::ServerConfig {
    let mut products = HashMap::new();
    products.insert("prod_topup_20".to_string(), Product::Topup);
    products.insert("prod_topup_50".to_string(), Product::Topup);
    products.insert("prod_pack_500".to_string(), Product::Credits(Credits::whole(500)));
    for plan in ["starter", "pro"] {
        let product = Product::Plan { plan: plan.into(), kind: SubscriptionKind::Monthly };
        products.insert(format!("prod_{plan}"), product);
    }
    let mut c = config();
    c.payments = PaymentsConfig {
        creem: Some(CreemConfig { webhook_secret: WebhookSecret::new(CREEM_SECRET), products }),
        nowpayments: Some(NowPaymentsConfig { ipn_secret: WebhookSecret::new("ipn_browser_test") }),
    };
    c.dashboard.public_url = Some(base.to_string());
    c.dashboard.creem = Some(ProviderApi::new("creem_test_key", &standin.base));
    c.dashboard.nowpayments = Some(ProviderApi::new("np_test_key", &standin.base));
    let display =
        |label: &str, usd: i64| ProductDisplay { label: Some(label.into()), price_usd: Some(Usd::whole(usd)) };
    c.dashboard.products = HashMap::from([
        ("prod_topup_20".to_string(), display("Top up $20", 20)),
        ("prod_topup_50".to_string(), display("Top up $50", 50)),
        ("prod_pack_500".to_string(), display("500 credits", 5)),
    ]);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manage_page_in_a_real_browser() {
    if !browser_available() {
        return;
    }
    let _one = one_browser().await;
    let standin = Arc::new(StandIn::start().await);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let api = Arc::new(Api::build(true, manage_config(&base, &standin)).await);
    for (id, name, price, credits) in [("starter", "Starter", "10", "1000"), ("pro", "Pro", "50", "5000")] {
        api.put(
            &format!("/v1/plans/{id}"),
            json!({"name": name, "price_usd": price, "monthly_credits": credits, "rate_per_minute": 60,
                   "daily_requests": 500, "weekly_requests": 1500, "model_access": "all"}),
        )
        .await
        .expect(200);
    }
    // On Starter, paid through the Creem subscription `sub_starter`, for 3 days.
    api.account("u_7").await;
    creem(&api, subscription_paid("evt_1", "sub_starter", "tran_1", "prod_starter", 1000, "u_7")).await;
    api.clock.advance(3 * 86_400).unwrap();
    let router = api.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let config = ProviderCallConfig {
        creem: ProviderApi::new("creem_test_key", &standin.base),
        poll: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
        batch: 16,
    };
    let worker = provider_calls::spawn(api.store.clone(), config);
    let token = api.post("/v1/accounts/u_7/tokens", json!({"ttl_seconds": 86400})).await.expect(201)["token"]
        .as_str()
        .unwrap()
        .to_string();

    let (api2, standin2) = (api.clone(), standin.clone());
    tokio::task::spawn_blocking(move || manage(&api2, &base, &token, &standin2)).await.unwrap();
    worker.abort();
}

/// Waits (10 s at most) for the stand-in to have received `n` cancels.
fn cancels_received(standin: &StandIn, n: usize) -> Vec<(String, standin::Seen)> {
    let started = Instant::now();
    loop {
        let cancels = standin.cancels();
        if cancels.len() >= n {
            return cancels;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the stand-in received {cancels:?}, not {n} cancels");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn manage(api: &Api, base: &str, token: &str, standin: &StandIn) {
    let mut b = Browser::start(true);
    b.go(&format!("{base}/dashboard?token={token}"));
    b.wait_for("the overview", |b| b.try_find("#available").is_some());
    let before = Credits::parse(&amount(&b, "#wallet-balance")).unwrap();

    b.go(&format!("{base}/dashboard/manage"));
    assert_eq!(b.text(&b.find("h1")), "Manage");
    assert!(b.try_find("article[data-plan=\"starter\"].current").is_some(), "Starter is the plan");
    assert!(b.try_find("a[href=\"/dashboard/manage/switch?product=prod_pro\"]").is_some());
    shot(&mut b, "manage");

    // A top-up: the button leads to the stand-in's checkout for this account.
    b.click(&b.find("button[data-product=\"prod_topup_20\"]"));
    let checkout = format!("{}/checkout/", standin.base);
    b.wait_for("the stand-in's checkout page", |b| b.url().starts_with(&checkout));
    assert!(b.text(&b.find("#standin")).starts_with("Stand-in payment page ch_"));
    let sent = standin.seen().into_iter().rfind(|s| s.path == "/v1/checkouts").expect("a checkout");
    assert_eq!(sent.api_key.as_deref(), Some("creem_test_key"));
    assert_eq!(sent.body["product_id"], "prod_topup_20");
    assert_eq!(sent.body["metadata"], json!({"account_id": "u_7"}));
    let success = format!("{base}/dashboard/manage?notice=paid");
    assert_eq!(sent.body["success_url"], success.as_str());
    let checkout_id = b.url().rsplit('/').next().unwrap().to_string();

    // Creem sends the user back before its webhook arrives: nothing yet.
    b.go(&success);
    assert!(b.text(&b.find(".notice.good")).starts_with("Thank you!"));
    b.go(&format!("{base}/dashboard"));
    assert_eq!(Credits::parse(&amount(&b, "#wallet-balance")).unwrap(), before);
    // The signed webhook; a reload shows the new balance, the API's.
    block(creem(api, checkout_completed("evt_2", &checkout_id, "ord_2", "prod_topup_20", 2000, "u_7")));
    b.refresh();
    b.wait_for("the new balance", |b| Credits::parse(&amount(b, "#wallet-balance")).unwrap() != before);
    let shown = amount(&b, "#wallet-balance");
    assert_eq!(shown, block(api.balance("u_7"))["wallet"]["balance"].as_str().unwrap());
    assert_eq!(Credits::parse(&shown).unwrap(), before + Credits::whole(2000), "$20 at 100 credits per dollar");

    // A switch: the proration the engine would credit, before confirming.
    b.go(&format!("{base}/dashboard/manage"));
    b.click(&b.find("a[href=\"/dashboard/manage/switch?product=prod_pro\"]"));
    b.wait_for("the switch page", |b| b.try_find("#proration-usd").is_some());
    // Starter $10, 3 days of a 31-day March used: the 10% floor gives $9.
    assert_eq!(b.text(&b.find("#proration-usd")), "$9");
    let credited = amount(&b, "#proration-credits");
    assert_eq!(credited, "900");
    shot(&mut b, "manage-switch");
    b.click(&b.find("#confirm-switch"));
    b.wait_for("the stand-in's checkout page", |b| b.url().starts_with(&checkout));
    let sent = standin.seen().into_iter().rfind(|s| s.path == "/v1/checkouts").expect("a checkout");
    assert_eq!(sent.body["product_id"], "prod_pro");
    assert!(standin.cancels().is_empty(), "nothing is cancelled before the payment");

    // The new plan's payment: the switch credits what the page showed, and
    // the old Creem subscription receives its cancel, once.
    block(creem(api, subscription_paid("evt_3", "sub_pro", "tran_3", "prod_pro", 5000, "u_7")));
    let cancels = cancels_received(standin, 1);
    assert_eq!(cancels.len(), 1, "{cancels:?}");
    assert_eq!(cancels[0].0, "sub_starter");
    assert_eq!(cancels[0].1.body, json!({"mode": "immediate"}));
    assert_eq!(cancels[0].1.api_key.as_deref(), Some("creem_test_key"));
    let ledger = block(api.get("/v1/accounts/u_7/ledger?type=proration_credit")).body.clone();
    assert_eq!(ledger["data"][0]["amount"], credited.as_str());
    b.go(&format!("{base}/dashboard/manage"));
    assert!(b.try_find("article[data-plan=\"pro\"].current").is_some(), "Pro is the plan");

    // Cancel at period end: the engine's flag, and a scheduled cancel at Creem.
    b.click(&b.find("#cancel"));
    b.wait_for("the cancelled notice", |b| b.url().ends_with("/dashboard/manage?notice=cancelled"));
    assert!(b.text(&b.find("#cancel-state")).contains("will not renew"));
    assert_eq!(block(api.get("/v1/accounts/u_7/subscription")).body["cancel_at_period_end"], true);
    let cancels = cancels_received(standin, 2);
    assert_eq!((cancels[1].0.as_str(), &cancels[1].1.body), ("sub_pro", &json!({"mode": "scheduled"})));
    shot(&mut b, "manage-cancelled");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(standin.cancels().len(), 2, "each cancel once");
}
