//! Estimate, authorize, settle, release and one-shot usage.

use serde_json::{Value, json};

use crate::support::{Api, SONNET};

async fn funded(credits: &str) -> Api {
    let api = Api::new().await;
    api.sonnet().await;
    api.account("u_1").await;
    api.grant("u_1", credits).await;
    api
}

#[tokio::test]
async fn estimate_without_and_with_an_account() {
    let api = funded("1").await;
    let plain = api.post("/v1/estimate", json!({"model": SONNET, "input_tokens": 1000})).await;
    let plain = plain.expect(200).clone();
    // max_output_tokens defaults to the model's 8192: 0.3 + 12.288 credits.
    assert_eq!(plain["estimate"], "12.588");
    assert_eq!(plain["cost_usd"], "0.12588");
    assert_eq!(plain["model"], SONNET);
    assert!(plain.get("available").is_none() && plain.get("allowed").is_none());

    let with = api
        .post(
            "/v1/estimate",
            json!({"model": SONNET, "account_id": "u_1", "input_tokens": 1000, "max_output_tokens": 0}),
        )
        .await;
    let with = with.expect(200);
    assert_eq!(with["estimate"], "0.3");
    assert_eq!(with["available"], "1");
    assert_eq!(with["allowed"], true);
    assert_eq!(with["reason"], Value::Null);

    let too_much = api.post("/v1/estimate", json!({"model": SONNET, "account_id": "u_1", "input_tokens": 1000})).await;
    assert_eq!(too_much.expect(200)["allowed"], false);
    assert_eq!(too_much.body["reason"], "insufficient_credits");

    // A free request type costs but is not charged.
    let free =
        api.post("/v1/estimate", json!({"model": SONNET, "request_type": "summarization", "input_tokens": 1000})).await;
    assert_eq!(free.expect(200)["estimate"], "0");
    assert_eq!(free.body["cost_usd"], "0.12588");

    api.post("/v1/accounts/u_1/suspend", json!({})).await.expect(200);
    let suspended =
        api.post("/v1/estimate", json!({"model": SONNET, "account_id": "u_1", "max_output_tokens": 1})).await;
    assert_eq!(suspended.expect(200)["reason"], "account_suspended");
    assert_eq!(suspended.body["allowed"], false);

    // No side effects: nothing held, nothing in the ledger but the grant.
    assert_eq!(api.balance("u_1").await["held"], "0");
    assert_eq!(api.get("/v1/accounts/u_1/ledger").await.body["data"].as_array().unwrap().len(), 1);

    api.post("/v1/estimate", json!({"model": "nope"})).await.expect_error(400, "unknown_model");
    api.post("/v1/estimate", json!({"model": SONNET, "account_id": "nobody"})).await.expect_error(404, "not_found");
    api.post("/v1/estimate", json!({"model": SONNET, "input_tokens": 1000000001u64}))
        .await
        .expect_error(400, "invalid_request");
}

#[tokio::test]
async fn authorize_places_a_hold_and_replays() {
    let api = funded("10").await;
    let body = json!({"account_id": "u_1", "request_id": "req_1", "model": SONNET, "request_type": "chat",
                      "input_tokens": 1000, "cache_read_tokens": 1000, "cache_write_tokens": 1000,
                      "max_output_tokens": 100, "images": 0, "tool_calls": 0, "hold_ttl_seconds": 60,
                      "project": "p1", "conversation": "c1"});
    let first = api.post("/v1/authorize", body.clone()).await;
    // 0.3 + 0.03 + 0.375 + 0.15 = 0.855 credits.
    let first_body = first.expect(201).clone();
    assert_eq!(first_body["estimate"], "0.855");
    assert_eq!(first_body["available"], "9.145");
    assert_eq!(first_body["expires_at"], "2026-03-01T00:01:00Z");
    assert!(first_body["hold_id"].is_string());
    let again = api.post("/v1/authorize", body.clone()).await;
    assert_eq!(again.status.as_u16(), 200);
    assert_eq!(again.raw, first.raw, "a replay is the same body");
    assert_eq!(api.balance("u_1").await["held"], "0.855", "held once");

    let mut changed = body.clone();
    changed["max_output_tokens"] = json!(200);
    api.post("/v1/authorize", changed).await.expect_error(409, "idempotency_conflict");
}

