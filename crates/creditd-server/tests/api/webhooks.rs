//! Payment webhooks (Creem, NOWPayments) on the real router: payloads shaped
//! like the providers' own, signed here with the configured secrets; every
//! event type, replays, concurrent deliveries, bad and missing signatures,
//! altered bodies, unknown products and accounts, malformed bodies; refunds
//! (unspent, partly spent into debt, partial); the list of events; and an
//! audit that stays clean.

use std::collections::HashMap;

use creditd_core::subscription::SubscriptionKind;
use creditd_core::units::Credits;
use creditd_server::ServerConfig;
use creditd_server::payments::{CreemConfig, NowPaymentsConfig, PaymentsConfig, Product, WebhookSecret};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::{Sha256, Sha512};

use crate::support::{Api, Resp, config};

const CREEM_SECRET: &str = "whsec_5uvCq8f1eIe3pKmA0b4s";
const IPN_SECRET: &str = "r6Z0dXkq2Y+7c1nVh3Jw9pT4sLbE8aQm";

fn payments_config() -> ServerConfig {
    let mut products = HashMap::new();
    products.insert("prod_topup".to_string(), Product::Topup);
    products.insert("prod_pack_500".to_string(), Product::Credits(Credits::whole(500)));
    products.insert("prod_pro".to_string(), Product::Plan { plan: "pro".into(), kind: SubscriptionKind::Monthly });
    products
        .insert("prod_starter".to_string(), Product::Plan { plan: "starter".into(), kind: SubscriptionKind::Monthly });
    products.insert("prod_pro_pass".to_string(), Product::Plan { plan: "pro".into(), kind: SubscriptionKind::Pass30d });
    let mut c = config();
    c.payments = PaymentsConfig {
        creem: Some(CreemConfig { webhook_secret: WebhookSecret::new(CREEM_SECRET), products }),
        nowpayments: Some(NowPaymentsConfig { ipn_secret: WebhookSecret::new(IPN_SECRET) }),
    };
    c
}

async fn api() -> Api {
    let api = Api::build(true, payments_config()).await;
    api.account("u_1").await;
    api
}

