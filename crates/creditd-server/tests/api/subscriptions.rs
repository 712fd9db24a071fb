//! Plans, subscriptions, the checks before a request, the plan budget and
//! refunds over HTTP, driven by the test clock.

use serde_json::{Value, json};

use crate::support::{Api, Resp, SONNET, config};

async fn set_clock(api: &Api, now: &str) {
    api.post("/v1/test/clock", json!({"now": now})).await.expect(200);
}

async fn advance(api: &Api, seconds: i64) {
    api.post("/v1/test/clock", json!({"advance_seconds": seconds})).await.expect(200);
}

/// A model of one credit per input token and no provider cost: spending
/// exact amounts leaves every plan budget alone.
async fn flat_model(api: &Api) {
    api.put(
        "/v1/models/flat",
        json!({"credits_per_mtok": {"input": "1000000", "output": "0", "cache_read": "0", "cache_write": "0"},
               "credits": {"request": "0"}, "cost_usd": {"request": "0"}, "max_output_tokens": 1}),
    )
    .await
    .expect(200);
}

async fn usage(api: &Api, account: &str, request_id: &str, model: &str, input: u64) -> Resp {
    api.post(
        "/v1/usage",
        json!({"account_id": account, "request_id": request_id, "model": model, "status": "success",
               "usage": {"input_tokens": input}}),
    )
    .await
}

fn load_vectors() -> Value {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("spec/vectors/proration.json")).expect("spec/vectors/proration.json");
    serde_json::from_str(&text).expect("vector JSON")
}

/// Every case of `spec/vectors/proration.json`, as a real switch: a
/// subscription started at the period start with pools of the case's
/// amounts, spent down to its remaining (credits held count as not used,
/// which is how the backup pool is reached with main credits left), then a
/// switch at the case's `now`.
#[tokio::test]
async fn every_proration_vector_through_the_api() {
    let doc = load_vectors();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let s = |k: &str| case[k].as_str().unwrap().to_string();
        let pool = |p: &str, k: &str| case[p][k].as_str().unwrap().parse::<f64>().unwrap() as u64;
        let api = Api::build_at(&s("period_start"), true, config()).await;
        flat_model(&api).await;
        let (main, backup) = (pool("main", "amount"), pool("backup", "amount"));
        let multiplier = backup as f64 / main as f64;
        api.put(
            "/v1/plans/old",
            json!({"price_usd": s("old_price_usd"), "monthly_credits": main.to_string(), "bonus_percent": "0",
                   "backup_multiplier": multiplier.to_string(), "model_access": "all"}),
        )
        .await
        .expect(200);
        api.put("/v1/plans/new", json!({"price_usd": s("new_price_usd"), "monthly_credits": "100"})).await.expect(200);
        api.account("v").await;
        let start: jiff::Timestamp = s("period_start").parse().unwrap();
        let end: jiff::Timestamp = s("period_end").parse().unwrap();
        let kind = if end.duration_since(start).as_hours() == 30 * 24 { "pass_30d" } else { "monthly" };
        let started = api.post("/v1/accounts/v/subscription", json!({"plan": "old", "kind": kind})).await;
        let sub = &started.expect(201)["subscription"];
        assert_eq!(sub["current_period_start"], s("period_start"), "{name}");
        assert_eq!(sub["current_period_end"], s("period_end"), "{name}");
        let main_left = pool("main", "remaining");
        let spent = (main - main_left) + (backup - pool("backup", "remaining"));
        if main_left > 0 && backup > pool("backup", "remaining") {
            let hold = api.post(
                "/v1/authorize",
                json!({"account_id": "v", "request_id": "hold", "model": "flat", "input_tokens": main_left,
                       "max_output_tokens": 1}),
            );
            hold.await.expect(201);
        }
        if spent > 0 {
            usage(&api, "v", "spend", "flat", spent).await.expect(201);
        }
        set_clock(&api, &s("now")).await;
        let switched = api.post("/v1/accounts/v/subscription", json!({"plan": "new", "kind": "monthly"})).await;
        let body = switched.expect(201);
        let p = &body["proration"];
        let expect = &case["expect"];
        for field in ["time_used", "usage_used", "consumed", "credit_usd"] {
            assert_eq!(p[field], expect[field], "{name}: {field}");
        }
        assert_eq!((p["from_plan"].as_str(), p["to_plan"].as_str()), (Some("old"), Some("new")), "{name}");
        // 100 credits per USD; the wallet gets exactly that.
        let credit: f64 = expect["credit_usd"].as_str().unwrap().parse().unwrap();
        let credited = format!("{}", (credit * 100.0).round() as i64);
        assert_eq!(p["credited"], credited.as_str(), "{name}");
        assert_eq!(api.balance("v").await["wallet"]["balance"], credited.as_str(), "{name}");
        let entries = api.get("/v1/accounts/v/ledger?type=proration_credit").await;
        let entries = entries.expect(200)["data"].as_array().unwrap().clone();
        if credited == "0" {
            assert!(entries.is_empty(), "{name}");
        } else {
            assert_eq!(entries.len(), 1, "{name}");
            assert_eq!(entries[0]["amount"], credited.as_str(), "{name}");
            assert_eq!(entries[0]["reference"]["subscription_id"], sub["id"], "{name}");
        }
        let old = api.get("/v1/accounts/v/subscription").await;
        assert_eq!(old.expect(200)["plan"], "new", "{name}");
    }
}