#[tokio::test]
async fn authorize_refusals() {
    let api = funded("1").await;
    let refused = api.authorize("u_1", "big", 1000, 1000).await;
    let details = refused.expect_error(402, "insufficient_credits");
    assert_eq!(details["available"], "1");
    assert_eq!(details["estimate"], "1.8");
    // A refused authorize is not remembered: the same request id may try again smaller.
    let retry = api.authorize("u_1", "big", 1000, 100).await;
    assert_eq!(retry.expect(201)["estimate"], "0.45");

    api.authorize("nobody", "r", 1, 1).await.expect_error(404, "not_found");
    let unknown = api
        .post(
            "/v1/authorize",
            json!({"account_id": "u_1", "request_id": "r2", "model": "gpt-unknown", "input_tokens": 1}),
        )
        .await;
    unknown.expect_error(400, "unknown_model");
    for ttl in [0, 86_401] {
        api.post(
            "/v1/authorize",
            json!({"account_id": "u_1", "request_id": "r3", "model": SONNET, "hold_ttl_seconds": ttl}),
        )
        .await
        .expect_error(400, "invalid_request");
    }
    api.post("/v1/accounts/u_1/suspend", json!({})).await.expect(200);
    api.authorize("u_1", "r4", 1, 1).await.expect_error(403, "account_suspended");
}

#[tokio::test]
async fn settle_charges_and_replays() {
    let api = funded("10").await;
    api.authorize("u_1", "r1", 1000, 1000).await.expect(201);
    let body = json!({"account_id": "u_1", "request_id": "r1", "status": "success",
                      "usage": {"input_tokens": 1000, "output_tokens": 200, "reasoning_tokens": 50, "system_tokens": 10,
                                "context_tokens": 5, "images": 0, "tool_calls": 1},
                      "started_at": "2026-03-01T00:00:00Z", "finished_at": "2026-03-01T00:00:02.5Z", "latency_ms": 2500,
                      "project": "proj", "conversation": "conv", "region": "eu", "retries": 1, "iterations": 2,
                      "external_calls": 3, "context_bytes": 4096, "tools": ["search", "fetch"],
                      "metadata": {"trace": "abc"}});
    let first = api.post("/v1/settle", body.clone()).await;
    let record = first.expect(200).clone();
    assert_eq!(record["credits"], "0.6");
    assert_eq!(record["cost_usd"], "0.006");
    assert_eq!(record["usage"]["reasoning_tokens"], 50);
    assert_eq!(record["usage"]["tool_calls"], 1);
    assert_eq!(record["tools"], json!(["search", "fetch"]));
    assert_eq!(record["metadata"], json!({"trace": "abc"}));
    assert_eq!(record["started_at"], "2026-03-01T00:00:00Z");
    assert_eq!(record["finished_at"], "2026-03-01T00:00:02.5Z");
    assert_eq!(record["latency_ms"], 2500);
    assert_eq!(record["project"], "proj");
    assert_eq!(record["region"], "eu");
    assert_eq!(record["retries"], 1);
    assert_eq!(record["iterations"], 2);
    assert_eq!(record["external_calls"], 3);
    assert_eq!(record["context_bytes"], 4096);
    assert_eq!(api.available("u_1").await, "9.4");

    let again = api.post("/v1/settle", body.clone()).await;
    assert_eq!(again.status.as_u16(), 200);
    assert_eq!(again.raw, first.raw);
    assert_eq!(api.available("u_1").await, "9.4", "charged once");
    let mut changed = body.clone();
    changed["usage"]["output_tokens"] = json!(201);
    api.post("/v1/settle", changed).await.expect_error(409, "idempotency_conflict");
}

