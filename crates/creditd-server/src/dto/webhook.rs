//! Webhook events (`GET /v1/webhook-events`) and the answers to providers.

use creditd_store::WebhookEvent;
use serde::Serialize;

/// A recorded event. `body` is the raw body as received (UTF-8, with any
/// invalid bytes replaced).
#[derive(Debug, Serialize)]
pub struct WebhookEventOut {
    pub id: String,
    pub provider: String,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub status: &'static str,
    pub reason: Option<String>,
    pub account_id: Option<String>,
    pub external_id: Option<String>,
    pub received_at: String,
    pub body: String,
}

impl From<&WebhookEvent> for WebhookEventOut {
    fn from(e: &WebhookEvent) -> Self {
        WebhookEventOut {
            id: e.id.clone(),
            provider: e.provider.clone(),
            event_id: e.event_id.clone(),
            event_type: e.event_type.clone(),
            status: e.status.as_str(),
            reason: e.reason.clone(),
            account_id: e.account_id.clone(),
            external_id: e.external_id.clone(),
            received_at: e.received_at.to_string(),
            body: String::from_utf8_lossy(&e.body).into_owned(),
        }
    }
}

/// What a provider is answered: `{"status": "applied" | "duplicate"}`, or
/// `{"status": "ignored", "reason": …}`.
#[derive(Debug, Serialize)]
pub struct WebhookAnswer {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