#[tokio::test]
async fn plans_are_data() {
    let api = Api::new().await;
    // The built-in free plan is there before any is stored.
    let free = api.get("/v1/plans/free").await;
    assert_eq!(free.expect(200)["model_access"], "all");
    let pro = json!({"name": "Pro", "price_usd": "50", "monthly_credits": "5000", "bonus_percent": "20",
                     "backup_multiplier": "3", "rate_per_minute": 60, "daily_requests": 500, "weekly_requests": 1500,
                     "model_access": "all", "cost_budget_multiplier": "10"});
    let put = api.put("/v1/plans/pro", pro.clone()).await;
    let body = put.expect(200);
    assert_eq!((body["main_pool"].as_str(), body["backup_pool"].as_str()), (Some("6000"), Some("15000")));
    assert_eq!(body["budget_usd"], "500");
    assert_eq!(api.get("/v1/plans/pro").await.expect(200), body);
    let list = api.get("/v1/plans").await;
    let ids: Vec<&str> =
        list.expect(200)["data"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["free", "pro"]);
    let nobudget = api.put("/v1/plans/team", json!({"price_usd": "5", "cost_budget_multiplier": null})).await;
    assert_eq!(nobudget.expect(200)["budget_usd"], Value::Null);
    for (body, field) in [
        (json!({"price_usd": "-1"}), "price_usd"),
        (json!({"price_usd": "1", "model_access": "some"}), "model_access"),
        (json!({"price_usd": "1", "model_access": ["ok", "not ok"]}), "model_access"),
        (json!({"price_usd": "1", "bonus_percent": "1001"}), "bonus_percent"),
        (json!({"price_usd": "1", "rate_per_minute": 5_000_000_000u64}), "rate_per_minute"),
    ] {
        let r = api.put("/v1/plans/x", body).await;
        assert_eq!(r.expect_error(400, "invalid_request")["field"], field);
    }
    let r = api.put("/v1/plans/free", json!({"price_usd": "0", "cost_budget_multiplier": "10"})).await;
    assert_eq!(r.expect_error(400, "invalid_request")["field"], "cost_budget_multiplier");
    api.get("/v1/plans/nope").await.expect_error(404, "not_found");
    let gateway = api.key("gateway").await;
    let r = api.call("GET", "/v1/plans", Some(&gateway), None).await;
    r.expect_error(403, "forbidden");
}

