//! Bringing an account up to the clock: everything that happens by itself,
//! applied in time order whenever the account is touched or read.

use jiff::Timestamp;

use super::{NewGrant, Tx, derived_id};
use crate::account::{GrantKind, HoldStatus};
use crate::calendar;
use crate::campaign::Cadence;
use crate::events::{Event, EventKind};
use crate::ledger::Reference;
use crate::plan::Plan;
use crate::subscription::{Subscription, SubscriptionKind, SubscriptionStatus};
use crate::units::{Credits, Usd};

/// Something that happens to an account at a point in time by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    /// Its credits are freed at `expires_at`.
    HoldExpires(usize),
    /// A grant that started since it was created may repay debt.
    GrantStarts(usize),
    /// A grant enters its last days: `grant.expiring` (once per grant).
    GrantExpiring(usize),
    /// Its remaining is written off.
    GrantExpires(usize),
    /// The current period of the active subscription ends.
    PeriodEnds,
    /// The grace of a past-due subscription ends.
    GraceEnds,
    /// A gift period starts.
    Gift(Cadence),
}

impl Due {
    /// At one instant: holds expire before grants (a hold's credits are
    /// freed and then written off with the grant, never the other way
    /// round), a grant's warning after what a start repaid from it and
    /// before any expiry, grants before subscription periods (the old pools
    /// go before the new ones come), and periods before gifts (eligibility
    /// is judged on the subscription as it is then).
    fn rank(self) -> (u8, usize) {
        match self {
            Due::HoldExpires(i) => (0, i),
            Due::GrantStarts(i) => (1, i),
            Due::GrantExpiring(i) => (2, i),
            Due::GrantExpires(i) => (3, i),
            Due::PeriodEnds | Due::GraceEnds => (4, 0),
            Due::Gift(c) => (5, c as usize),
        }
    }
}

/// The earliest thing due by `now`.
fn next_due(tx: &Tx<'_>, started: &[String]) -> Option<(Timestamp, Due)> {
    let now = tx.now;
    let state = &tx.state;
    let mut due: Vec<(Timestamp, Due)> = Vec::new();
    for (i, hold) in state.holds.iter().enumerate() {
        if hold.status == HoldStatus::Open && hold.expires_at <= now {
            due.push((hold.expires_at, Due::HoldExpires(i)));
        }
    }
    for (i, grant) in state.grants.iter().enumerate() {
        if let Some(at) = grant.expires_at.filter(|&at| at <= now)
            && (grant.remaining.is_positive() || grant.held.is_positive())
        {
            due.push((at, Due::GrantExpires(i)));
        }
        // Due `grant_expiring` before the expiry (the store's sweeper asks
        // the same question: `expires_at <= now + grant_expiring`). A grant
        // whose expiry has passed too expires in this advance, untold: no
        // step for it (a clock moved far ahead adds no work here).
        if let Some(notice) = tx.ctx.billing.grant_expiring
            && !grant.expiring_told
            && let Some(expires_at) = grant.expires_at.filter(|&e| e > now)
            && let at = calendar::earlier(expires_at, notice)
            && at <= now
        {
            due.push((at, Due::GrantExpiring(i)));
        }
        if grant.starts_at > grant.created_at
            && grant.starts_at <= now
            && state.wallet.balance.is_negative()
            && !started.contains(&grant.id)
        {
            due.push((grant.starts_at, Due::GrantStarts(i)));
        }
    }
    match &state.subscription {
        Some(s) if s.status == SubscriptionStatus::Active && s.period_end <= now => {
            due.push((s.period_end, Due::PeriodEnds));
        }
        Some(s) if s.status == SubscriptionStatus::PastDue => {
            if let Some(at) = s.grace_ends_at.filter(|&at| at <= now) {
                due.push((at, Due::GraceEnds));
            }
        }
        _ => {}
    }
    let tz = &tx.ctx.billing.timezone;
    for cadence in Cadence::ALL {
        if let Some(mark) = state.gifts.get(cadence) {
            let next = cadence.next_period_start(mark, tz);
            if next <= now && tx.ctx.billing.campaigns.has(cadence) {
                due.push((next, Due::Gift(cadence)));
            }
        }
    }
    due.into_iter().min_by_key(|&(at, d)| (at, d.rank()))
}

