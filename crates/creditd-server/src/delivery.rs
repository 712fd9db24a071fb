//! Outgoing webhooks on the wire (`docs/webhooks.md`): the delivery worker,
//! and signatures the Standard Webhooks way, so that receivers verify them
//! with an existing library.
//!
//! Each request carries `webhook-id` (the event's id, the same on every
//! attempt and endpoint: receivers dedupe on it), `webhook-timestamp` (unix
//! seconds of this attempt, by the wall clock: receivers refuse stale ones)
//! and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
//! keyed by the base64-decoded part of the endpoint's `whsec_` secret.
//!
//! The worker claims due deliveries through the store (each made due again
//! after a lease, in case this process dies while sending), sends them side
//! by side, and records each attempt through the store: a crash anywhere
//! loses nothing, and an event may arrive more than once (at least once).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use creditd_core::events::Event;
use creditd_store::{AttemptResult, Command, DeliveryStatus, DueDelivery, Reply, Store};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

const ATTEMPTS: &str = "creditd_outgoing_webhook_attempts_total";
const ATTEMPT_SECONDS: &str = "creditd_outgoing_webhook_attempt_seconds";
const GIVEN_UP: &str = "creditd_outgoing_webhook_given_up_total";
/// A receiver's answer body kept in the delivery's last error, at most.
const ERROR_BODY_MAX: usize = 200;

/// How the worker runs.
#[derive(Clone)]
pub struct DeliveryConfig {
    /// How long an idle worker waits before it looks for due deliveries again.
    pub poll: Duration,
    /// How long one attempt may take (connecting, sending, the answer).
    pub timeout: Duration,
    /// Deliveries claimed (and sent side by side) at once.
    pub batch: u32,
    /// The secrets of the configuration's endpoints, by endpoint id (read
    /// from the environment; never stored, never logged).
    pub secrets: HashMap<String, String>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            poll: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            batch: 32,
            secrets: HashMap::new(),
        }
    }
}

impl std::fmt::Debug for DeliveryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryConfig")
            .field("poll", &self.poll)
            .field("timeout", &self.timeout)
            .field("batch", &self.batch)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A new secret: `whsec_` and the base64 of 32 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The key of a secret: `whsec_` and the base64 of 24 to 64 bytes.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or("a secret starts with whsec_")?;
    let key = STANDARD.decode(encoded).map_err(|_| "a secret is whsec_ and base64".to_string())?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!("a secret's key is 24 to 64 bytes, not {}", key.len()));
    }
    Ok(key)
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // An HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC keys have no length limit");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The body of an event: `{"type", "timestamp", "data": {...}}` (the
/// Standard Webhooks payload shape); every field of `data` is a string.
pub fn payload(event: &Event) -> Vec<u8> {
    let data: serde_json::Map<String, serde_json::Value> =
        event.data.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    let body = serde_json::json!({
        "type": event.kind.as_str(),
        "timestamp": event.at.to_string(),
        "data": data,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Starts the worker on the current runtime; it runs until the task is aborted.
pub fn spawn(store: Arc<dyn Store>, config: DeliveryConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(store, config))
}

async fn run(store: Arc<dyn Store>, config: DeliveryConfig) {
    let client = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        // A redirect is an answer of the endpoint, not a delivery.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    // A claimed delivery comes back after the lease if its attempt is never
    // recorded: longer than an attempt can take.
    let lease_seconds = u32::try_from(config.timeout.as_secs().saturating_mul(3).max(30)).unwrap_or(u32::MAX);
    let claim = || Command::ClaimDeliveries { limit: config.batch, lease_seconds };
    let due = |reply| match reply {
        Reply::Claimed(due) => due,
        _ => Vec::new(),
    };
    work(&store, config.poll, "webhook deliveries", claim, due, |d| attempt(&store, &client, &config, d)).await
}

/// The loop of an outbox's worker (webhook deliveries, provider calls):
/// claim what is due through the store (`claim`, read by `due`), attempt
/// it side by side, each attempt recording itself; claim again at once
/// after a full round, else after `poll`. Runs until its task is aborted.
pub(crate) async fn work<T, Fut>(
    store: &Arc<dyn Store>,
    poll: Duration,
    what: &str,
    claim: impl Fn() -> Command,
    due: impl Fn(Reply) -> Vec<T>,
    attempt: impl Fn(T) -> Fut,
) where
    Fut: std::future::Future<Output = ()>,
{
    loop {
        match store.execute(claim(), None).await.map(&due) {
            Ok(items) if !items.is_empty() => {
                futures_util::future::join_all(items.into_iter().map(&attempt)).await;
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the outbox worker could not claim {what}"),
        }
        tokio::time::sleep(poll).await;
    }
}

/// One attempt of one delivery, recorded.
async fn attempt(store: &Arc<dyn Store>, client: &reqwest::Client, config: &DeliveryConfig, due: DueDelivery) {
    let endpoint = due.delivery.endpoint_id.clone();
    let started = Instant::now();
    let result = send(client, config, &due).await;
    let outcome = match &result {
        AttemptResult::Delivered { .. } => "delivered",
        AttemptResult::Failed { .. } => "failed",
    };
    metrics::counter!(ATTEMPTS, "endpoint" => endpoint.clone(), "outcome" => outcome).increment(1);
    metrics::histogram!(ATTEMPT_SECONDS, "endpoint" => endpoint.clone()).record(started.elapsed().as_secs_f64());
    if let AttemptResult::Failed { error, .. } = &result {
        tracing::info!(endpoint, delivery = due.delivery.id, error, "a webhook delivery attempt failed");
    }
    let id = due.delivery.id.clone();
    match store.execute(Command::RecordAttempt { id, result }, None).await {
        Ok(Reply::Delivery(d)) if d.status == DeliveryStatus::Failed => {
            metrics::counter!(GIVEN_UP, "endpoint" => endpoint.clone()).increment(1);
            tracing::warn!(endpoint, delivery = d.id, "a webhook delivery was given up after three days");
        }
        Ok(_) => {}
        // The lease brings the delivery back: it is sent again.
        Err(e) => tracing::warn!(error = %e, "a webhook delivery attempt could not be recorded"),
    }
}

async fn send(client: &reqwest::Client, config: &DeliveryConfig, due: &DueDelivery) -> AttemptResult {
    let failed = |status: Option<u16>, error: String| AttemptResult::Failed { status, error };
    let Some(secret) = due.secret.as_ref().or_else(|| config.secrets.get(&due.delivery.endpoint_id)) else {
        return failed(None, "the endpoint's secret is not configured".into());
    };
    let key = match secret_key(secret) {
        Ok(key) => key,
        Err(why) => return failed(None, format!("the endpoint's secret is unusable: {why}")),
    };
    let body = payload(&due.event);
    let timestamp = jiff::Timestamp::now().as_second();
    let signature = sign(&key, &due.event.id, timestamp, &body);
    let sent = client
        .post(&due.url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("creditd/", env!("CARGO_PKG_VERSION")))
        .header("webhook-id", &due.event.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
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
            let text: String = text.chars().take(ERROR_BODY_MAX).collect();
            failed(Some(status), format!("HTTP {status}: {}", text.trim()))
        }
        // Without the URL: it may carry a token of the receiver.
        Err(e) => failed(None, e.without_url().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signs_the_specification_example() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_whsec_and_base64_of_24_to_64_bytes() {
        assert!(secret_key(&new_secret()).is_ok());
        assert!(secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(secret_key("whsec_not base64!").is_err());
        assert!(secret_key("whsec_c2hvcnQ=").is_err());
    }
}
