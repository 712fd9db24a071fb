//! The outboxes: what creditd must tell other systems, written in the
//! transaction of the change that needs it and sent afterwards until it is
//! accepted, so that a crash or an outage loses none of it.
//!
//! Outgoing webhooks (`docs/webhooks.md`): the operator's endpoints, and the
//! deliveries of the outbox's events to them.
//!
//! Events are written by the writer in the transaction of what caused them
//! (`sql/outbox.rs`), with one pending delivery per endpoint subscribed at
//! that moment. A delivery worker outside the store (the server's
//! `delivery`) claims due deliveries, sends them, and records each attempt
//! through the writer; a failed attempt is due again after a back-off that
//! doubles, until [`GIVE_UP_AFTER`] has passed since the event.

use creditd_core::events::{Event, EventKind};
use jiff::{SignedDuration, Timestamp};

/// How long a delivery is retried before it is `failed`.
pub const GIVE_UP_AFTER: SignedDuration = SignedDuration::from_hours(72);
/// The wait after the first failed attempt; each next one doubles, up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: SignedDuration = SignedDuration::from_secs(5);
pub const BACKOFF_MAX: SignedDuration = SignedDuration::from_hours(12);

/// The wait before the attempt after `attempts` failed ones.
pub fn backoff(attempts: u32) -> SignedDuration {
    let doublings = attempts.saturating_sub(1).min(20);
    let secs = BACKOFF_FIRST.as_secs().saturating_mul(1i64 << doublings);
    SignedDuration::from_secs(secs).min(BACKOFF_MAX)
}

/// An endpoint of the operator's systems.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    /// The signing secret (`whsec_…`); `None` for an endpoint of the
    /// configuration, whose secret is read from the environment and never stored.
    pub secret: Option<String>,
    /// The kinds it receives; empty: every kind.
    pub events: Vec<EventKind>,
    pub enabled: bool,
    /// Defined in the configuration (not changed over the API).
    pub from_config: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

// By hand: the secret never goes into a log line.
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("enabled", &self.enabled)
            .field("from_config", &self.from_config)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    pub fn receives(&self, kind: EventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }
}

/// A change of an endpoint made over the API; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointUpdate {
    pub url: Option<String>,
    pub events: Option<Vec<EventKind>>,
    pub enabled: Option<bool>,
}

/// Where an outbox item (a webhook delivery, a provider call) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// Not yet delivered; due at `next_attempt_at`.
    Pending,
    Delivered,
    /// Given up after [`GIVE_UP_AFTER`] (a retry call makes it pending again).
    Failed,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 3] = [DeliveryStatus::Pending, DeliveryStatus::Delivered, DeliveryStatus::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One event on its way to one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub event_id: String,
    pub event_type: EventKind,
    pub account_id: String,
    pub endpoint_id: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<Timestamp>,
    pub last_attempt_at: Option<Timestamp>,
    /// The HTTP status of the last answer, if there was one.
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
}

/// A delivery claimed by a worker: what to send, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueDelivery {
    pub delivery: Delivery,
    pub event: Event,
    pub url: String,
    /// `None`: the configuration's secret for this endpoint.
    pub secret: Option<String>,
}

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// A 2xx answer.
    Delivered { status: u16 },
    /// Any other answer (`status`), or none (a connection error, a timeout).
    Failed { status: Option<u16>, error: String },
}

/// Which deliveries a list shows; every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    pub endpoint_id: Option<String>,
    pub event_id: Option<String>,
    pub status: Option<DeliveryStatus>,
}

/// A call creditd owes a payment provider's API (`docs/dashboard.md`
/// §Provider calls): written in the savepoint of the change that needs it
/// (a switch away from a subscription paid at Creem, a cancel), then sent
/// by the server's provider-call worker with the webhook deliveries'
/// back-off until the provider accepts it (a 2xx answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderCall {
    pub id: String,
    /// `creem`.
    pub provider: String,
    pub action: ProviderAction,
    /// The account whose change needs the call.
    pub account_id: String,
    /// creditd's subscription the call is about.
    pub subscription_id: Option<String>,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<Timestamp>,
    pub last_attempt_at: Option<Timestamp>,
    /// The HTTP status of the last answer, if there was one.
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
}

/// What a provider call asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderAction {
    /// Cancel the provider's subscription (Creem: `POST
    /// /v1/subscriptions/{id}/cancel {"mode"}`).
    CancelSubscription { provider_subscription_id: String, mode: CancelMode },
}

impl ProviderAction {
    /// The action's name (`cancel_subscription`).
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderAction::CancelSubscription { .. } => "cancel_subscription",
        }
    }
}

/// How a subscription is cancelled at the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CancelMode {
    /// Now: creditd ended it (a switch replaced it, or it had lapsed).
    Immediate,
    /// At the end of the period paid for: no renewal (`cancel_at_period_end`).
    Scheduled,
}

impl CancelMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelMode::Immediate => "immediate",
            CancelMode::Scheduled => "scheduled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [CancelMode::Immediate, CancelMode::Scheduled].into_iter().find(|m| m.as_str() == text)
    }
}

/// Which provider calls a list shows; every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderCallFilter {
    pub status: Option<DeliveryStatus>,
    pub account_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_gives_up_after_three_days() {
        assert_eq!(backoff(1), SignedDuration::from_secs(5));
        assert_eq!(backoff(2), SignedDuration::from_secs(10));
        assert_eq!(backoff(5), SignedDuration::from_secs(80));
        assert_eq!(backoff(100), BACKOFF_MAX);
        // Attempts before giving up: the waits add up to three days.
        let (mut waited, mut attempts) = (SignedDuration::ZERO, 1u32);
        while waited + backoff(attempts) <= GIVE_UP_AFTER {
            waited += backoff(attempts);
            attempts += 1;
        }
        assert_eq!(attempts, 19, "{waited:?}");
    }
}
