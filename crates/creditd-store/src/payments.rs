//! Payments and the payment providers' webhook events (`semantics.md` §9,
//! `api.md` §Webhooks).
//!
//! Every payment that added credits (a top-up, a credit pack, a plan
//! period) is recorded once per `(provider, external_id)`, in the same
//! transaction as its effect: the unique index is what makes a replayed or
//! concurrent delivery apply at most once. Every webhook event that passed
//! its signature check is recorded with its outcome, in the same
//! transaction as what it did.

use creditd_core::engine::RefundShare;
use creditd_core::subscription::SubscriptionKind;
use creditd_core::units::{Credits, Usd};
use jiff::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PaymentKind {
    /// Dollars into the wallet.
    Topup,
    /// A credit pack: a `purchased` grant.
    Pack,
    /// A plan period (a pass, a monthly start, switch or renewal).
    Subscription,
}

impl PaymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentKind::Topup => "topup",
            PaymentKind::Pack => "pack",
            PaymentKind::Subscription => "subscription",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [PaymentKind::Topup, PaymentKind::Pack, PaymentKind::Subscription].into_iter().find(|k| k.as_str() == text)
    }
}

/// A recorded payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub provider: String,
    /// The provider's id of the payment (an order, a transaction, a
    /// NOWPayments `payment_id`), or one made by creditd when the API call
    /// named none.
    pub external_id: String,
    pub account_id: String,
    pub kind: PaymentKind,
    pub amount_usd: Usd,
    /// What the payment added: the top-up's credits, the pack's, or the
    /// plan period's pools.
    pub credits: Credits,
    /// The grants it created: the pack's grant, or the period's pools.
    pub grant_ids: Vec<String>,
    pub subscription_id: Option<String>,
    /// The provider's subscription the payment was a charge of (Creem's
    /// `sub_…`), for a plan payment that came through one.
    pub provider_subscription_id: Option<String>,
    /// Credits reversed by refunds so far.
    pub refunded_credits: Credits,
    /// Credits the payment later put in the wallet: the proration credit of
    /// its period (or the full credit of its period paid in advance) when its
    /// subscription was switched away. A refund reverses these too, first.
    pub prorated_credits: Credits,
    pub created_at: Timestamp,
}

/// What became of a webhook event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WebhookStatus {
    /// Its effect was applied (in the same transaction as this record).
    Applied,
    /// The same event, or the same payment, was applied before: nothing done.
    Duplicate,
    /// Authentic but not applicable (unknown product or account, a status
    /// that is only recorded…): nothing done; kept for the operator.
    Ignored,
    /// Authentic but malformed: nothing done.
    Rejected,
}

impl WebhookStatus {
    pub const ALL: [WebhookStatus; 4] =
        [WebhookStatus::Applied, WebhookStatus::Duplicate, WebhookStatus::Ignored, WebhookStatus::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookStatus::Applied => "applied",
            WebhookStatus::Duplicate => "duplicate",
            WebhookStatus::Ignored => "ignored",
            WebhookStatus::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        WebhookStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A recorded webhook event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookEvent {
    /// creditd's id of the record.
    pub id: String,
    pub provider: String,
    /// The provider's event id (Creem `evt_…`; for NOWPayments, which has
    /// none, `<payment_id>:<payment_status>`). `None` when the body could
    /// not be read.
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub status: WebhookStatus,
    pub reason: Option<String>,
    pub account_id: Option<String>,
    /// The payment (or refund) the event is about, at the provider.
    pub external_id: Option<String>,
    pub received_at: Timestamp,
    /// The raw body, as received and verified.
    pub body: Vec<u8>,
}

/// What a verified event asks for. The server reads the provider's payload
/// into one of these; the writer applies it and records the event in one
/// savepoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookAction {
    /// Nothing to apply: record the event as `ignored` or `rejected`.
    Record { status: WebhookStatus, reason: String },
    /// A wallet top-up, once per `(provider, payment_id)`.
    Topup { account_id: String, amount_usd: Usd, payment_id: String },
    /// A credit pack, once per `(provider, payment_id)`.
    Pack { account_id: String, credits: Credits, amount_usd: Usd, payment_id: String },
    /// A paid plan period, once per `(provider, payment_id)`: renews the
    /// account's live monthly subscription when it is to this plan,
    /// otherwise starts (or switches to) the plan. `provider_subscription_id`
    /// is the provider's subscription the payment belongs to (Creem's
    /// `sub_…`; none for a pass), recorded with the payment: a switch away
    /// from it, or a cancel made in creditd, is a call to cancel it there.
    Subscribe {
        account_id: String,
        plan: String,
        kind: SubscriptionKind,
        amount_usd: Usd,
        payment_id: String,
        provider_subscription_id: Option<String>,
    },
    /// Cancel at period end. With `provider_subscription_id`, only when that
    /// is the subscription the account's live one was last paid through (the
    /// provider tells of a subscription a switch replaced, too).
    CancelSubscription { account_id: String, provider_subscription_id: Option<String> },
    /// Refunds the first of `payment_ids` that creditd recorded (a refund
    /// names its payment in several ways), once per `refund_id`.
    Refund { refund_id: String, payment_ids: Vec<String>, share: RefundShare, reason: Option<String> },
}

/// A webhook event to record and apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookEventIn {
    pub provider: String,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    /// The account the payload names, if any (recorded even when unknown).
    pub account_id: Option<String>,
    pub body: Vec<u8>,
    pub action: WebhookAction,
}

/// Which webhook events a list shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookEventFilter {
    pub provider: Option<String>,
    pub status: Option<WebhookStatus>,
}
