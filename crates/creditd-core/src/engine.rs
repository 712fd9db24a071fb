//! The decisions of metering and balance changes for one account
//! (`semantics.md` §3–§9).
//!
//! Every operation runs through [`apply`]: it works on a copy of the
//! account's state, brings it up to `now` (expired holds and grants,
//! subscription periods, gifts: [`advance`]), applies the operation, and
//! only on success replaces the state and returns the [`Changes`] for the
//! store to write. A refused operation changes nothing.

mod advance;
mod checks;
mod payments;
mod refund;
mod subscriptions;

pub use advance::period_pool_ids;
pub use checks::{Admission, admit, budget, effective_plan};
pub use payments::{
    Paid, PaymentRefund, RefundShare, RefundedPayment, paid_period_pools, refund_credits, refund_payment,
};
pub use refund::refund_usage;
pub use subscriptions::{
    StartInput, SubscriptionChange, SwitchProration, cancel_subscription, renew_subscription, start_subscription,
    unpay_renewal,
};

use jiff::{SignedDuration, Timestamp};

use crate::account::{
    AccountState, AccountStatus, Grant, GrantKind, Hold, HoldStatus, MAX_PRIORITY, Portion, RequestDetails, Source,
    UsageRecord,
};
use crate::calendar;
use crate::campaign::Billing;
use crate::ledger::{Changes, EntryKind, LedgerEntry, Reference};
use crate::plan::PlanBook;
use crate::pricing::{self, EstimateInput, ModelPrice, PricingError, PricingPolicy, RequestStatus, Usage};
use crate::units::{Credits, MAX_BALANCE, MAX_GRANT, Usd};

/// Why an operation was refused. Each maps to one error code of `api.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    InvalidRequest(String),
    NotFound(String),
    Conflict(String),
    AccountSuspended,
    UnknownModel(String),
    /// §6 check 3: the account's plan does not allow the model.
    ModelNotAllowed {
        model: String,
        plan: String,
    },
    /// §6 check 4: the sliding 60-second window is full.
    RateLimited {
        limit: u32,
        retry_after_seconds: u64,
    },
    /// §6 check 5: the day's requests are used up.
    DailyCapReached {
        limit: u32,
        retry_after_seconds: u64,
    },
    /// §6 check 6: the week's requests are used up.
    WeeklyCapReached {
        limit: u32,
        retry_after_seconds: u64,
    },
    /// §6 check 7: the plan budget is reached and nothing but the plan's
    /// grants could pay.
    PlanBudgetExhausted {
        budget_usd: Usd,
        used_usd: Usd,
    },
    InsufficientCredits {
        available: Credits,
        estimate: Credits,
    },
    /// The subscription has ended (or cannot be renewed).
    SubscriptionExpired,
    IdempotencyConflict,
    HoldNotOpen {
        status: HoldStatus,
    },
}

impl Refusal {
    /// The error code of `api.md`.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::InvalidRequest(_) => "invalid_request",
            Refusal::NotFound(_) => "not_found",
            Refusal::Conflict(_) => "conflict",
            Refusal::AccountSuspended => "account_suspended",
            Refusal::UnknownModel(_) => "unknown_model",
            Refusal::ModelNotAllowed { .. } => "model_not_allowed",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::DailyCapReached { .. } => "daily_cap_reached",
            Refusal::WeeklyCapReached { .. } => "weekly_cap_reached",
            Refusal::PlanBudgetExhausted { .. } => "plan_budget_exhausted",
            Refusal::InsufficientCredits { .. } => "insufficient_credits",
            Refusal::SubscriptionExpired => "subscription_expired",
            Refusal::IdempotencyConflict => "idempotency_conflict",
            Refusal::HoldNotOpen { .. } => "hold_not_open",
        }
    }

    /// Seconds until a refused request may succeed, for limits.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            Refusal::RateLimited { retry_after_seconds, .. }
            | Refusal::DailyCapReached { retry_after_seconds, .. }
            | Refusal::WeeklyCapReached { retry_after_seconds, .. } => Some(*retry_after_seconds),
            _ => None,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            Refusal::NotFound(what) => write!(f, "{what} not found"),
            Refusal::Conflict(why) => f.write_str(why),
            Refusal::AccountSuspended => f.write_str("the account is suspended"),
            Refusal::UnknownModel(model) => write!(f, "model {model:?} is not in the price book"),
            Refusal::ModelNotAllowed { model, plan } => write!(f, "the plan {plan:?} does not allow model {model:?}"),
            Refusal::RateLimited { limit, retry_after_seconds } => {
                let requests = if *limit == 1 { "request" } else { "requests" };
                write!(f, "at most {limit} {requests} per minute; a slot frees in {retry_after_seconds} s")
            }
            Refusal::DailyCapReached { limit, retry_after_seconds } => {
                let requests = if *limit == 1 { "request" } else { "requests" };
                write!(f, "the daily cap of {limit} {requests} is reached; it resets in {retry_after_seconds} s")
            }
            Refusal::WeeklyCapReached { limit, retry_after_seconds } => {
                let requests = if *limit == 1 { "request" } else { "requests" };
                write!(f, "the weekly cap of {limit} {requests} is reached; it resets in {retry_after_seconds} s")
            }
            Refusal::PlanBudgetExhausted { budget_usd, used_usd } => write!(
                f,
                "the plan budget of {budget_usd} USD is used up ({used_usd} USD with open holds) and no other credits cover the request"
            ),
            Refusal::InsufficientCredits { available, estimate } => {
                let credits = if estimate.to_string() == "1" { "credit" } else { "credits" };
                let are = if available.to_string() == "1" { "is" } else { "are" };
                write!(f, "the request needs {estimate} {credits} but {available} {are} available")
            }
            Refusal::SubscriptionExpired => f.write_str("the subscription has expired"),
            Refusal::IdempotencyConflict => {
                f.write_str("this request id or idempotency key was already used with a different body")
            }
            Refusal::HoldNotOpen { status } => write!(f, "the hold is {}", status.as_str()),
        }
    }
}

