//! The whole story: a model, an account, grants and a top-up, authorize,
//! settle, balance and ledger, with exact amounts.

use serde_json::{Value, json};

use crate::support::{Api, SONNET};

fn amounts(entries: &[Value], kind: &str) -> Vec<String> {
    let mut found: Vec<String> =
        entries.iter().filter(|e| e["type"] == kind).map(|e| e["amount"].as_str().unwrap().to_string()).collect();
    found.sort();
    found
}

#[tokio::test]
async fn walkthrough_sonnet_at_3_and_15_per_mtok_and_100_credits_per_usd() {
    let api = Api::new().await;

    // The price book.
    let model = api.sonnet().await;
    assert_eq!(model["id"], SONNET);
    assert_eq!(model["cost_usd_per_mtok"]["input"], "3");
    assert_eq!(model["cost_usd_per_mtok"]["output"], "15");
    assert_eq!(model["cost_usd_per_mtok"]["cache_read"], "0.3");
    assert_eq!(model["cost_usd_per_mtok"]["cache_write"], "3.75");
    assert_eq!(model["credits_per_mtok"], Value::Null);
    assert_eq!(model["max_output_tokens"], 8192);
    let version = model["price_version"].as_i64().unwrap();

    // An account with a promo grant (spent first), a credit pack, and a wallet.
    let account = api.account("u_42").await;
    assert_eq!(account["status"], "active");
    assert_eq!(account["plan"], "free");
    assert_eq!(account["subscription"], Value::Null);
    let promo = api.grant("u_42", "1").await;
    assert_eq!(promo["priority"], 10);
    let pack = api
        .post("/v1/accounts/u_42/purchases", json!({"credits": "50", "amount_usd": "0.5", "provider": "manual"}))
        .await;
    let pack = pack.expect(201).clone();
    assert_eq!(pack["kind"], "purchased");
    assert_eq!(pack["priority"], 30);
    assert_eq!(pack["expires_at"], Value::Null);
    let topup = api.topup("u_42", "5").await;
    assert_eq!(topup["wallet"]["balance"], "500");
    assert_eq!(topup["wallet"]["usd"], "5");
    assert_eq!(topup["entry"]["type"], "topup");
    assert_eq!(topup["entry"]["amount"], "500");
    assert_eq!(topup["entry"]["wallet"], true);
    assert_eq!(topup["entry"]["balance_after"], "551");
    assert_eq!(api.available("u_42").await, "551");

    // Estimate: 1550 input + 1000 output = 0.00465 + 0.015 USD = 1.965 credits.
    let estimate = api
        .post(
            "/v1/estimate",
            json!({"model": SONNET, "account_id": "u_42", "input_tokens": 1550, "max_output_tokens": 1000}),
        )
        .await;
    let estimate = estimate.expect(200);
    assert_eq!(estimate["estimate"], "1.965");
    assert_eq!(estimate["cost_usd"], "0.01965");
    assert_eq!(estimate["price_version"], version);
    assert_eq!(estimate["available"], "551");
    assert_eq!(estimate["allowed"], true);
    assert_eq!(estimate["reason"], Value::Null);

    // Authorize 1000 input + 1000 max output: 0.3 + 1.5 = 1.8 credits held,
    // in burn order: the promo (1) then the pack (0.8).
    let hold = api.authorize("u_42", "req_1", 1000, 1000).await;
    let hold = hold.expect(201).clone();
    assert_eq!(hold["request_id"], "req_1");
    assert_eq!(hold["estimate"], "1.8");
    assert_eq!(
        hold["held_from"],
        json!([
            {"source": "grant", "grant_id": promo["id"], "kind": "promo", "amount": "1"},
            {"source": "grant", "grant_id": pack["id"], "kind": "purchased", "amount": "0.8"},
        ])
    );
    assert_eq!(hold["available"], "549.2");
    assert_eq!(hold["expires_at"], "2026-03-01T00:15:00Z");
    let balance = api.balance("u_42").await;
    assert_eq!(balance["available"], "549.2");
    assert_eq!(balance["held"], "1.8");

    // Settle the actual usage: 1550 input + 1000 output = 1.965 credits.
    let record = api.settle("u_42", "req_1", 1550, 1000).await;
    let record = record.expect(200).clone();
    assert_eq!(record["cost_usd"], "0.01965");
    assert_eq!(record["credits"], "1.965");
    assert_eq!(record["model"], SONNET);
    assert_eq!(record["price_version"], version);
    assert_eq!(record["request_type"], "chat");
    assert_eq!(record["status"], "success");
    assert_eq!(record["usage"]["input_tokens"], 1550);
    assert_eq!(record["usage"]["output_tokens"], 1000);
    assert_eq!(record["usage"]["cache_read_tokens"], 0);
    assert_eq!(record["debt_incurred"], "0");
    assert_eq!(record["hold_expired"], false);
    assert_eq!(record["refunded"], false);
    assert_eq!(record["recorded_at"], "2026-03-01T00:00:00Z");
    assert_eq!(
        record["charged_from"],
        json!([
            {"source": "grant", "grant_id": promo["id"], "kind": "promo", "amount": "1"},
            {"source": "grant", "grant_id": pack["id"], "kind": "purchased", "amount": "0.965"},
        ])
    );

    // Balance: the promo is spent, the pack has 49.035 left, the wallet is whole.
    let balance = api.balance("u_42").await;
    assert_eq!(balance["account_id"], "u_42");
    assert_eq!(balance["as_of"], "2026-03-01T00:00:00Z");
    assert_eq!(balance["available"], "549.035");
    assert_eq!(balance["held"], "0");
    assert_eq!(balance["debt"], "0");
    assert_eq!(balance["wallet"], json!({"balance": "500", "held": "0", "usd": "5"}));
    let grants = balance["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1, "{balance}");
    assert_eq!(grants[0]["id"], pack["id"]);
    assert_eq!(grants[0]["remaining"], "49.035");
    assert_eq!(grants[0]["amount"], "50");
    assert_eq!(balance["plan"], json!({"id": "free"}));
    assert_eq!(balance["limits"], json!({"rate_per_minute": null, "daily_requests": null, "weekly_requests": null}));

    // The ledger, newest first: two charges, the top-up, two grants.
    let ledger = api.get("/v1/accounts/u_42/ledger").await;
    let ledger = ledger.expect(200);
    assert_eq!(ledger["next_cursor"], Value::Null);
    let entries = ledger["data"].as_array().unwrap();
    assert_eq!(entries.len(), 5, "{ledger}");
    assert_eq!(amounts(entries, "charge"), vec!["-0.965", "-1"]);
    assert_eq!(amounts(entries, "topup"), vec!["500"]);
    assert_eq!(amounts(entries, "grant"), vec!["1", "50"]);
    for charge in entries.iter().filter(|e| e["type"] == "charge") {
        assert_eq!(charge["reference"], json!({"request_id": "req_1"}));
        assert_eq!(charge["wallet"], false);
        assert!(charge["grant_id"].is_string());
    }
    // The last change is a charge, and the account's balance after it is 549.035.
    assert_eq!(entries[0]["type"], "charge");
    assert_eq!(entries[0]["balance_after"], "549.035");
    assert_eq!(entries[4]["type"], "grant");
    assert_eq!(entries[4]["balance_after"], "1");
    let charges = api.get("/v1/accounts/u_42/ledger?type=charge").await;
    assert_eq!(charges.expect(200)["data"].as_array().unwrap().len(), 2);
}
