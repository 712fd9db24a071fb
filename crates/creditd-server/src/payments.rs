//! Payment providers (`api.md` §Webhooks): their configuration, the check
//! of their signatures, and the reading of their events into a
//! [`WebhookEventIn`] for the store.
//!
//! Nothing here decides what a payment does to an account: it only reads
//! the provider's payload (which account, which product, which payment) and
//! names the action; the writer applies it, at most once.

use std::collections::HashMap;
use std::fmt;

use creditd_core::engine::RefundShare;
use creditd_core::subscription::SubscriptionKind;
use creditd_core::units::{Credits, Usd};
use creditd_store::{WebhookAction, WebhookEventIn, WebhookStatus};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::{Sha256, Sha512};

use crate::validate;

pub const CREEM: &str = "creem";
pub const NOWPAYMENTS: &str = "nowpayments";

/// A webhook signing secret: never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        WebhookSecret(secret.into())
    }

    fn key(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

/// What a paid product does (`[payments.creem.products]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Product {
    /// The amount paid goes to the wallet.
    Topup,
    /// A credit pack: a `purchased` grant of these credits.
    Credits(Credits),
    /// A plan: `monthly` through `subscription.paid`, `pass_30d` through
    /// `checkout.completed`.
    Plan { plan: String, kind: SubscriptionKind },
}

/// `[payments.creem]`: webhooks are served once the secret is set.
#[derive(Clone, Debug)]
pub struct CreemConfig {
    pub webhook_secret: WebhookSecret,
    /// By Creem product id.
    pub products: HashMap<String, Product>,
}

/// `[payments.nowpayments]`: IPNs are served once the secret is set.
#[derive(Clone, Debug)]
pub struct NowPaymentsConfig {
    pub ipn_secret: WebhookSecret,
}

/// The payment providers whose webhooks the API serves.
#[derive(Clone, Debug, Default)]
pub struct PaymentsConfig {
    pub creem: Option<CreemConfig>,
    pub nowpayments: Option<NowPaymentsConfig>,
}

// ---------------------------------------------------------------------------
// Signatures.

fn decode_signature(header: Option<&[u8]>) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(header?).ok()?.trim();
    hex::decode(text).ok().filter(|s| !s.is_empty())
}

/// `creem-signature`: hex HMAC-SHA256 of the raw body, compared in constant time.
pub fn creem_signature_ok(secret: &WebhookSecret, body: &[u8], header: Option<&[u8]>) -> bool {
    let Some(signature) = decode_signature(header) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.key()) else { return false };
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// `x-nowpayments-sig`: hex HMAC-SHA512 of the body re-serialised with keys
/// sorted at every level and no whitespace, compared in constant time.
///
/// "Re-serialised" depends on the serialiser: NOWPayments' own examples use
/// JavaScript's `JSON.stringify` (`20.0` is written `20`), others write
/// numbers as they read them or escape non-ASCII text. Each of those forms
/// of the same body is accepted, and so is the raw body itself (a sender
/// that signs what it sends); none can be made without the secret.
pub fn nowpayments_signature_ok(
    secret: &WebhookSecret,
    body: &[u8],
    parsed: Option<&Value>,
    header: Option<&[u8]>,
) -> bool {
    let Some(signature) = decode_signature(header) else { return false };
    let verify = |message: &[u8]| {
        Hmac::<Sha512>::new_from_slice(secret.key())
            .map(|mut mac| {
                mac.update(message);
                mac.verify_slice(&signature).is_ok()
            })
            .unwrap_or(false)
    };
    let mut ok = verify(body);
    if let Some(value) = parsed {
        for js_numbers in [true, false] {
            for ascii in [false, true] {
                let mut text = String::new();
                write_sorted(value, Style { js_numbers, ascii }, &mut text);
                // No early exit: every candidate is checked.
                ok |= verify(text.as_bytes());
            }
        }
    }
    ok
}

