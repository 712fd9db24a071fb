//! Outgoing webhooks end to end: endpoints over the API, events written with
//! what caused them, the delivery worker, and a receiver on localhost that
//! verifies every request with the `standardwebhooks` package from PyPI (the
//! Standard Webhooks reference library), which fails and recovers.
//!
//! The interpreter is `CREDITD_TEST_PYTHON` (scripts/test sets it); without
//! it the test is skipped with a message, except under `CI=true`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use creditd_server::delivery::{self, DeliveryConfig};
use creditd_store::{AttemptResult, Clock, Command as StoreCommand, Reply};
use serde_json::{Value, json};

use crate::support::Api;

fn python() -> Option<String> {
    match std::env::var("CREDITD_TEST_PYTHON") {
        Ok(path) if !path.is_empty() => Some(path),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CREDITD_TEST_PYTHON is not set: under CI the webhook receiver tests must run")
        }
        _ => {
            eprintln!("skipped: CREDITD_TEST_PYTHON is not set (run scripts/test-deps, then scripts/test)");
            None
        }
    }
}

/// `tests/fixtures/webhook_receiver.py`, killed when dropped.
struct Receiver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Receiver {
    fn start(python: &str, secret: &str) -> Receiver {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhook_receiver.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(secret)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the webhook receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("the receiver's port");
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("the receiver printed {line:?}"));
        Receiver { child, base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() }
    }

    fn hook(&self) -> String {
        format!("{}/hook", self.base)
    }

    async fn get(&self, path: &str) -> Value {
        self.http.get(format!("{}{path}", self.base)).send().await.unwrap().json().await.unwrap()
    }

    /// The verified messages: `{"id", "payload": {"type", "timestamp", "data"}}`.
    async fn received(&self) -> Vec<Value> {
        self.get("/received").await.as_array().unwrap().clone()
    }

    async fn control(&self, what: &str) {
        let r = self.http.post(format!("{}/control/{what}", self.base)).send().await.unwrap();
        assert_eq!(r.status(), 204);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (30 s at most) until `check` gives a value.
async fn until<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn types(received: &[Value]) -> Vec<String> {
    received.iter().map(|m| m["payload"]["type"].as_str().unwrap().to_string()).collect()
}

async fn deliveries(api: &Api, query: &str) -> Vec<Value> {
    api.get(&format!("/v1/webhook-deliveries?{query}")).await.expect(200)["data"].as_array().unwrap().clone()
}

async fn advance(api: &Api, seconds: i64) {
    api.post("/v1/test/clock", json!({"advance_seconds": seconds})).await.expect(200);
}

fn worker(api: &Api) -> tokio::task::JoinHandle<()> {
    let config =
        DeliveryConfig { poll: Duration::from_millis(50), timeout: Duration::from_secs(5), ..Default::default() };
    delivery::spawn(api.store.clone(), config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_reach_a_standard_webhooks_receiver_that_fails_and_recovers() {
    let Some(python) = python() else { return };
    let secret = delivery::new_secret();
    let receiver = Receiver::start(&python, &secret);
    let api = Api::new().await;
    api.sonnet().await;

    // An endpoint with the receiver's secret, and one with another secret:
    // the library must refuse what the second one signs.
    let created = api.post("/v1/webhook-endpoints", json!({"url": receiver.hook(), "secret": secret})).await;
    let good = created.expect(201).clone();
    assert_eq!(good["secret"], secret.as_str());
    assert_eq!((good["enabled"].as_bool(), good["source"].as_str()), (Some(true), Some("api")));
    let good_id = good["id"].as_str().unwrap().to_string();
    let other = api
        .post("/v1/webhook-endpoints", json!({"url": receiver.hook(), "events": ["payment.applied"]}))
        .await
        .expect(201)
        .clone();
    let other_id = other["id"].as_str().unwrap().to_string();
    assert!(other["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_ne!(other["secret"], secret.as_str());
    // The list never shows a secret.
    let listed = api.get("/v1/webhook-endpoints").await.expect(200).clone();
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    assert!(listed["data"].as_array().unwrap().iter().all(|e| e.get("secret").is_none()), "{listed}");

    // Events written while no worker runs wait in the outbox (as after a
    // crash between the commit and the delivery).
    api.account("u").await;
    api.topup("u", "10").await;
    api.put("/v1/plans/pro", json!({"price_usd": "20", "monthly_credits": "1000"})).await.expect(200);
    api.put("/v1/plans/max", json!({"price_usd": "50", "monthly_credits": "3000"})).await.expect(200);
    api.post("/v1/accounts/u/subscription", json!({"plan": "pro"})).await.expect(201);
    api.post("/v1/accounts/u/subscription", json!({"plan": "max"})).await.expect(201);
    api.post("/v1/accounts/u/subscription/cancel", json!({})).await.expect(200);
    api.authorize("u", "r1", 1000, 100).await.expect(201);
    api.settle("u", "r1", 1000, 100).await.expect(200);
    api.post("/v1/accounts/u/usage/r1/refund", json!({"reason": "looped"})).await.expect(200);
    assert!(receiver.received().await.is_empty());
    let pending = deliveries(&api, "status=pending").await;
    assert_eq!(pending.len(), 6, "5 events to the first endpoint, the top-up to the second too: {pending:?}");

    let worker = worker(&api);
    let expected =
        ["payment.applied", "subscription.started", "subscription.switched", "subscription.canceled", "usage.refunded"];
    let received = until("the first events", || async {
        let r = receiver.received().await;
        (r.len() >= 5).then_some(r)
    })
    .await;
    let mut got = types(&received);
    got.sort();
    got.dedup();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "{received:?}");
    // Once: the other endpoint's copy did not verify.
    let applied: Vec<&Value> = received.iter().filter(|m| m["payload"]["type"] == "payment.applied").collect();
    assert_eq!(applied.len(), 1, "{received:?}");
    let data = &applied[0]["payload"]["data"];
    assert_eq!((data["account_id"].as_str(), data["kind"].as_str()), (Some("u"), Some("topup")));
    assert_eq!((data["amount_usd"].as_str(), data["provider"].as_str()), (Some("10"), Some("manual")));
    assert!(data["payment_id"].as_str().is_some_and(|id| !id.is_empty()), "{data}");
    assert_eq!(received.len(), 5, "{received:?}");
    let switched = received.iter().find(|m| m["payload"]["type"] == "subscription.switched").unwrap();
    assert_eq!(switched["payload"]["data"]["plan_id"], "max");
    assert_eq!(switched["payload"]["data"]["previous_plan_id"], "pro");
    let refunded = received.iter().find(|m| m["payload"]["type"] == "usage.refunded").unwrap();
    assert_eq!(refunded["payload"]["data"]["request_id"], "r1");
    let refused: u64 = until("the other endpoint's refusal", || async {
        let n = receiver.get("/refused").await.as_u64().unwrap();
        (n >= 1).then_some(n)
    })
    .await;
    assert_eq!(refused, 1);

    // Each delivery is recorded: delivered after one attempt, or (the
    // wrong secret) pending with the receiver's 401 and its back-off.
    let good_done = until("the deliveries recorded", || async {
        let d = deliveries(&api, &format!("endpoint_id={good_id}&status=delivered")).await;
        (d.len() == 5).then_some(d)
    })
    .await;
    assert!(good_done.iter().all(|d| d["attempts"] == 1 && d["last_status"] == 204), "{good_done:?}");
    let wrong = until("the refused delivery recorded", || async {
        let d = deliveries(&api, &format!("endpoint_id={other_id}")).await;
        d.first().filter(|d| d["attempts"] == 1).cloned()
    })
    .await;
    assert_eq!((wrong["status"].as_str(), wrong["last_status"].as_u64()), (Some("pending"), Some(401)), "{wrong}");
    assert!(wrong["last_error"].as_str().unwrap().starts_with("HTTP 401"), "{wrong}");

    // The receiver fails: the attempt is recorded, and after the back-off
    // (5 s on the test clock) the event goes through once it recovers.
    receiver.control("fail").await;
    api.post("/v1/accounts/u/wallet/topups", json!({"amount_usd": "7", "provider": "manual"})).await.expect(201);
    let failing = until("a failed attempt", || async {
        let d = deliveries(&api, &format!("endpoint_id={good_id}&status=pending")).await;
        d.into_iter().find(|d| d["attempts"] == 1)
    })
    .await;
    assert_eq!(failing["last_status"], 503, "{failing}");
    let failing_id = failing["id"].as_str().unwrap().to_string();
    // Not due again before its back-off.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = api.get(&format!("/v1/webhook-deliveries/{failing_id}")).await.expect(200).clone();
    assert_eq!((d["attempts"].as_u64(), d["status"].as_str()), (Some(1), Some("pending")), "{d}");
    receiver.control("recover").await;
    advance(&api, 5).await;
    let recovered = until("the delivery after recovery", || async {
        let d = api.get(&format!("/v1/webhook-deliveries/{failing_id}")).await.expect(200).clone();
        (d["status"] == "delivered").then_some(d)
    })
    .await;
    assert_eq!((recovered["attempts"].as_u64(), recovered["last_status"].as_u64()), (Some(2), Some(204)));
    let received = receiver.received().await;
    let last = received.last().unwrap();
    assert_eq!(
        (last["payload"]["type"].as_str(), last["payload"]["data"]["amount_usd"].as_str()),
        (Some("payment.applied"), Some("7"))
    );

    // A retry sends a delivered event again, with the same webhook-id.
    let retried = api.post(&format!("/v1/webhook-deliveries/{failing_id}/retry"), json!({})).await.expect(200).clone();
    assert_eq!(retried["status"], "pending");
    let again = until("the retried delivery", || async {
        let r = receiver.received().await;
        (r.len() > received.len()).then_some(r)
    })
    .await;
    assert_eq!(again.last().unwrap()["id"], last["id"]);

    // The wrong secret never verifies: after three days of retries the
    // delivery is failed for good.
    for _ in 0..20 {
        advance(&api, 12 * 3600).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let given_up = until("the given-up delivery", || async {
        let d = deliveries(&api, &format!("endpoint_id={other_id}&status=failed")).await;
        d.into_iter().next()
    })
    .await;
    assert!(given_up["attempts"].as_u64().unwrap() >= 2, "{given_up}");
    assert!(given_up["next_attempt_at"].is_null());

    // Per-endpoint metrics.
    let metrics = api.call("GET", "/metrics", None, None).await;
    let text = String::from_utf8_lossy(&metrics.raw).to_string();
    let delivered = format!("creditd_outgoing_webhook_attempts_total{{endpoint=\"{good_id}\",outcome=\"delivered\"}}");
    assert!(text.contains(&delivered), "{text}");
    assert!(text.contains(&format!("creditd_outgoing_webhook_given_up_total{{endpoint=\"{other_id}\"}}")), "{text}");
    worker.abort();
}

/// A worker that claims a delivery and dies before recording it loses
/// nothing: the delivery is due again after its lease.
#[tokio::test]
async fn a_claimed_delivery_comes_back_after_its_lease() {
    let api = Api::new().await;
    api.post("/v1/webhook-endpoints", json!({"url": "http://127.0.0.1:9/hook"})).await.expect(201);
    api.account("u").await;
    api.topup("u", "10").await;
    let claim = || StoreCommand::ClaimDeliveries { limit: 10, lease_seconds: 60 };
    let store = Arc::clone(&api.store);
    let Reply::Claimed(first) = store.execute(claim(), None).await.unwrap() else { panic!("claimed") };
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].event.kind.as_str(), "payment.applied");
    let Reply::Claimed(none) = store.execute(claim(), None).await.unwrap() else { panic!("claimed") };
    assert!(none.is_empty(), "claimed twice within the lease");
    advance(&api, 61).await;
    let Reply::Claimed(back) = store.execute(claim(), None).await.unwrap() else { panic!("claimed") };
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].delivery.id, first[0].delivery.id);
    assert_eq!(back[0].event.id, first[0].event.id);
    let result = AttemptResult::Failed { status: None, error: "connection refused".into() };
    let Reply::Delivery(d) =
        store.execute(StoreCommand::RecordAttempt { id: back[0].delivery.id.clone(), result }, None).await.unwrap()
    else {
        panic!("delivery")
    };
    assert_eq!((d.attempts, d.status.as_str(), d.last_status), (1, "pending", None));
}

#[tokio::test]
async fn endpoints_refuse_bad_input() {
    let api = Api::new().await;
    for (body, field) in [
        (json!({"url": "ftp://example.com/x"}), "url"),
        (json!({"url": "not a url"}), "url"),
        (json!({"url": "https://user:pw@example.com/"}), "url"),
        (json!({"url": "https://example.com/", "events": ["credits.lowish"]}), "events"),
        (json!({"url": "https://example.com/", "secret": "hunter2"}), "secret"),
        (json!({"url": "https://example.com/", "secret": "whsec_c2hvcnQ="}), "secret"),
    ] {
        let r = api.post("/v1/webhook-endpoints", body.clone()).await;
        assert_eq!(r.expect_error(400, "invalid_request")["field"], field, "{body}");
    }
    api.post("/v1/webhook-endpoints", json!({"url": "https://example.com/", "colour": "red"}))
        .await
        .expect_error(400, "invalid_request");
    api.get("/v1/webhook-endpoints/nope").await.expect_error(404, "not_found");
    api.call("PATCH", "/v1/webhook-endpoints/nope", Some(&api.admin.clone()), Some(json!({"enabled": false})))
        .await
        .expect_error(404, "not_found");
    api.post("/v1/webhook-deliveries/nope/retry", json!({})).await.expect_error(404, "not_found");
    api.get("/v1/webhook-deliveries?status=lost").await.expect_error(400, "invalid_request");

    // A change over the API; the gateway key may not.
    let e = api.post("/v1/webhook-endpoints", json!({"url": "https://example.com/a"})).await.expect(201).clone();
    let path = format!("/v1/webhook-endpoints/{}", e["id"].as_str().unwrap());
    let admin = api.admin.clone();
    let changed =
        api.call("PATCH", &path, Some(&admin), Some(json!({"enabled": false, "events": ["credits.low"]}))).await;
    let changed = changed.expect(200);
    assert_eq!((changed["enabled"].as_bool(), changed["events"].clone()), (Some(false), json!(["credits.low"])));
    assert!(changed.get("secret").is_none());
    let gateway = api.key("gateway").await;
    api.call("GET", "/v1/webhook-endpoints", Some(&gateway), None).await.expect_error(403, "forbidden");

    // An Idempotency-Key replay never stores the secret.
    let first = api.post_idem("/v1/webhook-endpoints", "k1", json!({"url": "https://example.com/b"})).await;
    assert!(first.expect(201)["secret"].as_str().unwrap().starts_with("whsec_"));
    let replay = api.post_idem("/v1/webhook-endpoints", "k1", json!({"url": "https://example.com/b"})).await;
    assert_eq!(
        (replay.expect(201)["secret"].clone(), replay.body["redacted"].clone()),
        (Value::Null, json!(["secret"]))
    );
}

/// The configuration's endpoints: stored without their secret, not changed
/// over the API, disabled once no longer configured.
#[tokio::test]
async fn endpoints_of_the_configuration_are_synced() {
    let api = Api::new().await;
    let now = api.clock.now();
    let ops = creditd_store::Endpoint {
        id: "ops".into(),
        url: "https://ops.example.com/hook".into(),
        secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
        events: vec![],
        enabled: true,
        from_config: true,
        created_at: now,
        updated_at: now,
    };
    let sync = |endpoints: Vec<creditd_store::Endpoint>| StoreCommand::SyncConfigEndpoints { endpoints };
    api.store.execute(sync(vec![ops.clone()]), None).await.unwrap();
    let stored = api.store.endpoint("ops").await.unwrap().expect("stored");
    assert_eq!((stored.secret, stored.from_config, stored.enabled), (None, true, true));
    let listed = api.get("/v1/webhook-endpoints/ops").await.expect(200).clone();
    assert_eq!(listed["source"], "config");
    let admin = api.admin.clone();
    api.call("PATCH", "/v1/webhook-endpoints/ops", Some(&admin), Some(json!({"enabled": false})))
        .await
        .expect_error(409, "conflict");
    // Synced again unchanged, then no longer configured.
    api.store.execute(sync(vec![ops]), None).await.unwrap();
    api.store.execute(sync(vec![]), None).await.unwrap();
    let gone = api.get("/v1/webhook-endpoints/ops").await.expect(200).clone();
    assert_eq!(gone["enabled"], false);
}

/// `credits.low` once per crossing (again only after credits lift the
/// account above the threshold), `credits.depleted` at zero; a share of
/// the period's pools for a subscriber.
#[tokio::test]
async fn low_credits_are_told_once_per_crossing() {
    use creditd_core::events::Threshold;
    let mut config = crate::support::config();
    let low = &mut config.engine.billing.low_credits;
    low.default = vec![Threshold::parse("40").unwrap()];
    low.plans.insert("pro".into(), vec![Threshold::parse("20%").unwrap()]);
    let api = Api::build(true, config).await;
    api.put(
        "/v1/models/flat",
        json!({"credits_per_mtok": {"input": "1000000", "output": "0", "cache_read": "0", "cache_write": "0"},
               "credits": {"request": "0"}, "cost_usd": {"request": "0"}, "max_output_tokens": 1}),
    )
    .await
    .expect(200);
    api.post("/v1/webhook-endpoints", json!({"url": "http://127.0.0.1:9/hook"})).await.expect(201);
    let told = |d: &[Value], kind: &str| d.iter().filter(|d| d["event_type"] == kind).count();

    api.account("u").await;
    api.grant("u", "100").await;
    let usage = |id: &str, credits: u64| json!({"account_id": "u", "request_id": id, "model": "flat", "status": "success", "usage": {"input_tokens": credits}});
    api.post("/v1/usage", usage("a1", 50)).await.expect(201);
    assert_eq!(told(&deliveries(&api, "").await, "credits.low"), 0, "50 left, above 40");
    api.post("/v1/usage", usage("a2", 20)).await.expect(201);
    api.post("/v1/usage", usage("a3", 5)).await.expect(201);
    let d = deliveries(&api, "").await;
    assert_eq!(told(&d, "credits.low"), 1, "30 then 25 left: one crossing {d:?}");
    api.grant("u", "100").await;
    api.post("/v1/usage", usage("a4", 100)).await.expect(201);
    let d = deliveries(&api, "").await;
    assert_eq!(told(&d, "credits.low"), 2, "refilled to 125, then down to 25: a new crossing");
    api.post("/v1/usage", usage("a5", 25)).await.expect(201);
    let d = deliveries(&api, "").await;
    assert_eq!((told(&d, "credits.low"), told(&d, "credits.depleted")), (2, 1));

    // A subscriber's share of the pools: 20% of 1,000.
    let plan =
        api.put("/v1/plans/pro", json!({"price_usd": "20", "monthly_credits": "1000"})).await.expect(200).clone();
    let whole = |v: &Value| v.as_str().unwrap().parse::<u64>().unwrap();
    let pools = whole(&plan["main_pool"]) + whole(&plan["backup_pool"]);
    let level = pools / 5;
    api.account("s").await;
    api.post("/v1/accounts/s/subscription", json!({"plan": "pro"})).await.expect(201);
    let sub_usage = |id: &str, credits: u64| json!({"account_id": "s", "request_id": id, "model": "flat", "status": "success", "usage": {"input_tokens": credits}});
    api.post("/v1/usage", sub_usage("s1", pools - level - 10)).await.expect(201);
    let d = deliveries(&api, "").await;
    assert_eq!(d.iter().filter(|d| d["event_type"] == "credits.low" && d["account_id"] == "s").count(), 0);
    api.post("/v1/usage", sub_usage("s2", 20)).await.expect(201);
    let d = deliveries(&api, "").await;
    let lows: Vec<&Value> = d.iter().filter(|d| d["event_type"] == "credits.low" && d["account_id"] == "s").collect();
    assert_eq!(lows.len(), 1, "{d:?}");
    // What the event says.
    let claim = StoreCommand::ClaimDeliveries { limit: 100, lease_seconds: 60 };
    let Reply::Claimed(claimed) = api.store.execute(claim, None).await.unwrap() else { panic!("claimed") };
    let low = claimed.iter().find(|c| c.event.kind.as_str() == "credits.low" && c.event.account_id == "s").unwrap();
    let field = |name| low.event.field(name);
    let (level, available) = (level.to_string(), (level - 10).to_string());
    assert_eq!(
        (field("threshold"), field("level"), field("available")),
        (Some("20%"), Some(level.as_str()), Some(available.as_str()))
    );
}

/// The messages of `kind` the receiver verified.
fn of_kind<'a>(received: &'a [Value], kind: &str) -> Vec<&'a Value> {
    received.iter().filter(|m| m["payload"]["type"] == kind).collect()
}