/// Issue 13.2: `PUT /v1/plans/free` with only the field to change was `400
/// missing field price_usd`; `PATCH` merges the fields given.
#[tokio::test]
async fn patch_changes_only_the_fields_given() {
    let api = Api::new().await;
    let admin = api.key("admin").await;
    // The built-in free plan (nothing stored yet) can be patched.
    let r = api.call("PATCH", "/v1/plans/free", Some(&admin), Some(json!({"daily_requests": 10}))).await;
    let free = r.expect(200);
    assert_eq!(free["daily_requests"], 10);
    assert_eq!(free["price_usd"], "0");
    assert_eq!(free["cost_budget_multiplier"], Value::Null, "free keeps having no budget");
    assert_eq!(api.get("/v1/plans/free").await.expect(200), free);
    // A PUT still takes the whole plan (the spec's contract).
    let r = api.put("/v1/plans/free", json!({"daily_requests": 10})).await;
    assert_eq!(r.expect_error(400, "invalid_request")["field"], "price_usd");

    let pro = json!({"name": "Pro", "price_usd": "50", "monthly_credits": "5000", "rate_per_minute": 60,
                     "daily_requests": 500, "model_access": ["a", "b"], "cost_budget_multiplier": "10"});
    api.put("/v1/plans/pro", pro).await.expect(200);
    let r =
        api.call("PATCH", "/v1/plans/pro", Some(&admin), Some(json!({"price_usd": "60", "model_access": ["c"]}))).await;
    let patched = r.expect(200);
    assert_eq!(patched["price_usd"], "60");
    assert_eq!(patched["budget_usd"], "600", "derived fields follow");
    assert_eq!(patched["model_access"], json!(["c"]), "a list is replaced, not merged");
    assert_eq!((patched["name"].as_str(), patched["monthly_credits"].as_str()), (Some("Pro"), Some("5000")));
    assert_eq!(patched["rate_per_minute"], 60);
    // `null` is no limit, no budget (as in a PUT), not the default.
    let r = api
        .call(
            "PATCH",
            "/v1/plans/pro",
            Some(&admin),
            Some(json!({"rate_per_minute": null, "cost_budget_multiplier": null})),
        )
        .await;
    let patched = r.expect(200);
    assert_eq!((patched["rate_per_minute"].clone(), patched["budget_usd"].clone()), (Value::Null, Value::Null));
    assert_eq!(patched["daily_requests"], 500);

    // Refused, naming the field: unknown and derived fields, invalid results.
    for (body, field) in [
        (json!({"price": "1"}), "price"),
        (json!({"main_pool": "1"}), "main_pool"),
        (json!({"bonus_percent": "1001"}), "bonus_percent"),
        (json!({"price_usd": 5}), "price_usd"),
    ] {
        let r = api.call("PATCH", "/v1/plans/pro", Some(&admin), Some(body.clone())).await;
        assert_eq!(r.expect_error(400, "invalid_request")["field"], field, "{body}");
    }
    assert_eq!(api.get("/v1/plans/pro").await.expect(200), patched, "nothing refused was written");
    let r = api.call("PATCH", "/v1/plans/nope", Some(&admin), Some(json!({"price_usd": "1"}))).await;
    r.expect_error(404, "not_found");
}

