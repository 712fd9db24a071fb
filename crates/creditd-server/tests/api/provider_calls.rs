//! Provider calls end to end against the Creem stand-in: a switch by
//! webhook cancels the old Creem subscription (`immediate`), a cancel on
//! the dashboard schedules one (`scheduled`), each written with the change
//! and sent by the worker until Creem accepts it: through an outage, and
//! across a restart between the commit and the call.

use std::time::{Duration, Instant};

use creditd_server::dashboard::ProviderApi;
use creditd_server::provider_calls::{self, ProviderCallConfig};
use creditd_store::{Command as StoreCommand, Reply};
use serde_json::{Value, json};

use crate::dashboard_manage::{creem_signature, manage_config, plans, post_form, signed_in, subscription_paid};
use crate::standin::StandIn;
use crate::support::Api;

fn worker(api: &Api, standin: &StandIn) -> tokio::task::JoinHandle<()> {
    let config = ProviderCallConfig {
        creem: ProviderApi::new("creem_test_key", &standin.base),
        poll: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
        batch: 16,
    };
    provider_calls::spawn(api.store.clone(), config)
}

/// Stops a worker and waits until its task (and its handle on the store) is gone.
async fn stop(worker: tokio::task::JoinHandle<()>) {
    worker.abort();
    let _ = worker.await;
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

async fn creem(api: &Api, event: Value) -> Value {
    let body = serde_json::to_vec(&event).unwrap();
    let sig = creem_signature(&body);
    api.raw("POST", "/webhooks/creem", None, body, &[("creem-signature", &sig)]).await.expect(200).clone()
}

/// `subscription.canceled` of a Creem subscription, as Creem sends it.
fn subscription_canceled(event: &str, sub: &str, product: &str, account: &str) -> Value {
    json!({"id": event, "eventType": "subscription.canceled", "created_at": 1_772_323_200_000u64, "object": {
        "id": sub, "object": "subscription", "status": "canceled",
        "product": {"id": product, "name": product, "price": 5000, "currency": "USD", "billing_type": "recurring"},
        "customer": {"id": "cust_1", "email": "user@example.com"}, "metadata": {"account_id": account}}})
}

async fn calls(api: &Api, query: &str) -> Vec<Value> {
    api.get(&format!("/v1/provider-calls?{query}")).await.expect(200)["data"].as_array().unwrap().clone()
}

async fn call(api: &Api, id: &str) -> Value {
    api.get(&format!("/v1/provider-calls/{id}")).await.expect(200).clone()
}

async fn advance(api: &Api, seconds: i64) {
    api.post("/v1/test/clock", json!({"advance_seconds": seconds})).await.expect(200);
}

async fn metrics(api: &Api) -> String {
    String::from_utf8_lossy(&api.call("GET", "/metrics", None, None).await.raw).to_string()
}

/// An account on Starter paid through Creem subscription `sub_old`, then
/// switched (3 days later) by the paid webhook of Pro's `sub_new`.
async fn switched(api: &Api) {
    plans(api).await;
    api.account("u1").await;
    creem(api, subscription_paid("evt_1", "sub_old", "tran_1", "prod_starter", "u1")).await;
    assert!(calls(api, "").await.is_empty(), "a start cancels nothing");
    api.clock.advance(3 * 86_400).unwrap();
    let e = creem(api, subscription_paid("evt_2", "sub_new", "tran_2", "prod_pro", "u1")).await;
    assert_eq!(e["status"], "applied", "{e}");
    assert_eq!(api.get("/v1/accounts/u1/subscription").await.expect(200)["plan"], "pro");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_by_webhook_cancels_the_old_creem_subscription_once() {
    let standin = StandIn::start().await;
    let api = Api::build(true, manage_config(&standin)).await;
    switched(&api).await;

    // Written with the switch, before anything is sent.
    let pending = calls(&api, "status=pending").await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    let c = &pending[0];
    assert_eq!(
        (c["provider"].as_str(), c["action"].as_str(), c["provider_subscription_id"].as_str(), c["mode"].as_str()),
        (Some("creem"), Some("cancel_subscription"), Some("sub_old"), Some("immediate"))
    );
    assert_eq!((c["account_id"].as_str(), c["attempts"].as_u64()), (Some("u1"), Some(0)));
    assert!(c["next_attempt_at"].is_string() && c["last_error"].is_null() && c["delivered_at"].is_null(), "{c}");
    let current = api.get("/v1/accounts/u1/subscription").await.expect(200).clone();
    assert!(c["subscription_id"].is_string() && c["subscription_id"] != current["id"], "the replaced one: {c}");
    // The same event again, and the new subscription's renewal: no other call.
    assert_eq!(
        creem(&api, subscription_paid("evt_2", "sub_new", "tran_2", "prod_pro", "u1")).await["status"],
        "duplicate"
    );
    creem(&api, subscription_paid("evt_3", "sub_new", "tran_3", "prod_pro", "u1")).await;
    assert_eq!(calls(&api, "").await.len(), 1);
    assert!(metrics(&api).await.contains("creditd_provider_calls{status=\"pending\"} 1"));

    let w = worker(&api, &standin);
    let id = c["id"].as_str().unwrap().to_string();
    let done = until("the call delivered", || async {
        let c = call(&api, &id).await;
        (c["status"] == "delivered").then_some(c)
    })
    .await;
    assert_eq!((done["attempts"].as_u64(), done["last_status"].as_u64()), (Some(1), Some(200)), "{done}");
    assert!(done["delivered_at"].is_string() && done["next_attempt_at"].is_null(), "{done}");
    let cancels = standin.cancels();
    assert_eq!(cancels.len(), 1, "{cancels:?}");
    let (sub, seen) = &cancels[0];
    assert_eq!(sub, "sub_old");
    assert_eq!(seen.api_key.as_deref(), Some("creem_test_key"));
    assert_eq!(seen.body, json!({"mode": "immediate"}));

    // Creem tells of the cancel it made: not the account's subscription any
    // more, so Pro keeps renewing.
    let e = creem(&api, subscription_canceled("evt_4", "sub_old", "prod_starter", "u1")).await;
    assert_eq!(e["status"], "ignored", "{e}");
    assert!(e["reason"].as_str().unwrap().contains("sub_new"), "{e}");
    assert_eq!(api.get("/v1/accounts/u1/subscription").await.expect(200)["cancel_at_period_end"], false);

    // Once: nothing more is sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(standin.cancels().len(), 1);
    let text = metrics(&api).await;
    assert!(text.contains("creditd_provider_calls{status=\"delivered\"} 1"), "{text}");
    assert!(text.contains("creditd_provider_calls{status=\"pending\"} 0"), "{text}");
    assert!(text.contains("creditd_provider_call_attempts_total{provider=\"creem\",outcome=\"delivered\"}"), "{text}");
    stop(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creem_outage_is_retried_with_back_off_until_creem_accepts() {
    let standin = StandIn::start().await;
    let api = Api::build(true, manage_config(&standin)).await;
    standin.fail(true);
    switched(&api).await;
    let w = worker(&api, &standin);
    let failing =
        until("a failed attempt", || async { calls(&api, "").await.into_iter().find(|c| c["attempts"] == 1) }).await;
    let id = failing["id"].as_str().unwrap().to_string();
    assert_eq!((failing["status"].as_str(), failing["last_status"].as_u64()), (Some("pending"), Some(500)));
    assert!(failing["last_error"].as_str().unwrap().starts_with("HTTP 500"), "{failing}");
    // Due again after the first back-off (5 s of the test clock), not before.
    let last: jiff::Timestamp = failing["last_attempt_at"].as_str().unwrap().parse().unwrap();
    let next: jiff::Timestamp = failing["next_attempt_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(next.duration_since(last).as_secs(), 5, "{failing}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(call(&api, &id).await["attempts"], 1);
    assert_eq!(standin.cancels().len(), 1);

    // Creem recovers: the next attempt, due after the back-off, is accepted.
    standin.fail(false);
    advance(&api, 5).await;
    let done = until("the call after recovery", || async {
        let c = call(&api, &id).await;
        (c["status"] == "delivered").then_some(c)
    })
    .await;
    assert_eq!((done["attempts"].as_u64(), done["last_status"].as_u64()), (Some(2), Some(200)));
    assert!(done["last_error"].is_null());
    let cancels = standin.cancels();
    assert_eq!(cancels.len(), 2);
    assert!(cancels.iter().all(|(sub, s)| sub == "sub_old" && s.body == json!({"mode": "immediate"})));

    // The operator's retry makes it again; an outage that lasts three days
    // gives it up (failed), and a retry brings it back.
    standin.fail(true);
    let retried = api.post(&format!("/v1/provider-calls/{id}/retry"), json!({})).await.expect(200).clone();
    assert_eq!(retried["status"], "pending");
    until("the retried attempt", || async { (call(&api, &id).await["attempts"] == 3).then_some(()) }).await;
    for _ in 0..20 {
        advance(&api, 12 * 3600).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let given_up = until("the given-up call", || async {
        let c = call(&api, &id).await;
        (c["status"] == "failed").then_some(c)
    })
    .await;
    assert!(given_up["next_attempt_at"].is_null(), "{given_up}");
    assert_eq!(calls(&api, "status=failed").await.len(), 1);
    let text = metrics(&api).await;
    assert!(text.contains("creditd_provider_calls{status=\"failed\"} 1"), "{text}");
    assert!(text.contains("creditd_provider_calls_given_up_total{provider=\"creem\"}"), "{text}");
    standin.fail(false);
    api.post(&format!("/v1/provider-calls/{id}/retry"), json!({})).await.expect(200);
    until("the call retried after giving up", || async {
        (call(&api, &id).await["status"] == "delivered").then_some(())
    })
    .await;
    stop(w).await;
}

/// Committed calls survive the process: one written while no worker runs,
/// and one claimed by a worker that died before recording its attempt
/// (due again after the lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_the_commit_and_the_call_loses_nothing() {
    let standin = StandIn::start().await;
    let api = Api::build(true, manage_config(&standin)).await;
    switched(&api).await;
    let (cookie, csrf) = signed_in(&api, "u1").await;
    let r = post_form(&api, "/dashboard/manage/cancel", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(r.headers["location"], "/dashboard/manage?notice=cancelled");
    assert_eq!(calls(&api, "status=pending").await.len(), 2);
    // A worker takes the scheduled cancel and dies before it is sent.
    let claim = StoreCommand::ClaimProviderCalls { limit: 1, lease_seconds: 60 };
    let Reply::ProviderCalls(claimed) = api.store.execute(claim, None).await.unwrap() else { panic!("claimed") };
    assert_eq!(claimed.len(), 1);

    let api = api.restart().await;
    assert!(standin.cancels().is_empty());
    let pending = calls(&api, "status=pending").await;
    assert_eq!(pending.len(), 2, "{pending:?}");
    let w = worker(&api, &standin);
    until("the unclaimed call", || async { (standin.cancels().len() == 1).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(standin.cancels().len(), 1, "the claimed call waits for its lease");
    advance(&api, 61).await;
    until("the claimed call after its lease", || async { (standin.cancels().len() == 2).then_some(()) }).await;
    let mut got: Vec<(String, Value)> = standin.cancels().into_iter().map(|(sub, s)| (sub, s.body)).collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [("sub_new".to_string(), json!({"mode": "scheduled"})), ("sub_old".to_string(), json!({"mode": "immediate"}))]
    );
    until("both delivered", || async { (calls(&api, "status=delivered").await.len() == 2).then_some(()) }).await;
    stop(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_on_the_dashboard_schedules_the_cancel_at_creem() {
    let standin = StandIn::start().await;
    let api = Api::build(true, manage_config(&standin)).await;
    plans(&api).await;
    api.account("u1").await;
    creem(&api, subscription_paid("evt_1", "sub_1", "tran_1", "prod_pro", "u1")).await;
    let w = worker(&api, &standin);
    let (cookie, csrf) = signed_in(&api, "u1").await;
    let r = post_form(&api, "/dashboard/manage/cancel", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(
        (r.status.as_u16(), r.headers["location"].to_str().unwrap()),
        (303, "/dashboard/manage?notice=cancelled")
    );
    let sub = api.get("/v1/accounts/u1/subscription").await.expect(200).clone();
    assert_eq!(sub["cancel_at_period_end"], true);
    let c = until("the scheduled cancel delivered", || async {
        calls(&api, "account_id=u1").await.into_iter().find(|c| c["status"] == "delivered")
    })
    .await;
    assert_eq!((c["mode"].as_str(), c["provider_subscription_id"].as_str()), (Some("scheduled"), Some("sub_1")));
    assert_eq!(c["subscription_id"], sub["id"]);
    let cancels = standin.cancels();
    assert_eq!(cancels.len(), 1);
    assert_eq!((cancels[0].0.as_str(), &cancels[0].1.body), ("sub_1", &json!({"mode": "scheduled"})));
    assert_eq!(cancels[0].1.api_key.as_deref(), Some("creem_test_key"));

    // Cancelled already: cancelling again (API) asks nothing more; Creem's
    // own event for it changes nothing either.
    api.post("/v1/accounts/u1/subscription/cancel", json!({})).await.expect(200);
    assert_eq!(creem(&api, subscription_canceled("evt_2", "sub_1", "prod_pro", "u1")).await["status"], "applied");
    assert_eq!(calls(&api, "").await.len(), 1);

    // A subscription not paid through Creem: no call.
    api.account("u2").await;
    api.post("/v1/accounts/u2/subscription", json!({"plan": "pro", "kind": "monthly"})).await.expect(201);
    api.post("/v1/accounts/u2/subscription/cancel", json!({})).await.expect(200);
    assert!(calls(&api, "account_id=u2").await.is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(standin.cancels().len(), 1);
    stop(w).await;
}

/// A switch made over the API away from a subscription paid through Creem
/// cancels it there too; the list filters and pages; bad input is refused.
#[tokio::test]
async fn provider_calls_are_listed_filtered_and_paged() {
    let standin = StandIn::start().await;
    let api = Api::build(true, manage_config(&standin)).await;
    plans(&api).await;
    for (n, account) in ["a1", "a2", "a3"].into_iter().enumerate() {
        api.account(account).await;
        let paid =
            subscription_paid(&format!("evt_{n}"), &format!("sub_{n}"), &format!("tran_{n}"), "prod_starter", account);
        creem(&api, paid).await;
        api.post(&format!("/v1/accounts/{account}/subscription"), json!({"plan": "pro", "kind": "monthly"}))
            .await
            .expect(201);
    }
    let all = calls(&api, "").await;
    assert_eq!(all.len(), 3);
    let accounts: Vec<&str> = all.iter().map(|c| c["account_id"].as_str().unwrap()).collect();
    assert_eq!(accounts, ["a3", "a2", "a1"], "newest first");
    assert!(all.iter().all(|c| c["mode"] == "immediate"));
    let only = calls(&api, "account_id=a2").await;
    assert_eq!((only.len(), only[0]["provider_subscription_id"].as_str()), (1, Some("sub_1")));
    assert!(calls(&api, "status=delivered").await.is_empty());
    assert_eq!(calls(&api, "status=&account_id=").await.len(), 3);
    let first = api.get("/v1/provider-calls?limit=2").await.expect(200).clone();
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = api.get(&format!("/v1/provider-calls?limit=2&cursor={cursor}")).await.expect(200).clone();
    assert_eq!(second["data"][0]["account_id"], "a1");
    assert!(second["next_cursor"].is_null());

    api.get("/v1/provider-calls?status=lost").await.expect_error(400, "invalid_request");
    api.get("/v1/provider-calls?account_id=a%20b").await.expect_error(400, "invalid_request");
    api.get("/v1/provider-calls?cursor=x").await.expect_error(400, "invalid_request");
    api.get("/v1/provider-calls/nope").await.expect_error(404, "not_found");
    api.post("/v1/provider-calls/nope/retry", json!({})).await.expect_error(404, "not_found");
    let gateway = api.key("gateway").await;
    api.call("GET", "/v1/provider-calls", Some(&gateway), None).await.expect_error(403, "forbidden");
}