impl std::error::Error for Refusal {}

impl From<PricingError> for Refusal {
    fn from(e: PricingError) -> Self {
        Refusal::InvalidRequest(e.to_string())
    }
}

/// What the engine applies besides an account's own state: the pricing
/// policy, the billing settings (time zone, renewal grace, switch policy,
/// campaigns) and the plans.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub policy: &'a PricingPolicy,
    pub billing: &'a Billing,
    pub plans: &'a PlanBook,
}

/// One operation in progress on a copy of an account's state.
pub struct Tx<'a> {
    pub state: AccountState,
    pub now: Timestamp,
    pub ctx: Context<'a>,
    new_id: &'a mut dyn FnMut() -> String,
    pub changes: Changes,
}

/// Runs `op` on a copy of `state` brought up to `now`. On success the copy
/// replaces `state` and the changes are returned; on refusal `state` is
/// untouched.
pub fn apply<T>(
    state: &mut AccountState,
    now: Timestamp,
    ctx: Context<'_>,
    new_id: &mut dyn FnMut() -> String,
    op: impl FnOnce(&mut Tx<'_>) -> Result<T, Refusal>,
) -> Result<(T, Changes), Refusal> {
    let mut tx = Tx { state: state.clone(), now, ctx, new_id, changes: Changes::default() };
    advance::advance(&mut tx);
    let out = op(&mut tx)?;
    let mut changes = tx.changes;
    for id in std::mem::take(&mut changes.touched) {
        if let Some(g) = tx.state.grant(&id) {
            changes.grants.push(g.clone());
        }
    }
    if tx.state.subscription != state.subscription
        && let Some(live) = &tx.state.subscription
    {
        changes.put_subscription(live.clone());
    }
    let derived = crate::events::derive(state, &mut tx.state, &changes, now, tx.ctx.billing, tx.new_id);
    changes.events.extend(derived);
    changes.account |= tx.state.windows != state.windows || tx.state.gifts != state.gifts || tx.state.low != state.low;
    tx.state.prune();
    *state = tx.state;
    Ok((out, changes))
}

/// The view of an account as of `now`, without keeping any change: what
/// reads (balance, estimate) show.
pub fn view(state: &AccountState, now: Timestamp, ctx: Context<'_>) -> AccountState {
    view_with_changes(state, now, ctx).0
}

/// [`view`], with what bringing the account to `now` would write: a read
/// that must show records (grants, subscriptions) the writer has not yet
/// written finds them here. Grants made by time alone (gifts, a renewed
/// period's pools) have the ids the writer will give them.
pub fn view_with_changes(state: &AccountState, now: Timestamp, ctx: Context<'_>) -> (AccountState, Changes) {
    let mut counter = 0u64;
    let mut new_id = || {
        counter += 1;
        format!("view-{counter}")
    };
    let mut copy = state.clone();
    // `advance` cannot refuse.
    let changes = apply(&mut copy, now, ctx, &mut new_id, |_| Ok(())).map(|(_, c)| c).unwrap_or_default();
    (copy, changes)
}

/// A stable id made from `parts`, for what time alone creates (gifts, the
/// pools of a renewed period): a read that shows it before the writer
/// writes it shows the same id. 128 bits of two FNV-1a hashes, shaped like
/// a UUID.
pub fn derived_id(parts: &[&str]) -> String {
    let hash = |offset: u64| {
        let mut h = offset;
        for part in parts {
            for b in part.bytes().chain(std::iter::once(0xff)) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    };
    let (a, b) = (hash(0xcbf2_9ce4_8422_2325), hash(0x6c62_272e_07bb_0142));
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

impl Tx<'_> {
    fn new_id(&mut self) -> String {
        (self.new_id)()
    }

    fn entry(&mut self, at: Timestamp, kind: EntryKind, amount: Credits, grant_id: Option<&str>, reference: Reference) {
        self.entry_with_reason(at, kind, amount, grant_id, reference, None);
    }

    fn entry_with_reason(
        &mut self,
        at: Timestamp,
        kind: EntryKind,
        amount: Credits,
        grant_id: Option<&str>,
        reference: Reference,
        reason: Option<String>,
    ) {
        match grant_id {
            Some(id) => self.changes.touch_grant(id),
            None => self.changes.wallet = true,
        }
        let entry = LedgerEntry {
            id: self.new_id(),
            account_id: self.state.account_id.clone(),
            at,
            kind,
            amount,
            grant_id: grant_id.map(str::to_string),
            reference,
            reason,
            balance_after: self.state.ledger_balance(),
        };
        self.changes.entries.push(entry);
    }

    fn grant_mut(&mut self, grant_id: &str) -> Option<&mut Grant> {
        // From the newest, like `AccountState::grant`.
        self.state.grants.iter_mut().rev().find(|g| g.id == grant_id)
    }

    /// Frees what a hold reserved. Credits freed on a voided grant are voided.
    fn release_parts(&mut self, hold: &Hold, at: Timestamp) {
        for part in &hold.parts {
            match &part.source {
                Source::Wallet => {
                    self.state.wallet.held -= part.amount;
                    self.changes.wallet = true;
                }
                Source::Grant { grant_id, .. } => {
                    let Some(grant) = self.grant_mut(grant_id) else { continue };
                    grant.held -= part.amount;
                    let voided = grant.voided;
                    self.changes.touch_grant(grant_id);
                    if voided && part.amount.is_positive() {
                        self.grant_mut(grant_id).expect("grant just seen").remaining -= part.amount;
                        self.entry(at, EntryKind::Void, -part.amount, Some(grant_id), Reference::None);
                    }
                }
            }
        }
    }

    /// Takes `amount` from usable grants in burn order, then the wallet.
    /// With `hold`, reserves instead of spending. The wallet part of a charge
    /// may exceed what it has (debt); the caller decides whether it may.
    ///
    /// With `frozen` (the plan budget is exhausted, `semantics.md` §7) the
    /// plan pools come last: other grants, then what the wallet has, then
    /// the pools, and only then debt. Admission makes sure a hold or an
    /// enforced charge never reaches the pools; a charge that must happen
    /// (a settle, unenforced usage) takes them before it makes debt, since
    /// debt would be repaid from them at once (§5).
    fn take(&mut self, amount: Credits, hold: bool, frozen: bool) -> Vec<Portion> {
        let mut left = amount;
        let mut parts = Vec::new();
        let order = self.state.burn_order(self.now);
        let (outside, pools): (Vec<usize>, Vec<usize>) = if frozen {
            order.into_iter().partition(|&i| !self.state.grants[i].is_plan_pool())
        } else {
            (order, Vec::new())
        };
        self.take_from_grants(&outside, &mut left, hold, &mut parts);
        if !pools.is_empty() && left.is_positive() {
            // The wallet's own credits before the frozen pools.
            let from_wallet = self.state.wallet.spendable().min(left);
            self.take_from_wallet(from_wallet, hold, &mut parts);
            left -= from_wallet;
            self.take_from_grants(&pools, &mut left, hold, &mut parts);
        }
        self.take_from_wallet(left, hold, &mut parts);
        parts
    }

    fn take_from_grants(&mut self, order: &[usize], left: &mut Credits, hold: bool, parts: &mut Vec<Portion>) {
        for &i in order {
            if !left.is_positive() {
                break;
            }
            let grant = &mut self.state.grants[i];
            let take = grant.unheld().min(*left);
            if hold {
                grant.held += take;
            } else {
                grant.remaining -= take;
            }
            *left -= take;
            parts
                .push(Portion { source: Source::Grant { grant_id: grant.id.clone(), kind: grant.kind }, amount: take });
            let id = grant.id.clone();
            self.changes.touch_grant(&id);
        }
    }

    /// Takes `amount` from the wallet into the one wallet portion of `parts`.
    fn take_from_wallet(&mut self, amount: Credits, hold: bool, parts: &mut Vec<Portion>) {
        if !amount.is_positive() {
            return;
        }
        if hold {
            self.state.wallet.held += amount;
        } else {
            self.state.wallet.balance -= amount;
        }
        self.changes.wallet = true;
        match parts.iter_mut().find(|p| p.source == Source::Wallet) {
            Some(part) => part.amount += amount,
            None => parts.push(Portion { source: Source::Wallet, amount }),
        }
    }

    /// Charges `amount` in burn order and writes one `charge` entry per source,
    /// each with the balance as it stands after that source (not after the
    /// whole charge). Returns where it came from and how much of it became
    /// debt: the growth of the wallet's debt (its negative balance), so that
    /// a charge that takes a wallet holds have reserved, or a settle after
    /// such a charge, never counts the same debt twice.
    ///
    /// Refused when the wallet would go below `-MAX_BALANCE`.
    fn charge(&mut self, amount: Credits, request_id: &str, frozen: bool) -> Result<(Vec<Portion>, Credits), Refusal> {
        let grants_available: i128 =
            self.state.grants.iter().filter(|g| g.is_usable(self.now)).map(|g| i128::from(g.unheld().units())).sum();
        let lowest = i128::from(self.state.wallet.balance.units()) + i128::from(MAX_BALANCE.units()) + grants_available;
        if i128::from(amount.units()) > lowest {
            return Err(Refusal::InvalidRequest(format!(
                "the charge of {amount} credits would take the wallet below -{MAX_BALANCE}"
            )));
        }
        let debt_before = self.state.wallet.debt();
        let mut balance = self.state.ledger_balance();
        let parts = self.take(amount, false, frozen);
        for part in &parts {
            let grant_id = match &part.source {
                Source::Grant { grant_id, .. } => Some(grant_id.as_str()),
                Source::Wallet => None,
            };
            balance -= part.amount;
            self.entry(self.now, EntryKind::Charge, -part.amount, grant_id, Reference::Request(request_id.to_string()));
            if let Some(e) = self.changes.entries.last_mut() {
                e.balance_after = balance;
            }
        }
        let debt = (self.state.wallet.debt() - debt_before).max(Credits::ZERO);
        Ok((parts, debt))
    }

    /// Adds `amount` (either sign) to the wallet's balance, refusing a
    /// balance outside `±MAX_BALANCE`.
    fn add_to_wallet(&mut self, amount: Credits) -> Result<(), Refusal> {
        let after = self.state.wallet.balance.checked_add(amount).filter(|b| b.units().abs() <= MAX_BALANCE.units());
        let Some(after) = after else {
            return Err(Refusal::InvalidRequest(format!("the wallet would leave the range of ±{MAX_BALANCE} credits")));
        };
        self.state.wallet.balance = after;
        self.changes.wallet = true;
        Ok(())
    }

    /// Repays wallet debt from grants' unheld credits, in burn order
    /// (`semantics.md` §5): while the wallet is negative no grant keeps
    /// unheld credits.
    fn repay_debt(&mut self, at: Timestamp) {
        let now = self.now;
        self.now = at;
        for i in self.state.burn_order(at) {
            let debt = self.state.wallet.debt();
            if !debt.is_positive() {
                break;
            }
            let grant = &mut self.state.grants[i];
            let take = grant.unheld().min(debt);
            grant.remaining -= take;
            let grant_id = grant.id.clone();
            self.entry(at, EntryKind::DebtRepayment, -take, Some(&grant_id), Reference::None);
            self.state.wallet.balance += take;
            self.entry(at, EntryKind::DebtRepayment, take, None, Reference::Grant(grant_id));
        }
        self.now = now;
    }

    /// Creates a grant as of `at` (its `grant` entry, its `created_at`),
    /// and repays any debt from it. The caller has validated it.
    fn add_grant(&mut self, id: String, new: NewGrant, at: Timestamp) -> Grant {
        let grant = Grant {
            id,
            account_id: self.state.account_id.clone(),
            kind: new.kind,
            source: new.source,
            reason: new.reason.clone(),
            amount: new.amount,
            remaining: new.amount,
            held: Credits::ZERO,
            priority: new.priority.unwrap_or(new.kind.default_priority()),
            starts_at: new.starts_at.unwrap_or(at),
            expires_at: new.expires_at,
            // A grant that starts in the past was, for the burn order, created when it started.
            created_at: at,
            voided: false,
            expiring_told: false,
        };
        self.state.grants.push(grant.clone());
        self.entry_with_reason(at, EntryKind::Grant, new.amount, Some(&grant.id), new.reference, new.reason);
        self.repay_debt(at);
        self.state.grant(&grant.id).cloned().unwrap_or(grant)
    }

    /// Writes off what is left of a grant at `at`: open holds lose what they
    /// held on it (the credits are gone), an `expire` entry takes its
    /// remaining. A grant ended early (a plan switch) gets `at` as its expiry.
    fn expire_grant(&mut self, grant_id: &str, at: Timestamp) {
        for h in self.state.holds.iter_mut().filter(|h| h.status == HoldStatus::Open) {
            let mut touched = false;
            for part in h.parts.iter_mut() {
                if matches!(&part.source, Source::Grant { grant_id: id, .. } if id == grant_id)
                    && part.amount.is_positive()
                {
                    part.amount = Credits::ZERO;
                    touched = true;
                }
            }
            if touched {
                let h = h.clone();
                self.changes.put_hold(h);
            }
        }
        let Some(grant) = self.grant_mut(grant_id) else { return };
        let expired = grant.remaining;
        grant.held = Credits::ZERO;
        grant.remaining = Credits::ZERO;
        if grant.expires_at.is_none_or(|e| e > at) {
            grant.expires_at = Some(at);
        }
        self.changes.touch_grant(grant_id);
        if expired.is_positive() {
            self.entry(at, EntryKind::Expire, -expired, Some(grant_id), Reference::None);
        }
    }

    /// Counts an admitted request in the windows (`semantics.md` §6),
    /// keeping no more admission times than the plan's rate needs.
    fn count_request(&mut self, request_type: &str) {
        if self.ctx.policy.free_request_types.iter().any(|t| t == request_type) {
            return;
        }
        let keep = checks::effective_plan(&self.state, self.ctx.plans).limits.rate_per_minute.unwrap_or(0);
        let tz = &self.ctx.billing.timezone;
        self.state.windows.admit(self.now, tz);
        self.state.windows.keep_recent(keep as usize);
    }

    /// Adds a settled request's provider cost to the plan budget's use.
    fn add_to_budget(&mut self, cost: Usd) {
        if let Some(sub) = self.state.subscription.as_mut().filter(|s| s.is_active()) {
            sub.budget_used_usd = sub.budget_used_usd.checked_add(cost).unwrap_or(sub.budget_used_usd);
        }
    }
}

/// The largest hold lifetime: one day.
pub const MAX_HOLD_TTL_SECONDS: u32 = 86_400;

/// A request to place a hold before an LLM call.
#[derive(Clone, Debug)]
pub struct AuthorizeInput<'a> {
    pub request_id: String,
    pub fingerprint: String,
    pub model_id: String,
    /// The model's current price version, or `None` if it is not in the price book.
    pub model: Option<(i64, &'a ModelPrice)>,
    pub request_type: String,
    pub estimate: EstimateInput,
    pub ttl_seconds: u32,
    pub project: Option<String>,
    pub conversation: Option<String>,
}

/// What the store already has for a request id.
#[derive(Clone, Copy, Debug, Default)]
pub struct Prior<'a> {
    pub hold: Option<&'a Hold>,
    pub usage: Option<&'a UsageRecord>,
}

/// An authorize's answer: the hold, and whether it is a replay of an earlier one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorized {
    pub hold: Hold,
    pub replay: bool,
}

