//! `Idempotency-Key` on every non-metering `POST` (semantics §11): the same
//! body replays the first status and body; another body is a conflict.

use serde_json::{Value, json};

use crate::support::Api;

/// Sends `body` twice under one key (same answer, one effect), then another
/// body under the same key (`409 idempotency_conflict`).
async fn check(api: &Api, path: &str, key: &str, body: Value, other: Value, status: u16) -> Value {
    let first = api.post_idem(path, key, body.clone()).await;
    assert_eq!(first.status.as_u16(), status, "{path}: {first:?}");
    let replay = api.post_idem(path, key, body).await;
    assert_eq!(replay.status, first.status, "{path}");
    assert_eq!(replay.raw, first.raw, "{path}: a replay is the first body, byte for byte");
    api.post_idem(path, key, other).await.expect_error(409, "idempotency_conflict");
    first.body.clone()
}

/// Like [`check`] for a call that answers a secret (`field`): the replay is
/// the first answer with the secret `null` and `"redacted": [field]`.
async fn check_secret(api: &Api, path: &str, key: &str, body: Value, other: Value, field: &str) -> Value {
    let first = api.post_idem(path, key, body.clone()).await;
    let shown = first.expect(201)[field].as_str().expect("the secret, once").to_string();
    let replay = api.post_idem(path, key, body).await;
    let mut expected = first.body.clone();
    expected[field] = Value::Null;
    expected["redacted"] = json!([field]);
    assert_eq!(replay.expect(201), &expected, "{path}");
    assert!(!replay.raw.windows(shown.len()).any(|w| w == shown.as_bytes()), "{path}: the replay shows the secret");
    api.post_idem(path, key, other).await.expect_error(409, "idempotency_conflict");
    first.body.clone()
}

/// Issue 18.2: `POST /v1/keys` and `POST /v1/accounts/{id}/tokens` with an
/// `Idempotency-Key` stored the whole answer, secret included, so the
/// database file held a working admin secret in clear. A replay is the
/// stored answer byte for byte, so a replay without the secret shows that
/// none was stored; on SQLite the database files are searched too.
#[tokio::test]
async fn secrets_stored_in_plaintext_in_the_idempotency_store() {
    let api = Api::new().await;
    api.account("u_1").await;
    let key = api.post_idem("/v1/keys", "k-admin", json!({"role": "admin", "name": "ops"})).await;
    let secret = key.expect(201)["secret"].as_str().unwrap().to_string();
    let token = api.post_idem("/v1/accounts/u_1/tokens", "t-1", json!({"ttl_seconds": 600})).await;
    let token = token.expect(201)["token"].as_str().unwrap().to_string();
    for (path, key, body, field) in [
        ("/v1/keys", "k-admin", json!({"role": "admin", "name": "ops"}), "secret"),
        ("/v1/accounts/u_1/tokens", "t-1", json!({"ttl_seconds": 600}), "token"),
    ] {
        let replay = api.post_idem(path, key, body).await;
        let replay = replay.expect(201);
        assert_eq!(replay[field], Value::Null, "{path}");
        assert_eq!(replay["redacted"], json!([field]), "{path}");
    }
    // The secrets still work: only their hashes are kept.
    api.call("GET", "/v1/keys", Some(&secret), None).await.expect(200);
    api.call("GET", "/v1/accounts/u_1", Some(&token), None).await.expect(200);
    if let Some(dir) = api.sqlite_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            for shown in [&secret, &token] {
                assert!(!bytes.windows(shown.len()).any(|w| w == shown.as_bytes()), "a secret in the database files");
            }
        }
    }
}