#[derive(Clone, Copy)]
struct Style {
    /// Numbers as JavaScript writes them (`20.0` → `20`).
    js_numbers: bool,
    /// Non-ASCII characters as `\uXXXX`.
    ascii: bool,
}

/// JSON with the keys of every object sorted and no whitespace.
fn write_sorted(value: &Value, style: Style, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, style, out);
                out.push(':');
                write_sorted(&map[key], style, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(item, style, out);
            }
            out.push(']');
        }
        Value::String(s) => write_string(s, style, out),
        Value::Number(n) if style.js_numbers && !n.is_i64() && !n.is_u64() => match n.as_f64() {
            Some(f) => out.push_str(&js_number(f)),
            None => out.push_str(&n.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

fn write_string(s: &str, style: Style, out: &mut String) {
    let quoted = Value::String(s.to_string()).to_string();
    if !style.ascii || s.is_ascii() {
        out.push_str(&quoted);
        return;
    }
    for c in quoted.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
}

/// A finite number as JavaScript's `Number.prototype.toString` writes it.
fn js_number(f: f64) -> String {
    if f == 0.0 || !f.is_finite() {
        return "0".into();
    }
    // Shortest round-trip digits and exponent: `d.ddde±x`.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let k = digits.len() as i64;
    let n = exponent + 1;
    let sign = if f < 0.0 { "-" } else { "" };
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let e = if e >= 0 { format!("+{e}") } else { e.to_string() };
        if k == 1 { format!("{digits}e{e}") } else { format!("{}.{}e{e}", &digits[..1], &digits[1..]) }
    };
    format!("{sign}{body}")
}

// ---------------------------------------------------------------------------
// Reading events.

fn record(status: WebhookStatus, reason: impl Into<String>) -> WebhookAction {
    WebhookAction::Record { status, reason: reason.into() }
}

fn ignored(reason: impl Into<String>) -> WebhookAction {
    record(WebhookStatus::Ignored, reason)
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |v, key| v.get(key))?.as_str().filter(|s| !s.is_empty())
}

/// An object's id: the string itself, or its `id` when it is expanded.
fn ref_id(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string),
        _ => None,
    }
}

fn u64_at(value: &Value, path: &[&str]) -> Option<u64> {
    path.iter().try_fold(value, |v, key| v.get(key))?.as_u64()
}

/// Minor units (cents) of USD.
fn cents(amount: u64) -> Option<Usd> {
    let nano = i64::try_from(amount).ok()?.checked_mul(Usd::ONE / 100)?;
    Some(Usd::from_units(nano))
}

/// The account an event names, checked for shape (whether it exists is the
/// writer's question).
fn account_in(value: Option<&str>, field: &str) -> Result<String, WebhookAction> {
    let Some(id) = value else { return Err(ignored(format!("the event names no account ({field})"))) };
    if validate::account_id(field, id).is_err() {
        return Err(ignored(format!("unknown account {id:?}: not an account id")));
    }
    Ok(id.to_string())
}

fn envelope(provider: &str, body: &[u8]) -> WebhookEventIn {
    WebhookEventIn {
        provider: provider.to_string(),
        event_id: None,
        event_type: None,
        account_id: None,
        body: body.to_vec(),
        action: record(WebhookStatus::Rejected, "unreadable event"),
    }
}