fn check_account(state: &AccountState) -> Result<(), Refusal> {
    match state.status {
        AccountStatus::Active => Ok(()),
        AccountStatus::Suspended => Err(Refusal::AccountSuspended),
    }
}

/// `semantics.md` §4.1: checks (§6), estimates, and places a hold in burn order.
pub fn authorize(tx: &mut Tx<'_>, input: AuthorizeInput<'_>, prior: Prior<'_>) -> Result<Authorized, Refusal> {
    if let Some(hold) = prior.hold {
        return if hold.fingerprint == input.fingerprint {
            Ok(Authorized { hold: hold.clone(), replay: true })
        } else {
            Err(Refusal::IdempotencyConflict)
        };
    }
    if prior.usage.is_some() {
        return Err(Refusal::IdempotencyConflict);
    }
    if input.ttl_seconds == 0 || input.ttl_seconds > MAX_HOLD_TTL_SECONDS {
        return Err(Refusal::InvalidRequest(format!("hold_ttl_seconds must be between 1 and {MAX_HOLD_TTL_SECONDS}")));
    }
    check_account(&tx.state)?;
    let Some((price_version, model)) = input.model else {
        return Err(Refusal::UnknownModel(input.model_id));
    };
    let estimate = pricing::estimate(model, &input.estimate, &input.request_type, tx.ctx.policy)?;
    let admission = admit(&tx.state, tx.now, tx.ctx, &input.model_id, model, &input.request_type, estimate.credits)?;
    let parts = tx.take(estimate.credits, true, admission.frozen);
    tx.count_request(&input.request_type);
    let hold = Hold {
        id: tx.new_id(),
        account_id: tx.state.account_id.clone(),
        request_id: input.request_id,
        fingerprint: input.fingerprint,
        model: input.model_id,
        price_version,
        request_type: input.request_type,
        project: input.project,
        conversation: input.conversation,
        estimate: estimate.credits,
        estimate_cost_usd: estimate.cost_usd,
        held_from: parts.clone(),
        parts,
        available_after: tx.state.available(tx.now),
        created_at: tx.now,
        expires_at: crate::calendar::later(tx.now, SignedDuration::from_secs(i64::from(input.ttl_seconds))),
        status: HoldStatus::Open,
        resolved_at: None,
    };
    tx.state.holds.push(hold.clone());
    tx.changes.put_hold(hold.clone());
    Ok(Authorized { hold, replay: false })
}

