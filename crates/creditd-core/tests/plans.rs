//! Plans, subscriptions, the checks of §6, the plan budget, campaigns and
//! refunds, through the engine alone. Every step is written into a model
//! store and the §10 invariants are checked after it.

mod support;

use support::*;

#[test]
fn the_checks_refuse_in_the_order_of_section_6() {
    let tight = limits(Some(1), Some(2), Some(3));
    let mut a = Acct::new("2027-01-04T10:00:00Z", Billing::default(), vec![free_plan(tight)]);
    a.grant(1000);
    // 3. Model access comes first, even with the minute full.
    assert_eq!(a.authorize_as("free-model", "chat", 1).unwrap().hold.estimate, cr(1));
    assert_eq!(
        a.authorize(1).unwrap_err(),
        Refusal::ModelNotAllowed { model: "paid-model".into(), plan: "free".into() }
    );
    // 4. The minute is full: the slot frees 60 s after the first request.
    a.later(20);
    assert_eq!(
        a.authorize_as("free-model", "chat", 1).unwrap_err(),
        Refusal::RateLimited { limit: 1, retry_after_seconds: 40 }
    );
    // A refused request counts for nothing: the next minute takes one more.
    a.later(40);
    a.authorize_as("free-model", "chat", 1).unwrap();
    assert_eq!(a.view().windows.day_count, 2);
    // 5. Two a day: both the minute and the day are full; the minute is
    // checked first, then, a minute later, the day.
    assert!(matches!(a.authorize_as("free-model", "chat", 1), Err(Refusal::RateLimited { .. })));
    a.later(60);
    // 10:02 UTC: 13 h 58 min to midnight.
    assert_eq!(
        a.authorize_as("free-model", "chat", 1).unwrap_err(),
        Refusal::DailyCapReached { limit: 2, retry_after_seconds: 13 * 3600 + 58 * 60 }
    );
    // Free request types are neither limited nor counted.
    a.authorize_as("free-model", "summarization", 1).unwrap();
    assert_eq!(a.view().windows.day_count, 2);
    // 6. Tuesday one more fits the week (three a week), then the week is full
    // until Monday 00:00.
    a.at("2027-01-05T09:00:00Z");
    a.authorize_as("free-model", "chat", 1).unwrap();
    a.later(3600);
    assert_eq!(
        a.authorize_as("free-model", "chat", 1).unwrap_err(),
        Refusal::WeeklyCapReached { limit: 3, retry_after_seconds: 5 * 86_400 + 14 * 3600 }
    );
    // 8. Balance is last: a new week, but not enough credits.
    a.at("2027-01-11T00:00:00Z");
    let available = a.view().available(a.now);
    assert!(
        matches!(a.authorize_as("free-model", "chat", 2000), Err(Refusal::InsufficientCredits { available: got, .. }) if got == available)
    );
}

#[test]
fn a_positive_wallet_bypasses_access_and_limits_but_still_counts() {
    let mut a = Acct::new("2027-01-04T10:00:00Z", Billing::default(), vec![free_plan(limits(Some(1), None, None))]);
    a.topup(5);
    // Pay2Go: a model the free plan does not allow, twice in a minute.
    a.authorize(1).unwrap();
    a.authorize(1).unwrap();
    assert_eq!(a.view().windows.day_count, 2, "bypassed requests still count");
    // Once the wallet's unheld balance is zero the plan's rules apply again.
    a.authorize(3).unwrap();
    assert_eq!(a.view().wallet.unheld(), Credits::ZERO);
    a.grant(100);
    assert!(matches!(a.authorize(1), Err(Refusal::ModelNotAllowed { .. })));
    assert!(matches!(a.authorize_as("free-model", "chat", 1), Err(Refusal::RateLimited { .. })));
}

