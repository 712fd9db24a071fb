//! The hot state of one account: its grants, its wallet and its open holds,
//! and the read-only questions asked of it (burn order, available credits).

use jiff::Timestamp;

use crate::campaign::Cadence;
use crate::limits::RequestWindows;
use crate::pricing::{RequestStatus, Usage};
use crate::subscription::Subscription;
use crate::units::{Credits, Usd};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrantKind {
    PlanMain,
    PlanBackup,
    Promo,
    Purchased,
}

impl GrantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::PlanMain => "plan_main",
            GrantKind::PlanBackup => "plan_backup",
            GrantKind::Promo => "promo",
            GrantKind::Purchased => "purchased",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "plan_main" => Some(GrantKind::PlanMain),
            "plan_backup" => Some(GrantKind::PlanBackup),
            "promo" => Some(GrantKind::Promo),
            "purchased" => Some(GrantKind::Purchased),
            _ => None,
        }
    }

    /// `semantics.md` §3: main pool and promos first, backup next, packs last.
    pub fn default_priority(self) -> u8 {
        match self {
            GrantKind::PlanMain | GrantKind::Promo => 10,
            GrantKind::PlanBackup => 20,
            GrantKind::Purchased => 30,
        }
    }
}

/// The highest (last-spent) grant priority.
pub const MAX_PRIORITY: u8 = 100;

/// A pool of credits with its own priority and lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub account_id: String,
    pub kind: GrantKind,
    pub source: String,
    pub reason: Option<String>,
    pub amount: Credits,
    pub remaining: Credits,
    /// Part of `remaining` reserved by open holds.
    pub held: Credits,
    pub priority: u8,
    pub starts_at: Timestamp,
    /// `None`: never expires.
    pub expires_at: Option<Timestamp>,
    pub created_at: Timestamp,
    /// A voided grant is never spent from again; credits its holds free are voided too.
    pub voided: bool,
    /// Its `grant.expiring` warning is behind it (told, or passed over:
    /// nothing left, voided, or already expired by the time it came due).
    /// Once per grant (`events`, `docs/webhooks.md`).
    pub expiring_told: bool,
}

impl Grant {
    pub fn unheld(&self) -> Credits {
        self.remaining - self.held
    }

    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }

    pub fn has_started(&self, now: Timestamp) -> bool {
        self.starts_at <= now
    }

    /// Can new holds and charges take from this grant now?
    pub fn is_usable(&self, now: Timestamp) -> bool {
        !self.voided && self.has_started(now) && !self.is_expired(now) && self.unheld().is_positive()
    }

    /// A pool of a subscription (`plan_main` or `plan_backup`): frozen
    /// while the plan budget is exhausted.
    pub fn is_plan_pool(&self) -> bool {
        matches!(self.kind, GrantKind::PlanMain | GrantKind::PlanBackup)
    }

    /// Sort key of the burn order (`semantics.md` §3).
    fn burn_key(&self) -> (u8, bool, Option<Timestamp>, Timestamp, &str) {
        (self.priority, self.expires_at.is_none(), self.expires_at, self.created_at, &self.id)
    }
}

/// The pay-as-you-go balance. The only balance that can be negative (debt).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wallet {
    pub balance: Credits,
    pub held: Credits,
}

impl Wallet {
    /// What the wallet adds to `available`: negative while in debt.
    pub fn unheld(&self) -> Credits {
        self.balance - self.held
    }

    /// What a new hold or charge may take from it without creating debt.
    pub fn spendable(&self) -> Credits {
        self.unheld().max(Credits::ZERO)
    }

    pub fn debt(&self) -> Credits {
        (-self.balance).max(Credits::ZERO)
    }
}

/// Where credits were held or charged from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Grant { grant_id: String, kind: GrantKind },
    Wallet,
}

/// An amount taken from (or reserved on) one source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Portion {
    pub source: Source,
    pub amount: Credits,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldStatus {
    Open,
    Settled,
    Released,
    /// Released by the engine at `expires_at`; may still be settled.
    Expired,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Open => "open",
            HoldStatus::Settled => "settled",
            HoldStatus::Released => "released",
            HoldStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "open" => Some(HoldStatus::Open),
            "settled" => Some(HoldStatus::Settled),
            "released" => Some(HoldStatus::Released),
            "expired" => Some(HoldStatus::Expired),
            _ => None,
        }
    }
}

/// Credits reserved for one request between authorize and settle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub id: String,
    pub account_id: String,
    pub request_id: String,
    /// Digest of the authorize body, to tell a replay from a conflict.
    pub fingerprint: String,
    pub model: String,
    pub price_version: i64,
    pub request_type: String,
    pub project: Option<String>,
    pub conversation: Option<String>,
    pub estimate: Credits,
    pub estimate_cost_usd: Usd,
    /// What is reserved on each source, in burn order. An open hold's parts
    /// always equal what it holds on each grant and the wallet.
    pub parts: Vec<Portion>,
    /// The parts as the authorize placed them: the first answer's
    /// `held_from`, which a replay returns unchanged even after a grant it
    /// held on expired (and `parts` lost that share).
    pub held_from: Vec<Portion>,
    /// Available credits right after the hold was placed (the authorize answer).
    pub available_after: Credits,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub status: HoldStatus,
    pub resolved_at: Option<Timestamp>,
}

impl Hold {
    pub fn held_total(&self) -> Credits {
        self.parts.iter().map(|p| p.amount).sum()
    }
}