/// `semantics.md` §5: while available ≤ 0 any non-zero estimate is refused;
/// otherwise available must cover it.
fn ensure_covered(available: Credits, estimate: Credits) -> Result<(), Refusal> {
    if estimate.is_positive() && available < estimate {
        Err(Refusal::InsufficientCredits { available, estimate })
    } else {
        Ok(())
    }
}

/// The result of a finished request, for settle and one-shot usage.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub request_id: String,
    pub fingerprint: String,
    pub status: RequestStatus,
    pub usage: Usage,
    pub details: RequestDetails,
}

/// A usage record, and whether it is a replay of an earlier one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub record: UsageRecord,
    pub replay: bool,
}

fn replay_usage(prior: &UsageRecord, fingerprint: &str) -> Result<Recorded, Refusal> {
    if prior.fingerprint == fingerprint {
        Ok(Recorded { record: prior.clone(), replay: true })
    } else {
        Err(Refusal::IdempotencyConflict)
    }
}

/// `semantics.md` §4.2: releases the hold and charges the actual price in
/// one step. `model` is the price version the hold was placed with.
pub fn settle(
    tx: &mut Tx<'_>,
    outcome: Outcome,
    model: Option<&ModelPrice>,
    prior: Prior<'_>,
) -> Result<Recorded, Refusal> {
    if let Some(usage) = prior.usage {
        return replay_usage(usage, &outcome.fingerprint);
    }
    // The hold may have expired while this call was on its way: the state
    // (brought up to now) is the authority on whether it is still open.
    let hold = resolve_hold(tx, &outcome.request_id, prior)?;
    let hold_expired = match hold.status {
        HoldStatus::Open => false,
        HoldStatus::Expired => true,
        status @ (HoldStatus::Released | HoldStatus::Settled) => return Err(Refusal::HoldNotOpen { status }),
    };
    let Some(model) = model else {
        return Err(Refusal::UnknownModel(hold.model.clone()));
    };
    let price = pricing::price(model, &outcome.usage, &hold.request_type, outcome.status, tx.ctx.policy)?;
    // The request was admitted with its hold: the budget it may still use
    // is judged without it.
    let frozen = checks::budget_frozen(&tx.state, tx.ctx.plans, Some(&hold.id));
    if hold.status == HoldStatus::Open {
        tx.release_parts(&hold, tx.now);
        tx.state.holds.retain(|h| h.id != hold.id);
    }
    let (charged_from, debt_incurred) = tx.charge(price.credits, &outcome.request_id, frozen)?;
    tx.add_to_budget(price.cost_usd);
    let mut closed = hold.clone();
    closed.status = HoldStatus::Settled;
    closed.resolved_at = Some(tx.now);
    tx.changes.put_hold(closed);
    tx.repay_debt(tx.now);
    let mut details = outcome.details;
    details.project = details.project.or(hold.project.clone());
    details.conversation = details.conversation.or(hold.conversation.clone());
    let record = UsageRecord {
        account_id: tx.state.account_id.clone(),
        request_id: outcome.request_id,
        fingerprint: outcome.fingerprint,
        hold_id: Some(hold.id.clone()),
        request_type: hold.request_type.clone(),
        model: hold.model.clone(),
        price_version: hold.price_version,
        status: outcome.status,
        usage: outcome.usage,
        details,
        cost_usd: price.cost_usd,
        credits: price.credits,
        charged_from,
        debt_incurred,
        hold_expired,
        refunded: false,
        recorded_at: tx.now,
    };
    tx.changes.usage = Some(record.clone());
    Ok(Recorded { record, replay: false })
}