#[test]
fn an_exhausted_plan_budget_freezes_the_plan_pools() {
    // Budget: 10 × 0.05 USD = 0.5 USD = 50 requests at 0.01 USD.
    let tiny = plan("tiny", "0.05", 100, RequestLimits::default(), ModelAccess::All);
    let mut a = Acct::new("2027-01-04T10:00:00Z", Billing::default(), vec![tiny]);
    a.subscribe("tiny", SubscriptionKind::Monthly).unwrap();
    for _ in 0..49 {
        a.usage(1).unwrap();
    }
    assert_eq!(a.view().subscription.unwrap().budget_used_usd, usd("0.49"));
    // An open hold's estimated cost counts: with it the budget is reached.
    let held = a.authorize(1).unwrap().hold;
    assert_eq!(
        held.parts[0].source,
        creditd_core::Source::Grant { grant_id: held.parts[0].source_grant(), kind: GrantKind::PlanMain }
    );
    // Nothing but the (frozen) pools could pay: refused as plan_budget_exhausted.
    assert_eq!(
        a.authorize(1).unwrap_err(),
        Refusal::PlanBudgetExhausted { budget_usd: usd("0.5"), used_usd: usd("0.5") }
    );
    // The hold admitted before the budget was reached still settles on the pool.
    let settled = a.settle(&held.request_id, 1).record;
    assert!(matches!(&settled.charged_from[0].source, creditd_core::Source::Grant { kind: GrantKind::PlanMain, .. }));
    assert_eq!(a.view().subscription.unwrap().budget_used_usd, usd("0.5"));
    // Other credits pay while the pools are frozen.
    let promo = a.grant(3);
    let other = a.authorize(2).unwrap().hold;
    assert_eq!(other.parts.len(), 1);
    assert_eq!(other.parts[0].amount, cr(2));
    assert_eq!(
        other.parts[0].source,
        creditd_core::Source::Grant { grant_id: promo.id.clone(), kind: GrantKind::Promo }
    );
    a.settle(&other.request_id, 2);
    // A charge that must happen takes the frozen pools before making debt.
    let forced = a.usage_as("paid-model", 5, false).unwrap().record;
    assert_eq!(forced.debt_incurred, Credits::ZERO);
    assert_eq!(forced.charged_from.iter().map(|p| p.amount).sum::<Credits>(), cr(5));
    assert!(matches!(&forced.charged_from[0].source, creditd_core::Source::Grant { kind: GrantKind::Promo, .. }));
    assert!(matches!(
        &forced.charged_from.last().unwrap().source,
        creditd_core::Source::Grant { kind: GrantKind::PlanMain, .. }
    ));
    // A new period resets the budget (after a renewal).
    a.renew().unwrap();
    a.at("2027-02-04T10:00:00Z");
    assert_eq!(a.view().subscription.unwrap().budget_used_usd, Usd::ZERO);
    let fresh = a.authorize(1).unwrap().hold;
    assert!(matches!(&fresh.parts[0].source, creditd_core::Source::Grant { kind: GrantKind::PlanMain, .. }));
}

trait GrantOf {
    fn source_grant(&self) -> String;
}

impl GrantOf for creditd_core::Portion {
    fn source_grant(&self) -> String {
        match &self.source {
            creditd_core::Source::Grant { grant_id, .. } => grant_id.clone(),
            creditd_core::Source::Wallet => String::new(),
        }
    }
}