#[tokio::test]
async fn settle_errors_and_statuses() {
    let api = funded("10").await;
    api.settle("u_1", "no_hold", 1, 1).await.expect_error(404, "not_found");
    api.authorize("u_1", "released", 10, 10).await.expect(201);
    api.post("/v1/release", json!({"account_id": "u_1", "request_id": "released"})).await.expect(200);
    let details = api.settle("u_1", "released", 1, 1).await.expect_error(409, "hold_not_open").clone();
    assert_eq!(details["status"], "released");

    // An error is not charged (charge_errors is false); cancelled pays what it used.
    api.authorize("u_1", "err", 1000, 1000).await.expect(201);
    let err = api
        .post(
            "/v1/settle",
            json!({"account_id": "u_1", "request_id": "err", "status": "error", "usage": {"input_tokens": 1000}}),
        )
        .await;
    assert_eq!(err.expect(200)["credits"], "0");
    assert_eq!(err.body["cost_usd"], "0.003");
    assert_eq!(err.body["status"], "error");
    api.authorize("u_1", "can", 1000, 1000).await.expect(201);
    let can = api
        .post(
            "/v1/settle",
            json!({"account_id": "u_1", "request_id": "can", "status": "cancelled", "usage": {"input_tokens": 1000}}),
        )
        .await;
    assert_eq!(can.expect(200)["credits"], "0.3");

    // Settling after the hold expired still charges, and says so.
    api.authorize("u_1", "late", 1000, 1000).await.expect(201);
    api.clock.advance(901).unwrap();
    let late = api.settle("u_1", "late", 1000, 0).await;
    assert_eq!(late.expect(200)["hold_expired"], true);
    assert_eq!(late.body["credits"], "0.3");

    for bad in [
        json!({"account_id": "u_1", "request_id": "x", "status": "done"}),
        json!({"account_id": "u_1", "request_id": "x", "usage": {"output_tokens": 1, "reasoning_tokens": 2}}),
        json!({"account_id": "u_1", "request_id": "x", "usage": {"input_tokens": -1}}),
        json!({"account_id": "u_1", "request_id": "x", "usage": {"inptu_tokens": 1}}),
        json!({"account_id": "u_1", "request_id": "x", "started_at": "2026-03-01T00:00:02Z", "finished_at": "2026-03-01T00:00:01Z"}),
        json!({"account_id": "u_1", "request_id": "x", "tools": "search"}),
        json!({"account_id": "u_1", "request_id": "x", "metadata": {"a": "x".repeat(5000)}}),
        json!({"account_id": "u_1", "request_id": "has space"}),
        json!({"account_id": "u_1"}),
    ] {
        api.post("/v1/settle", bad).await.expect_error(400, "invalid_request");
    }
}

#[tokio::test]
async fn release_frees_the_hold() {
    let api = funded("10").await;
    let hold = api.authorize("u_1", "r1", 1000, 1000).await.expect(201).clone();
    assert_eq!(api.available("u_1").await, "8.2");
    let released = api.post("/v1/release", json!({"account_id": "u_1", "request_id": "r1"})).await;
    assert_eq!(released.expect(200), &json!({"hold_id": hold["hold_id"], "request_id": "r1", "status": "released"}));
    assert_eq!(api.available("u_1").await, "10");
    // Releasing again answers the same.
    let again = api.post("/v1/release", json!({"account_id": "u_1", "request_id": "r1"})).await;
    assert_eq!(again.raw, released.raw);
    assert_eq!(api.available("u_1").await, "10");

    api.post("/v1/release", json!({"account_id": "u_1", "request_id": "none"})).await.expect_error(404, "not_found");
    api.authorize("u_1", "settled", 10, 10).await.expect(201);
    api.settle("u_1", "settled", 10, 10).await.expect(200);
    api.post("/v1/release", json!({"account_id": "u_1", "request_id": "settled"}))
        .await
        .expect_error(409, "hold_not_open");
    api.post("/v1/release", json!({"account_id": "u_1"})).await.expect_error(400, "invalid_request");
}