/// The hold of a request as of now. The account's state (already brought up
/// to now) is the authority on open holds: one the store still lists as
/// open but the state does not hold has just expired.
fn resolve_hold(tx: &Tx<'_>, request_id: &str, prior: Prior<'_>) -> Result<Hold, Refusal> {
    if let Some(open) = tx.state.open_hold(request_id) {
        return Ok(open.clone());
    }
    match prior.hold {
        Some(h) if h.status == HoldStatus::Open => Ok(Hold { status: HoldStatus::Expired, ..h.clone() }),
        Some(h) => Ok(h.clone()),
        None => Err(Refusal::NotFound(format!("hold for request {request_id:?}"))),
    }
}

/// `semantics.md` §4.3: cancels a hold with no charge. Releasing a released
/// (or expired) hold again answers the same; a settled one is not open.
pub fn release(tx: &mut Tx<'_>, request_id: &str, prior: Prior<'_>) -> Result<Hold, Refusal> {
    let hold = resolve_hold(tx, request_id, prior)?;
    match hold.status {
        HoldStatus::Released => Ok(hold),
        HoldStatus::Settled => Err(Refusal::HoldNotOpen { status: HoldStatus::Settled }),
        HoldStatus::Open | HoldStatus::Expired => {
            if hold.status == HoldStatus::Open {
                tx.release_parts(&hold, tx.now);
                tx.state.holds.retain(|h| h.id != hold.id);
            }
            let mut closed = hold;
            closed.status = HoldStatus::Released;
            closed.resolved_at = closed.resolved_at.or(Some(tx.now));
            tx.changes.put_hold(closed.clone());
            tx.repay_debt(tx.now);
            Ok(closed)
        }
    }
}