/// Reads a Creem event (its signature already checked). A body that is not
/// a Creem event is `rejected`; an event creditd cannot apply is `ignored`.
pub fn creem_event(body: &[u8], config: &CreemConfig) -> WebhookEventIn {
    let mut event = envelope(CREEM, body);
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            event.action = record(WebhookStatus::Rejected, format!("the body is not JSON: {e}"));
            return event;
        }
    };
    event.event_id = str_at(&value, &["id"]).map(str::to_string);
    event.event_type = str_at(&value, &["eventType"]).map(str::to_string);
    let object = value.get("object").filter(|o| o.is_object());
    let (Some(_), Some(event_type), Some(object)) = (&event.event_id, event.event_type.clone(), object) else {
        event.action =
            record(WebhookStatus::Rejected, "not a Creem event: \"id\", \"eventType\" and \"object\" are required");
        return event;
    };
    let account = str_at(object, &["metadata", "account_id"])
        .or_else(|| str_at(object, &["subscription", "metadata", "account_id"]));
    event.account_id = account.map(str::to_string);
    event.action = match event_type.as_str() {
        "checkout.completed" => creem_checkout(object, account, config),
        "subscription.paid" => creem_subscription_paid(object, account, config, event.event_id.as_deref()),
        "subscription.canceled" => match account_in(account, "object.metadata.account_id") {
            Ok(account_id) => WebhookAction::CancelSubscription {
                account_id,
                provider_subscription_id: creem_subscription_id(object),
            },
            Err(skip) => skip,
        },
        "refund.created" => creem_refund(object),
        other => ignored(format!("event type {other:?} is not one creditd applies")),
    };
    event
}

fn creem_product<'a>(object: &Value, config: &'a CreemConfig) -> Result<&'a Product, WebhookAction> {
    let id = ref_id(object, "product")
        .or_else(|| object.get("order").and_then(|o| ref_id(o, "product")))
        .ok_or_else(|| ignored("the event names no product"))?;
    config.products.get(&id).ok_or_else(|| ignored(format!("unknown product {id:?}: not in payments.creem.products")))
}

fn creem_checkout(object: &Value, account: Option<&str>, config: &CreemConfig) -> WebhookAction {
    let product = match creem_product(object, config) {
        Ok(p) => p,
        Err(skip) => return skip,
    };
    let account_id = match account_in(account, "object.metadata.account_id") {
        Ok(a) => a,
        Err(skip) => return skip,
    };
    let Some(payment_id) = object
        .get("order")
        .and_then(|o| ref_id(o, "id").or_else(|| o.as_str().map(String::from)))
        .or_else(|| str_at(object, &["id"]).map(str::to_string))
    else {
        return ignored("the checkout names no order");
    };
    let amount = u64_at(object, &["order", "amount"]);
    match product {
        Product::Topup => match amount.and_then(cents) {
            Some(amount_usd) => WebhookAction::Topup { account_id, amount_usd, payment_id },
            None => ignored("a top-up needs object.order.amount, in cents"),
        },
        Product::Credits(credits) => WebhookAction::Pack {
            account_id,
            credits: *credits,
            amount_usd: amount.and_then(cents).unwrap_or(Usd::ZERO),
            payment_id,
        },
        Product::Plan { plan, kind: SubscriptionKind::Pass30d } => WebhookAction::Subscribe {
            account_id,
            plan: plan.clone(),
            kind: SubscriptionKind::Pass30d,
            amount_usd: amount.and_then(cents).unwrap_or(Usd::ZERO),
            payment_id,
            provider_subscription_id: None,
        },
        Product::Plan { kind: SubscriptionKind::Monthly, .. } => {
            ignored("a monthly plan starts (and renews) on subscription.paid")
        }
    }
}

fn creem_subscription_paid(
    object: &Value,
    account: Option<&str>,
    config: &CreemConfig,
    event_id: Option<&str>,
) -> WebhookAction {
    let (plan, kind) = match creem_product(object, config) {
        Ok(Product::Plan { plan, kind }) => (plan.clone(), *kind),
        Ok(_) => return ignored("subscription.paid for a product that is not a plan"),
        Err(skip) => return skip,
    };
    let account_id = match account_in(account, "object.metadata.account_id") {
        Ok(a) => a,
        Err(skip) => return skip,
    };
    // The transaction is the payment; without one, the event is.
    let payment_id = str_at(object, &["last_transaction_id"])
        .or_else(|| str_at(object, &["last_transaction", "id"]))
        .or(event_id)
        .unwrap_or_default()
        .to_string();
    let amount_usd = u64_at(object, &["last_transaction", "amount"])
        .or_else(|| u64_at(object, &["product", "price"]))
        .and_then(cents)
        .unwrap_or(Usd::ZERO);
    let provider_subscription_id = creem_subscription_id(object);
    WebhookAction::Subscribe { account_id, plan, kind, amount_usd, payment_id, provider_subscription_id }
}

