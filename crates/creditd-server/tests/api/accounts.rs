//! Accounts, account tokens and the balance.

use serde_json::{Value, json};

use crate::support::Api;

#[tokio::test]
async fn create_and_read_an_account() {
    let api = Api::new().await;
    let created = api
        .post("/v1/accounts", json!({"id": "u_42", "email": "a@example.com", "metadata": {"team": "x", "n": 1}}))
        .await;
    let created = created.expect(201).clone();
    assert_eq!(
        created,
        json!({"id": "u_42", "email": "a@example.com", "metadata": {"team": "x", "n": 1}, "status": "active",
               "created_at": "2026-03-01T00:00:00Z", "plan": "free", "subscription": null})
    );
    assert_eq!(api.get("/v1/accounts/u_42").await.expect(200), &created);

    // An existing id is a conflict.
    api.post("/v1/accounts", json!({"id": "u_42"})).await.expect_error(409, "conflict");
    // Without email or metadata.
    let bare = api.post("/v1/accounts", json!({"id": "A.b-c@d_e"})).await;
    assert_eq!(bare.expect(201)["email"], Value::Null);
    assert_eq!(bare.body["metadata"], json!({}));
    api.get("/v1/accounts/missing").await.expect_error(404, "not_found");
}

#[tokio::test]
async fn account_errors() {
    let api = Api::new().await;
    for body in [
        json!({"id": ""}),
        json!({"id": "u 42"}),
        json!({"id": "u/42"}),
        json!({"id": "x".repeat(129)}),
        json!({"id": 42}),
        json!({"email": "a@b.c"}),
        json!({"id": "u_1", "email": "not an email"}),
        json!({"id": "u_1", "metadata": [1, 2]}),
        json!({"id": "u_1", "metadata": "text"}),
        json!({"id": "u_1", "metadata": {"big": "x".repeat(4100)}}),
    ] {
        api.post("/v1/accounts", body).await.expect_error(400, "invalid_request");
    }
    api.get("/v1/accounts/u%2042").await.expect_error(400, "invalid_request");
    assert_eq!(api.get("/v1/accounts").await.expect(200)["data"], json!([]));
}

