//! `GET /v1/provider-calls`: the calls creditd owes the payment providers' APIs.

use creditd_store::{ProviderAction, ProviderCall};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ProviderCallOut {
    pub id: String,
    pub provider: String,
    /// `cancel_subscription`.
    pub action: &'static str,
    /// The provider's subscription the call is about (Creem's `sub_…`).
    pub provider_subscription_id: String,
    /// `immediate` or `scheduled`.
    pub mode: &'static str,
    pub account_id: String,
    /// creditd's subscription whose change needs the call.
    pub subscription_id: Option<String>,
    pub status: &'static str,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
}

impl From<&ProviderCall> for ProviderCallOut {
    fn from(c: &ProviderCall) -> Self {
        let ProviderAction::CancelSubscription { provider_subscription_id, mode } = &c.action;
        ProviderCallOut {
            id: c.id.clone(),
            provider: c.provider.clone(),
            action: c.action.as_str(),
            provider_subscription_id: provider_subscription_id.clone(),
            mode: mode.as_str(),
            account_id: c.account_id.clone(),
            subscription_id: c.subscription_id.clone(),
            status: c.status.as_str(),
            attempts: c.attempts,
            next_attempt_at: c.next_attempt_at.map(|t| t.to_string()),
            last_attempt_at: c.last_attempt_at.map(|t| t.to_string()),
            last_status: c.last_status,
            last_error: c.last_error.clone(),
            created_at: c.created_at.to_string(),
            delivered_at: c.delivered_at.map(|t| t.to_string()),
        }
    }
}