#[tokio::test]
async fn every_admin_post_replays_and_detects_conflicts() {
    let api = Api::new().await;
    api.sonnet().await;

    check(&api, "/v1/accounts", "acc-1", json!({"id": "u_1"}), json!({"id": "u_2"}), 201).await;
    assert_eq!(api.get("/v1/accounts").await.body["data"].as_array().unwrap().len(), 1);

    let grant = check(
        &api,
        "/v1/accounts/u_1/grants",
        "star-u_1",
        json!({"amount": "10", "source": "github_star"}),
        json!({"amount": "11", "source": "github_star"}),
        201,
    )
    .await;
    assert_eq!(api.available("u_1").await, "10", "the reward is granted once");

    check(
        &api,
        "/v1/accounts/u_1/wallet/topups",
        "top-1",
        json!({"amount_usd": "1", "provider": "manual"}),
        json!({"amount_usd": "2", "provider": "manual"}),
        201,
    )
    .await;
    assert_eq!(api.available("u_1").await, "110");

    check(&api, "/v1/accounts/u_1/wallet/adjustments", "adj-1", json!({"amount": "-5"}), json!({"amount": "-6"}), 201)
        .await;
    assert_eq!(api.available("u_1").await, "105");

    check(
        &api,
        "/v1/accounts/u_1/purchases",
        "pur-1",
        json!({"credits": "7", "amount_usd": "0.07"}),
        json!({"credits": "8", "amount_usd": "0.08"}),
        201,
    )
    .await;
    assert_eq!(api.available("u_1").await, "112");

    let grant_id = grant["id"].as_str().unwrap();
    check(
        &api,
        &format!("/v1/accounts/u_1/grants/{grant_id}/void"),
        "void-1",
        json!({"reason": "a"}),
        json!({"reason": "b"}),
        200,
    )
    .await;
    assert_eq!(api.available("u_1").await, "102");

    check(&api, "/v1/accounts/u_1/suspend", "sus-1", json!({}), json!({"reason": "x"}), 200).await;
    check(&api, "/v1/accounts/u_1/resume", "res-1", json!({}), json!({"reason": "x"}), 200).await;

    let token = check_secret(
        &api,
        "/v1/accounts/u_1/tokens",
        "tok-1",
        json!({"ttl_seconds": 60}),
        json!({"ttl_seconds": 61}),
        "token",
    )
    .await;
    let token = token["token"].as_str().unwrap();
    api.call("GET", "/v1/accounts/u_1", Some(token), None).await.expect(200);

    let key = check_secret(
        &api,
        "/v1/keys",
        "key-1",
        json!({"role": "gateway", "name": "a"}),
        json!({"role": "gateway", "name": "b"}),
        "secret",
    )
    .await;
    let gateway = key["secret"].as_str().unwrap();
    api.call("GET", "/v1/accounts/u_1", Some(gateway), None).await.expect(200);
    assert_eq!(api.get("/v1/keys").await.body["data"].as_array().unwrap().len(), 2, "admin + one gateway key");
}

#[tokio::test]
async fn keys_are_scoped_to_the_path_and_key_order_does_not_matter() {
    let api = Api::new().await;
    api.account("u_1").await;
    api.account("u_2").await;
    let admin = api.admin.clone();
    let a = br#"{"amount": "1", "source": "s"}"#.to_vec();
    let b = br#"{"source":"s","amount":"1"}"#.to_vec();
    let first = api.raw("POST", "/v1/accounts/u_1/grants", Some(&admin), a.clone(), &[("idempotency-key", "k")]).await;
    first.expect(201);
    let reordered = api.raw("POST", "/v1/accounts/u_1/grants", Some(&admin), b, &[("idempotency-key", "k")]).await;
    assert_eq!(reordered.raw, first.raw, "the same JSON object in another order is the same body");
    // The same key on another account's path is another key.
    let other = api.raw("POST", "/v1/accounts/u_2/grants", Some(&admin), a, &[("idempotency-key", "k")]).await;
    assert_eq!(other.expect(201)["amount"], "1");
    assert_ne!(other.body["id"], first.body["id"]);
    assert_eq!(api.available("u_1").await, "1");
    assert_eq!(api.available("u_2").await, "1");
}

#[tokio::test]
async fn a_refused_call_is_not_remembered() {
    let api = Api::new().await;
    // The account does not exist yet: 404, and the key is not used up.
    let body = json!({"amount": "5"});
    api.post_idem("/v1/accounts/u_1/grants", "g", body.clone()).await.expect_error(404, "not_found");
    api.account("u_1").await;
    api.post_idem("/v1/accounts/u_1/grants", "g", body).await.expect(201);
    assert_eq!(api.available("u_1").await, "5");
}

#[tokio::test]
async fn idempotency_key_bounds() {
    let api = Api::new().await;
    let admin = api.admin.clone();
    let body = serde_json::to_vec(&json!({"id": "u_1"})).unwrap();
    let long = "k".repeat(256);
    let r = api.raw("POST", "/v1/accounts", Some(&admin), body.clone(), &[("idempotency-key", &long)]).await;
    r.expect_error(400, "invalid_request");
    let r = api.raw("POST", "/v1/accounts", Some(&admin), body.clone(), &[("idempotency-key", "")]).await;
    r.expect_error(400, "invalid_request");
    let max = "k".repeat(255);
    let r = api.raw("POST", "/v1/accounts", Some(&admin), body, &[("idempotency-key", &max)]).await;
    r.expect(201);
}
