//! Who may call what.

use serde_json::json;

use crate::support::{Api, SONNET};

#[tokio::test]
async fn missing_and_bad_keys_are_unauthorized() {
    let api = Api::new().await;
    api.account("u_1").await;
    let path = "/v1/accounts/u_1";
    api.call("GET", path, None, None).await.expect_error(401, "unauthorized");
    for bad in ["nope", "ck_", "ck_x_y", "ct_x_y", "ck_00000000000000000000000000000000_abc", ""] {
        api.call("GET", path, Some(bad), None).await.expect_error(401, "unauthorized");
    }
    // A right id with a wrong secret.
    let secret = api.admin.clone();
    let wrong = format!("{}{}", &secret[..secret.len() - 1], if secret.ends_with('0') { '1' } else { '0' });
    api.call("GET", path, Some(&wrong), None).await.expect_error(401, "unauthorized");
    // Not Bearer.
    let basic = api.raw("GET", path, None, vec![], &[("authorization", "Basic dXNlcjpwYXNz")]).await;
    basic.expect_error(401, "unauthorized");
    // 401 comes before the body is looked at.
    let r = api.raw("POST", "/v1/accounts", None, b"not json".to_vec(), &[]).await;
    r.expect_error(401, "unauthorized");
}

#[tokio::test]
async fn the_configured_admin_key_is_admin() {
    let api = Api::new().await;
    let r = api.call("POST", "/v1/accounts", Some("configured-admin-secret"), Some(json!({"id": "u_1"}))).await;
    r.expect(201);
    api.call("GET", "/v1/keys", Some("configured-admin-secret-x"), None).await.expect_error(401, "unauthorized");
}

#[tokio::test]
async fn gateway_keys_meter_and_read_but_do_not_administer() {
    let api = Api::new().await;
    api.sonnet().await;
    api.account("u_1").await;
    api.grant("u_1", "10").await;
    let gw = api.key("gateway").await;

    // Allowed: metering, and reading an account and its balance.
    let auth = api.call(
        "POST",
        "/v1/authorize",
        Some(&gw),
        Some(json!({"account_id": "u_1", "request_id": "r1", "model": SONNET, "input_tokens": 1, "max_output_tokens": 1})),
    );
    auth.await.expect(201);
    let settle = json!({"account_id": "u_1", "request_id": "r1", "usage": {"input_tokens": 1}});
    api.call("POST", "/v1/settle", Some(&gw), Some(settle)).await.expect(200);
    api.call("POST", "/v1/estimate", Some(&gw), Some(json!({"model": SONNET}))).await.expect(200);
    api.call("POST", "/v1/usage", Some(&gw), Some(json!({"account_id": "u_1", "request_id": "r2", "model": SONNET})))
        .await
        .expect(201);
    api.call(
        "POST",
        "/v1/authorize",
        Some(&gw),
        Some(json!({"account_id": "u_1", "request_id": "r3", "model": SONNET, "max_output_tokens": 1})),
    )
    .await
    .expect(201);
    api.call("POST", "/v1/release", Some(&gw), Some(json!({"account_id": "u_1", "request_id": "r3"})))
        .await
        .expect(200);
    api.call("GET", "/v1/accounts/u_1", Some(&gw), None).await.expect(200);
    api.call("GET", "/v1/accounts/u_1/balance", Some(&gw), None).await.expect(200);

    // Forbidden: everything else.
    let forbidden: Vec<(&str, &str, Option<serde_json::Value>)> = vec![
        ("GET", "/v1/accounts", None),
        ("POST", "/v1/accounts", Some(json!({"id": "u_9"}))),
        ("GET", "/v1/accounts/u_1/ledger", None),
        ("GET", "/v1/accounts/u_1/grants", None),
        ("POST", "/v1/accounts/u_1/grants", Some(json!({"amount": "1"}))),
        ("POST", "/v1/accounts/u_1/wallet/topups", Some(json!({"amount_usd": "1", "provider": "manual"}))),
        ("POST", "/v1/accounts/u_1/wallet/adjustments", Some(json!({"amount": "1"}))),
        ("POST", "/v1/accounts/u_1/purchases", Some(json!({"credits": "1", "amount_usd": "0"}))),
        ("POST", "/v1/accounts/u_1/suspend", Some(json!({}))),
        ("POST", "/v1/accounts/u_1/resume", Some(json!({}))),
        ("POST", "/v1/accounts/u_1/tokens", Some(json!({}))),
        ("POST", "/v1/accounts/u_1/grants/g/void", Some(json!({}))),
        ("GET", "/v1/models", None),
        ("GET", "/v1/models/x", None),
        ("PUT", "/v1/models/x", Some(json!({}))),
        ("GET", "/v1/keys", None),
        ("POST", "/v1/keys", Some(json!({"role": "admin"}))),
        ("DELETE", "/v1/keys/x", None),
    ];
    for (method, path, body) in forbidden {
        let r = api.call(method, path, Some(&gw), body).await;
        assert_eq!(r.status.as_u16(), 403, "{method} {path}: {r:?}");
        let details = r.expect_error(403, "forbidden");
        // Issue 13.6: the refusal names the role the call needs.
        assert_eq!(details["required_role"], "admin", "{method} {path}: {r:?}");
        assert_eq!(details["caller_role"], "gateway", "{method} {path}: {r:?}");
    }
    // A gateway key with a body it may not send learns nothing of its shape.
    let r = api.raw("POST", "/v1/accounts", Some(&gw), b"not json".to_vec(), &[]).await;
    r.expect_error(403, "forbidden");
    assert_eq!(api.available("u_1").await, "9.9997", "no forbidden call changed anything");
}

#[tokio::test]
async fn deleted_keys_are_refused_at_once() {
    let api = Api::new().await;
    api.account("u_1").await;
    let created = api.post("/v1/keys", json!({"role": "gateway", "name": "gw"})).await.expect(201).clone();
    let gw = created["secret"].as_str().unwrap();
    for _ in 0..3 {
        api.call("GET", "/v1/accounts/u_1", Some(gw), None).await.expect(200);
    }
    let id = created["id"].as_str().unwrap();
    assert_eq!(api.call("DELETE", &format!("/v1/keys/{id}"), Some(&api.admin), None).await.status.as_u16(), 204);
    api.call("GET", "/v1/accounts/u_1", Some(gw), None).await.expect_error(401, "unauthorized");
}