fn creem_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(CREEM_SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// NOWPayments signs `JSON.stringify` of the body with its keys sorted at
/// every level; `serde_json` (without `preserve_order`) writes object keys
/// sorted and no whitespace.
fn nowpayments_signature(body: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap();
    let sorted = serde_json::to_string(&value).unwrap();
    let mut mac = Hmac::<Sha512>::new_from_slice(IPN_SECRET.as_bytes()).unwrap();
    mac.update(sorted.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

async fn post_creem(api: &Api, body: &[u8], signature: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = signature.map(|s| vec![("creem-signature", s)]).unwrap_or_default();
    api.raw("POST", "/webhooks/creem", None, body.to_vec(), &headers).await
}

/// A Creem event, signed.
async fn creem(api: &Api, event: &Value) -> Resp {
    let body = serde_json::to_vec(event).unwrap();
    post_creem(api, &body, Some(&creem_signature(&body))).await
}

async fn post_nowpayments(api: &Api, body: &str, signature: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = signature.map(|s| vec![("x-nowpayments-sig", s)]).unwrap_or_default();
    api.raw("POST", "/webhooks/nowpayments", None, body.as_bytes().to_vec(), &headers).await
}

async fn nowpayments(api: &Api, body: &str) -> Resp {
    post_nowpayments(api, body, Some(&nowpayments_signature(body))).await
}

fn customer() -> Value {
    json!({"id": "cust_1OcIK1GEuVvXZwD19tjq2z", "object": "customer", "email": "ada@example.com", "name": "Ada",
           "country": "NL", "created_at": "2026-02-11T09:16:48.557Z", "updated_at": "2026-02-11T09:16:48.557Z",
           "mode": "test"})
}

fn product(id: &str, price: u64, recurring: bool) -> Value {
    json!({"id": id, "name": id, "description": "creditd test product", "image_url": null, "price": price,
           "currency": "USD", "billing_type": if recurring { "recurring" } else { "onetime" },
           "billing_period": if recurring { "every-month" } else { "once" }, "status": "active",
           "tax_mode": "exclusive", "tax_category": "saas", "default_success_url": "",
           "created_at": "2026-02-11T11:50:00.182Z", "updated_at": "2026-02-11T11:50:00.182Z", "mode": "test"})
}

/// `checkout.completed` as Creem sends it.
fn checkout(event_id: &str, order_id: &str, product_id: &str, amount: u64, account: Option<&str>) -> Value {
    let metadata = match account {
        Some(a) => json!({"account_id": a, "source": "dashboard"}),
        None => json!({"source": "dashboard"}),
    };
    json!({
        "id": event_id,
        "eventType": "checkout.completed",
        "created_at": 1_772_323_200_000u64,
        "object": {
            "id": format!("ch_{order_id}"),
            "object": "checkout",
            "request_id": "req-1",
            "order": {"id": order_id, "customer": "cust_1OcIK1GEuVvXZwD19tjq2z", "product": product_id,
                      "amount": amount, "currency": "USD", "status": "paid", "type": "onetime",
                      "created_at": "2026-03-01T00:00:00.000Z", "updated_at": "2026-03-01T00:00:00.000Z",
                      "mode": "test"},
            "product": product(product_id, amount, false),
            "customer": customer(),
            "custom_fields": [],
            "status": "completed",
            "metadata": metadata,
            "mode": "test"
        }
    })
}

/// A subscription event (`subscription.paid`, `subscription.canceled`).
fn subscription_event(event_id: &str, kind: &str, sub_id: &str, transaction: &str, product_id: &str) -> Value {
    json!({
        "id": event_id,
        "eventType": kind,
        "created_at": 1_772_323_200_000u64,
        "object": {
            "id": sub_id,
            "object": "subscription",
            "product": product(product_id, 5000, true),
            "customer": customer(),
            "collection_method": "charge_automatically",
            "status": if kind == "subscription.canceled" { "canceled" } else { "active" },
            "last_transaction_id": transaction,
            "last_transaction_date": "2026-03-01T00:00:00.000Z",
            "next_transaction_date": "2026-04-01T00:00:00.000Z",
            "current_period_start_date": "2026-03-01T00:00:00.000Z",
            "current_period_end_date": "2026-04-01T00:00:00.000Z",
            "canceled_at": if kind == "subscription.canceled" { json!("2026-03-02T00:00:00.000Z") } else { Value::Null },
            "created_at": "2026-03-01T00:00:00.000Z",
            "updated_at": "2026-03-01T00:00:00.000Z",
            "metadata": {"account_id": "u_1"},
            "mode": "test"
        }
    })
}

/// `refund.created` of an order (paid `paid` cents, `refunded` of them back).
fn refund(event_id: &str, refund_id: &str, order_id: &str, refunded: u64, paid: u64) -> Value {
    json!({
        "id": event_id,
        "eventType": "refund.created",
        "created_at": 1_772_323_200_000u64,
        "object": {
            "id": refund_id,
            "object": "refund",
            "status": "succeeded",
            "refund_amount": refunded,
            "refund_currency": "USD",
            "reason": "requested_by_customer",
            "transaction": {"id": format!("tran_{order_id}"), "object": "transaction", "amount": paid,
                            "amount_paid": paid, "currency": "USD", "type": "payment", "tax_country": "NL",
                            "tax_amount": 0, "status": "refunded", "refunded_amount": refunded, "order": order_id,
                            "description": "Payment", "created_at": 1_772_323_200_000u64, "mode": "test"},
            "checkout": {"id": format!("ch_{order_id}"), "object": "checkout", "status": "completed"},
            "order": {"id": order_id, "amount": paid, "currency": "USD", "status": "paid"},
            "customer": customer(),
            "created_at": 1_772_323_200_000u64,
            "mode": "test"
        }
    })
}

/// A NOWPayments IPN, written as it arrives: keys in the provider's order,
/// with spaces (the signature is over the sorted, compact form).
fn ipn(payment_id: u64, status: &str, order_id: &str, price_amount: &str) -> String {
    format!(
        r#"{{"payment_id": {payment_id}, "parent_payment_id": null, "invoice_id": null, "payment_status": "{status}",
  "pay_address": "0x9a3B6f1e1D2C0b7A4e5F6a7B8c9D0e1F2a3B4c5D", "payin_extra_id": null, "price_amount": {price_amount},
  "price_currency": "usd", "pay_amount": 0.0057, "actually_paid": 0.0057, "actually_paid_at_fiat": 0,
  "pay_currency": "eth", "order_id": "{order_id}", "order_description": "Pay2Go top-up", "purchase_id": "5312822613",
  "outcome_amount": 0.0056, "outcome_currency": "eth", "payment_extra_ids": null,
  "fee": {{"currency": "eth", "depositFee": 0, "withdrawalFee": 0, "serviceFee": 0.00001}}}}"#
    )
}

async fn wallet(api: &Api, account: &str) -> (String, String) {
    let b = api.balance(account).await;
    (b["wallet"]["balance"].as_str().unwrap().to_string(), b["debt"].as_str().unwrap().to_string())
}

async fn events(api: &Api, query: &str) -> Vec<Value> {
    let r = api.get(&format!("/v1/webhook-events{query}")).await;
    r.expect(200)["data"].as_array().unwrap().clone()
}

fn statuses(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["status"].as_str().unwrap()).collect()
}

async fn ledger(api: &Api, account: &str) -> Vec<Value> {
    api.get(&format!("/v1/accounts/{account}/ledger")).await.expect(200)["data"].as_array().unwrap().clone()
}

async fn audit_is_clean(api: &Api) {
    let report = api.store.audit().await.unwrap();
    assert!(report.breaches.is_empty(), "{:?}", report.breaches);
}

/// One credit per input token, no provider cost: spending exact amounts.
async fn flat_model(api: &Api) {
    api.put(
        "/v1/models/flat",
        json!({"credits_per_mtok": {"input": "1000000", "output": "0", "cache_read": "0", "cache_write": "0"},
               "credits": {"request": "0"}, "cost_usd": {"request": "0"}, "max_output_tokens": 1}),
    )
    .await
    .expect(200);
}

async fn spend(api: &Api, account: &str, request_id: &str, credits: u64) {
    let r = api
        .post(
            "/v1/usage",
            json!({"account_id": account, "request_id": request_id, "model": "flat", "status": "success",
                   "usage": {"input_tokens": credits}, "enforce": false}),
        )
        .await;
    r.expect(201);
}