/// The Creem subscription an event's object is (`"object": "subscription"`,
/// its `id`) or names (`subscription`, an id or the expanded object).
/// Only an id of `A-Z a-z 0-9 _ -` (Creem's are `sub_…`) is kept: it goes
/// into the path of the cancel call.
fn creem_subscription_id(object: &Value) -> Option<String> {
    let id = if object.get("object").and_then(Value::as_str) == Some("subscription") {
        str_at(object, &["id"]).map(str::to_string)
    } else {
        ref_id(object, "subscription")
    };
    id.filter(|id| id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
}

fn creem_refund(object: &Value) -> WebhookAction {
    let Some(refund_id) = str_at(object, &["id"]).map(str::to_string) else {
        return record(WebhookStatus::Rejected, "a refund needs object.id");
    };
    // A refund names its payment several ways; the first creditd recorded wins.
    let mut payment_ids: Vec<String> = Vec::new();
    let transaction = object.get("transaction");
    let candidates = [
        ref_id(object, "transaction"),
        ref_id(object, "order"),
        transaction.and_then(|t| ref_id(t, "order")),
        object.get("checkout").and_then(|c| ref_id(c, "order")),
        ref_id(object, "checkout"),
    ];
    for id in candidates.into_iter().flatten() {
        if !payment_ids.contains(&id) {
            payment_ids.push(id);
        }
    }
    if payment_ids.is_empty() {
        return ignored("the refund names no transaction, order or checkout");
    }
    let refunded = u64_at(object, &["refund_amount"]);
    let paid = u64_at(object, &["transaction", "amount_paid"])
        .or_else(|| u64_at(object, &["transaction", "amount"]))
        .or_else(|| u64_at(object, &["order", "amount"]));
    let share = match (refunded, paid) {
        (Some(refunded), Some(paid)) => RefundShare::Part { refunded, paid },
        _ => RefundShare::Full,
    };
    let reason = str_at(object, &["reason"]).map(|r| format!("creem refund: {r}"));
    WebhookAction::Refund { refund_id, payment_ids, share, reason }
}

/// Reads a NOWPayments IPN (its signature already checked).
pub fn nowpayments_event(body: &[u8], value: Option<Value>) -> WebhookEventIn {
    let mut event = envelope(NOWPAYMENTS, body);
    let Some(value) = value.filter(Value::is_object) else {
        event.action = record(WebhookStatus::Rejected, "the body is not a JSON object");
        return event;
    };
    let status = str_at(&value, &["payment_status"]).map(str::to_string);
    event.event_type = status.clone();
    let payment_id = match nowpayments_payment_id(value.get("payment_id")) {
        Ok(id) => id,
        Err(reason) => {
            event.action = record(WebhookStatus::Rejected, reason);
            return event;
        }
    };
    let (Some(payment_id), Some(status)) = (payment_id, status) else {
        event.action = record(
            WebhookStatus::Rejected,
            "not a NOWPayments IPN: \"payment_id\" and \"payment_status\" are required",
        );
        return event;
    };
    // NOWPayments has no event ids: a payment's status is the event.
    event.event_id = Some(format!("{payment_id}:{status}"));
    let order_id = str_at(&value, &["order_id"]);
    let account = order_id.map(|o| o.split_once(':').map_or(o, |(account, _)| account));
    event.account_id = account.map(str::to_string);
    event.action = if status != "finished" {
        ignored(format!("payment status {status:?} is recorded only; \"finished\" tops up"))
    } else {
        nowpayments_finished(&value, account, payment_id)
    };
    event
}

/// The payment id of an IPN in one form whatever way the body writes it: a
/// positive integer (`6000000001`, or the string `"6000000001"`), as its
/// decimal digits without leading zeros. Any other number form
/// (`6000000001.0`, `6.000000001e9`) is refused: the signature check
/// re-serialises numbers as JavaScript does, so such a form verifies with
/// the signature of the integer, and would otherwise name a second payment.
fn nowpayments_payment_id(value: Option<&Value>) -> Result<Option<String>, String> {
    let refuse = |shown: String| Err(format!("payment_id {shown} is not a positive integer"));
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(id) if id > 0 => Ok(Some(id.to_string())),
            _ => refuse(n.to_string()),
        },
        Some(Value::String(s)) => {
            let digits = !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
            match s.parse::<u64>() {
                Ok(id) if digits && id > 0 => Ok(Some(id.to_string())),
                _ => refuse(format!("{s:?}")),
            }
        }
        Some(other) => refuse(other.to_string()),
    }
}

