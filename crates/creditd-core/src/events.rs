//! What creditd tells the operator's systems (outgoing webhooks,
//! `docs/webhooks.md`): the events an operation caused, decided here from
//! the state before and after it, so that the store writes them in the same
//! transaction as the operation (an outbox).
//!
//! An event is its kind, its account, when it happened and a flat list of
//! named text fields (amounts are canonical decimal strings, times RFC 3339):
//! the server renders it as JSON when it is delivered.

use jiff::Timestamp;

use std::collections::BTreeMap;

use crate::account::{AccountState, LowMarks};
use crate::campaign::Billing;
use crate::ledger::{Changes, EntryKind, Reference};
use crate::subscription::{Subscription, SubscriptionStatus};
use crate::units::{Credits, Factor, div_floor};

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

/// A level of available credits below which `credits.low` is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threshold {
    /// A share (0 to 100) of the current period's plan pools as granted;
    /// only for an account with a live subscription.
    Percent(Factor),
    Amount(Credits),
}

impl Threshold {
    /// `"20%"` or `"500"` (canonical decimals).
    pub fn parse(text: &str) -> Option<Threshold> {
        match text.strip_suffix('%') {
            Some(p) => {
                let f = Factor::parse(p).ok()?;
                (f.to_string() == p && f.is_positive() && f <= Factor::whole(100)).then_some(Threshold::Percent(f))
            }
            None => {
                let c = Credits::parse(text).ok()?;
                (c.to_string() == text && c.is_positive()).then_some(Threshold::Amount(c))
            }
        }
    }

    /// The level in credits, given the period's pools (`None`: no pools).
    pub fn level(self, pools: Option<Credits>) -> Option<Credits> {
        match self {
            Threshold::Amount(c) => Some(c),
            Threshold::Percent(p) => {
                let pools = pools.filter(|c| c.is_positive())?;
                let units = div_floor(i128::from(pools.units()) * i128::from(p.units()), i128::from(Factor::ONE) * 100);
                Some(Credits::from_units(i64::try_from(units).ok()?))
            }
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Percent(p) => write!(f, "{p}%"),
            Threshold::Amount(c) => write!(f, "{c}"),
        }
    }
}

/// Which thresholds apply to an account: its own, else its plan's, else
/// the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LowCredits {
    pub default: Vec<Threshold>,
    /// By plan id (the live subscription's plan; `free` without one).
    pub plans: BTreeMap<String, Vec<Threshold>>,
    /// By account id.
    pub accounts: BTreeMap<String, Vec<Threshold>>,
}

impl LowCredits {
    pub fn for_account(&self, account_id: &str, plan_id: &str) -> &[Threshold] {
        self.accounts.get(account_id).or_else(|| self.plans.get(plan_id)).unwrap_or(&self.default)
    }
}

/// Credits were added to the account: a grant, a top-up, a proration
/// credit, a refund, a positive adjustment. Released holds are not: they
/// only undo what a request reserved.
fn refilled(changes: &Changes) -> bool {
    changes.entries.iter().any(|e| {
        e.amount.is_positive()
            && matches!(
                e.kind,
                EntryKind::Grant
                    | EntryKind::Topup
                    | EntryKind::Refund
                    | EntryKind::Adjustment
                    | EntryKind::ProrationCredit
            )
    })
}

/// `credits.low` and `credits.depleted`: available credits after the
/// operation against each threshold; a crossed one is marked so that it is
/// told once per crossing per period (see [`LowMarks`]).
fn low_credit_events(
    after: &mut AccountState,
    changes: &Changes,
    now: Timestamp,
    billing: &Billing,
    event: &mut dyn FnMut(EventKind) -> Event,
) -> Vec<Event> {
    let period = after.subscription.as_ref().filter(|s| s.is_active()).map(|s| s.period_start);
    let pools = after.subscription.as_ref().filter(|s| s.is_active()).map(|s| s.main_amount + s.backup_amount);
    let plan = after.subscription.as_ref().map_or("free", |s| s.plan_id.as_str());
    let thresholds = billing.low_credits.for_account(&after.account_id, plan);
    let available = after.available(now);
    let mut marks = after.low.clone();
    if marks.period != period {
        marks = LowMarks { period, ..LowMarks::default() };
    }
    let refill = refilled(changes);
    let mut out = Vec::new();
    let mut levels: Vec<(String, Credits, Option<Threshold>)> =
        thresholds.iter().filter_map(|t| t.level(pools).map(|level| (t.to_string(), level, Some(*t)))).collect();
    levels.push(("0".to_string(), Credits::ZERO, None));
    for (key, level, threshold) in levels {
        let armed = marks.armed.contains(&key);
        let told = marks.told.contains(&key);
        let below = match threshold {
            Some(_) => available < level,
            None => !available.is_positive(),
        };
        if !below {
            // Seen above: armed, unless it was told and no credits were added.
            if !armed && (!told || refill) {
                marks.told.retain(|k| *k != key);
                marks.armed.push(key);
            }
            continue;
        }
        if armed {
            let e = match threshold {
                Some(t) => event(EventKind::CreditsLow).with("threshold", t).with("level", level),
                None => event(EventKind::CreditsDepleted),
            };
            let e = e.with("available", available);
            out.push(match period {
                Some(start) => e.with("period_start", start),
                None => e,
            });
            marks.armed.retain(|k| *k != key);
            marks.told.push(key);
        }
    }
    after.low = marks;
    out
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
/// subscription's transitions, refunded usage records, and low credits.
/// `before` is the account as the operation found it (before time was
/// brought up to now); `after` as it leaves it, whose low-credit marks this
/// updates.
pub(crate) fn derive(
    before: &AccountState,
    after: &mut AccountState,
    changes: &Changes,
    now: Timestamp,
    billing: &Billing,
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
    events.extend(low_credit_events(after, changes, now, billing, &mut event));
    events
}
