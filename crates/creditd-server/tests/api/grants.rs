//! Grants, void, top-ups, adjustments and purchases.

use serde_json::{Value, json};

use crate::support::{Api, SONNET};

#[tokio::test]
async fn create_a_grant_with_every_field() {
    let api = Api::new().await;
    api.account("u_1").await;
    let grant = api
        .post(
            "/v1/accounts/u_1/grants",
            json!({"amount": "10.5", "kind": "promo", "source": "github_star", "reason": "starred the repo",
                   "priority": 5, "starts_at": "2026-03-01T00:00:00Z", "expires_after": "P7D"}),
        )
        .await;
    let grant = grant.expect(201).clone();
    assert!(grant["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(grant["kind"], "promo");
    assert_eq!(grant["source"], "github_star");
    assert_eq!(grant["reason"], "starred the repo");
    assert_eq!(grant["amount"], "10.5");
    assert_eq!(grant["remaining"], "10.5");
    assert_eq!(grant["held"], "0");
    assert_eq!(grant["priority"], 5);
    assert_eq!(grant["starts_at"], "2026-03-01T00:00:00Z");
    assert_eq!(grant["expires_at"], "2026-03-08T00:00:00Z");
    assert_eq!(grant["created_at"], "2026-03-01T00:00:00Z");

    let purchased = api.post("/v1/accounts/u_1/grants", json!({"amount": "3", "kind": "purchased"})).await;
    let purchased = purchased.expect(201);
    assert_eq!(purchased["priority"], 30);
    assert_eq!(purchased["expires_at"], Value::Null);
    let hourly = api.post("/v1/accounts/u_1/grants", json!({"amount": "1", "expires_after": "PT1H"})).await;
    assert_eq!(hourly.expect(201)["expires_at"], "2026-03-01T01:00:00Z");
    assert_eq!(api.available("u_1").await, "14.5");
}

#[tokio::test]
async fn grant_errors() {
    let api = Api::new().await;
    api.account("u_1").await;
    let path = "/v1/accounts/u_1/grants";
    for body in [
        json!({"amount": "0"}),
        json!({"amount": "-1"}),
        json!({"amount": "1000000000.000001"}),
        json!({"amount": "10.0"}),
        json!({"amount": "1e3"}),
        json!({"amount": 10}),
        json!({}),
        json!({"amount": "1", "kind": "plan_main"}),
        json!({"amount": "1", "kind": "gift"}),
        json!({"amount": "1", "priority": 101}),
        json!({"amount": "1", "priority": -1}),
        json!({"amount": "1", "expires_at": "2026-03-09T00:00:00Z", "expires_after": "P7D"}),
        json!({"amount": "1", "expires_after": "7 days"}),
        json!({"amount": "1", "expires_after": "P0D"}),
        json!({"amount": "1", "expires_at": "2026-02-01T00:00:00Z"}),
        json!({"amount": "1", "expires_at": "yesterday"}),
        json!({"amount": "1", "starts_at": "2026-03-05T00:00:00Z", "expires_at": "2026-03-04T00:00:00Z"}),
        json!({"amount": "1", "source": "x".repeat(129)}),
    ] {
        let r = api.post(path, body.clone()).await;
        assert_eq!(r.status.as_u16(), 400, "{body}: {r:?}");
        r.expect_error(400, "invalid_request");
    }
    // The largest grant is fine.
    api.post(path, json!({"amount": "1000000000"})).await.expect(201);
    api.post("/v1/accounts/nobody/grants", json!({"amount": "1"})).await.expect_error(404, "not_found");
}

#[tokio::test]
async fn list_grants_with_and_without_spent_ones() {
    let api = Api::new().await;
    api.sonnet().await;
    api.account("u_1").await;
    let spent = api.grant("u_1", "0.3").await;
    let kept = api.grant("u_1", "10").await;
    // 1000 input tokens = 0.3 credits: spends the first grant exactly.
    let r = api
        .post(
            "/v1/usage",
            json!({"account_id": "u_1", "request_id": "r1", "model": SONNET, "usage": {"input_tokens": 1000}}),
        )
        .await;
    let r = r.expect(201);
    assert_eq!(r["credits"], "0.3");
    assert_eq!(r["charged_from"][0]["grant_id"], spent["id"], "equal priority: the older grant first");

    let live = api.get("/v1/accounts/u_1/grants").await;
    let live: Vec<Value> = live.expect(200)["data"].as_array().unwrap().clone();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["id"], kept["id"]);
    let all = api.get("/v1/accounts/u_1/grants?include_spent=true").await;
    let all = all.expect(200)["data"].as_array().unwrap().clone();
    assert_eq!(all.len(), 2);
    assert!(all.iter().any(|g| g["id"] == spent["id"] && g["remaining"] == "0"));
    let page = api.get("/v1/accounts/u_1/grants?include_spent=true&limit=1").await;
    assert_eq!(page.expect(200)["data"].as_array().unwrap().len(), 1);
    assert!(page.body["next_cursor"].is_string());
    api.get("/v1/accounts/u_1/grants?include_spent=maybe").await.expect_error(400, "invalid_request");
    api.get("/v1/accounts/nobody/grants").await.expect_error(404, "not_found");
}

#[tokio::test]
async fn void_a_grant() {
    let api = Api::new().await;
    api.sonnet().await;
    api.account("u_1").await;
    let grant = api.grant("u_1", "10").await;
    let id = grant["id"].as_str().unwrap();
    // Hold 1.8 on it, then void: only the unheld 8.2 is voided.
    api.authorize("u_1", "r1", 1000, 1000).await.expect(201);
    let voided = api.post(&format!("/v1/accounts/u_1/grants/{id}/void"), json!({"reason": "abuse"})).await;
    let voided = voided.expect(200);
    assert_eq!(voided["id"], id);
    assert_eq!(voided["remaining"], "1.8");
    assert_eq!(voided["held"], "1.8");
    assert_eq!(voided["voided"], true);
    assert_eq!(api.available("u_1").await, "0");
    let ledger = api.get("/v1/accounts/u_1/ledger?type=void").await;
    let entry = &ledger.expect(200)["data"][0];
    assert_eq!(entry["amount"], "-8.2");
    assert_eq!(entry["grant_id"], id);
    assert_eq!(entry["reason"], "abuse");

    api.post("/v1/accounts/u_1/grants/nope/void", json!({})).await.expect_error(404, "not_found");
    api.post("/v1/accounts/nobody/grants/nope/void", json!({})).await.expect_error(404, "not_found");
    api.post(&format!("/v1/accounts/u_1/grants/{id}/void"), json!({"reason": 5}))
        .await
        .expect_error(400, "invalid_request");
}

#[tokio::test]
async fn topups_and_their_minimums() {
    let api = Api::new().await;
    api.account("u_1").await;
    let path = "/v1/accounts/u_1/wallet/topups";
    let t = api.post(path, json!({"amount_usd": "20", "provider": "creem", "external_id": "ord_1"})).await;
    let t = t.expect(201).clone();
    assert_eq!(t["wallet"], json!({"balance": "2000", "held": "0", "usd": "20"}));
    assert_eq!(t["entry"]["type"], "topup");
    assert_eq!(t["entry"]["amount"], "2000");
    assert_eq!(t["entry"]["grant_id"], Value::Null);
    assert_eq!(t["entry"]["balance_after"], "2000");

    let below = api.post(path, json!({"amount_usd": "4.99", "provider": "creem"})).await;
    let details = below.expect_error(400, "below_minimum_topup");
    assert_eq!(details["minimum_usd"], "5");
    api.post(path, json!({"amount_usd": "9", "provider": "nowpayments"}))
        .await
        .expect_error(400, "below_minimum_topup");
    // Exactly the minimum, and manual has none.
    api.post(path, json!({"amount_usd": "5", "provider": "creem"})).await.expect(201);
    let small = api.post(path, json!({"amount_usd": "0.000001", "provider": "manual"})).await;
    assert_eq!(small.expect(201)["wallet"]["balance"], "2500.0001");

    for body in [
        json!({"amount_usd": "20", "provider": "stripe"}),
        json!({"amount_usd": "20"}),
        json!({"amount_usd": "0", "provider": "manual"}),
        json!({"amount_usd": "-5", "provider": "manual"}),
        json!({"amount_usd": "20.00", "provider": "manual"}),
        json!({"amount_usd": "0.0000001", "provider": "manual"}),
        json!({"amount_usd": 20, "provider": "manual"}),
        json!({"amount_usd": "10000001", "provider": "manual"}),
    ] {
        api.post(path, body).await.expect_error(400, "invalid_request");
    }
    api.post("/v1/accounts/nobody/wallet/topups", json!({"amount_usd": "20", "provider": "manual"}))
        .await
        .expect_error(404, "not_found");
    assert_eq!(api.balance("u_1").await["wallet"]["balance"], "2500.0001");
}

#[tokio::test]
async fn adjustments_never_take_the_wallet_below_zero() {
    let api = Api::new().await;
    api.account("u_1").await;
    let path = "/v1/accounts/u_1/wallet/adjustments";
    let up = api.post(path, json!({"amount": "10", "reason": "goodwill"})).await;
    let up = up.expect(201).clone();
    assert_eq!(up["wallet"]["balance"], "10");
    assert_eq!(up["entry"]["type"], "adjustment");
    assert_eq!(up["entry"]["reason"], "goodwill");
    let down = api.post(path, json!({"amount": "-4", "reason": "correction"})).await;
    assert_eq!(down.expect(201)["wallet"]["balance"], "6");
    assert_eq!(down.body["entry"]["amount"], "-4");
    api.post(path, json!({"amount": "-6.000001"})).await.expect_error(409, "conflict");
    assert_eq!(api.balance("u_1").await["wallet"]["balance"], "6", "a refused adjustment changes nothing");
    for body in [json!({"amount": "0"}), json!({"amount": "-0"}), json!({"amount": "--1"}), json!({"reason": "x"})] {
        api.post(path, body).await.expect_error(400, "invalid_request");
    }
    api.post("/v1/accounts/nobody/wallet/adjustments", json!({"amount": "1"})).await.expect_error(404, "not_found");
}

#[tokio::test]
async fn purchases_add_a_purchased_grant() {
    let api = Api::new().await;
    api.account("u_1").await;
    let path = "/v1/accounts/u_1/purchases";
    let p =
        api.post(path, json!({"credits": "500", "amount_usd": "5", "provider": "creem", "external_id": "ord_9"})).await;
    let p = p.expect(201).clone();
    assert_eq!(p["kind"], "purchased");
    assert_eq!(p["amount"], "500");
    assert_eq!(p["expires_at"], Value::Null);
    assert_eq!(api.available("u_1").await, "500");
    for body in [
        json!({"credits": "0", "amount_usd": "5"}),
        json!({"credits": "500"}),
        json!({"credits": "500", "amount_usd": "-1"}),
        json!({"credits": "500.0", "amount_usd": "5"}),
        json!({"credits": "500", "amount_usd": "5", "provider": "bad provider"}),
    ] {
        api.post(path, body).await.expect_error(400, "invalid_request");
    }
    api.post("/v1/accounts/nobody/purchases", json!({"credits": "1", "amount_usd": "0"}))
        .await
        .expect_error(404, "not_found");
}