fn nowpayments_finished(value: &Value, account: Option<&str>, payment_id: String) -> WebhookAction {
    let account_id = match account_in(account, "order_id") {
        Ok(a) => a,
        Err(skip) => return skip,
    };
    let currency = str_at(value, &["price_currency"]).unwrap_or_default();
    if !currency.eq_ignore_ascii_case("usd") {
        return ignored(format!("price_currency {currency:?} is not usd"));
    }
    let amount = match value.get("price_amount") {
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    match amount.as_deref().map(Usd::parse) {
        Some(Ok(amount_usd)) if amount_usd.is_positive() => WebhookAction::Topup { account_id, amount_usd, payment_id },
        _ => ignored(format!("price_amount {} is not an amount of USD", amount.as_deref().unwrap_or("(none)"))),
    }
}

/// Parses a body for the NOWPayments signature check: its JSON value, when it is one.
pub fn parse_json(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// The body as NOWPayments signs it: keys sorted at every level, no
/// whitespace, numbers as JavaScript writes them.
pub fn sorted_json(value: &Value) -> String {
    let mut text = String::new();
    write_sorted(value, Style { js_numbers: true, ascii: false }, &mut text);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_javascript_does() {
        let cases = [
            (20.0, "20"),
            (19.99, "19.99"),
            (0.00057, "0.00057"),
            (0.000001, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (123456789012.5, "123456789012.5"),
            (1e21, "1e+21"),
            (-2.5, "-2.5"),
        ];
        for (f, text) in cases {
            assert_eq!(js_number(f), text, "{f}");
        }
    }

    #[test]
    fn sorted_json_sorts_every_level_and_has_no_whitespace() {
        let v: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [3, {"d": 1, "c": 2.0}], "x": "é"}}"#).unwrap();
        assert_eq!(sorted_json(&v), r#"{"a":{"x":"é","y":[3,{"c":2,"d":1}]},"b":1}"#);
        let mut ascii = String::new();
        write_sorted(&v, Style { js_numbers: false, ascii: true }, &mut ascii);
        assert_eq!(ascii, r#"{"a":{"x":"\u00e9","y":[3,{"c":2.0,"d":1}]},"b":1}"#);
    }

    #[test]
    fn signatures_are_checked_over_the_exact_bytes() {
        let secret = WebhookSecret::new("whsec_test");
        let body = br#"{"id":"evt_1"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"whsec_test").unwrap();
        mac.update(body);
        let good = hex::encode(mac.finalize().into_bytes());
        assert!(creem_signature_ok(&secret, body, Some(good.as_bytes())));
        assert!(creem_signature_ok(&secret, body, Some(good.to_uppercase().as_bytes())));
        assert!(!creem_signature_ok(&secret, br#"{"id":"evt_2"}"#, Some(good.as_bytes())));
        assert!(!creem_signature_ok(&secret, body, Some(b"not hex")));
        assert!(!creem_signature_ok(&secret, body, Some(b"")));
        assert!(!creem_signature_ok(&secret, body, None));
        assert!(!creem_signature_ok(&WebhookSecret::new("other"), body, Some(good.as_bytes())));
        assert_eq!(format!("{secret:?}"), "WebhookSecret(***)");
    }
}
