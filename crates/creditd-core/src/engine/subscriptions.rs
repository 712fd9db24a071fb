//! Subscriptions (`semantics.md` §7): start, switch with proration or
//! carry-over, renew, cancel. Period boundaries that come by themselves
//! are in [`super::advance`].

use super::advance::{end_subscription, pool_grant_id, set_price, start_period};
use super::{NewGrant, Refusal, Tx, credit_wallet, usd_to_credits};
use crate::account::GrantKind;
use crate::ledger::{EntryKind, Reference};
use crate::plan::Plan;
use crate::proration::{PoolUse, SwitchInput, prorate};
use crate::subscription::{OnSwitch, Subscription, SubscriptionKind, SubscriptionStatus, period_bounds};
use crate::units::{Credits, Factor, MAX_GRANT, Usd};

/// A paid subscription to start (or switch to): the caller states the
/// payment is confirmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartInput {
    pub plan_id: String,
    pub kind: SubscriptionKind,
    pub external_id: Option<String>,
}

/// What a switch did with the old plan's unused part (`api.md`'s `proration`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchProration {
    pub from_plan: String,
    pub to_plan: String,
    pub time_used: Factor,
    pub usage_used: Factor,
    pub consumed: Factor,
    /// Floored to the cent; zero under `carry_over`.
    pub credit_usd: Usd,
    /// `credit_usd × credits_per_usd`, paid into the wallet.
    pub credited: Credits,
    pub policy: OnSwitch,
    /// Under `carry_over`: the old main pool's unused credits, now a grant.
    pub carried_over: Credits,
    /// A period paid in advance that had not started: credited in full at
    /// the price it was paid (no cap), whatever the policy. Zero without one.
    pub prepaid_usd: Usd,
    pub prepaid_credited: Credits,
}

/// A subscription as an operation left it, and the one it replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionChange {
    pub subscription: Subscription,
    /// The subscription this one replaced (switched or expired).
    pub previous: Option<Subscription>,
    pub proration: Option<SwitchProration>,
}

fn paid_plan(tx: &Tx<'_>, plan_id: &str) -> Result<Plan, Refusal> {
    let plan = tx
        .ctx
        .plans
        .get(plan_id)
        .cloned()
        .ok_or_else(|| Refusal::InvalidRequest(format!("plan {plan_id:?} does not exist")))?;
    if plan.is_free() {
        return Err(Refusal::InvalidRequest(
            "every account without a subscription is on \"free\"; it cannot be subscribed to".into(),
        ));
    }
    Ok(plan)
}

/// Starts a subscription to a paid plan now (`semantics.md` §7). With an
/// active subscription this is a switch: the old one ends now (`switched`),
/// its pools expire, and its unused part is prorated into the wallet (or
/// carried over); a past-due one simply expires.
pub fn start_subscription(tx: &mut Tx<'_>, input: StartInput) -> Result<SubscriptionChange, Refusal> {
    let plan = paid_plan(tx, &input.plan_id)?;
    let now = tx.now;
    let mut previous = None;
    let mut proration = None;
    let mut carried = Credits::ZERO;
    match tx.state.subscription.clone() {
        Some(old) if old.is_active() => {
            if old.plan_id == plan.id && old.kind == input.kind && old.cancel_at_period_end {
                // A payment for the plan the account cancelled: it resumes
                // (the cancel is undone and the next period is paid).
                let sub = renew_subscription(tx, None)?;
                return Ok(SubscriptionChange { subscription: sub, previous: None, proration: None });
            }
            if old.plan_id == plan.id && old.kind == input.kind {
                return Err(Refusal::Conflict(format!(
                    "the account is already subscribed to {:?}; renew it instead",
                    plan.id
                )));
            }
            let (p, c) = switch_out(tx, &old, &plan);
            proration = Some(p);
            carried = c;
            let mut ended = old;
            ended.status = SubscriptionStatus::Switched;
            ended.ended_at = Some(now);
            tx.state.subscription = None;
            tx.changes.put_subscription(ended.clone());
            previous = Some(ended);
        }
        Some(_) => {
            end_subscription(tx, SubscriptionStatus::Expired, now);
            previous = tx.changes.subscriptions.last().cloned();
        }
        None => {}
    }
    let (period_start, period_end) = period_bounds(input.kind, now, 0, &tx.ctx.billing.timezone)
        .ok_or_else(|| Refusal::InvalidRequest("the subscription period is out of range".into()))?;
    let mut sub = Subscription {
        id: tx.new_id(),
        account_id: tx.state.account_id.clone(),
        plan_id: plan.id.clone(),
        kind: input.kind,
        status: SubscriptionStatus::Active,
        cancel_at_period_end: false,
        anchor: now,
        period: 0,
        period_start,
        period_end,
        paid_through: 0,
        budget_used_usd: Usd::ZERO,
        main_amount: Credits::ZERO,
        backup_amount: Credits::ZERO,
        price_usd: None,
        budget_usd: None,
        renewal_price_usd: None,
        grace_ends_at: None,
        external_id: input.external_id,
        created_at: now,
        ended_at: None,
    };
    set_price(&mut sub, Some(&plan), Some(plan.price_usd));
    start_period(tx, &mut sub, Some(&plan), now);
    if carried.is_positive() {
        let new = NewGrant {
            kind: GrantKind::PlanMain,
            source: "carry_over".into(),
            reason: None,
            amount: carried.min(MAX_GRANT),
            priority: None,
            starts_at: None,
            expires_at: Some(sub.period_end),
            reference: Reference::Subscription(sub.id.clone()),
        };
        let id = tx.new_id();
        tx.add_grant(id, new, now);
    }
    tx.state.subscription = Some(sub.clone());
    Ok(SubscriptionChange { subscription: sub, previous, proration })
}

