//! The provider-call worker (`docs/dashboard.md` §Provider calls): sends
//! the calls creditd owes the payment providers' APIs, which the writer
//! wrote in the transaction of the change that needs them
//! (`creditd_store::ProviderCall`): Creem's `POST
//! {api_base}/v1/subscriptions/{id}/cancel {"mode": "immediate" |
//! "scheduled"}` with `x-api-key`.
//!
//! The same outbox as outgoing webhooks (`delivery`): claimed with a lease,
//! sent side by side, each attempt recorded through the store; a failed one
//! is due again after the back-off, until three days have passed (then
//! `failed`, and `POST /v1/provider-calls/{id}/retry` sends it again). A
//! crash anywhere repeats a call, never loses one; cancelling a cancelled
//! subscription again is harmless at Creem.

use std::sync::Arc;
use std::time::{Duration, Instant};

use creditd_store::{AttemptResult, Command, DeliveryStatus, ProviderAction, ProviderCall, Reply, Store};

use crate::dashboard::ProviderApi;
use crate::payments::CREEM;

const ATTEMPTS: &str = "creditd_provider_call_attempts_total";
const ATTEMPT_SECONDS: &str = "creditd_provider_call_attempt_seconds";
const GIVEN_UP: &str = "creditd_provider_calls_given_up_total";
/// The gauge `/metrics` adds from the store: calls by status.
pub const CALLS: &str = "creditd_provider_calls";
/// A provider's answer body kept in the call's last error, at most.
const ERROR_BODY_MAX: usize = 200;

/// How the worker runs.
#[derive(Clone, Debug)]
pub struct ProviderCallConfig {
    /// Creem's API (`payments.creem.api_key`, `api_base`).
    pub creem: ProviderApi,
    /// How long an idle worker waits before it looks for due calls again.
    pub poll: Duration,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Calls claimed (and sent side by side) at once.
    pub batch: u32,
}

impl ProviderCallConfig {
    pub fn new(creem: ProviderApi) -> Self {
        ProviderCallConfig { creem, poll: Duration::from_secs(1), timeout: Duration::from_secs(20), batch: 16 }
    }
}

/// Starts the worker on the current runtime; it runs until the task is aborted.
pub fn spawn(store: Arc<dyn Store>, config: ProviderCallConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(store, config))
}

async fn run(store: Arc<dyn Store>, config: ProviderCallConfig) {
    let client = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    let lease_seconds = u32::try_from(config.timeout.as_secs().saturating_mul(3).max(30)).unwrap_or(u32::MAX);
    let claim = || Command::ClaimProviderCalls { limit: config.batch, lease_seconds };
    let due = |reply| match reply {
        Reply::ProviderCalls(calls) => calls,
        _ => Vec::new(),
    };
    crate::delivery::work(&store, config.poll, "provider calls", claim, due, |c| attempt(&store, &client, &config, c))
        .await
}

/// The provider as a metric label: from a closed set.
fn provider_label(provider: &str) -> &'static str {
    if provider == CREEM { CREEM } else { crate::metrics::OTHER }
}

async fn attempt(store: &Arc<dyn Store>, client: &reqwest::Client, config: &ProviderCallConfig, call: ProviderCall) {
    let provider = provider_label(&call.provider);
    let started = Instant::now();
    let result = send(client, config, &call).await;
    let outcome = match &result {
        AttemptResult::Delivered { .. } => "delivered",
        AttemptResult::Failed { .. } => "failed",
    };
    metrics::counter!(ATTEMPTS, "provider" => provider, "outcome" => outcome).increment(1);
    metrics::histogram!(ATTEMPT_SECONDS, "provider" => provider).record(started.elapsed().as_secs_f64());
    if let AttemptResult::Failed { error, .. } = &result {
        tracing::info!(provider, call = call.id, action = call.action.as_str(), error, "a provider call failed");
    }
    match store.execute(Command::RecordProviderCall { id: call.id.clone(), result }, None).await {
        Ok(Reply::ProviderCall(c)) if c.status == DeliveryStatus::Failed => {
            metrics::counter!(GIVEN_UP, "provider" => provider).increment(1);
            tracing::warn!(provider, call = c.id, "a provider call was given up after three days");
        }
        Ok(_) => {}
        // The lease brings the call back: it is made again.
        Err(e) => tracing::warn!(error = %e, "a provider call's attempt could not be recorded"),
    }
}

/// A path segment with everything but unreserved characters percent-encoded.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn send(client: &reqwest::Client, config: &ProviderCallConfig, call: &ProviderCall) -> AttemptResult {
    let failed = |status: Option<u16>, error: String| AttemptResult::Failed { status, error };
    if call.provider != CREEM {
        return failed(None, format!("creditd makes no calls to provider {:?}", call.provider));
    }
    let ProviderAction::CancelSubscription { provider_subscription_id, mode } = &call.action;
    let path = format!("/v1/subscriptions/{}/cancel", segment(provider_subscription_id));
    let body = serde_json::json!({ "mode": mode.as_str() }).to_string();
    let sent = client
        .post(format!("{}{path}", config.creem.api_base))
        .header("x-api-key", &config.creem.api_key)
        .header("content-type", "application/json")
        .header("user-agent", concat!("creditd/", env!("CARGO_PKG_VERSION")))
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => {
            AttemptResult::Delivered { status: response.status().as_u16() }
        }
        Ok(response) => {
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            let mut text: String = text.chars().take(ERROR_BODY_MAX).collect();
            text.retain(|c| !c.is_control());
            failed(Some(status), format!("HTTP {status}: {}", text.trim()))
        }
        Err(e) => failed(None, format!("{path}: {}", e.without_url())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_ids_cannot_leave_their_path_segment() {
        assert_eq!(segment("sub_2k4Qx"), "sub_2k4Qx");
        assert_eq!(segment("../v1/x?y#z"), "..%2Fv1%2Fx%3Fy%23z");
        assert_eq!(segment("ü"), "%C3%BC");
    }
}