/// Informational fields of a usage record, carried through unpriced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestDetails {
    pub project: Option<String>,
    pub conversation: Option<String>,
    pub region: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub latency_ms: Option<u64>,
    pub retries: Option<u64>,
    pub iterations: Option<u64>,
    pub external_calls: Option<u64>,
    pub context_bytes: Option<u64>,
    pub tools: Vec<String>,
    /// Opaque JSON text, validated by the caller.
    pub metadata: Option<String>,
}

/// What one request cost and where its credits came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    pub account_id: String,
    pub request_id: String,
    /// Digest of the settle or usage body, to tell a replay from a conflict.
    pub fingerprint: String,
    pub hold_id: Option<String>,
    pub request_type: String,
    pub model: String,
    pub price_version: i64,
    pub status: RequestStatus,
    pub usage: Usage,
    pub details: RequestDetails,
    pub cost_usd: Usd,
    pub credits: Credits,
    pub charged_from: Vec<Portion>,
    pub debt_incurred: Credits,
    pub hold_expired: bool,
    pub refunded: bool,
    pub recorded_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccountStatus {
    Active,
    Suspended,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Suspended => "suspended",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(AccountStatus::Active),
            "suspended" => Some(AccountStatus::Suspended),
            _ => None,
        }
    }
}

/// The latest period start of each gift cadence already handled (granted
/// or judged ineligible): a gift is never made twice for one period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GiftMarks {
    pub week: Option<Timestamp>,
    pub month: Option<Timestamp>,
}

impl GiftMarks {
    pub fn get(&self, cadence: Cadence) -> Option<Timestamp> {
        match cadence {
            Cadence::Week => self.week,
            Cadence::Month => self.month,
        }
    }

    pub fn set(&mut self, cadence: Cadence, at: Timestamp) {
        match cadence {
            Cadence::Week => self.week = Some(at),
            Cadence::Month => self.month = Some(at),
        }
    }
}

/// The low-credit thresholds of an account (`events`), by their text
/// (`20%`, `500`; `0`: depleted). A threshold is armed once the account is
/// seen at or above it; crossing below an armed one is told once, and it is
/// armed again only when credits added lift the account back above it, or
/// when a new subscription period starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LowMarks {
    /// The start of the subscription period they belong to; `None`: no live
    /// subscription.
    pub period: Option<Timestamp>,
    pub armed: Vec<String>,
    /// Crossed and told, not armed again since.
    pub told: Vec<String>,
}

/// Everything the engine needs to decide a metering call for one account.
/// Kept small: live grants (credits left or held), the wallet, open holds,
/// the live subscription, the request windows (bounded by the plan's rate)
/// and the gift marks. Spent grants, closed holds and ended subscriptions
/// live only in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountState {
    pub account_id: String,
    pub status: AccountStatus,
    pub grants: Vec<Grant>,
    pub wallet: Wallet,
    pub holds: Vec<Hold>,
    /// Active or past due; `None`: on the free plan.
    pub subscription: Option<Subscription>,
    /// Admitted requests, for the rate limit and the daily and weekly caps.
    pub windows: RequestWindows,
    pub gifts: GiftMarks,
    pub low: LowMarks,
}

impl AccountState {
    pub fn new(account_id: impl Into<String>) -> Self {
        AccountState {
            account_id: account_id.into(),
            status: AccountStatus::Active,
            grants: Vec::new(),
            wallet: Wallet::default(),
            holds: Vec::new(),
            subscription: None,
            windows: RequestWindows::default(),
            gifts: GiftMarks::default(),
            low: LowMarks::default(),
        }
    }

    /// Unheld credits of usable grants other than plan pools, plus the
    /// wallet's unheld balance: what is available while the plan budget is
    /// exhausted.
    pub fn available_outside_plan(&self, now: Timestamp) -> Credits {
        let grants: Credits =
            self.grants.iter().filter(|g| g.is_usable(now) && !g.is_plan_pool()).map(Grant::unheld).sum();
        grants + self.wallet.unheld()
    }

    /// Indices of the grants a charge may take from now, in burn order.
    pub fn burn_order(&self, now: Timestamp) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.grants.len()).filter(|&i| self.grants[i].is_usable(now)).collect();
        order.sort_by(|&a, &b| self.grants[a].burn_key().cmp(&self.grants[b].burn_key()));
        order
    }

    /// `semantics.md` §3: unheld credits of usable grants plus the wallet's
    /// unheld balance (negative in debt).
    pub fn available(&self, now: Timestamp) -> Credits {
        let grants: Credits = self.grants.iter().filter(|g| g.is_usable(now)).map(Grant::unheld).sum();
        grants + self.wallet.unheld()
    }

    /// Credits reserved by open holds.
    pub fn held(&self) -> Credits {
        self.grants.iter().map(|g| g.held).sum::<Credits>() + self.wallet.held
    }

    /// The account's balance as the ledger sees it: every grant's remaining
    /// plus the wallet (invariant 3 of `semantics.md` §10).
    pub fn ledger_balance(&self) -> Credits {
        self.grants.iter().map(|g| g.remaining).sum::<Credits>() + self.wallet.balance
    }

    pub fn grant(&self, grant_id: &str) -> Option<&Grant> {
        // From the newest: a catch-up over many gift periods looks up the
        // grant it has just made (ids are unique, so the order is free).
        self.grants.iter().rev().find(|g| g.id == grant_id)
    }

    pub fn open_hold(&self, request_id: &str) -> Option<&Hold> {
        self.holds.iter().find(|h| h.request_id == request_id)
    }

    /// Drops grants that can never matter again to the hot path: nothing
    /// left and nothing held. They stay in the store.
    pub fn prune(&mut self) {
        self.grants.retain(|g| g.remaining.is_positive() || g.held.is_positive());
    }
}