#[test]
fn monthly_periods_run_from_the_anchor_jan_31_feb_29_mar_31() {
    let pro = plan("pro", "50", 5000, RequestLimits::default(), ModelAccess::All);
    let mut a = Acct::new("2028-01-31T10:00:00Z", Billing::default(), vec![pro]);
    let started = a.subscribe("pro", SubscriptionKind::Monthly).unwrap().subscription;
    assert_eq!((started.period_start, started.period_end), (ts("2028-01-31T10:00:00Z"), ts("2028-02-29T10:00:00Z")));
    let main = a.live_grants(GrantKind::PlanMain);
    let backup = a.live_grants(GrantKind::PlanBackup);
    assert_eq!((main.len(), backup.len()), (1, 1));
    assert_eq!((main[0].amount, backup[0].amount), (cr(6000), cr(15000)));
    assert_eq!(main[0].source, "plan:pro");
    assert_eq!(main[0].expires_at, Some(started.period_end));
    a.usage(1000).unwrap();
    // Paid early: the next period starts at the boundary, with full pools.
    a.at("2028-02-20T00:00:00Z");
    assert!(a.renew().unwrap().renewed());
    assert!(matches!(a.renew(), Err(Refusal::Conflict(_))), "the next period is paid already");
    a.at("2028-03-01T00:00:00Z");
    let view = a.view();
    let sub = view.subscription.clone().unwrap();
    assert_eq!(
        (sub.period, sub.period_start, sub.period_end),
        (1, ts("2028-02-29T10:00:00Z"), ts("2028-03-31T10:00:00Z"))
    );
    let main = a.live_grants(GrantKind::PlanMain);
    assert_eq!(main.len(), 1);
    assert_eq!(
        (main[0].remaining, main[0].starts_at, main[0].created_at),
        (cr(6000), sub.period_start, sub.period_start)
    );
    // The view shows the grants the writer will write, with the same ids.
    a.sync();
    assert_eq!(
        a.state.grants.iter().find(|g| g.kind == GrantKind::PlanMain).map(|g| g.id.clone()),
        Some(main[0].id.clone())
    );
    // The old pool's rest expired at the boundary, as of the boundary.
    let expired: Vec<&LedgerEntry> = a.entries.iter().filter(|e| e.kind == EntryKind::Expire).collect();
    assert_eq!(expired.len(), 2);
    assert!(expired.iter().all(|e| e.at == ts("2028-02-29T10:00:00Z")));
    assert_eq!(expired.iter().map(|e| e.amount).sum::<Credits>(), -cr(5000 + 15000));
    // Renewed again: Mar 31, not Mar 29 (never chained from Feb 29).
    a.renew().unwrap();
    a.at("2028-04-01T00:00:00Z");
    let sub = a.view().subscription.unwrap();
    assert_eq!(
        (sub.period, sub.period_start, sub.period_end),
        (2, ts("2028-03-31T10:00:00Z"), ts("2028-04-30T10:00:00Z"))
    );
}

#[test]
fn a_late_renewal_within_the_grace_starts_the_next_period_at_once() {
    let pro = plan("pro", "50", 5000, RequestLimits::default(), ModelAccess::All);
    let free = free_plan(limits(Some(1), None, None));
    let mut a = Acct::new("2027-01-31T10:00:00Z", Billing::default(), vec![pro, free]);
    a.subscribe("pro", SubscriptionKind::Monthly).unwrap();
    // The period ends unpaid: past due, the pools expired, the account on free.
    a.at("2027-02-28T22:00:00Z");
    let view = a.view();
    let sub = view.subscription.clone().unwrap();
    assert_eq!(sub.status, SubscriptionStatus::PastDue);
    assert_eq!(sub.grace_ends_at, Some(ts("2027-03-01T10:00:00Z")));
    assert!(a.live_grants(GrantKind::PlanMain).is_empty());
    assert_eq!(engine::effective_plan(&view, &a.plans).id, "free");
    a.grant(10);
    assert!(matches!(a.authorize(1), Err(Refusal::ModelNotAllowed { .. })));
    // Renewed within the grace: period 1 starts now, its end from the anchor.
    let renewed = a.renew().unwrap();
    assert_eq!(renewed.status, SubscriptionStatus::Active);
    assert_eq!(
        (renewed.period, renewed.period_start, renewed.period_end),
        (1, ts("2027-02-28T10:00:00Z"), ts("2027-03-31T10:00:00Z"))
    );
    let main = a.live_grants(GrantKind::PlanMain);
    assert_eq!((main[0].amount, main[0].starts_at), (cr(6000), ts("2027-02-28T22:00:00Z")));
    a.authorize(1).unwrap();
    // Not renewed this time, and too late: expired at the end of the grace.
    a.at("2027-04-02T00:00:00Z");
    assert_eq!(a.renew().unwrap_err(), Refusal::SubscriptionExpired);
    assert!(a.view().subscription.is_none());
    a.sync();
    let last = a.last_subscription().unwrap();
    assert_eq!((last.status, last.ended_at), (SubscriptionStatus::Expired, Some(ts("2027-04-01T10:00:00Z"))));
}