#[tokio::test]
async fn list_accounts_in_pages() {
    let api = Api::new().await;
    for i in 0..5 {
        api.account(&format!("u_{i}")).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/accounts?limit=2&cursor={c}"),
            None => "/v1/accounts?limit=2".to_string(),
        };
        let page = api.get(&path).await;
        let page = page.expect(200).clone();
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|a| a["id"].as_str().unwrap().to_string()));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    seen.sort();
    assert_eq!(seen, vec!["u_0", "u_1", "u_2", "u_3", "u_4"]);
    assert!(pages >= 3);
    for bad in ["0", "1001", "-1", "x", "1.5"] {
        api.get(&format!("/v1/accounts?limit={bad}")).await.expect_error(400, "invalid_request");
    }
    assert_eq!(api.get("/v1/accounts?limit=1000").await.expect(200)["data"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn suspend_and_resume() {
    let api = Api::new().await;
    api.sonnet().await;
    api.account("u_1").await;
    api.grant("u_1", "100").await;
    let suspended = api.post("/v1/accounts/u_1/suspend", json!({})).await;
    assert_eq!(suspended.expect(200)["status"], "suspended");
    assert_eq!(api.get("/v1/accounts/u_1").await.body["status"], "suspended");
    api.authorize("u_1", "r1", 10, 10).await.expect_error(403, "account_suspended");
    // An empty body is fine too.
    let resumed = api.raw("POST", "/v1/accounts/u_1/resume", Some(&api.admin.clone()), vec![], &[]).await;
    assert_eq!(resumed.expect(200)["status"], "active");
    api.authorize("u_1", "r1", 10, 10).await.expect(201);
    api.post("/v1/accounts/nobody/suspend", json!({})).await.expect_error(404, "not_found");
}

#[tokio::test]
async fn account_tokens_read_their_account_until_they_expire() {
    let api = Api::new().await;
    api.account("u_1").await;
    api.account("u_2").await;
    let created = api.post("/v1/accounts/u_1/tokens", json!({"ttl_seconds": 60})).await;
    let created = created.expect(201).clone();
    assert_eq!(created["expires_at"], "2026-03-01T00:01:00Z");
    let token = created["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("ct_"));

    for path in ["/v1/accounts/u_1", "/v1/accounts/u_1/balance", "/v1/accounts/u_1/grants", "/v1/accounts/u_1/ledger"] {
        api.call("GET", path, Some(&token), None).await.expect(200);
    }
    for path in ["/v1/accounts/u_2", "/v1/accounts/u_2/balance", "/v1/accounts/u_2/ledger", "/v1/accounts"] {
        api.call("GET", path, Some(&token), None).await.expect_error(403, "forbidden");
    }
    api.call("POST", "/v1/accounts/u_1/grants", Some(&token), Some(json!({"amount": "1"})))
        .await
        .expect_error(403, "forbidden");
    api.call("POST", "/v1/estimate", Some(&token), Some(json!({"model": "m"}))).await.expect_error(403, "forbidden");

    api.clock.advance(60).unwrap();
    api.call("GET", "/v1/accounts/u_1", Some(&token), None).await.expect_error(401, "unauthorized");

    // Default TTL one hour; bad TTLs refused; unknown account 404.
    let default = api.post("/v1/accounts/u_1/tokens", json!({})).await;
    assert_eq!(default.expect(201)["expires_at"], "2026-03-01T01:01:00Z");
    for bad in [
        json!({"ttl_seconds": 0}),
        json!({"ttl_seconds": -5}),
        json!({"ttl_seconds": "60"}),
        json!({"ttl_seconds": 31536001}),
    ] {
        api.post("/v1/accounts/u_1/tokens", bad).await.expect_error(400, "invalid_request");
    }
    api.post("/v1/accounts/nobody/tokens", json!({})).await.expect_error(404, "not_found");
    // A token with a good shape but a wrong secret.
    let forged = format!("{}0", &token[..token.len() - 1]);
    let forged = if forged == token { format!("{}1", &token[..token.len() - 1]) } else { forged };
    api.call("GET", "/v1/accounts/u_1", Some(&forged), None).await.expect_error(401, "unauthorized");
}

#[tokio::test]
async fn balance_lists_grants_in_burn_order_future_ones_last() {
    let api = Api::new().await;
    api.account("u_1").await;
    let g = |body: Value| async {
        let r = api.post("/v1/accounts/u_1/grants", body).await;
        r.expect(201)["id"].as_str().unwrap().to_string()
    };
    let purchased = g(json!({"amount": "30", "kind": "purchased"})).await;
    let future = g(json!({"amount": "5", "starts_at": "2026-03-02T00:00:00Z"})).await;
    let late = g(json!({"amount": "10", "expires_at": "2026-03-10T00:00:00Z"})).await;
    let soon = g(json!({"amount": "20", "expires_after": "P1D"})).await;
    let never = g(json!({"amount": "1"})).await;
    let urgent = g(json!({"amount": "2", "priority": 0})).await;

    let balance = api.balance("u_1").await;
    let order: Vec<&str> = balance["grants"].as_array().unwrap().iter().map(|g| g["id"].as_str().unwrap()).collect();
    assert_eq!(order, vec![urgent.as_str(), &soon, &late, &never, &purchased, &future]);
    assert_eq!(balance["available"], "63", "the future grant is not available yet");
    let soon_grant = &balance["grants"][1];
    assert_eq!(soon_grant["expires_at"], "2026-03-02T00:00:00Z");
    assert_eq!(soon_grant["kind"], "promo");
    assert_eq!(soon_grant["source"], "manual");

    // A day later: `soon` expired, `future` started.
    api.clock.advance(86_400).unwrap();
    let balance = api.balance("u_1").await;
    assert_eq!(balance["as_of"], "2026-03-02T00:00:00Z");
    assert_eq!(balance["available"], "48");
    let ids: Vec<&str> = balance["grants"].as_array().unwrap().iter().map(|g| g["id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&soon.as_str()));
    assert!(ids.contains(&future.as_str()));
    assert_eq!(ids[0], urgent);

    api.get("/v1/accounts/nobody/balance").await.expect_error(404, "not_found");
}

#[tokio::test]
async fn wallet_in_usd_and_debt_in_the_balance() {
    let api = Api::new().await;
    api.sonnet().await;
    api.account("u_1").await;
    api.topup("u_1", "0.01").await;
    // One-shot usage without enforcement: 1000 output tokens = 1.5 credits, 1 available.
    let record = api
        .post(
            "/v1/usage",
            json!({"account_id": "u_1", "request_id": "r1", "model": crate::support::SONNET, "enforce": false,
                   "usage": {"output_tokens": 1000}}),
        )
        .await;
    assert_eq!(record.expect(201)["debt_incurred"], "0.5");
    let balance = api.balance("u_1").await;
    assert_eq!(balance["available"], "-0.5");
    assert_eq!(balance["debt"], "0.5");
    assert_eq!(balance["wallet"], json!({"balance": "-0.5", "held": "0", "usd": "-0.005"}));
}

/// Issue 13.6: account tokens could be made and revoked, but not listed.
#[tokio::test]
async fn account_tokens_are_listed_without_secrets_and_revoked() {
    let api = Api::new().await;
    api.account("u_1").await;
    api.account("u_2").await;
    let first = api.post("/v1/accounts/u_1/tokens", json!({"ttl_seconds": 60})).await.expect(201).clone();
    let second = api.post("/v1/accounts/u_1/tokens", json!({})).await.expect(201).clone();
    api.post("/v1/accounts/u_2/tokens", json!({})).await.expect(201);

    let list = api.get("/v1/accounts/u_1/tokens").await;
    let data = list.expect(200)["data"].as_array().unwrap().clone();
    let mut ids: Vec<&str> = data.iter().map(|t| t["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let mut made = [first["id"].as_str().unwrap(), second["id"].as_str().unwrap()];
    made.sort_unstable();
    assert_eq!(ids, made, "u_1's tokens only");
    let listed = data.iter().find(|t| t["id"] == first["id"]).unwrap();
    assert_eq!(listed["expires_at"], first["expires_at"]);
    assert_eq!(listed["account_id"], "u_1");
    assert!(listed["created_at"].is_string());
    assert_eq!(listed.as_object().unwrap().len(), 4, "id, account_id, created_at, expires_at: {listed}");
    for secret in [&first["token"], &second["token"]] {
        let secret = secret.as_str().unwrap();
        assert!(!list.raw.windows(secret.len()).any(|w| w == secret.as_bytes()), "no secret in the list");
    }

    let path = format!("/v1/accounts/u_1/tokens/{}", first["id"].as_str().unwrap());
    assert_eq!(api.call("DELETE", &path, Some(&api.admin), None).await.status.as_u16(), 204);
    let after = api.get("/v1/accounts/u_1/tokens").await;
    let ids: Vec<Value> = after.expect(200)["data"].as_array().unwrap().iter().map(|t| t["id"].clone()).collect();
    assert_eq!(ids, [second["id"].clone()]);
    let token = first["token"].as_str().unwrap();
    api.call("GET", "/v1/accounts/u_1", Some(token), None).await.expect_error(401, "unauthorized");

    // Admin only (a token may not list the tokens of its own account); an unknown account is 404.
    let own = second["token"].as_str().unwrap();
    let r = api.call("GET", "/v1/accounts/u_1/tokens", Some(own), None).await;
    assert_eq!(r.expect_error(403, "forbidden")["required_role"], "admin");
    api.get("/v1/accounts/nobody/tokens").await.expect_error(404, "not_found");
}