#[tokio::test]
async fn a_creem_top_up_is_applied_once_and_replays_are_duplicates() {
    let api = api().await;
    let event = checkout("evt_topup_1", "ord_topup_1", "prod_topup", 2000, Some("u_1"));
    let first = creem(&api, &event).await;
    assert_eq!(first.expect(200), &json!({"status": "applied"}));
    assert_eq!(wallet(&api, "u_1").await, ("2000".into(), "0".into()));
    let entries = ledger(&api, "u_1").await;
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0]["type"].as_str(), entries[0]["amount"].as_str()), (Some("topup"), Some("2000")));
    assert_eq!(entries[0]["reference"], json!({"payment_id": "ord_topup_1"}));

    // The same delivery again: a duplicate, nothing more credited.
    let again = creem(&api, &event).await;
    assert_eq!(again.expect(200), &json!({"status": "duplicate"}));
    // Another event naming the same order: the payment is applied once.
    let other = checkout("evt_topup_1b", "ord_topup_1", "prod_topup", 2000, Some("u_1"));
    assert_eq!(creem(&api, &other).await.expect(200)["status"], "duplicate");
    assert_eq!(wallet(&api, "u_1").await, ("2000".into(), "0".into()));
    assert_eq!(ledger(&api, "u_1").await.len(), 1);

    let list = events(&api, "").await;
    assert_eq!(statuses(&list), ["duplicate", "duplicate", "applied"]);
    let applied = &list[2];
    assert_eq!(applied["provider"], "creem");
    assert_eq!(applied["event_id"], "evt_topup_1");
    assert_eq!(applied["event_type"], "checkout.completed");
    assert_eq!(applied["account_id"], "u_1");
    assert_eq!(applied["external_id"], "ord_topup_1");
    assert_eq!(applied["received_at"], "2026-03-01T00:00:00Z");
    assert_eq!(serde_json::from_str::<Value>(applied["body"].as_str().unwrap()).unwrap(), event);
    assert!(list[0]["reason"].as_str().unwrap().contains("already applied"), "{:?}", list[0]);
    // The API refuses to record the same payment again.
    let r = api
        .post(
            "/v1/accounts/u_1/wallet/topups",
            json!({"amount_usd": "20", "provider": "creem", "external_id": "ord_topup_1"}),
        )
        .await;
    r.expect_error(409, "conflict");
    assert_eq!(wallet(&api, "u_1").await.0, "2000");
    audit_is_clean(&api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_deliveries_of_one_event_apply_it_once() {
    let api = api().await;
    for round in 0..5 {
        let event =
            checkout(&format!("evt_race_{round}"), &format!("ord_race_{round}"), "prod_topup", 1000, Some("u_1"));
        let body = serde_json::to_vec(&event).unwrap();
        let signature = creem_signature(&body);
        let deliveries: Vec<_> = (0..2)
            .map(|_| {
                let router = api.router.clone();
                let (body, signature) = (body.clone(), signature.clone());
                tokio::spawn(async move {
                    use tower::ServiceExt;
                    let request = axum::http::Request::post("/webhooks/creem")
                        .header("content-type", "application/json")
                        .header("creem-signature", signature)
                        .body(axum::body::Body::from(body))
                        .unwrap();
                    let response = router.oneshot(request).await.unwrap();
                    let status = response.status().as_u16();
                    let bytes = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
                    (status, serde_json::from_slice::<Value>(&bytes).unwrap())
                })
            })
            .collect();
        let mut answers = Vec::new();
        for d in deliveries {
            answers.push(d.await.unwrap());
        }
        let mut got: Vec<&str> = answers
            .iter()
            .map(|(s, b)| {
                assert_eq!(*s, 200);
                b["status"].as_str().unwrap()
            })
            .collect();
        got.sort();
        assert_eq!(got, ["applied", "duplicate"], "round {round}");
        assert_eq!(wallet(&api, "u_1").await.0, ((round + 1) * 1000).to_string());
    }
    let list = events(&api, "?status=applied").await;
    assert_eq!(list.len(), 5);
    assert_eq!(events(&api, "?status=duplicate").await.len(), 5);
    assert_eq!(ledger(&api, "u_1").await.len(), 5);
    audit_is_clean(&api).await;
}

#[tokio::test]
async fn bad_missing_and_stale_signatures_change_nothing() {
    let api = api().await;
    let event = checkout("evt_sig", "ord_sig", "prod_topup", 2000, Some("u_1"));
    let body = serde_json::to_vec(&event).unwrap();
    let good = creem_signature(&body);

    // Missing header.
    post_creem(&api, &body, None).await.expect_error(401, "unauthorized");
    // Signed with another secret.
    let mut mac = Hmac::<Sha256>::new_from_slice(b"not the secret").unwrap();
    mac.update(&body);
    let wrong = hex::encode(mac.finalize().into_bytes());
    post_creem(&api, &body, Some(&wrong)).await.expect_error(401, "unauthorized");
    // Not hex, empty, or a prefix of the right one.
    for bad in ["zz-not-hex", "", &good[..32]] {
        post_creem(&api, &body, Some(bad)).await.expect_error(401, "unauthorized");
    }
    // The body changed after signing: 2000 cents became 200000.
    let altered = String::from_utf8(body.clone()).unwrap().replace("\"amount\":2000", "\"amount\":200000");
    assert_ne!(altered.as_bytes(), &body[..]);
    post_creem(&api, altered.as_bytes(), Some(&good)).await.expect_error(401, "unauthorized");
    // Malformed JSON under a bad signature is still only unauthorized.
    post_creem(&api, b"{not json", Some(&good)).await.expect_error(401, "unauthorized");

    // Nothing changed: no credits, no entry, no recorded event.
    assert_eq!(wallet(&api, "u_1").await, ("0".into(), "0".into()));
    assert!(ledger(&api, "u_1").await.is_empty());
    assert!(events(&api, "").await.is_empty());

    // The same for NOWPayments.
    let ipn_body = ipn(4_402_771_953, "finished", "u_1", "25");
    let good = nowpayments_signature(&ipn_body);
    post_nowpayments(&api, &ipn_body, None).await.expect_error(401, "unauthorized");
    post_nowpayments(&api, &ipn_body, Some(&creem_signature(ipn_body.as_bytes())))
        .await
        .expect_error(401, "unauthorized");
    let altered = ipn_body.replace("\"price_amount\": 25", "\"price_amount\": 2500");
    assert_ne!(altered, ipn_body);
    post_nowpayments(&api, &altered, Some(&good)).await.expect_error(401, "unauthorized");
    assert_eq!(wallet(&api, "u_1").await, ("0".into(), "0".into()));
    assert!(events(&api, "").await.is_empty());

    // And the right signature works, which is what the refusals were about.
    assert_eq!(post_creem(&api, &body, Some(&creem_signature(&body))).await.expect(200)["status"], "applied");
    assert_eq!(nowpayments(&api, &ipn_body).await.expect(200)["status"], "applied");
    assert_eq!(wallet(&api, "u_1").await.0, "4500");
    audit_is_clean(&api).await;
}

#[tokio::test]
async fn unknown_products_and_accounts_are_ignored_and_kept() {
    let api = api().await;
    let unknown_product = creem(&api, &checkout("evt_up", "ord_up", "prod_mystery", 2000, Some("u_1"))).await;
    let body = unknown_product.expect(200);
    assert_eq!(body["status"], "ignored");
    assert!(body["reason"].as_str().unwrap().contains("prod_mystery"), "{body}");

    let unknown_account = creem(&api, &checkout("evt_ua", "ord_ua", "prod_topup", 2000, Some("u_404"))).await;
    let body = unknown_account.expect(200);
    assert_eq!(body["status"], "ignored");
    assert!(body["reason"].as_str().unwrap().contains("u_404"), "{body}");

    let no_account = creem(&api, &checkout("evt_na", "ord_na", "prod_topup", 2000, None)).await;
    assert_eq!(no_account.expect(200)["status"], "ignored");
    let bad_account = creem(&api, &checkout("evt_ba", "ord_ba", "prod_topup", 2000, Some("not an id!"))).await;
    assert_eq!(bad_account.expect(200)["status"], "ignored");
    let other_type =
        json!({"id": "evt_x", "eventType": "subscription.trialing", "created_at": 1, "object": {"id": "sub_1"}});
    assert_eq!(creem(&api, &other_type).await.expect(200)["status"], "ignored");

    let np = nowpayments(&api, &ipn(11, "finished", "u_404:topup", "20")).await;
    let body = np.expect(200);
    assert_eq!(
        (body["status"].as_str(), body["reason"].as_str().map(|r| r.contains("u_404"))),
        (Some("ignored"), Some(true))
    );

    assert_eq!(wallet(&api, "u_1").await, ("0".into(), "0".into()));
    assert!(ledger(&api, "u_1").await.is_empty());
    let list = events(&api, "?status=ignored").await;
    assert_eq!(list.len(), 6);
    let ua = list.iter().find(|e| e["event_id"] == "evt_ua").unwrap();
    assert_eq!((ua["account_id"].as_str(), ua["external_id"].as_str()), (Some("u_404"), Some("ord_ua")));
    assert_eq!(events(&api, "?status=applied").await.len(), 0);

    // An ignored event is not a dedupe key: once the operator creates the
    // account, the provider's resend applies it.
    api.account("u_404").await;
    let resent = creem(&api, &checkout("evt_ua", "ord_ua", "prod_topup", 2000, Some("u_404"))).await;
    assert_eq!(resent.expect(200)["status"], "applied");
    assert_eq!(wallet(&api, "u_404").await.0, "2000");
    audit_is_clean(&api).await;
}

#[tokio::test]
async fn malformed_bodies_with_valid_signatures_are_rejected_and_recorded() {
    let api = api().await;
    let bodies: [&[u8]; 3] = [b"{\"id\": \"evt_1\", ", b"[1, 2]", br#"{"id": "evt_2", "object": {}}"#];
    for body in bodies {
        let r = post_creem(&api, body, Some(&creem_signature(body))).await;
        let details = r.expect_error(400, "invalid_request");
        assert!(details["webhook_event_id"].is_string(), "{r:?}");
    }
    // A NOWPayments body that is JSON but not an IPN (signed as NOWPayments
    // signs), and one that is not JSON at all (signed over its raw bytes).
    let not_ipn = r#"{"order_id": "u_1"}"#;
    nowpayments(&api, not_ipn).await.expect_error(400, "invalid_request");
    let mut mac = Hmac::<Sha512>::new_from_slice(IPN_SECRET.as_bytes()).unwrap();
    mac.update(b"payment_id=1");
    let raw = hex::encode(mac.finalize().into_bytes());
    post_nowpayments(&api, "payment_id=1", Some(&raw)).await.expect_error(400, "invalid_request");

    assert_eq!(wallet(&api, "u_1").await, ("0".into(), "0".into()));
    let list = events(&api, "").await;
    assert_eq!(statuses(&list), ["rejected"; 5]);
    assert_eq!(list[4]["event_id"], Value::Null);
    assert_eq!(list[2]["event_id"], "evt_2");
    assert_eq!(list[0]["body"], "payment_id=1");
    assert_eq!(events(&api, "?provider=nowpayments").await.len(), 2);
    assert_eq!(events(&api, "?provider=creem&status=rejected").await.len(), 3);
}

#[tokio::test]
async fn a_credit_pack_adds_a_purchased_grant() {
    let api = api().await;
    let r = creem(&api, &checkout("evt_pack", "ord_pack", "prod_pack_500", 500, Some("u_1"))).await;
    assert_eq!(r.expect(200)["status"], "applied");
    let b = api.balance("u_1").await;
    let grants = b["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!((grants[0]["kind"].as_str(), grants[0]["amount"].as_str()), (Some("purchased"), Some("500")));
    assert_eq!(grants[0]["expires_at"], Value::Null);
    assert_eq!(b["available"], "500");
    assert_eq!(
        creem(&api, &checkout("evt_pack", "ord_pack", "prod_pack_500", 500, Some("u_1"))).await.expect(200)["status"],
        "duplicate"
    );
    assert_eq!(api.available("u_1").await, "500");
    let payment = api.store.payment("creem", "ord_pack").await.unwrap().unwrap();
    assert_eq!(payment.grant_ids, [grants[0]["id"].as_str().unwrap()]);
    assert_eq!(payment.credits, Credits::whole(500));
    audit_is_clean(&api).await;
}

#[tokio::test]
async fn nowpayments_finished_payments_top_up_once_and_other_statuses_are_recorded() {
    let api = api().await;
    for status in ["waiting", "confirming", "confirmed", "sending", "partially_paid"] {
        let r = nowpayments(&api, &ipn(5_077_125_051, status, "u_1:topup-7", "20")).await;
        let body = r.expect(200);
        assert_eq!(body["status"], "ignored", "{status}");
        assert!(body["reason"].as_str().unwrap().contains(status));
    }
    assert_eq!(wallet(&api, "u_1").await.0, "0");
    let finished = ipn(5_077_125_051, "finished", "u_1:topup-7", "20");
    assert_eq!(nowpayments(&api, &finished).await.expect(200), &json!({"status": "applied"}));
    assert_eq!(wallet(&api, "u_1").await.0, "2000");
    assert_eq!(nowpayments(&api, &finished).await.expect(200), &json!({"status": "duplicate"}));
    // A plain account id as order_id, a fractional amount.
    assert_eq!(
        nowpayments(&api, &ipn(5_077_125_052, "finished", "u_1", "12.34")).await.expect(200)["status"],
        "applied"
    );
    assert_eq!(wallet(&api, "u_1").await.0, "3234");
    // Not USD: ignored.
    let eur = ipn(5_077_125_053, "finished", "u_1", "20")
        .replace("\"price_currency\": \"usd\"", "\"price_currency\": \"eur\"");
    assert_eq!(nowpayments(&api, &eur).await.expect(200)["status"], "ignored");
    assert_eq!(wallet(&api, "u_1").await.0, "3234");

    let entries = ledger(&api, "u_1").await;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1]["reference"], json!({"payment_id": "5077125051"}));
    let list = events(&api, "?provider=nowpayments&status=applied").await;
    assert_eq!(list.len(), 2);
    assert_eq!(
        (list[1]["event_id"].as_str(), list[1]["event_type"].as_str()),
        (Some("5077125051:finished"), Some("finished"))
    );
    assert_eq!(list[1]["account_id"], "u_1");
    assert_eq!(events(&api, "?provider=nowpayments").await.len(), 9);
    audit_is_clean(&api).await;
}

#[tokio::test]
async fn refunds_reverse_what_is_unspent_and_turn_the_spent_rest_into_debt() {
    let api = api().await;
    flat_model(&api).await;
    api.account("u_2").await;
    api.account("u_3").await;

    // Unspent: the whole top-up goes back.
    creem(&api, &checkout("evt_a", "ord_a", "prod_topup", 2000, Some("u_1"))).await.expect(200);
    let r = creem(&api, &refund("evt_ra", "ref_a", "ord_a", 2000, 2000)).await;
    assert_eq!(r.expect(200), &json!({"status": "applied"}));
    assert_eq!(wallet(&api, "u_1").await, ("0".into(), "0".into()));
    let entries = ledger(&api, "u_1").await;
    assert_eq!((entries[0]["type"].as_str(), entries[0]["amount"].as_str()), (Some("refund"), Some("-2000")));
    assert_eq!(entries[0]["reference"], json!({"payment_id": "ord_a"}));
    // Replayed, or the same refund under another event: once.
    assert_eq!(creem(&api, &refund("evt_ra", "ref_a", "ord_a", 2000, 2000)).await.expect(200)["status"], "duplicate");
    assert_eq!(creem(&api, &refund("evt_ra2", "ref_a", "ord_a", 2000, 2000)).await.expect(200)["status"], "duplicate");
    // A new refund of a payment refunded in full: nothing left.
    assert_eq!(creem(&api, &refund("evt_ra3", "ref_a3", "ord_a", 2000, 2000)).await.expect(200)["status"], "ignored");
    assert_eq!(wallet(&api, "u_1").await, ("0".into(), "0".into()));

    // Partly spent: 1500 of 2000 used, the refund leaves 1500 of debt.
    creem(&api, &checkout("evt_b", "ord_b", "prod_topup", 2000, Some("u_2"))).await.expect(200);
    spend(&api, "u_2", "req-1", 1500).await;
    assert_eq!(wallet(&api, "u_2").await, ("500".into(), "0".into()));
    assert_eq!(creem(&api, &refund("evt_rb", "ref_b", "ord_b", 2000, 2000)).await.expect(200)["status"], "applied");
    assert_eq!(wallet(&api, "u_2").await, ("-1500".into(), "1500".into()));
    assert_eq!(api.available("u_2").await, "-1500");
    // The debt is repaid by the next credits (semantics §5).
    api.grant("u_2", "1000").await;
    assert_eq!(wallet(&api, "u_2").await, ("-500".into(), "500".into()));
    let list = events(&api, "?status=applied").await;
    let rb = list.iter().find(|e| e["event_id"] == "evt_rb").unwrap();
    assert_eq!((rb["account_id"].as_str(), rb["external_id"].as_str()), (Some("u_2"), Some("ref_b")));
    assert!(rb["reason"].as_str().unwrap().contains("1500 new debt"), "{rb}");

    // A pack, partly spent, refunded in two parts: 100 of 500 cents, then the rest.
    creem(&api, &checkout("evt_c", "ord_c", "prod_pack_500", 500, Some("u_3"))).await.expect(200);
    spend(&api, "u_3", "req-1", 200).await;
    assert_eq!(creem(&api, &refund("evt_rc1", "ref_c1", "ord_c", 100, 500)).await.expect(200)["status"], "applied");
    assert_eq!(api.available("u_3").await, "200");
    assert_eq!(wallet(&api, "u_3").await, ("0".into(), "0".into()));
    assert_eq!(creem(&api, &refund("evt_rc2", "ref_c2", "ord_c", 400, 500)).await.expect(200)["status"], "applied");
    // 400 more reversed: the 200 still unspent, and 200 spent → debt.
    assert_eq!(api.available("u_3").await, "-200");
    assert_eq!(wallet(&api, "u_3").await, ("-200".into(), "200".into()));
    let payment = api.store.payment("creem", "ord_c").await.unwrap().unwrap();
    assert_eq!(payment.refunded_credits, Credits::whole(500));

    // A refund naming no payment creditd knows is ignored.
    let unknown = creem(&api, &refund("evt_rx", "ref_x", "ord_unknown", 100, 100)).await;
    assert_eq!(unknown.expect(200)["status"], "ignored");
    audit_is_clean(&api).await;
}

#[tokio::test]
async fn plans_start_renew_switch_and_cancel_from_creem_events() {
    let api = api().await;
    api.put("/v1/plans/pro", json!({"name": "Pro", "price_usd": "50", "monthly_credits": "5000"})).await.expect(200);
    api.put("/v1/plans/starter", json!({"name": "Starter", "price_usd": "10", "monthly_credits": "1000"}))
        .await
        .expect(200);

    // A monthly plan's checkout waits for subscription.paid.
    let r = creem(&api, &checkout("evt_co", "ord_co", "prod_starter", 1000, Some("u_1"))).await;
    assert_eq!(r.expect(200)["status"], "ignored");
    api.get("/v1/accounts/u_1/subscription").await.expect_error(404, "not_found");

    // The first payment starts the plan.
    let paid = subscription_event("evt_p1", "subscription.paid", "sub_1", "tran_1", "prod_starter");
    assert_eq!(creem(&api, &paid).await.expect(200), &json!({"status": "applied"}));
    let sub = api.get("/v1/accounts/u_1/subscription").await.expect(200).clone();
    let sub = if sub["subscription"].is_object() { sub["subscription"].clone() } else { sub };
    assert_eq!(
        (sub["plan"].as_str(), sub["kind"].as_str(), sub["status"].as_str()),
        (Some("starter"), Some("monthly"), Some("active"))
    );
    assert_eq!(api.available("u_1").await, "4200");
    assert_eq!(creem(&api, &paid).await.expect(200)["status"], "duplicate");
    assert_eq!(api.available("u_1").await, "4200");

    // The next transaction of the same plan renews it (the next period is paid).
    let renewal = subscription_event("evt_p2", "subscription.paid", "sub_1", "tran_2", "prod_starter");
    assert_eq!(creem(&api, &renewal).await.expect(200)["status"], "applied");
    let payment = api.store.payment("creem", "tran_2").await.unwrap().unwrap();
    assert_eq!(payment.kind, creditd_store::PaymentKind::Subscription);
    assert_eq!(api.available("u_1").await, "4200");

    // Paying for another plan switches to it.
    let upgrade = subscription_event("evt_p3", "subscription.paid", "sub_2", "tran_3", "prod_pro");
    assert_eq!(creem(&api, &upgrade).await.expect(200)["status"], "applied");
    let sub = api.get("/v1/accounts/u_1/subscription").await.expect(200).clone();
    let sub = if sub["subscription"].is_object() { sub["subscription"].clone() } else { sub };
    assert_eq!(sub["plan"], "pro");

    // Cancelled: runs to the period end.
    let cancel = subscription_event("evt_c1", "subscription.canceled", "sub_2", "tran_3", "prod_pro");
    assert_eq!(creem(&api, &cancel).await.expect(200)["status"], "applied");
    let sub = api.get("/v1/accounts/u_1/subscription").await.expect(200).clone();
    let sub = if sub["subscription"].is_object() { sub["subscription"].clone() } else { sub };
    assert_eq!((sub["status"].as_str(), sub["cancel_at_period_end"].as_bool()), (Some("active"), Some(true)));
    assert_eq!(creem(&api, &cancel).await.expect(200)["status"], "duplicate");

    // Refunds of the starter payments. The switch credited the first
    // period's unused share (9 USD: the 10% floor) and the renewal paid in
    // advance in full (10 USD, its period never started): each refund
    // reverses what its payment put in the wallet; the first period's pools
    // expired unspent at the switch, so nothing becomes debt.
    assert_eq!(wallet(&api, "u_1").await, ("1900".into(), "0".into()));
    let r = creem(&api, &refund("evt_rt2", "ref_t2", "2", 1000, 1000)).await;
    assert_eq!(r.expect(200)["status"], "applied");
    assert_eq!(wallet(&api, "u_1").await, ("900".into(), "0".into()));
    assert_eq!(creem(&api, &refund("evt_rt1", "ref_t1", "1", 1000, 1000)).await.expect(200)["status"], "applied");
    assert_eq!(wallet(&api, "u_1").await, ("0".into(), "0".into()));
    let rt1 = events(&api, "?status=applied").await.into_iter().find(|e| e["event_id"] == "evt_rt1").unwrap();
    assert!(rt1["reason"].as_str().unwrap().contains("4200 had lapsed"), "{rt1}");

    // A 30-day pass comes with its checkout.
    api.account("u_2").await;
    let pass = checkout("evt_pass", "ord_pass", "prod_pro_pass", 5000, Some("u_2"));
    assert_eq!(creem(&api, &pass).await.expect(200)["status"], "applied");
    let sub = api.get("/v1/accounts/u_2/subscription").await.expect(200).clone();
    let sub = if sub["subscription"].is_object() { sub["subscription"].clone() } else { sub };
    assert_eq!((sub["plan"].as_str(), sub["kind"].as_str()), (Some("pro"), Some("pass_30d")));
    assert_eq!(sub["current_period_end"], "2026-03-31T00:00:00Z");

    // Refunding the pass reverses its pools: unspent, so no debt.
    let before = api.available("u_2").await;
    assert_eq!(before, "21000");
    assert_eq!(creem(&api, &refund("evt_rp", "ref_p", "ord_pass", 5000, 5000)).await.expect(200)["status"], "applied");
    assert_eq!(api.available("u_2").await, "0");
    assert_eq!(wallet(&api, "u_2").await, ("0".into(), "0".into()));
    audit_is_clean(&api).await;
}

#[tokio::test]
async fn the_event_list_is_admin_only_and_validates_its_filters() {
    let api = api().await;
    creem(&api, &checkout("evt_1", "ord_1", "prod_topup", 500, Some("u_1"))).await.expect(200);
    let gateway = api.key("gateway").await;
    api.call("GET", "/v1/webhook-events", Some(&gateway), None).await.expect_error(403, "forbidden");
    api.call("GET", "/v1/webhook-events", None, None).await.expect_error(401, "unauthorized");
    api.get("/v1/webhook-events?status=done").await.expect_error(400, "invalid_request");
    api.get("/v1/webhook-events?provider=no%20such").await.expect_error(400, "invalid_request");
    for i in 2..=4 {
        creem(&api, &checkout(&format!("evt_{i}"), &format!("ord_{i}"), "prod_topup", 500, Some("u_1")))
            .await
            .expect(200);
    }
    let first = api.get("/v1/webhook-events?limit=3").await;
    let first = first.expect(200).clone();
    assert_eq!(first["data"].as_array().unwrap().len(), 3);
    assert_eq!(first["data"][0]["event_id"], "evt_4");
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = api.get(&format!("/v1/webhook-events?limit=3&cursor={cursor}")).await;
    let rest = rest.expect(200);
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(rest["data"][0]["event_id"], "evt_1");
    assert_eq!(rest["next_cursor"], Value::Null);
}

#[tokio::test]
async fn webhooks_of_a_provider_without_a_secret_are_off() {
    let api = Api::build(true, config()).await;
    api.account("u_1").await;
    let event = checkout("evt_1", "ord_1", "prod_topup", 500, Some("u_1"));
    creem(&api, &event).await.expect_error(404, "not_found");
    nowpayments(&api, &ipn(1, "finished", "u_1", "20")).await.expect_error(404, "not_found");
    assert_eq!(api.available("u_1").await, "0");
}

#[tokio::test]
async fn api_top_ups_and_purchases_are_recorded_payments() {
    let api = api().await;
    let path = "/v1/accounts/u_1/wallet/topups";
    api.post(path, json!({"amount_usd": "4.99", "provider": "creem", "external_id": "ord_m"}))
        .await
        .expect_error(400, "below_minimum_topup");
    api.post(path, json!({"amount_usd": "5", "provider": "creem", "external_id": "ord_m"})).await.expect(201);
    api.post(path, json!({"amount_usd": "5", "provider": "creem", "external_id": "ord_m"}))
        .await
        .expect_error(409, "conflict");
    // The same external id at another provider is another payment.
    api.post(path, json!({"amount_usd": "10", "provider": "nowpayments", "external_id": "ord_m"})).await.expect(201);
    api.topup("u_1", "1").await;
    api.topup("u_1", "1").await;
    let purchase = json!({"credits": "500", "amount_usd": "5", "provider": "creem", "external_id": "ord_p"});
    api.post("/v1/accounts/u_1/purchases", purchase.clone()).await.expect(201);
    api.post("/v1/accounts/u_1/purchases", purchase).await.expect_error(409, "conflict");
    assert_eq!(api.available("u_1").await, "2200");
    // A webhook for a payment recorded through the API is a duplicate.
    let r = creem(&api, &checkout("evt_m", "ord_m", "prod_topup", 500, Some("u_1"))).await;
    assert_eq!(r.expect(200)["status"], "duplicate");
    // And a refund of it works from the record.
    assert_eq!(creem(&api, &refund("evt_rm", "ref_m", "ord_m", 500, 500)).await.expect(200)["status"], "applied");
    assert_eq!(api.available("u_1").await, "1700");
    let p = api.store.payment("creem", "ord_m").await.unwrap().unwrap();
    assert_eq!(
        (p.kind, p.amount_usd.to_string(), p.credits, p.refunded_credits),
        (creditd_store::PaymentKind::Topup, "5".to_string(), Credits::whole(500), Credits::whole(500))
    );
    audit_is_clean(&api).await;
}

/// Issue 18.1: a NOWPayments IPN whose `payment_id` is written `6000000001.0`
/// verified with the integer form's signature (numbers are re-serialised as
/// JavaScript writes them) and was applied a second time as another payment.
/// Every re-serialisation of a signed body (number forms, key order,
/// whitespace, unicode escapes, the id as a string) is now either refused
/// or the same payment: the wallet is topped up once.
#[tokio::test]
async fn nowpayments_replay_with_a_changed_payment_id_form_applies_once() {
    let api = api().await;
    let body = ipn(6_000_000_001, "finished", "u_1", "20");
    let signature = nowpayments_signature(&body);
    assert_eq!(post_nowpayments(&api, &body, Some(&signature)).await.expect(200)["status"], "applied");
    assert_eq!(wallet(&api, "u_1").await.0, "2000");

    let compact: Value = serde_json::from_str(&body).unwrap();
    let compact = serde_json::to_string(&compact).unwrap();
    let variants = [
        // Number forms of the id, each verifying with the integer's signature.
        body.replace("6000000001,", "6000000001.0,"),
        body.replace("6000000001,", "6000000001.000,"),
        body.replace("6000000001,", "6.000000001e9,"),
        body.replace("6000000001,", "6000000001e0,"),
        body.replace("6000000001,", "60000000010e-1,"),
        // The amount written another way.
        body.replace("\"price_amount\": 20,", "\"price_amount\": 20.0,"),
        // Key order, whitespace, unicode escapes.
        compact.clone(),
        format!("  {}\n", body.replace(", ", " ,\t")),
        body.replace("\"finished\"", "\"fin\\u0069shed\""),
        body.replace("\"payment_status\"", "\"payment_\\u0073tatus\""),
        // A duplicated key: the last one counts, as in the signed form.
        body.replacen("{", "{\"payment_id\": 7000000001, ", 1),
    ];
    for variant in &variants {
        let r = post_nowpayments(&api, variant, Some(&signature)).await;
        let status = r.status.as_u16();
        let outcome = r.body["status"].as_str().unwrap_or(r.code()).to_string();
        assert!((status == 200 && outcome == "duplicate") || status == 400 || status == 401, "{variant}: {r:?}");
        assert_eq!(wallet(&api, "u_1").await.0, "2000", "{variant}: applied twice");
    }
    // The id as a string is the same payment (signed afresh: the text differs).
    let as_string = body.replace("6000000001,", "\"6000000001\",");
    assert_eq!(nowpayments(&api, &as_string).await.expect(200)["status"], "duplicate");
    let leading_zero = body.replace("6000000001,", "\"06000000001\",");
    assert_eq!(nowpayments(&api, &leading_zero).await.expect(200)["status"], "duplicate");
    // Ids that are not positive integers are refused, whoever signed them.
    for bad in ["6000000001.5", "-6000000001", "0", "\"6000000001.0\"", "\"abc\"", "true", "[1]"] {
        let variant = body.replace("6000000001,", &format!("{bad},"));
        nowpayments(&api, &variant).await.expect_error(400, "invalid_request");
    }
    assert_eq!(wallet(&api, "u_1").await.0, "2000");
    let applied = events(&api, "?provider=nowpayments&status=applied").await;
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0]["event_id"], "6000000001:finished");
    assert_eq!(ledger(&api, "u_1").await.len(), 1);
    audit_is_clean(&api).await;
}