/// A whole subscription's life on the test clock: start, use, the rate
/// limit, the daily cap, the plan budget, a switch, a late renewal within
/// the grace, cancel and expiry; and a refund.
#[tokio::test]
async fn a_subscription_life() {
    let api = Api::new().await; // 2026-03-01T00:00:00Z, UTC
    api.sonnet().await;
    // 5 USD of provider cost and 1 credit per request.
    api.put("/v1/models/pricey", json!({"cost_usd": {"request": "5"}, "credits": {"request": "1"}})).await.expect(200);
    api.put(
        "/v1/plans/free",
        json!({"name": "Free", "price_usd": "0", "rate_per_minute": 1, "daily_requests": 1000, "model_access": "free"}),
    )
    .await
    .expect(200);
    api.put(
        "/v1/plans/starter",
        json!({"price_usd": "1", "monthly_credits": "100", "rate_per_minute": 2, "daily_requests": 4,
               "model_access": ["pricey", SONNET]}),
    )
    .await
    .expect(200);
    api.put("/v1/plans/pro", json!({"price_usd": "5", "monthly_credits": "500"})).await.expect(200);
    api.account("u").await;
    usage(&api, "u", "f0", SONNET, 10).await.expect_error(403, "model_not_allowed");
    api.get("/v1/accounts/u/subscription").await.expect_error(404, "not_found");

    // Start: pools for a month, and the balance shows plan, budget and limits.
    let started = api.post_idem("/v1/accounts/u/subscription", "sub-1", json!({"plan": "starter"})).await;
    let body = started.expect(201).clone();
    assert_eq!(body["proration"], Value::Null);
    let sub = &body["subscription"];
    assert_eq!((sub["status"].as_str(), sub["kind"].as_str()), (Some("active"), Some("monthly")));
    assert_eq!(sub["current_period_end"], "2026-04-01T00:00:00Z");
    let replay = api.post_idem("/v1/accounts/u/subscription", "sub-1", json!({"plan": "starter"})).await;
    assert_eq!(replay.expect(201), &body, "an Idempotency-Key replays the first answer");
    let account = api.get("/v1/accounts/u").await;
    let account = account.expect(200);
    assert_eq!((account["plan"].as_str(), &account["subscription"]["id"]), (Some("starter"), &sub["id"]));
    let balance = api.balance("u").await;
    assert_eq!(balance["plan"]["id"], "starter");
    assert_eq!(balance["plan"]["subscription_id"], sub["id"]);
    assert_eq!(
        (balance["plan"]["budget_usd"].as_str(), balance["plan"]["budget_used_usd"].as_str()),
        (Some("10"), Some("0"))
    );
    let kinds: Vec<&str> = balance["grants"].as_array().unwrap().iter().map(|g| g["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["plan_main", "plan_backup"]);
    assert_eq!(balance["limits"]["weekly_requests"], Value::Null);

    // Use: two a minute; the third gets 429 with Retry-After.
    usage(&api, "u", "r1", SONNET, 1000).await.expect(201);
    advance(&api, 20).await;
    usage(&api, "u", "r2", SONNET, 1000).await.expect(201);
    let limited = usage(&api, "u", "r3", SONNET, 1000).await;
    let details = limited.expect_error(429, "rate_limited");
    assert_eq!(details["retry_after_seconds"], 40);
    assert_eq!(limited.headers.get("retry-after").unwrap(), "40");
    let balance = api.balance("u").await;
    assert_eq!(balance["limits"]["rate_per_minute"], json!({"limit": 2, "used": 2}));
    assert_eq!(
        balance["limits"]["daily_requests"],
        json!({"limit": 4, "used": 2, "resets_at": "2026-03-02T00:00:00Z"})
    );
    advance(&api, 40).await;
    usage(&api, "u", "r3", SONNET, 1000).await.expect(201);
    let estimate = api
        .post("/v1/estimate", json!({"model": SONNET, "account_id": "u", "input_tokens": 10, "max_output_tokens": 10}))
        .await;
    assert_eq!(estimate.expect(200)["reason"], "rate_limited");
    advance(&api, 60).await;
    api.authorize("u", "r4", 1000, 10).await.expect(201);
    api.settle("u", "r4", 1000, 10).await.expect(200);
    // The daily cap: 4 a day, until midnight UTC.
    advance(&api, 60).await; // 00:03:00
    let capped = api.authorize("u", "r5", 10, 10).await;
    assert_eq!(capped.expect_error(429, "daily_cap_reached")["limit"], 4);
    assert_eq!(capped.headers.get("retry-after").unwrap(), &(86_400 - 180).to_string());

    // The plan budget: 10 × 1 USD. With the 0.01215 USD of the sonnet
    // requests, two requests of 5 USD reach it; then the frozen pools
    // cannot pay and nothing else is left.
    set_clock(&api, "2026-03-02T00:00:00Z").await;
    usage(&api, "u", "b1", "pricey", 0).await.expect(201);
    usage(&api, "u", "b2", "pricey", 0).await.expect(201);
    let balance = api.balance("u").await;
    assert_eq!(balance["plan"]["budget_used_usd"], "10.01215");
    // The rate limit is checked before the budget.
    usage(&api, "u", "b3", "pricey", 0).await.expect_error(429, "rate_limited");
    advance(&api, 60).await;
    let exhausted = usage(&api, "u", "b3", "pricey", 0).await;
    let details = exhausted.expect_error(402, "plan_budget_exhausted");
    assert_eq!((details["budget_usd"].as_str(), details["budget_used_usd"].as_str()), (Some("10"), Some("10.01215")));
    // A top-up pays (and a positive wallet skips the plan's limits).
    api.topup("u", "0.05").await;
    let paid = usage(&api, "u", "b3", "pricey", 0).await;
    assert_eq!(paid.expect(201)["charged_from"], json!([{"source": "wallet", "amount": "1"}]));

    // Switch to pro on day 8: proration into the wallet.
    set_clock(&api, "2026-03-08T00:00:00Z").await;
    let switched = api.post("/v1/accounts/u/subscription", json!({"plan": "pro", "external_id": "pay-2"})).await;
    let body = switched.expect(201).clone();
    let p = &body["proration"];
    assert_eq!((p["from_plan"].as_str(), p["to_plan"].as_str()), (Some("starter"), Some("pro")));
    assert_eq!(p["time_used"], "0.225806");
    // 1 USD × (1 − 0.225806), floored to the cent.
    assert_eq!((p["credit_usd"].as_str(), p["credited"].as_str()), (Some("0.77"), Some("77")));
    let pro = body["subscription"].clone();
    assert_eq!(pro["current_period_end"], "2026-04-08T00:00:00Z");
    assert_eq!(api.balance("u").await["wallet"]["balance"], "81");

    // The period ends unpaid: past due, on free, the pools gone; renewed
    // within the day of grace, the next period starts at once.
    set_clock(&api, "2026-04-08T06:00:00Z").await;
    let late = api.get("/v1/accounts/u/subscription").await;
    let late = late.expect(200);
    assert_eq!(
        (late["status"].as_str(), late["grace_ends_at"].as_str()),
        (Some("past_due"), Some("2026-04-09T00:00:00Z"))
    );
    let balance = api.balance("u").await;
    assert_eq!(balance["plan"], json!({"id": "free"}));
    assert!(balance["grants"].as_array().unwrap().iter().all(|g| g["kind"] != "plan_main"));
    let renewed = api.post("/v1/accounts/u/subscription/renew", json!({})).await;
    let renewed = renewed.expect(200);
    assert_eq!(renewed["status"], "active");
    assert_eq!(renewed["current_period_start"], "2026-04-08T00:00:00Z");
    assert_eq!(renewed["current_period_end"], "2026-05-08T00:00:00Z");
    let balance = api.balance("u").await;
    assert_eq!(balance["plan"]["id"], "pro");
    let main: Vec<&Value> = balance["grants"].as_array().unwrap().iter().filter(|g| g["kind"] == "plan_main").collect();
    assert_eq!(
        (main[0]["amount"].as_str(), main[0]["starts_at"].as_str()),
        (Some("600"), Some("2026-04-08T06:00:00Z"))
    );

    // Cancel: no more renewals; it expires at the period end, back to free.
    let cancelled = api.post("/v1/accounts/u/subscription/cancel", json!({})).await;
    assert_eq!(cancelled.expect(200)["cancel_at_period_end"], true);
    set_clock(&api, "2026-05-08T00:00:00Z").await;
    let ended = api.get("/v1/accounts/u/subscription").await;
    let ended = ended.expect(200);
    assert_eq!((ended["status"].as_str(), ended["ended_at"].as_str()), (Some("expired"), Some("2026-05-08T00:00:00Z")));
    let account = api.get("/v1/accounts/u").await;
    let account = account.expect(200);
    assert_eq!((account["plan"].as_str(), &account["subscription"]), (Some("free"), &Value::Null));
    api.post("/v1/accounts/u/subscription/renew", json!({})).await.expect_error(409, "subscription_expired");

    // Disputed usage: refunded once.
    let refund = api.post("/v1/accounts/u/usage/r1/refund", json!({"reason": "looped"})).await;
    let record = refund.expect(200);
    assert_eq!((record["refunded"].as_bool(), record["request_id"].as_str()), (Some(true), Some("r1")));
    api.post("/v1/accounts/u/usage/r1/refund", json!({})).await.expect_error(409, "conflict");
    api.post("/v1/accounts/u/usage/nope/refund", json!({})).await.expect_error(404, "not_found");
    let refunds = api.get("/v1/accounts/u/ledger?type=refund").await;
    let refunds = refunds.expect(200)["data"].as_array().unwrap().clone();
    assert!(refunds.iter().all(|e| e["reference"]["request_id"] == "r1"));
    assert_eq!(api.store.audit().await.unwrap().breaches, vec![]);
}