/// The old subscription's side of a switch: proration over its current
/// period, its pools expired now, and the wallet credit (or the credits to
/// carry over, returned).
fn switch_out(tx: &mut Tx<'_>, old: &Subscription, new_plan: &Plan) -> (SwitchProration, Credits) {
    let now = tx.now;
    let period = old.period.to_string();
    // Credits still on hold count as not used: `remaining` includes them.
    let remaining = |tx: &Tx<'_>, part: &str| {
        tx.state.grant(&pool_grant_id(old, part, &period)).map_or(Credits::ZERO, |g| g.remaining)
    };
    let main = PoolUse { amount: old.main_amount, remaining: remaining(tx, "main") };
    let backup = PoolUse { amount: old.backup_amount, remaining: remaining(tx, "backup") };
    // What the period was bought at, not what the plan costs now.
    let old_plan_price = tx.ctx.plans.get(&old.plan_id).map(|p| p.price_usd);
    let old_price = old.price_paid(old_plan_price);
    let p = prorate(SwitchInput {
        old_price,
        new_price: new_plan.price_usd,
        period_start: old.period_start,
        period_end: old.period_end,
        now,
        main,
        backup,
    });
    // Every plan pool of the account belongs to the old subscription
    // (its period's pools and any earlier carry-over): all expire now.
    let pools: Vec<(String, GrantKind, Credits)> = tx
        .state
        .grants
        .iter()
        .filter(|g| g.is_plan_pool() && (g.remaining.is_positive() || g.held.is_positive()))
        .map(|g| (g.id.clone(), g.kind, g.remaining))
        .collect();
    let policy = tx.ctx.billing.on_switch;
    let carried: Credits = match policy {
        OnSwitch::CarryOver => pools.iter().filter(|(_, k, _)| *k == GrantKind::PlanMain).map(|(_, _, r)| *r).sum(),
        OnSwitch::Prorate => Credits::ZERO,
    };
    for (id, _, _) in &pools {
        tx.expire_grant(id, now);
    }
    let (credit_usd, credited) = match policy {
        OnSwitch::Prorate => {
            let credited = usd_to_credits(p.credit_usd, tx.ctx.policy.credits_per_usd).unwrap_or(Credits::ZERO);
            if credited.is_positive() {
                // Cannot fail: positive and far below the grant bound.
                let _ = credit_wallet(
                    tx,
                    EntryKind::ProrationCredit,
                    credited.min(MAX_GRANT),
                    Reference::Subscription(old.id.clone()),
                    Some(format!("switch from {} to {}", old.plan_id, new_plan.id)),
                );
            }
            (p.credit_usd, credited)
        }
        OnSwitch::CarryOver => (Usd::ZERO, Credits::ZERO),
    };
    // A period paid in advance that has not started is the user's money in
    // full: credited at its price, beside (not under) the cap of §7.
    let (prepaid_usd, prepaid_credited) = if old.renewed() {
        let usd = old.renewal_price_usd.or(old_plan_price).unwrap_or(Usd::ZERO);
        let credits = usd_to_credits(usd, tx.ctx.policy.credits_per_usd).unwrap_or(Credits::ZERO).min(MAX_GRANT);
        if credits.is_positive() {
            // Cannot fail: positive and at most a grant.
            let _ = credit_wallet(
                tx,
                EntryKind::ProrationCredit,
                credits,
                Reference::Subscription(old.id.clone()),
                Some(format!("period {} paid in advance, not started: switch to {}", old.paid_through, new_plan.id)),
            );
        }
        (usd, credits)
    } else {
        (Usd::ZERO, Credits::ZERO)
    };
    let proration = SwitchProration {
        from_plan: old.plan_id.clone(),
        to_plan: new_plan.id.clone(),
        time_used: p.time_used,
        usage_used: p.usage_used,
        consumed: p.consumed,
        credit_usd,
        credited,
        policy,
        carried_over: carried,
        prepaid_usd,
        prepaid_credited,
    };
    (proration, carried)
}