#[test]
fn cancelled_subscriptions_and_passes_expire_back_to_free() {
    let starter = plan("starter", "10", 1000, limits(Some(20), None, None), ModelAccess::All);
    let free = free_plan(limits(Some(1), None, None));
    let mut a = Acct::new("2027-05-10T12:00:00Z", Billing::default(), vec![starter, free]);
    let pass = a.subscribe("starter", SubscriptionKind::Pass30d).unwrap().subscription;
    assert_eq!(pass.period_end, ts("2027-06-09T12:00:00Z"));
    assert_eq!(a.renew().unwrap_err(), Refusal::SubscriptionExpired, "a pass cannot be renewed");
    a.at("2027-06-09T12:00:00Z");
    assert!(a.view().subscription.is_none(), "a pass ends at once, without grace");
    assert_eq!(engine::effective_plan(&a.view(), &a.plans).id, "free");

    let sub = a.subscribe("starter", SubscriptionKind::Monthly).unwrap().subscription;
    let cancelled = a.cancel().unwrap();
    assert!(cancelled.cancel_at_period_end);
    assert_eq!(a.cancel().unwrap(), cancelled, "cancelling twice answers the same");
    // (A renewal now would resume it: `money.rs`.) Still active until the period end.
    a.at("2027-07-09T11:59:59Z");
    assert_eq!(engine::effective_plan(&a.view(), &a.plans).id, "starter");
    a.at("2027-07-09T12:00:00Z");
    a.sync();
    assert!(a.state.subscription.is_none());
    assert_eq!(a.subscriptions[&sub.id].status, SubscriptionStatus::Expired);
    assert_eq!(a.subscriptions[&sub.id].ended_at, Some(sub.period_end));
    assert!(a.live_grants(GrantKind::PlanMain).is_empty());
}

#[test]
fn switching_prorates_into_the_wallet_or_carries_over() {
    let p10 = plan("p10", "10", 1000, RequestLimits::default(), ModelAccess::All);
    let p50 = plan("p50", "50", 5000, RequestLimits::default(), ModelAccess::All);
    let mut a = Acct::new("2026-03-01T00:00:00Z", Billing::default(), vec![p10.clone(), p50.clone()]);
    let old = a.subscribe("p10", SubscriptionKind::Monthly).unwrap().subscription;
    a.usage(300).unwrap();
    a.at("2026-03-08T00:00:00Z");
    // Credits on hold count as not used.
    let hold = a.authorize(10).unwrap().hold;
    let change = a.subscribe("p50", SubscriptionKind::Monthly).unwrap();
    let p = change.proration.unwrap();
    assert_eq!((p.time_used.to_string(), p.usage_used.to_string()), ("0.225806".into(), "0.1875".into()));
    assert_eq!((p.credit_usd, p.credited), (usd("7.74"), cr(774)));
    assert_eq!(change.previous.unwrap().status, SubscriptionStatus::Switched);
    assert_eq!(a.subscriptions[&old.id].ended_at, Some(a.now));
    assert_eq!(a.state.wallet.balance, cr(774));
    let credit = a.entries.iter().find(|e| e.kind == EntryKind::ProrationCredit).unwrap();
    assert_eq!((credit.amount, &credit.reference), (cr(774), &Reference::Subscription(old.id.clone())));
    // The old pools are gone (the hold lost its part on them), the new ones full.
    assert_eq!(a.live_grants(GrantKind::PlanMain).iter().map(|g| g.amount).collect::<Vec<_>>(), [cr(6000)]);
    assert!(a.view().holds.iter().find(|h| h.id == hold.id).unwrap().parts.iter().all(|p| p.amount.is_zero()));
    assert_eq!(
        a.subscribe("p50", SubscriptionKind::Monthly).unwrap_err(),
        Refusal::Conflict("the account is already subscribed to \"p50\"; renew it instead".into())
    );

    // carry_over: no wallet credit; the main pool's unused credits move.
    let billing = Billing { on_switch: OnSwitch::CarryOver, ..Billing::default() };
    let mut b = Acct::new("2026-03-01T00:00:00Z", billing, vec![p10, p50]);
    b.subscribe("p10", SubscriptionKind::Monthly).unwrap();
    b.usage(300).unwrap();
    b.at("2026-03-08T00:00:00Z");
    let change = b.subscribe("p50", SubscriptionKind::Monthly).unwrap();
    let p = change.proration.unwrap();
    assert_eq!((p.credit_usd, p.credited, p.carried_over), (Usd::ZERO, Credits::ZERO, cr(900)));
    assert_eq!(b.state.wallet.balance, Credits::ZERO);
    let carried: Vec<Grant> =
        b.live_grants(GrantKind::PlanMain).into_iter().filter(|g| g.source == "carry_over").collect();
    assert_eq!(carried.len(), 1);
    assert_eq!((carried[0].amount, carried[0].expires_at), (cr(900), Some(change.subscription.period_end)));
}