/// Waits until the receiver has verified a message of `kind` about
/// `account`, and gives every message it has.
async fn received_once(receiver: &Receiver, kind: &str, account: &str) -> Vec<Value> {
    until(&format!("{kind} for {account}"), || async {
        let r = receiver.received().await;
        r.iter().any(|m| m["payload"]["type"] == kind && m["payload"]["data"]["account_id"] == account).then_some(r)
    })
    .await
}

/// Events that time makes, written by the writer's idle sweeper with nobody
/// touching the accounts, signed and delivered once each: a grant's
/// `grant.expiring` (72 hours before its expiry, the default; not for a
/// grant already spent out), a subscription's `past_due` at its period end
/// and `expired` at the end of its grace (a day, the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_driven_events_reach_the_receiver_once() {
    let Some(python) = python() else { return };
    let secret = delivery::new_secret();
    let receiver = Receiver::start(&python, &secret);
    let api = Api::new().await;
    api.put(
        "/v1/models/flat",
        json!({"credits_per_mtok": {"input": "1000000", "output": "0", "cache_read": "0", "cache_write": "0"},
               "credits": {"request": "0"}, "cost_usd": {"request": "0"}, "max_output_tokens": 1}),
    )
    .await
    .expect(200);
    api.post("/v1/webhook-endpoints", json!({"url": receiver.hook(), "secret": secret})).await.expect(201);
    let worker = worker(&api);

    // A grant that expires in ten days, and one that expires first, spent
    // out before its warning comes.
    api.account("g").await;
    let expiring =
        |amount: &str, at: &str| json!({"amount": amount, "kind": "promo", "source": "spring_promo", "expires_at": at});
    let soon = api.post("/v1/accounts/g/grants", expiring("100", "2026-03-11T00:00:00Z")).await.expect(201).clone();
    let soon_id = soon["id"].as_str().unwrap().to_string();
    let empty = api.post("/v1/accounts/g/grants", expiring("10", "2026-03-10T00:00:00Z")).await.expect(201).clone();
    let empty_id = empty["id"].as_str().unwrap().to_string();
    let usage = json!({"account_id": "g", "request_id": "g1", "model": "flat", "status": "success", "usage": {"input_tokens": 10}});
    api.post("/v1/usage", usage).await.expect(201);
    let grants = api.get("/v1/accounts/g/grants?include_spent=true").await.expect(200).clone();
    let spent = grants["data"].as_array().unwrap().iter().find(|g| g["id"] == empty_id.as_str()).unwrap();
    assert_eq!(spent["remaining"], "0", "{grants}");

    // A monthly subscription: 2026-03-01 to 2026-04-01, unpaid after.
    api.put("/v1/plans/pro", json!({"price_usd": "20", "monthly_credits": "1000"})).await.expect(200);
    api.account("s").await;
    api.post("/v1/accounts/s/subscription", json!({"plan": "pro"})).await.expect(201);
    received_once(&receiver, "subscription.started", "s").await;

    // 2026-03-08T01:00: 72 hours before `soon` expires, and past `empty`'s
    // warning. Nobody touches the account: the sweeper writes the warning.
    advance(&api, 7 * 86_400 + 3600).await;
    let received = received_once(&receiver, "grant.expiring", "g").await;
    let told = of_kind(&received, "grant.expiring");
    assert_eq!(told.len(), 1, "{received:?}");
    let data = &told[0]["payload"]["data"];
    assert_eq!(
        data,
        &json!({"account_id": "g", "grant_id": soon_id, "kind": "promo", "source": "spring_promo",
                "remaining": "100", "expires_at": "2026-03-11T00:00:00Z"})
    );
    assert_eq!(
        data.as_object().unwrap().keys().next().map(String::as_str),
        Some("account_id"),
        "account_id first, as for every event"
    );
    assert_eq!(told[0]["payload"]["timestamp"], "2026-03-08T01:00:00Z");
    // Touched, and swept again later: not told again.
    api.grant("g", "5").await;
    advance(&api, 3600).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // The plan's pools are grants too: told 72 hours before the period ends.
    advance(&api, 21 * 86_400 - 3600).await; // 2026-03-29T01:00
    let received = until("the pools' warnings", || async {
        let r = receiver.received().await;
        let n = r
            .iter()
            .filter(|m| m["payload"]["type"] == "grant.expiring" && m["payload"]["data"]["account_id"] == "s")
            .count();
        (n >= 2).then_some(r)
    })
    .await;
    let pools: Vec<&Value> = of_kind(&received, "grant.expiring")
        .into_iter()
        .filter(|m| m["payload"]["data"]["account_id"] == "s")
        .collect();
    let mut kinds: Vec<&str> = pools.iter().map(|m| m["payload"]["data"]["kind"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(kinds, ["plan_backup", "plan_main"], "{pools:?}");
    assert!(pools.iter().all(|m| m["payload"]["data"]["expires_at"] == "2026-04-01T00:00:00Z"), "{pools:?}");
    assert!(pools.iter().all(|m| m["payload"]["data"]["source"] == "plan:pro"), "{pools:?}");

    // Across the period end: past due, with its grace's end.
    advance(&api, 3 * 86_400).await; // 2026-04-01T01:00
    let received = received_once(&receiver, "subscription.past_due", "s").await;
    let past_due = of_kind(&received, "subscription.past_due");
    assert_eq!(past_due.len(), 1, "{received:?}");
    let data = &past_due[0]["payload"]["data"];
    assert_eq!((data["plan_id"].as_str(), data["status"].as_str()), (Some("pro"), Some("past_due")), "{data}");
    assert_eq!(data["period_end"], "2026-04-01T00:00:00Z");
    assert_eq!(data["grace_ends_at"], "2026-04-02T00:00:00Z");
    let subscription_id = data["subscription_id"].as_str().unwrap().to_string();

    // Across the grace's end: expired.
    advance(&api, 86_400).await; // 2026-04-02T01:00
    let received = received_once(&receiver, "subscription.expired", "s").await;
    let expired = of_kind(&received, "subscription.expired");
    assert_eq!(expired.len(), 1, "{received:?}");
    let data = &expired[0]["payload"]["data"];
    assert_eq!(
        (data["subscription_id"].as_str(), data["status"].as_str()),
        (Some(subscription_id.as_str()), Some("expired"))
    );

    // Later sweeps and touches tell none of them again.
    api.grant("s", "5").await;
    api.grant("g", "5").await;
    advance(&api, 86_400).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let received = receiver.received().await;
    for (kind, account, n) in [
        ("grant.expiring", "g", 1),
        ("grant.expiring", "s", 2),
        ("subscription.past_due", "s", 1),
        ("subscription.expired", "s", 1),
        ("subscription.started", "s", 1),
    ] {
        let got = of_kind(&received, kind).iter().filter(|m| m["payload"]["data"]["account_id"] == account).count();
        assert_eq!(got, n, "{kind} for {account}: {received:?}");
    }
    assert!(
        of_kind(&received, "grant.expiring").iter().all(|m| m["payload"]["data"]["grant_id"] != empty_id.as_str()),
        "the spent-out grant was told: {received:?}"
    );
    // Each message once: every webhook-id is distinct, every delivery
    // delivered at its first attempt, none refused.
    let mut ids: Vec<&str> = received.iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), received.len(), "{received:?}");
    let all = deliveries(&api, "limit=100").await;
    assert_eq!(all.len(), received.len(), "{all:?}");
    assert!(all.iter().all(|d| d["status"] == "delivered" && d["attempts"] == 1), "{all:?}");
    assert_eq!(receiver.get("/refused").await.as_u64(), Some(0));
    worker.abort();
}
