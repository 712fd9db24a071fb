//! The checks before a request (`semantics.md` §6, checks 3–8) and the
//! plan budget (§7). They read the account's hot state only: the windows,
//! the subscription and the open holds, never the usage history.

use jiff::Timestamp;

use super::{Context, Refusal, ensure_covered};
use crate::account::AccountState;
use crate::limits::LimitHit;
use crate::plan::{Plan, PlanBook};
use crate::pricing::ModelPrice;
use crate::units::{Credits, Usd};

/// What admission decided besides "yes".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The plan budget is exhausted: the plan pools are not used.
    pub frozen: bool,
    /// The wallet's unheld balance is positive: checks 3–6 were skipped.
    pub pay2go: bool,
}

/// The plan whose rules apply: the active subscription's, else `free`
/// (a past-due subscription gives nothing until it is renewed).
pub fn effective_plan<'p>(state: &AccountState, plans: &'p PlanBook) -> &'p Plan {
    match &state.subscription {
        Some(s) if s.is_active() => plans.get(&s.plan_id).unwrap_or(plans.free()),
        _ => plans.free(),
    }
}

/// The plan budget of an active subscriber: `(budget, used)`, where `used`
/// counts the period's settled cost plus the estimated cost of open holds
/// (except `except_hold`). `None`: no budget applies.
pub fn budget(state: &AccountState, plans: &PlanBook, except_hold: Option<&str>) -> Option<(Usd, Usd)> {
    let sub = state.subscription.as_ref().filter(|s| s.is_active())?;
    // The budget the period was bought with; a subscription stored before
    // creditd remembered it uses the plan's.
    let budget = match sub.price_usd {
        Some(_) => sub.budget_usd?,
        None => plans.get(&sub.plan_id)?.budget()?,
    };
    let held: Usd = state
        .holds
        .iter()
        .filter(|h| except_hold != Some(h.id.as_str()))
        .map(|h| h.estimate_cost_usd)
        .fold(Usd::ZERO, |a, b| a.checked_add(b).unwrap_or(a));
    Some((budget, sub.budget_used_usd.checked_add(held).unwrap_or(sub.budget_used_usd)))
}

/// Has the plan budget been reached (`semantics.md` §7)?
pub(super) fn budget_frozen(state: &AccountState, plans: &PlanBook, except_hold: Option<&str>) -> bool {
    budget(state, plans, except_hold).is_some_and(|(budget, used)| used >= budget)
}

/// Checks 3–8 of `semantics.md` §6 for a request of `model_id` that would
/// take `estimate` credits, in order; the first that fails refuses.
/// Existence, suspension and the price book (checks 1–2) are the caller's.
pub fn admit(
    state: &AccountState,
    now: Timestamp,
    ctx: Context<'_>,
    model_id: &str,
    model: &ModelPrice,
    request_type: &str,
    estimate: Credits,
) -> Result<Admission, Refusal> {
    let plan = effective_plan(state, ctx.plans);
    // A positive Pay2Go wallet "bypasses tier rate limits and unlocks every model".
    let pay2go = state.wallet.unheld().is_positive();
    if !pay2go {
        // 3. Model access.
        if !plan.model_access.allows(model_id, model.free) {
            return Err(Refusal::ModelNotAllowed { model: model_id.to_string(), plan: plan.id.clone() });
        }
        // 4–6. Rate, daily and weekly caps. Requests of a free type do not
        // count, so no limit refuses them either.
        let free_type = ctx.policy.free_request_types.iter().any(|t| t == request_type);
        if !free_type {
            let limits = &plan.limits;
            state.windows.check(limits, now, &ctx.billing.timezone).map_err(|hit| match hit {
                LimitHit::RateLimited { retry_after_seconds } => {
                    Refusal::RateLimited { limit: limits.rate_per_minute.unwrap_or_default(), retry_after_seconds }
                }
                LimitHit::DailyCapReached { retry_after_seconds } => {
                    Refusal::DailyCapReached { limit: limits.daily_requests.unwrap_or_default(), retry_after_seconds }
                }
                LimitHit::WeeklyCapReached { retry_after_seconds } => {
                    Refusal::WeeklyCapReached { limit: limits.weekly_requests.unwrap_or_default(), retry_after_seconds }
                }
            })?;
        }
    }
    // 7. Plan budget: once reached, only what is outside the plan pools pays.
    let spent = budget(state, ctx.plans, None);
    let frozen = spent.is_some_and(|(budget, used)| used >= budget);
    if let Some((budget_usd, used_usd)) = spent.filter(|_| frozen)
        && estimate.is_positive()
        && state.available_outside_plan(now) < estimate
    {
        return Err(Refusal::PlanBudgetExhausted { budget_usd, used_usd });
    }
    // 8. Balance.
    ensure_covered(state.available(now), estimate)?;
    Ok(Admission { frozen, pay2go })
}
