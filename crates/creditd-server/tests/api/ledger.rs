//! The ledger: filters, paging, entry shape.

use serde_json::json;

use crate::support::{Api, SONNET};

#[tokio::test]
async fn ledger_filters_and_pages() {
    let api = Api::new().await;
    api.sonnet().await;
    api.account("u_1").await;
    let grant = api.grant("u_1", "10").await;
    api.clock.advance(60).unwrap();
    api.topup("u_1", "1").await;
    api.clock.advance(60).unwrap();
    api.post(
        "/v1/usage",
        json!({"account_id": "u_1", "request_id": "r1", "model": SONNET, "usage": {"output_tokens": 1000}}),
    )
    .await
    .expect(201);

    let all = api.get("/v1/accounts/u_1/ledger").await;
    let all = all.expect(200)["data"].as_array().unwrap().clone();
    let types: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["charge", "topup", "grant"], "newest first");
    let charge = &all[0];
    assert_eq!(charge["amount"], "-1.5");
    assert_eq!(charge["grant_id"], grant["id"]);
    assert_eq!(charge["wallet"], false);
    assert_eq!(charge["reference"], json!({"request_id": "r1"}));
    assert_eq!(charge["balance_after"], "108.5");
    assert_eq!(charge["at"], "2026-03-01T00:02:00Z");
    let grant_entry = &all[2];
    assert_eq!(grant_entry["reference"], json!({}));
    assert_eq!(grant_entry["grant_id"], grant["id"]);
    assert_eq!(all[1]["wallet"], true);
    assert_eq!(all[1]["grant_id"], serde_json::Value::Null);

    // from inclusive, to exclusive.
    let window = api.get("/v1/accounts/u_1/ledger?from=2026-03-01T00:01:00Z&to=2026-03-01T00:02:00Z").await;
    let window = window.expect(200)["data"].as_array().unwrap().clone();
    assert_eq!(window.len(), 1);
    assert_eq!(window[0]["type"], "topup");
    let grants = api.get("/v1/accounts/u_1/ledger?type=grant").await;
    assert_eq!(grants.expect(200)["data"].as_array().unwrap().len(), 1);

    let first = api.get("/v1/accounts/u_1/ledger?limit=2").await;
    let first = first.expect(200).clone();
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = api.get(&format!("/v1/accounts/u_1/ledger?limit=2&cursor={cursor}")).await;
    let second = second.expect(200);
    assert_eq!(second["data"].as_array().unwrap().len(), 1);
    assert_eq!(second["data"][0]["type"], "grant");
    assert_eq!(second["next_cursor"], serde_json::Value::Null);

    api.get("/v1/accounts/u_1/ledger?type=gift").await.expect_error(400, "invalid_request");
    api.get("/v1/accounts/u_1/ledger?from=yesterday").await.expect_error(400, "invalid_request");
    api.get("/v1/accounts/u_1/ledger?limit=0").await.expect_error(400, "invalid_request");
    api.get("/v1/accounts/nobody/ledger").await.expect_error(404, "not_found");
}