/// A one-shot usage call (`semantics.md` §4.4).
#[derive(Clone, Debug)]
pub struct UsageInput<'a> {
    pub outcome: Outcome,
    pub model_id: String,
    pub model: Option<(i64, &'a ModelPrice)>,
    pub request_type: String,
    /// `false`: the request already happened; nothing refuses it and what
    /// available credits cannot cover becomes debt.
    pub enforce: bool,
}

/// `semantics.md` §4.4: checks (§6, unless `enforce` is off) and charges in
/// one step; the request counts toward rate and caps either way.
pub fn record_usage(tx: &mut Tx<'_>, input: UsageInput<'_>, prior: Prior<'_>) -> Result<Recorded, Refusal> {
    if let Some(usage) = prior.usage {
        return replay_usage(usage, &input.outcome.fingerprint);
    }
    if prior.hold.is_some() {
        // The request id belongs to an authorize: settle it instead.
        return Err(Refusal::IdempotencyConflict);
    }
    if input.enforce {
        check_account(&tx.state)?;
    }
    let Some((price_version, model)) = input.model else {
        return Err(Refusal::UnknownModel(input.model_id));
    };
    let outcome = input.outcome;
    let price = pricing::price(model, &outcome.usage, &input.request_type, outcome.status, tx.ctx.policy)?;
    let frozen = if input.enforce {
        admit(&tx.state, tx.now, tx.ctx, &input.model_id, model, &input.request_type, price.credits)?.frozen
    } else {
        checks::budget_frozen(&tx.state, tx.ctx.plans, None)
    };
    let (charged_from, debt_incurred) = tx.charge(price.credits, &outcome.request_id, frozen)?;
    tx.repay_debt(tx.now);
    tx.add_to_budget(price.cost_usd);
    tx.count_request(&input.request_type);
    let record = UsageRecord {
        account_id: tx.state.account_id.clone(),
        request_id: outcome.request_id,
        fingerprint: outcome.fingerprint,
        hold_id: None,
        request_type: input.request_type,
        model: input.model_id,
        price_version,
        status: outcome.status,
        usage: outcome.usage,
        details: outcome.details,
        cost_usd: price.cost_usd,
        credits: price.credits,
        charged_from,
        debt_incurred,
        hold_expired: false,
        refunded: false,
        recorded_at: tx.now,
    };
    tx.changes.usage = Some(record.clone());
    Ok(Recorded { record, replay: false })
}

