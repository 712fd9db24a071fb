//! The dashboard's Manage page against stand-ins of Creem and NOWPayments
//! on localhost: what each button sends, the redirects, the minimums, CSRF,
//! a provider outage, the switch preview against the switch a payment then
//! makes, and cancelling.

use std::collections::HashMap;

use creditd_core::subscription::SubscriptionKind;
use creditd_core::units::{Credits, Usd};
use creditd_server::ServerConfig;
use creditd_server::dashboard::{ProductDisplay, ProviderApi};
use creditd_server::payments::{CreemConfig, NowPaymentsConfig, PaymentsConfig, Product, WebhookSecret};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::standin::StandIn;
use crate::support::{Api, Resp, config};

const CREEM_SECRET: &str = "whsec_manage_test";

pub fn manage_config(standin: &StandIn) -> ServerConfig {
    let mut products = HashMap::new();
    products.insert("prod_topup_3".to_string(), Product::Topup);
    products.insert("prod_topup_20".to_string(), Product::Topup);
    products.insert("prod_pack_500".to_string(), Product::Credits(Credits::whole(500)));
    products
        .insert("prod_starter".to_string(), Product::Plan { plan: "starter".into(), kind: SubscriptionKind::Monthly });
    products.insert("prod_pro".to_string(), Product::Plan { plan: "pro".into(), kind: SubscriptionKind::Monthly });
    products.insert("prod_pro_pass".to_string(), Product::Plan { plan: "pro".into(), kind: SubscriptionKind::Pass30d });
    let mut c = config();
    c.payments = PaymentsConfig {
        creem: Some(CreemConfig { webhook_secret: WebhookSecret::new(CREEM_SECRET), products }),
        nowpayments: Some(NowPaymentsConfig { ipn_secret: WebhookSecret::new("ipn_manage_test") }),
    };
    c.dashboard.public_url = Some("http://credits.test".into());
    c.dashboard.creem = Some(ProviderApi::new("creem_test_key", &standin.base));
    c.dashboard.nowpayments = Some(ProviderApi::new("np_test_key", &standin.base));
    let display =
        |label: &str, usd: i64| ProductDisplay { label: Some(label.into()), price_usd: Some(Usd::whole(usd)) };
    c.dashboard.products = HashMap::from([
        ("prod_topup_3".to_string(), display("Top up $3", 3)),
        ("prod_topup_20".to_string(), display("Top up $20", 20)),
        ("prod_pack_500".to_string(), display("500 credits", 5)),
    ]);
    c
}

pub async fn plans(api: &Api) {
    for (id, name, price, credits) in [("starter", "Starter", "10", "1000"), ("pro", "Pro", "50", "5000")] {
        api.put(
            &format!("/v1/plans/{id}"),
            json!({"name": name, "price_usd": price, "monthly_credits": credits, "rate_per_minute": 60,
                   "daily_requests": 500, "weekly_requests": 1500, "model_access": "all"}),
        )
        .await
        .expect(200);
    }
}

