//! Outgoing calls to the payment providers for the dashboard's buttons: a
//! Creem checkout and a NOWPayments invoice. Each answers the URL the
//! browser is sent to; the payment itself arrives later as a signed webhook.
//! API keys go in a header and are never logged or shown.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

/// Where a provider's API is and the key it takes.
#[derive(Clone)]
pub struct ProviderApi {
    pub api_key: String,
    /// `https://api.creem.io`, without a trailing slash.
    pub api_base: String,
}

impl fmt::Debug for ProviderApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderApi").field("api_key", &"***").field("api_base", &self.api_base).finish()
    }
}

impl ProviderApi {
    pub fn new(api_key: impl Into<String>, api_base: &str) -> Self {
        ProviderApi { api_key: api_key.into(), api_base: api_base.trim_end_matches('/').to_string() }
    }

    /// The origin of the API when it is plain http (a local stand-in), for
    /// the CSP's `form-action` (the browser follows a form's redirect there).
    pub fn http_origin(&self) -> Option<String> {
        let rest = self.api_base.strip_prefix("http://")?;
        let host = rest.split('/').next()?;
        Some(format!("http://{host}"))
    }
}

/// A checkout or invoice made: the provider's id and the page to send the
/// browser to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub id: String,
    pub url: String,
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default()
    })
}

/// Sends `body` (JSON text) and reads `{"id", <url_field>}` from a 2xx answer.
async fn post(api: &ProviderApi, path: &str, body: String, url_field: &str) -> Result<Redirect, String> {
    let url = format!("{}{path}", api.api_base);
    let response = client()
        .post(&url)
        .header("x-api-key", &api.api_key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{path}: {}", e.without_url()))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| format!("{path}: {}", e.without_url()))?;
    if !status.is_success() {
        let mut shown: String = text.chars().take(300).collect();
        shown.retain(|c| !c.is_control());
        return Err(format!("{path}: {status}: {shown}"));
    }
    let v: Value = serde_json::from_str(&text).map_err(|_| format!("{path}: the answer is not JSON"))?;
    let target = v[url_field].as_str().filter(|u| u.starts_with("https://") || u.starts_with("http://"));
    let target = target.ok_or_else(|| format!("{path}: the answer has no {url_field}"))?;
    let id = match &v["id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    Ok(Redirect { id, url: target.to_string() })
}

/// `POST {api_base}/v1/checkouts`: a Creem checkout of `product_id` for the account.
pub async fn creem_checkout(
    api: &ProviderApi,
    product_id: &str,
    request_id: &str,
    success_url: &str,
    account_id: &str,
) -> Result<Redirect, String> {
    let body = json!({
        "product_id": product_id,
        "request_id": request_id,
        "success_url": success_url,
        "metadata": {"account_id": account_id},
    });
    post(api, "/v1/checkouts", body.to_string(), "checkout_url").await
}

/// `POST {api_base}/v1/invoice`: a NOWPayments invoice of `amount_usd` (a
/// decimal string, written into the JSON as the number it is: no float).
pub async fn nowpayments_invoice(
    api: &ProviderApi,
    amount_usd: &str,
    order_id: &str,
    ipn_callback_url: &str,
    success_url: &str,
) -> Result<Redirect, String> {
    if amount_usd.is_empty() || !amount_usd.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err("the amount is not a decimal".into());
    }
    let s = |v: &str| Value::String(v.to_string()).to_string();
    let body = format!(
        "{{\"price_amount\":{amount_usd},\"price_currency\":\"usd\",\"order_id\":{},\"order_description\":{},\
         \"ipn_callback_url\":{},\"success_url\":{},\"cancel_url\":{}}}",
        s(order_id),
        s("Pay2Go wallet top-up"),
        s(ipn_callback_url),
        s(success_url),
        s(success_url),
    );
    post(api, "/v1/invoice", body, "invoice_url").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_not_in_debug_output() {
        let api = ProviderApi::new("sk_live_secret", "https://api.creem.io/");
        assert!(!format!("{api:?}").contains("sk_live_secret"));
        assert_eq!(api.api_base, "https://api.creem.io");
        assert_eq!(api.http_origin(), None);
        assert_eq!(ProviderApi::new("k", "http://127.0.0.1:9/x").http_origin().as_deref(), Some("http://127.0.0.1:9"));
    }
}