/// The live subscription, or why there is none: `last` is the account's
/// latest subscription in the store.
fn live(tx: &Tx<'_>, last: Option<&Subscription>) -> Result<Subscription, Refusal> {
    match (&tx.state.subscription, last) {
        (Some(sub), _) => Ok(sub.clone()),
        (None, Some(_)) => Err(Refusal::SubscriptionExpired),
        (None, None) => Err(Refusal::NotFound("subscription".into())),
    }
}

/// Payment for the next period is confirmed. Before the period end the
/// next period is paid and starts at the boundary; while past due (within
/// `renewal_grace`) it starts now, its boundaries still counted from the
/// anchor. A pass cannot be renewed. Renewing a cancelled subscription
/// resumes it (the payment is for it). The period is bought at the plan's
/// price now.
pub fn renew_subscription(tx: &mut Tx<'_>, last: Option<&Subscription>) -> Result<Subscription, Refusal> {
    let mut sub = live(tx, last)?;
    if sub.kind == SubscriptionKind::Pass30d {
        return Err(Refusal::SubscriptionExpired);
    }
    // A payment for a cancelled subscription resumes it.
    sub.cancel_at_period_end = false;
    let plan = tx.ctx.plans.get(&sub.plan_id).cloned();
    match sub.status {
        SubscriptionStatus::Active => {
            if sub.renewed() {
                return Err(Refusal::Conflict("the next period is already paid".into()));
            }
            sub.paid_through = sub.period + 1;
            sub.renewal_price_usd = plan.as_ref().map(|p| p.price_usd);
        }
        _ => {
            let now = tx.now;
            let tz = tx.ctx.billing.timezone.clone();
            let mut n = sub.period + 1;
            let (mut start, mut end) =
                sub.period_bounds(n, &tz).ok_or_else(|| Refusal::InvalidRequest("period out of range".into()))?;
            // A grace longer than a period skips the periods wholly past.
            while end <= now {
                n += 1;
                (start, end) =
                    sub.period_bounds(n, &tz).ok_or_else(|| Refusal::InvalidRequest("period out of range".into()))?;
            }
            sub.status = SubscriptionStatus::Active;
            sub.grace_ends_at = None;
            sub.period = n;
            sub.paid_through = n;
            sub.period_start = start;
            sub.period_end = end;
            set_price(&mut sub, plan.as_ref(), plan.as_ref().map(|p| p.price_usd));
            start_period(tx, &mut sub, plan.as_ref(), now);
        }
    }
    tx.state.subscription = Some(sub.clone());
    Ok(sub)
}

/// Stops renewal: an active subscription runs to its period end (or the
/// end of a period already paid for); a past-due one ends now.
pub fn cancel_subscription(tx: &mut Tx<'_>, last: Option<&Subscription>) -> Result<Subscription, Refusal> {
    let mut sub = live(tx, last)?;
    sub.cancel_at_period_end = true;
    tx.state.subscription = Some(sub.clone());
    if sub.status == SubscriptionStatus::PastDue {
        end_subscription(tx, SubscriptionStatus::Expired, tx.now);
        return Ok(tx.changes.subscriptions.last().cloned().unwrap_or(sub));
    }
    Ok(sub)
}

/// A refund of the payment for the period paid in advance, before that
/// period starts: the period is no longer paid (`paid_through` back to the
/// current period), so it does not start at the boundary. Refused when no
/// period is paid in advance.
pub fn unpay_renewal(tx: &mut Tx<'_>) -> Result<Subscription, Refusal> {
    let Some(mut sub) = tx.state.subscription.clone().filter(|s| s.is_active() && s.renewed()) else {
        return Err(Refusal::Conflict("no period is paid in advance".into()));
    };
    sub.paid_through = sub.period;
    sub.renewal_price_usd = None;
    tx.state.subscription = Some(sub.clone());
    Ok(sub)
}