fn weekly_gift(eligible: Eligible) -> RecurringGift {
    RecurringGift { amount: cr(10), every: Cadence::Week, expires_after: Some(7.days().fieldwise()), eligible }
}

#[test]
fn weekly_gifts_come_once_per_week_across_a_dst_change() {
    let ny = TimeZone::get("America/New_York").unwrap();
    let billing = Billing {
        timezone: ny,
        campaigns: Campaigns {
            signup_bonus: Some(SignupBonus { amount: cr(50), expires_after: Some(30.days().fieldwise()) }),
            recurring: vec![weekly_gift(Eligible::All)],
        },
        ..Billing::default()
    };
    // Wednesday 2027-03-03 in New York: the first gift is next Monday's.
    let mut a = Acct::new("2027-03-03T15:00:00Z", billing, vec![]);
    let bonus: Vec<Grant> = a.state.grants.clone();
    assert_eq!(bonus.len(), 1);
    assert_eq!((bonus[0].source.as_str(), bonus[0].amount), ("signup_bonus", cr(50)));
    assert_eq!(bonus[0].expires_at, Some(ts("2027-04-02T14:00:00Z")), "30 calendar days: 10:00 EST to 10:00 EDT");
    let gifts = |state: &AccountState| -> Vec<(Timestamp, Option<Timestamp>, String)> {
        let mut g: Vec<_> = state
            .grants
            .iter()
            .filter(|g| g.source == "weekly_gift")
            .map(|g| (g.starts_at, g.expires_at, g.id.clone()))
            .collect();
        g.sort();
        g
    };
    a.at("2027-03-08T04:59:59Z");
    assert!(gifts(&a.view()).is_empty(), "Sunday 23:59:59 in New York");
    a.at("2027-03-08T05:00:00Z");
    let first = gifts(&a.view());
    assert_eq!(first.len(), 1, "visible from Monday 00:00 EST on, before anything is written");
    assert_eq!((first[0].0, first[0].1), (ts("2027-03-08T05:00:00Z"), Some(ts("2027-03-15T04:00:00Z"))));
    a.sync();
    assert_eq!(gifts(&a.state), first, "written with the id the read showed");
    // Across the change to EDT: the next week starts at 04:00 UTC.
    a.at("2027-03-15T03:59:59Z");
    a.sync();
    assert_eq!(gifts(&a.view()).len(), 1);
    a.at("2027-03-15T04:00:00Z");
    let second = gifts(&a.view());
    assert_eq!(second.len(), 1, "last week's gift expired as this one came");
    assert_eq!(second[0].0, ts("2027-03-15T04:00:00Z"));
    a.sync();
    a.sync();
    a.later(3600);
    a.sync();
    assert_eq!(a.grants.values().filter(|g| g.source == "weekly_gift").count(), 2, "never twice for one week");
    // Untouched for three weeks: each missed week is made once, in order.
    a.at("2027-04-06T12:00:00Z");
    a.sync();
    let starts: Vec<Timestamp> = {
        let mut s: Vec<Timestamp> =
            a.grants.values().filter(|g| g.source == "weekly_gift").map(|g| g.starts_at).collect();
        s.sort();
        s
    };
    assert_eq!(
        starts,
        [
            "2027-03-08T05:00:00Z",
            "2027-03-15T04:00:00Z",
            "2027-03-22T04:00:00Z",
            "2027-03-29T04:00:00Z",
            "2027-04-05T04:00:00Z"
        ]
        .map(ts)
    );
    assert_eq!(gifts(&a.state).len(), 1, "only this week's is live");
}