/// Applies, in time order, everything due up to `now`: holds expire, grants
/// start (they may repay debt) and expire, subscription periods end (the
/// next paid one starts with fresh pools, or the subscription falls past
/// due and then expires), and gift periods start.
pub(super) fn advance(tx: &mut Tx<'_>) {
    let now = tx.now;
    let tz = tx.ctx.billing.timezone.clone();
    // Gift periods are counted from the one an account was first seen in
    // (or a cadence without a campaign was last looked at): no gift is made
    // for a period that started before.
    for cadence in Cadence::ALL {
        let current = cadence.period_start(now, &tz);
        let mark = tx.state.gifts.get(cadence);
        if mark.is_none() || (!tx.ctx.billing.campaigns.has(cadence) && mark < Some(current)) {
            tx.state.gifts.set(cadence, current);
        }
    }
    let mut started: Vec<String> = Vec::new();
    let mut cursor = Timestamp::MIN;
    while let Some((at, item)) = next_due(tx, &started) {
        // Nothing due is ever earlier than what was applied before it.
        let at = at.max(cursor);
        cursor = at;
        match item {
            Due::HoldExpires(i) => {
                let mut hold = tx.state.holds.remove(i);
                tx.release_parts(&hold, at);
                hold.status = HoldStatus::Expired;
                hold.resolved_at = Some(at);
                tx.changes.put_hold(hold);
                tx.repay_debt(at);
            }
            Due::GrantStarts(i) => {
                started.push(tx.state.grants[i].id.clone());
                tx.repay_debt(at);
            }
            Due::GrantExpiring(i) => grant_expiring(tx, i),
            Due::GrantExpires(i) => {
                let id = tx.state.grants[i].id.clone();
                tx.expire_grant(&id, at);
            }
            Due::PeriodEnds => period_ends(tx, at),
            Due::GraceEnds => end_subscription(tx, SubscriptionStatus::Expired, at),
            Due::Gift(cadence) => gift(tx, cadence, at),
        }
    }
}

/// A grant's `grant.expiring` comes due: told when the grant still has
/// credits (not voided, and not expired by now: a clock that moved past
/// both the warning and the expiry tells only the expiry); marked either
/// way, so that it comes due once.
fn grant_expiring(tx: &mut Tx<'_>, i: usize) {
    let now = tx.now;
    let grant = &mut tx.state.grants[i];
    grant.expiring_told = true;
    let tell = grant.remaining.is_positive() && !grant.voided && grant.expires_at.is_some_and(|e| e > now);
    let grant = grant.clone();
    tx.changes.touch_grant(&grant.id);
    if !tell {
        return;
    }
    let Some(expires_at) = grant.expires_at else { return };
    let id = tx.new_id();
    let event = Event::new(id, EventKind::GrantExpiring, &grant.account_id, now)
        .with("grant_id", &grant.id)
        .with("kind", grant.kind.as_str())
        .with("source", &grant.source)
        .with("remaining", grant.remaining)
        .with("expires_at", expires_at);
    tx.changes.events.push(event);
}

/// The active subscription's period ends at `at`: the next one starts if
/// it is paid; otherwise a pass, or a cancelled subscription, expires, and
/// a monthly one falls past due until `renewal_grace` is over.
fn period_ends(tx: &mut Tx<'_>, at: Timestamp) {
    let Some(sub) = tx.state.subscription.clone() else { return };
    let tz = tx.ctx.billing.timezone.clone();
    if sub.renewed()
        && let Some((start, end)) = sub.period_bounds(sub.period + 1, &tz)
    {
        let mut next = sub;
        next.period += 1;
        next.period_start = start;
        next.period_end = end;
        let plan = tx.ctx.plans.get(&next.plan_id).cloned();
        // The period starts at the price it was paid at.
        let price = next.renewal_price_usd.take().or(plan.as_ref().map(|p| p.price_usd));
        set_price(&mut next, plan.as_ref(), price);
        start_period(tx, &mut next, plan.as_ref(), at);
        tx.state.subscription = Some(next);
        return;
    }
    if sub.kind == SubscriptionKind::Pass30d || sub.cancel_at_period_end {
        end_subscription(tx, SubscriptionStatus::Expired, at);
        return;
    }
    let grace_ends_at =
        calendar::add_span(sub.period_end, tx.ctx.billing.renewal_grace.0, &tz).unwrap_or(sub.period_end);
    if grace_ends_at <= at {
        end_subscription(tx, SubscriptionStatus::Expired, at);
        return;
    }
    let mut past_due = sub;
    past_due.status = SubscriptionStatus::PastDue;
    past_due.grace_ends_at = Some(grace_ends_at);
    tx.state.subscription = Some(past_due);
}

