//! API keys.

use serde_json::json;

use crate::support::Api;

#[tokio::test]
async fn create_list_and_delete_keys() {
    let api = Api::new().await;
    let created = api.post("/v1/keys", json!({"role": "gateway", "name": "edge"})).await;
    let created = created.expect(201).clone();
    let id = created["id"].as_str().unwrap();
    let secret = created["secret"].as_str().unwrap();
    assert_eq!(created["role"], "gateway");
    assert_eq!(created["name"], "edge");
    assert!(secret.starts_with(&format!("ck_{id}_")), "{secret}");
    assert_eq!(secret.len(), 3 + id.len() + 1 + 64);

    let list = api.get("/v1/keys").await;
    let keys = list.expect(200)["data"].as_array().unwrap().clone();
    let listed = keys.iter().find(|k| k["id"] == id).expect("the new key is listed");
    assert_eq!(listed["role"], "gateway");
    assert!(listed.get("secret").is_none(), "no secret in lists");
    assert!(!list.raw.windows(secret.len()).any(|w| w == secret.as_bytes()));
    assert!(keys.iter().any(|k| k["role"] == "admin"), "the first admin key is stored");

    // The key works (and is now cached), then is deleted: refused at once.
    api.call("GET", "/v1/accounts/nobody", Some(secret), None).await.expect_error(404, "not_found");
    let deleted = api.call("DELETE", &format!("/v1/keys/{id}"), Some(&api.admin), None).await;
    assert_eq!(deleted.status.as_u16(), 204);
    assert!(deleted.raw.is_empty());
    api.call("GET", "/v1/accounts/nobody", Some(secret), None).await.expect_error(401, "unauthorized");
    let list = api.get("/v1/keys").await;
    assert!(!list.body["data"].as_array().unwrap().iter().any(|k| k["id"] == id));

    // Deleting again: not found.
    api.call("DELETE", &format!("/v1/keys/{id}"), Some(&api.admin), None).await.expect_error(404, "not_found");
}

#[tokio::test]
async fn an_admin_key_made_through_the_api_is_admin() {
    let api = Api::new().await;
    let admin2 = api.key("admin").await;
    let r = api.call("POST", "/v1/accounts", Some(&admin2), Some(json!({"id": "u_1"}))).await;
    r.expect(201);
}

#[tokio::test]
async fn key_errors() {
    let api = Api::new().await;
    api.post("/v1/keys", json!({"role": "root", "name": "x"})).await.expect_error(400, "invalid_request");
    api.post("/v1/keys", json!({"name": "x"})).await.expect_error(400, "invalid_request");
    api.post("/v1/keys", json!({"role": "gateway", "name": "x".repeat(129)}))
        .await
        .expect_error(400, "invalid_request");
    api.call("DELETE", "/v1/keys/nope", Some(&api.admin), None).await.expect_error(404, "not_found");
}

#[tokio::test]
async fn ensure_admin_key_creates_one_only_when_needed() {
    let api = Api::new().await;
    // The harness already made one: no second key.
    assert_eq!(creditd_server::ensure_admin_key(api.store.as_ref(), None).await.unwrap(), None);
    // A configured key means none is created.
    // On a new, empty store of the same backend as the harness.
    let clock = std::sync::Arc::new(creditd_store::ManualClock::new(crate::support::START.parse().unwrap()));
    // Kept whole: a tuple drops its fields in order, the store before its home.
    let opened = crate::support::open_store(Default::default(), clock);
    let store = opened.0.as_ref();
    assert_eq!(creditd_server::ensure_admin_key(store, Some("configured")).await.unwrap(), None);
    assert!(store.keys().await.unwrap().is_empty());
    let secret = creditd_server::ensure_admin_key(store, None).await.unwrap().unwrap();
    assert!(secret.starts_with("ck_"));
    let keys = store.keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].role, creditd_store::Role::Admin);
    assert_ne!(keys[0].secret_hash, secret, "only a hash is stored");
    let (key, gateway) = creditd_server::create_key(store, creditd_store::Role::Gateway, "cli").await.unwrap();
    assert!(gateway.starts_with(&format!("ck_{}_", key.id)));
}

/// Issue 13.6: keys showed no sign of use. `last_used_at` is written off the
/// request's path, at most once a minute per key: `null` until first used.
#[tokio::test]
async fn a_key_shows_when_it_was_last_used() {
    let api = Api::new().await;
    let created = api.post("/v1/keys", json!({"role": "gateway", "name": "edge"})).await;
    let created = created.expect(201).clone();
    assert_eq!(created["last_used_at"], serde_json::Value::Null);
    let (id, secret) = (created["id"].as_str().unwrap(), created["secret"].as_str().unwrap());
    let last_used = || async {
        let list = api.get("/v1/keys").await;
        let keys = list.expect(200)["data"].as_array().unwrap().clone();
        keys.into_iter().find(|k| k["id"] == id).expect("listed")["last_used_at"].clone()
    };
    assert_eq!(last_used().await, serde_json::Value::Null, "not used yet");
    api.call("GET", "/v1/accounts/nobody", Some(secret), None).await.expect_error(404, "not_found");
    // Written in the background: wait for it (a few seconds at most).
    let mut seen = serde_json::Value::Null;
    for _ in 0..100 {
        seen = last_used().await;
        if !seen.is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let at: jiff::Timestamp = seen.as_str().unwrap_or_else(|| panic!("never recorded: {seen}")).parse().unwrap();
    let now: jiff::Timestamp = api.get("/v1/test/clock").await.expect(200)["now"].as_str().unwrap().parse().unwrap();
    assert!(at <= now, "{at} after {now}");
}