/// A signed-in browser: its cookie and CSRF token.
pub async fn signed_in(api: &Api, account: &str) -> (String, String) {
    let t = api.post(&format!("/v1/accounts/{account}/tokens"), json!({})).await.expect(201).clone();
    let r = api.raw("GET", &format!("/dashboard?token={}", t["token"].as_str().unwrap()), None, vec![], &[]).await;
    let cookie = r.headers["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let html = get(api, "/dashboard", &cookie).await;
    let at = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    (cookie, html[at..at + 64].to_string())
}

pub async fn get(api: &Api, path: &str, cookie: &str) -> String {
    let r = api.raw("GET", path, None, vec![], &[("cookie", cookie)]).await;
    assert_eq!(r.status, 200, "{path}: {r:?}");
    String::from_utf8(r.raw.to_vec()).unwrap()
}

pub async fn post_form(api: &Api, path: &str, cookie: &str, body: &str) -> Resp {
    let request = axum::http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", cookie)
        .header("host", "credits.test")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    api.send(request).await
}

fn location(r: &Resp) -> String {
    assert_eq!(r.status, 303, "{r:?}");
    r.headers["location"].to_str().unwrap().to_string()
}

pub fn creem_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(CREEM_SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// `subscription.paid` for `product`, as Creem sends it.
pub fn subscription_paid(event: &str, sub: &str, transaction: &str, product: &str, account: &str) -> Value {
    json!({"id": event, "eventType": "subscription.paid", "created_at": 1_772_323_200_000u64, "object": {
        "id": sub, "object": "subscription", "status": "active",
        "product": {"id": product, "name": product, "price": 5000, "currency": "USD", "billing_type": "recurring"},
        "customer": {"id": "cust_1", "email": "user@example.com"},
        "last_transaction_id": transaction, "metadata": {"account_id": account}}})
}

#[tokio::test]
async fn card_top_ups_and_packs_go_to_a_creem_checkout_for_the_account() {
    let standin = StandIn::start().await;
    let api = Api::build(true, manage_config(&standin)).await;
    plans(&api).await;
    api.account("u1").await;
    let (cookie, csrf) = signed_in(&api, "u1").await;
    let html = get(&api, "/dashboard/manage", &cookie).await;
    assert!(html.contains("data-product=\"prod_topup_20\">Top up $20</button>"), "{html}");
    assert!(!html.contains("prod_topup_3"), "under the $5 minimum: not offered");
    assert!(html.contains("data-product=\"prod_pack_500\">500 credits · $5</button>"));
    assert!(html.contains("data-plan=\"starter\"") && html.contains("data-plan=\"pro\""));
    assert!(html.contains("data-product=\"prod_pro_pass\">30-day pass</button>"));

    let r = post_form(&api, "/dashboard/manage/checkout", &cookie, &format!("csrf={csrf}&product=prod_topup_20")).await;
    assert_eq!(location(&r), format!("{}/checkout/ch_1", standin.base));
    let seen = standin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/checkouts");
    assert_eq!(seen[0].api_key.as_deref(), Some("creem_test_key"));
    let body = &seen[0].body;
    assert_eq!(body["product_id"], "prod_topup_20");
    assert_eq!(body["metadata"], json!({"account_id": "u1"}));
    assert_eq!(body["success_url"], "http://credits.test/dashboard/manage?notice=paid");
    assert!(body["request_id"].as_str().is_some_and(|r| r.len() >= 16));

    let r = post_form(&api, "/dashboard/manage/checkout", &cookie, &format!("csrf={csrf}&product=prod_pack_500")).await;
    assert_eq!(location(&r), format!("{}/checkout/ch_2", standin.base));
    assert_ne!(standin.seen()[1].body["request_id"], body["request_id"], "each checkout its own request id");

    // Refused before any call: no CSRF token, a product under the minimum, an unknown one.
    let r = post_form(&api, "/dashboard/manage/checkout", &cookie, "product=prod_topup_20").await;
    assert_eq!(r.status, 403);
    let r = post_form(&api, "/dashboard/manage/checkout", &cookie, &format!("csrf={csrf}&product=prod_topup_3")).await;
    assert_eq!(location(&r), "/dashboard/manage?error=below_minimum");
    let r = post_form(&api, "/dashboard/manage/checkout", &cookie, &format!("csrf={csrf}&product=nope")).await;
    assert_eq!(location(&r), "/dashboard/manage?error=product");
    assert_eq!(standin.seen().len(), 2);
    let html = get(&api, "/dashboard/manage?error=below_minimum", &cookie).await;
    assert!(html.contains("below the provider&#39;s minimum"));
    // Without a session, nothing.
    let r = post_form(
        &api,
        "/dashboard/manage/checkout",
        "creditd_session=x",
        &format!("csrf={csrf}&product=prod_pack_500"),
    )
    .await;
    assert_eq!(r.status, 401);

    // An outage: back to the page with a message, nothing charged.
    standin.fail(true);
    let r = post_form(&api, "/dashboard/manage/checkout", &cookie, &format!("csrf={csrf}&product=prod_topup_20")).await;
    assert_eq!(location(&r), "/dashboard/manage?error=provider");
}

#[tokio::test]
async fn crypto_top_ups_make_a_nowpayments_invoice_of_at_least_the_minimum() {
    let standin = StandIn::start().await;
    let api = Api::build(true, manage_config(&standin)).await;
    api.account("u1").await;
    let (cookie, csrf) = signed_in(&api, "u1").await;
    for bad in ["", "abc", "1e3", "10.001", "-20", "0"] {
        let r = post_form(&api, "/dashboard/manage/crypto", &cookie, &format!("csrf={csrf}&amount_usd={bad}")).await;
        assert_eq!(location(&r), "/dashboard/manage?error=amount", "{bad:?}");
    }
    let r = post_form(&api, "/dashboard/manage/crypto", &cookie, &format!("csrf={csrf}&amount_usd=9.99")).await;
    assert_eq!(location(&r), "/dashboard/manage?error=below_minimum");
    assert!(standin.seen().is_empty());

    let r = post_form(&api, "/dashboard/manage/crypto", &cookie, &format!("csrf={csrf}&amount_usd=12.50")).await;
    assert_eq!(location(&r), format!("{}/invoice/5077125051", standin.base));
    let seen = standin.seen();
    assert_eq!(seen[0].path, "/v1/invoice");
    assert_eq!(seen[0].api_key.as_deref(), Some("np_test_key"));
    assert!(seen[0].raw.contains("\"price_amount\":12.5,"), "the amount as an exact number: {}", seen[0].raw);
    let body = &seen[0].body;
    assert_eq!(body["price_currency"], "usd");
    assert!(body["order_id"].as_str().unwrap().starts_with("u1:"));
    assert_eq!(body["ipn_callback_url"], "http://credits.test/webhooks/nowpayments");
    assert_eq!(body["success_url"], "http://credits.test/dashboard/manage?notice=paid");
}

#[tokio::test]
async fn a_switch_shows_the_proration_the_payment_then_credits() {
    let standin = StandIn::start().await;
    let api = Api::build(true, manage_config(&standin)).await;
    plans(&api).await;
    api.account("u1").await;
    api.post("/v1/accounts/u1/subscription", json!({"plan": "starter", "kind": "monthly", "external_id": "sub_old"}))
        .await
        .expect(201);
    api.clock.advance(3 * 86_400).unwrap();
    let (cookie, csrf) = signed_in(&api, "u1").await;
    let html = get(&api, "/dashboard/manage", &cookie).await;
    assert!(html.contains("href=\"/dashboard/manage/switch?product=prod_pro\""), "{html}");
    assert!(!html.contains("prod_pro_pass"), "no pass while a plan runs");

    // Posting the plan's checkout directly leads to the preview first.
    let r = post_form(&api, "/dashboard/manage/checkout", &cookie, &format!("csrf={csrf}&product=prod_pro")).await;
    assert_eq!(location(&r), "/dashboard/manage/switch?product=prod_pro");
    assert!(standin.seen().is_empty());
    let html = get(&api, "/dashboard/manage/switch?product=prod_pro", &cookie).await;
    let at = html.find("id=\"proration-usd\">").unwrap() + "id=\"proration-usd\">".len();
    let shown_usd = html[at..at + html[at..].find('<').unwrap()].to_string();
    let at = html.find("id=\"proration-credits\"><span class=\"num\" data-amount=\"").unwrap()
        + "id=\"proration-credits\"><span class=\"num\" data-amount=\"".len();
    let shown_credits = html[at..at + html[at..].find('"').unwrap()].to_string();
    // Starter $10, 3 days of a 31-day March used: the 10% floor gives $9.
    assert_eq!(shown_usd, "$9");
    assert_eq!(shown_credits, "900");

    let r = post_form(&api, "/dashboard/manage/checkout", &cookie, &format!("csrf={csrf}&product=prod_pro&confirm=1"))
        .await;
    assert_eq!(location(&r), format!("{}/checkout/ch_1", standin.base));
    assert_eq!(standin.seen()[0].body["product_id"], "prod_pro");

    // The payment arrives: the switch credits what the page showed.
    let event = serde_json::to_vec(&subscription_paid("evt_1", "sub_new", "tran_1", "prod_pro", "u1")).unwrap();
    let sig = creem_signature(&event);
    api.raw("POST", "/webhooks/creem", None, event, &[("creem-signature", &sig)]).await.expect(200);
    let ledger = api.get("/v1/accounts/u1/ledger?type=proration_credit").await.expect(200).clone();
    assert_eq!(ledger["data"][0]["amount"], shown_credits.as_str());
    assert_eq!(api.get("/v1/accounts/u1/subscription").await.expect(200)["plan"], "pro");
}

#[tokio::test]
async fn cancelling_from_the_dashboard_stops_the_renewal() {
    let standin = StandIn::start().await;
    let api = Api::build(true, manage_config(&standin)).await;
    plans(&api).await;
    api.account("u1").await;
    let (cookie, csrf) = signed_in(&api, "u1").await;
    let r = post_form(&api, "/dashboard/manage/cancel", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(location(&r), "/dashboard/manage?error=no_subscription");
    api.post("/v1/accounts/u1/subscription", json!({"plan": "pro", "kind": "monthly"})).await.expect(201);
    let html = get(&api, "/dashboard/manage", &cookie).await;
    assert!(html.contains("id=\"cancel\""));
    let r = post_form(&api, "/dashboard/manage/cancel", &cookie, "csrf=forged").await;
    assert_eq!(r.status, 403);
    let r = post_form(&api, "/dashboard/manage/cancel", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(location(&r), "/dashboard/manage?notice=cancelled");
    assert_eq!(api.get("/v1/accounts/u1/subscription").await.expect(200)["cancel_at_period_end"], true);
    let html = get(&api, "/dashboard/manage?notice=cancelled", &cookie).await;
    assert!(html.contains("will not renew"));
    assert!(html.contains("id=\"cancel-state\""));
    let html = get(&api, "/dashboard", &cookie).await;
    assert!(html.contains("<span id=\"plan-fate\">Cancels at period end</span>"));
}