/// Ends the live subscription at `at` with `status`; the account is on
/// `free` from then on. Its pools are gone already (they expire with the
/// period) or are expired by the caller.
pub(super) fn end_subscription(tx: &mut Tx<'_>, status: SubscriptionStatus, at: Timestamp) {
    let Some(mut sub) = tx.state.subscription.take() else { return };
    sub.status = status;
    sub.ended_at = Some(at);
    sub.grace_ends_at = None;
    tx.changes.put_subscription(sub);
}

/// A period of `sub` starts at `at`: fresh pools that expire at the
/// period's end (`plan_main` with the bonus, `plan_backup`), and a budget
/// used of zero. Their ids come from the subscription and the period, so a
/// read before the writer catches up shows the same grants.
pub(super) fn start_period(tx: &mut Tx<'_>, sub: &mut Subscription, plan: Option<&Plan>, at: Timestamp) {
    let (main, backup) = plan.map_or((Credits::ZERO, Credits::ZERO), |p| (p.main_pool(), p.backup_pool()));
    sub.main_amount = main;
    sub.backup_amount = backup;
    sub.budget_used_usd = crate::units::Usd::ZERO;
    let period = sub.period.to_string();
    for (kind, amount, part) in [(GrantKind::PlanMain, main, "main"), (GrantKind::PlanBackup, backup, "backup")] {
        if !amount.is_positive() || sub.period_end <= at {
            continue;
        }
        let new = NewGrant {
            kind,
            source: format!("plan:{}", sub.plan_id),
            reason: None,
            amount: amount.min(crate::units::MAX_GRANT),
            priority: None,
            starts_at: Some(at),
            expires_at: Some(sub.period_end),
            reference: Reference::Subscription(sub.id.clone()),
        };
        tx.add_grant(pool_grant_id(sub, part, &period), new, at);
    }
}

/// Remembers what the current period was bought at: its price and the
/// plan budget that price gives.
pub(super) fn set_price(sub: &mut Subscription, plan: Option<&Plan>, price: Option<Usd>) {
    sub.price_usd = price;
    sub.budget_usd = match (plan, price) {
        (Some(plan), Some(price)) => plan.budget_at(price),
        _ => None,
    };
}

/// The ids of a period's pool grants (main, backup), whether they exist
/// yet or not.
pub fn period_pool_ids(sub: &Subscription, period: u32) -> Vec<String> {
    let period = period.to_string();
    ["main", "backup"].iter().map(|part| pool_grant_id(sub, part, &period)).collect()
}

/// The id of a period's pool grant.
pub(super) fn pool_grant_id(sub: &Subscription, part: &str, period: &str) -> String {
    derived_id(&["plan", &sub.id, period, part])
}

/// A gift period of `cadence` starts at `at`: each gift of that cadence
/// goes to the account if it is eligible then.
fn gift(tx: &mut Tx<'_>, cadence: Cadence, at: Timestamp) {
    tx.state.gifts.set(cadence, at);
    let paid = tx.state.subscription.as_ref().is_some_and(Subscription::is_active);
    let tz = tx.ctx.billing.timezone.clone();
    let gifts: Vec<_> = tx
        .ctx
        .billing
        .campaigns
        .recurring
        .iter()
        .enumerate()
        .filter(|(_, g)| g.every == cadence)
        .map(|(j, g)| (j, g.clone()))
        .collect();
    let micros = at.as_microsecond().to_string();
    for (j, g) in gifts {
        if !g.eligible.admits(paid) || !g.amount.is_positive() {
            continue;
        }
        let expires_at = g.expires_after.and_then(|span| calendar::add_span(at, span.0, &tz)).filter(|&e| e > at);
        if g.expires_after.is_some() && expires_at.is_none() {
            continue;
        }
        let new = NewGrant {
            kind: GrantKind::Promo,
            source: cadence.source().to_string(),
            reason: None,
            amount: g.amount.min(crate::units::MAX_GRANT),
            priority: None,
            starts_at: Some(at),
            expires_at,
            reference: Reference::None,
        };
        let id = derived_id(&["gift", &tx.state.account_id, cadence.as_str(), &micros, &j.to_string()]);
        tx.add_grant(id, new, at);
    }
}
