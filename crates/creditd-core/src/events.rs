//! What creditd tells the operator's systems (outgoing webhooks,
//! `docs/webhooks.md`): the events an operation caused, decided here from
//! the state before and after it, so that the store writes them in the same
//! transaction as the operation (an outbox).
//!
//! An event is its kind, its account, when it happened and a flat list of
//! named text fields (amounts are canonical decimal strings, times RFC 3339):
//! the server renders it as JSON when it is delivered.

use jiff::Timestamp;

use crate::account::AccountState;
use crate::ledger::{Changes, EntryKind, Reference};
use crate::subscription::{Subscription, SubscriptionStatus};
use crate::units::Credits;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    CreditsLow,
    CreditsDepleted,
    GrantExpiring,
    PaymentApplied,
    PaymentRefunded,
    SubscriptionStarted,
    SubscriptionRenewed,
    SubscriptionSwitched,
    SubscriptionCanceled,
    SubscriptionPastDue,
    SubscriptionExpired,
    UsageRefunded,
}

impl EventKind {
    pub const ALL: [EventKind; 12] = [
        EventKind::CreditsLow,
        EventKind::CreditsDepleted,
        EventKind::GrantExpiring,
        EventKind::PaymentApplied,
        EventKind::PaymentRefunded,
        EventKind::SubscriptionStarted,
        EventKind::SubscriptionRenewed,
        EventKind::SubscriptionSwitched,
        EventKind::SubscriptionCanceled,
        EventKind::SubscriptionPastDue,
        EventKind::SubscriptionExpired,
        EventKind::UsageRefunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::CreditsLow => "credits.low",
            EventKind::CreditsDepleted => "credits.depleted",
            EventKind::GrantExpiring => "grant.expiring",
            EventKind::PaymentApplied => "payment.applied",
            EventKind::PaymentRefunded => "payment.refunded",
            EventKind::SubscriptionStarted => "subscription.started",
            EventKind::SubscriptionRenewed => "subscription.renewed",
            EventKind::SubscriptionSwitched => "subscription.switched",
            EventKind::SubscriptionCanceled => "subscription.canceled",
            EventKind::SubscriptionPastDue => "subscription.past_due",
            EventKind::SubscriptionExpired => "subscription.expired",
            EventKind::UsageRefunded => "usage.refunded",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// One event, as the outbox keeps it until every endpoint has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The `webhook-id` every delivery of it carries (receivers dedupe on it).
    pub id: String,
    pub kind: EventKind,
    pub account_id: String,
    pub at: Timestamp,
    /// Named fields, in order; `account_id` is always the first.
    pub data: Vec<(String, String)>,
}

impl Event {
    pub fn new(id: String, kind: EventKind, account_id: &str, at: Timestamp) -> Self {
        Event {
            id,
            kind,
            account_id: account_id.to_string(),
            at,
            data: vec![("account_id".into(), account_id.to_string())],
        }
    }

    pub fn with(mut self, name: &str, value: impl ToString) -> Self {
        self.data.push((name.to_string(), value.to_string()));
        self
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.data.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

fn subscription_fields(event: Event, s: &Subscription) -> Event {
    event
        .with("subscription_id", &s.id)
        .with("plan_id", &s.plan_id)
        .with("kind", s.kind.as_str())
        .with("status", s.status.as_str())
        .with("period_start", s.period_start)
        .with("period_end", s.period_end)
}

/// The events of one operation that follow from what it changed: the
/// subscription's transitions and refunded usage records. `before` is the
/// account as the operation found it (before time was brought up to now).
pub(crate) fn derive(
    before: &AccountState,
    changes: &Changes,
    now: Timestamp,
    new_id: &mut dyn FnMut() -> String,
) -> Vec<Event> {
    let account = before.account_id.as_str();
    let mut events = Vec::new();
    let mut event = |kind: EventKind| Event::new(new_id(), kind, account, now);
    let prior = before.subscription.as_ref();
    // The live subscription a switch replaced, ended in these changes.
    let switched_from = changes.subscriptions.iter().find(|s| s.status == SubscriptionStatus::Switched);
    for s in &changes.subscriptions {
        match prior.filter(|p| p.id == s.id) {
            None if s.status.is_live() => match switched_from {
                Some(old) => events.push(
                    subscription_fields(event(EventKind::SubscriptionSwitched), s)
                        .with("previous_subscription_id", &old.id)
                        .with("previous_plan_id", &old.plan_id),
                ),
                None => events.push(subscription_fields(event(EventKind::SubscriptionStarted), s)),
            },
            // A subscription that started and ended in one operation, or
            // one this operation did not find live: nothing to tell.
            None => {}
            Some(p) => {
                let became = |status| s.status == status && p.status != status;
                if s.paid_through > p.paid_through || (p.status == SubscriptionStatus::PastDue && s.is_active()) {
                    events.push(subscription_fields(event(EventKind::SubscriptionRenewed), s));
                }
                if s.cancel_at_period_end && !p.cancel_at_period_end {
                    events.push(subscription_fields(event(EventKind::SubscriptionCanceled), s));
                }
                if became(SubscriptionStatus::PastDue) {
                    let e = subscription_fields(event(EventKind::SubscriptionPastDue), s);
                    let e = match s.grace_ends_at {
                        Some(at) => e.with("grace_ends_at", at),
                        None => e,
                    };
                    events.push(e);
                }
                if became(SubscriptionStatus::Expired) {
                    events.push(subscription_fields(event(EventKind::SubscriptionExpired), s));
                }
            }
        }
    }
    for request_id in &changes.refunded {
        let credits: Credits = changes
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::Refund && e.reference == Reference::Request(request_id.clone()))
            .map(|e| e.amount)
            .sum();
        events.push(event(EventKind::UsageRefunded).with("request_id", request_id).with("credits", credits));
    }
    events
}