/// A grant to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewGrant {
    pub kind: GrantKind,
    pub source: String,
    pub reason: Option<String>,
    pub amount: Credits,
    /// `None`: the kind's default priority.
    pub priority: Option<u8>,
    /// `None`: now.
    pub starts_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub reference: Reference,
}

/// Creates a grant, writes its `grant` entry, and repays any debt from it.
pub fn grant(tx: &mut Tx<'_>, new: NewGrant) -> Result<Grant, Refusal> {
    if !new.amount.is_positive() || new.amount > MAX_GRANT {
        return Err(Refusal::InvalidRequest(format!("amount must be above 0 and at most {MAX_GRANT}")));
    }
    let priority = new.priority.unwrap_or(new.kind.default_priority());
    if priority > MAX_PRIORITY {
        return Err(Refusal::InvalidRequest(format!("priority must be between 0 and {MAX_PRIORITY}")));
    }
    let starts_at = new.starts_at.unwrap_or(tx.now);
    if let Some(expires_at) = new.expires_at
        && (expires_at <= starts_at || expires_at <= tx.now)
    {
        return Err(Refusal::InvalidRequest("expires_at must be after starts_at and after now".into()));
    }
    let id = tx.new_id();
    let now = tx.now;
    Ok(tx.add_grant(id, new, now))
}

/// A new account (`semantics.md` §8): the signup bonus, if there is one.
pub fn open_account(tx: &mut Tx<'_>) -> Result<Option<Grant>, Refusal> {
    let Some(bonus) = tx.ctx.billing.campaigns.signup_bonus.clone() else { return Ok(None) };
    let expires_at = match bonus.expires_after {
        Some(span) => Some(
            calendar::add_span(tx.now, span.0, &tx.ctx.billing.timezone)
                .ok_or_else(|| Refusal::InvalidRequest("the signup bonus expiry is out of range".into()))?,
        ),
        None => None,
    };
    let new = NewGrant {
        kind: GrantKind::Promo,
        source: "signup_bonus".into(),
        reason: None,
        amount: bonus.amount,
        priority: None,
        starts_at: None,
        expires_at,
        reference: Reference::None,
    };
    grant(tx, new).map(Some)
}