#[tokio::test]
async fn one_shot_usage() {
    let api = funded("1").await;
    let body = json!({"account_id": "u_1", "request_id": "u1", "model": SONNET, "request_type": "chat",
                      "usage": {"input_tokens": 1000, "output_tokens": 100}});
    let first = api.post("/v1/usage", body.clone()).await;
    let first_body = first.expect(201).clone();
    assert_eq!(first_body["credits"], "0.45");
    assert_eq!(first_body["hold_id"], Value::Null);
    let again = api.post("/v1/usage", body.clone()).await;
    assert_eq!(again.status.as_u16(), 200);
    assert_eq!(again.raw, first.raw);
    assert_eq!(api.available("u_1").await, "0.55");
    let mut changed = body.clone();
    changed["usage"]["output_tokens"] = json!(101);
    api.post("/v1/usage", changed).await.expect_error(409, "idempotency_conflict");

    // Enforced: refused when the credits do not cover it; not enforced: debt.
    let big = json!({"account_id": "u_1", "request_id": "u2", "model": SONNET, "usage": {"output_tokens": 1000}});
    let details = api.post("/v1/usage", big.clone()).await.expect_error(402, "insufficient_credits").clone();
    assert_eq!(details["available"], "0.55");
    assert_eq!(details["estimate"], "1.5");
    let mut unenforced = big.clone();
    unenforced["enforce"] = json!(false);
    let debt = api.post("/v1/usage", unenforced).await;
    assert_eq!(debt.expect(201)["debt_incurred"], "0.95");
    assert_eq!(api.balance("u_1").await["debt"], "0.95");

    // An authorized request id cannot be one-shot recorded.
    api.post("/v1/accounts/u_1/wallet/topups", json!({"amount_usd": "1", "provider": "manual"})).await.expect(201);
    api.authorize("u_1", "held", 1, 1).await.expect(201);
    let held = json!({"account_id": "u_1", "request_id": "held", "model": SONNET});
    api.post("/v1/usage", held).await.expect_error(409, "idempotency_conflict");

    api.post("/v1/usage", json!({"account_id": "u_1", "request_id": "u3", "model": "nope"}))
        .await
        .expect_error(400, "unknown_model");
    api.post("/v1/usage", json!({"account_id": "nobody", "request_id": "u3", "model": SONNET}))
        .await
        .expect_error(404, "not_found");
    api.post("/v1/usage", json!({"account_id": "u_1", "request_id": "u3", "model": SONNET, "enforce": "yes"}))
        .await
        .expect_error(400, "invalid_request");
    api.post("/v1/accounts/u_1/suspend", json!({})).await.expect(200);
    api.post("/v1/usage", json!({"account_id": "u_1", "request_id": "u4", "model": SONNET}))
        .await
        .expect_error(403, "account_suspended");
}

#[tokio::test]
async fn metering_ignores_idempotency_keys() {
    let api = funded("10").await;
    let admin = api.admin.clone();
    let body = serde_json::to_vec(
        &json!({"account_id": "u_1", "request_id": "k1", "model": SONNET, "input_tokens": 10, "max_output_tokens": 10}),
    )
    .unwrap();
    let first = api.raw("POST", "/v1/authorize", Some(&admin), body.clone(), &[("idempotency-key", "same")]).await;
    first.expect(201);
    let other = serde_json::to_vec(
        &json!({"account_id": "u_1", "request_id": "k2", "model": SONNET, "input_tokens": 10, "max_output_tokens": 10}),
    )
    .unwrap();
    let second = api.raw("POST", "/v1/authorize", Some(&admin), other, &[("idempotency-key", "same")]).await;
    assert_eq!(second.expect(201)["request_id"], "k2", "metering is keyed by request id only");
}