#[test]
fn gifts_go_to_eligible_accounts_only() {
    let monthly = RecurringGift { amount: cr(5), every: Cadence::Month, expires_after: None, eligible: Eligible::Paid };
    let billing = Billing {
        campaigns: Campaigns { signup_bonus: None, recurring: vec![monthly, weekly_gift(Eligible::Free)] },
        ..Billing::default()
    };
    let pro = plan("pro", "50", 5000, RequestLimits::default(), ModelAccess::All);
    let mut a = Acct::new("2027-01-20T00:00:00Z", billing, vec![pro]);
    a.subscribe("pro", SubscriptionKind::Monthly).unwrap();
    // Feb 1: paid, so the monthly gift; Monday Jan 25 and Feb 1: not free, no weekly gift.
    a.at("2027-02-02T00:00:00Z");
    let v = a.view();
    assert_eq!(v.grants.iter().filter(|g| g.source == "monthly_gift").count(), 1);
    assert_eq!(v.grants.iter().filter(|g| g.source == "weekly_gift").count(), 0);
    // The subscription lapses on Feb 21 (past due counts as free): the
    // Monday after the grace gets the weekly gift.
    a.at("2027-02-23T00:00:00Z");
    let v = a.view();
    assert!(v.subscription.is_none());
    assert_eq!(
        v.grants.iter().filter(|g| g.source == "weekly_gift").map(|g| g.starts_at).collect::<Vec<_>>(),
        [ts("2027-02-22T00:00:00Z")]
    );
}

#[test]
fn a_refund_returns_credits_to_their_grants_once() {
    let mut a = Acct::new("2027-01-04T10:00:00Z", Billing::default(), vec![]);
    let short = NewGrant {
        kind: GrantKind::Promo,
        source: "short".into(),
        reason: None,
        amount: cr(3),
        priority: Some(0),
        starts_at: None,
        expires_at: Some(ts("2027-01-05T00:00:00Z")),
        reference: Reference::None,
    };
    let short = a.op(|tx| engine::grant(tx, short)).unwrap();
    let long = a.grant(4);
    a.topup(10);
    // 10 credits: 3 from the short grant, 4 from the long one (spent out), 3 from the wallet.
    let record = a.usage(10).unwrap().record;
    assert_eq!(record.charged_from.iter().map(|p| p.amount).collect::<Vec<_>>(), [cr(3), cr(4), cr(3)]);
    assert!(a.state.grant(&long.id).is_none(), "spent grants leave the hot state");
    a.at("2027-01-06T00:00:00Z");
    let stored: Vec<Grant> = [&short.id, &long.id].iter().map(|id| a.grants[*id].clone()).collect();
    let refunded = a.op(|tx| engine::refund_usage(tx, &record, &stored, Some("disputed".into()))).unwrap();
    assert!(refunded.refunded);
    // The long grant is spendable again; the expired one's part went to the wallet.
    assert_eq!(a.state.grant(&long.id).map(|g| g.remaining), Some(cr(4)));
    assert_eq!(a.state.wallet.balance, cr(7 + 3 + 3));
    let refunds: Vec<&LedgerEntry> = a.entries.iter().filter(|e| e.kind == EntryKind::Refund).collect();
    assert_eq!(refunds.len(), 3);
    assert!(refunds.iter().all(|e| e.reference == Reference::Request(record.request_id.clone())));
    assert!(refunds.iter().all(|e| e.reason.as_deref() == Some("disputed")));
    let twice = a.op(|tx| engine::refund_usage(tx, &refunded, &stored, None));
    assert!(matches!(twice, Err(Refusal::Conflict(_))));
}

#[test]
fn the_invariants_catch_a_refund_that_does_not_add_up() {
    let mut a = Acct::new("2027-01-04T10:00:00Z", Billing::default(), vec![]);
    a.topup(10);
    a.usage(4).unwrap();
    let mut usage = a.usage.clone();
    usage[0].refunded = true;
    let grants: Vec<Grant> = a.grants.values().cloned().collect();
    let breaches = check_account(AccountRecords {
        account_id: "acct",
        grants: &grants,
        wallet: a.state.wallet,
        holds: &[],
        entries: &a.entries,
        usage: &usage,
    });
    assert_eq!(breaches.iter().map(|b| b.invariant).collect::<Vec<_>>(), [6]);
}