/// Voids what is left of a grant and not held; credits its holds free later
/// are voided as they are freed. Voiding twice answers the same.
pub fn void(tx: &mut Tx<'_>, grant: Grant, reason: Option<String>) -> Result<Grant, Refusal> {
    if !tx.state.grants.iter().any(|g| g.id == grant.id) {
        // Spent or expired: nothing left to void, but it is voided all the same.
        let mut g = grant;
        if !g.voided {
            g.voided = true;
            tx.state.grants.push(g.clone());
            tx.changes.touch_grant(&g.id);
        }
        return Ok(g);
    }
    let g = tx.grant_mut(&grant.id).expect("checked above");
    if g.voided {
        return Ok(g.clone());
    }
    g.voided = true;
    let voided = g.unheld();
    g.remaining -= voided;
    let id = g.id.clone();
    tx.changes.touch_grant(&id);
    if voided.is_positive() {
        tx.entry_with_reason(tx.now, EntryKind::Void, -voided, Some(&id), Reference::None, reason);
    }
    let out = tx.state.grant(&id).cloned().expect("still there");
    Ok(out)
}

/// Adds credits to the wallet (a top-up or a proration credit); debt is
/// repaid by it as a matter of arithmetic.
pub fn credit_wallet(
    tx: &mut Tx<'_>,
    kind: EntryKind,
    amount: Credits,
    reference: Reference,
    reason: Option<String>,
) -> Result<LedgerEntry, Refusal> {
    if !amount.is_positive() || amount > MAX_GRANT {
        return Err(Refusal::InvalidRequest(format!("amount must be above 0 and at most {MAX_GRANT}")));
    }
    tx.add_to_wallet(amount)?;
    tx.entry_with_reason(tx.now, kind, amount, None, reference, reason);
    Ok(tx.changes.entries.last().cloned().expect("just written"))
}

/// An operator's correction of the wallet. It may not take the wallet below
/// zero, nor below what open holds reserve on it.
pub fn adjust_wallet(tx: &mut Tx<'_>, amount: Credits, reason: Option<String>) -> Result<LedgerEntry, Refusal> {
    if amount.is_zero() || amount.units().abs() > MAX_GRANT.units() {
        return Err(Refusal::InvalidRequest(format!("amount must be non-zero and at most {MAX_GRANT} either way")));
    }
    let after = tx.state.wallet.balance.checked_add(amount).unwrap_or(tx.state.wallet.balance);
    if amount.is_negative() && after < tx.state.wallet.held.max(Credits::ZERO) {
        return Err(Refusal::Conflict(format!(
            "the adjustment would take the wallet to {after}, below zero or below what is held"
        )));
    }
    tx.add_to_wallet(amount)?;
    tx.entry_with_reason(tx.now, EntryKind::Adjustment, amount, None, Reference::None, reason);
    tx.repay_debt(tx.now);
    Ok(tx.changes.entries.iter().rev().find(|e| e.kind == EntryKind::Adjustment).cloned().expect("just written"))
}

/// Converts dollars to credits for the wallet, refusing what cannot be represented.
pub fn usd_to_credits(amount: Usd, credits_per_usd: crate::units::Factor) -> Result<Credits, Refusal> {
    amount.to_credits(credits_per_usd).ok_or_else(|| Refusal::InvalidRequest("amount out of range".into()))
}

#[cfg(test)]
mod refusal_messages {
    use super::*;

    #[test]
    fn a_limit_of_one_says_1_request_not_1_requests() {
        let rate = Refusal::RateLimited { limit: 1, retry_after_seconds: 59 };
        assert_eq!(rate.to_string(), "at most 1 request per minute; a slot frees in 59 s");
        let rate = Refusal::RateLimited { limit: 20, retry_after_seconds: 3 };
        assert_eq!(rate.to_string(), "at most 20 requests per minute; a slot frees in 3 s");
        let daily = Refusal::DailyCapReached { limit: 1, retry_after_seconds: 10 };
        assert_eq!(daily.to_string(), "the daily cap of 1 request is reached; it resets in 10 s");
        let weekly = Refusal::WeeklyCapReached { limit: 1, retry_after_seconds: 10 };
        assert_eq!(weekly.to_string(), "the weekly cap of 1 request is reached; it resets in 10 s");
        let short = Refusal::InsufficientCredits { available: Credits::whole(1), estimate: Credits::whole(1) };
        assert_eq!(short.to_string(), "the request needs 1 credit but 1 is available");
    }
}
