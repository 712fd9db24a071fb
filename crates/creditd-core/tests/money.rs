//! Regressions of issue #12 ("money correctness"), each named after the
//! defect it pins, through the engine alone. Every step is written into a
//! model store and the §10 invariants are checked after it (`support`).

mod support;

use support::*;

use creditd_core::pricing::{self};
use creditd_core::units::{MAX_BALANCE, MAX_GRANT};

fn promo_purchased_wallet() -> Acct {
    let mut a = Acct::new("2027-03-01T00:00:00Z", Billing::default(), vec![]);
    a.grant(50);
    let pack = NewGrant {
        kind: GrantKind::Purchased,
        source: "pack".into(),
        reason: None,
        amount: cr(30),
        priority: None,
        starts_at: None,
        expires_at: None,
        reference: Reference::None,
    };
    a.op(|tx| engine::grant(tx, pack)).unwrap();
    a.topup(20);
    a
}

/// Item 10: every entry of a charge split across sources says the balance
/// after itself, not after the whole charge.
#[test]
fn balance_after_is_wrong_on_a_charge_split_across_sources() {
    let mut a = promo_purchased_wallet();
    let r = a.usage(90).unwrap().record;
    let charges: Vec<(Credits, Credits)> = a
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Charge && e.reference == Reference::Request(r.request_id.clone()))
        .map(|e| (e.amount, e.balance_after))
        .collect();
    assert_eq!(charges, [(cr(-50), cr(50)), (cr(-30), cr(20)), (cr(-10), cr(10))]);
}

/// Item 8: a hold takes the whole wallet, an unenforced usage and then the
/// settle both charge it. Only the debt that exists at the end is debt.
#[test]
fn debt_incurred_counts_debt_twice() {
    let mut a = Acct::new("2027-03-01T00:00:00Z", Billing::default(), vec![]);
    a.topup(10);
    let hold = a.authorize(10).unwrap().hold;
    let usage = a.usage_as("paid-model", 5, false).unwrap().record;
    // The wallet went from 10 to 5: no debt yet (the hold reserves more
    // than it has, which is not debt).
    assert_eq!(usage.debt_incurred, Credits::ZERO);
    let settled = a.settle(&hold.request_id, 10).record;
    assert_eq!(a.state.wallet.balance, cr(-5));
    assert_eq!(settled.debt_incurred, cr(5));
    assert_eq!(usage.debt_incurred + settled.debt_incurred, a.state.wallet.debt());
}

/// Item 6: refunding usage charged to a grant voided since returns nothing
/// spendable: the credits are returned to the grant and voided again.
#[test]
fn refunding_usage_of_a_voided_grant_pays_the_wallet() {
    let mut a = Acct::new("2027-03-01T00:00:00Z", Billing::default(), vec![]);
    let promo = a.grant(100);
    let r = a.usage(40).unwrap().record;
    let g = a.state.grant(&promo.id).cloned().unwrap();
    a.op(|tx| engine::void(tx, g, None)).unwrap();
    let stored: Vec<Grant> = a.grants.values().cloned().collect();
    a.op(|tx| engine::refund_usage(tx, &r, &stored, None)).unwrap();
    assert_eq!(a.state.wallet.balance, Credits::ZERO, "the wallet gets nothing");
    assert_eq!(a.view().available(a.now), Credits::ZERO);
    let last: Vec<(EntryKind, Credits)> = a.entries.iter().rev().take(2).map(|e| (e.kind, e.amount)).collect();
    assert_eq!(last, [(EntryKind::Void, cr(-40)), (EntryKind::Refund, cr(40))]);
    // An expired grant still sends its credits to the wallet (§9).
    let mut a = Acct::new("2027-03-01T00:00:00Z", Billing::default(), vec![]);
    let short = NewGrant {
        kind: GrantKind::Promo,
        source: "t".into(),
        reason: None,
        amount: cr(100),
        priority: None,
        starts_at: None,
        expires_at: Some(ts("2027-03-02T00:00:00Z")),
        reference: Reference::None,
    };
    a.op(|tx| engine::grant(tx, short)).unwrap();
    let r = a.usage(40).unwrap().record;
    a.at("2027-03-03T00:00:00Z");
    let stored: Vec<Grant> = a.grants.values().cloned().collect();
    a.op(|tx| engine::refund_usage(tx, &r, &stored, None)).unwrap();
    assert_eq!(a.state.wallet.balance, cr(40));
}

/// A valid model at the top of the bounds: 10^9 credits per million
/// output tokens, so 10^9 output tokens cost 10^12 credits.
fn extreme_model() -> ModelPrice {
    ModelPrice {
        credits_per_mtok: TokenRates {
            input: Some(Credits::ZERO),
            cache_read: Some(Credits::ZERO),
            cache_write: Some(Credits::ZERO),
            output: Some(Credits::whole(1_000_000_000)),
        },
        ..ModelPrice::default()
    }
}

/// Item 7: unenforced usage at the bounds once wrapped the wallet from
/// debt to a huge positive balance. Now the wallet stays within
/// `±MAX_BALANCE` and a charge that would leave it is refused.
#[test]
fn wallet_i64_overflow_wraps() {
    let mut a = Acct::new("2027-03-01T00:00:00Z", Billing::default(), vec![]);
    a.models.insert("extreme".into(), extreme_model());
    a.models["extreme"].validate().unwrap();
    let mut refused = 0;
    for _ in 0..20 {
        match a.usage_as("extreme", 1_000_000_000, false) {
            Ok(r) => assert_eq!(r.record.credits, Credits::whole(1_000_000_000_000)),
            Err(Refusal::InvalidRequest(_)) => refused += 1,
            Err(other) => panic!("{other:?}"),
        }
        let wallet = a.state.wallet.balance;
        assert!(wallet <= Credits::ZERO && wallet >= -MAX_BALANCE, "{wallet}");
    }
    assert_eq!(refused, 19);
    // Top-ups cannot push the wallet past the bound either.
    let mut a = Acct::new("2027-03-01T00:00:00Z", Billing::default(), vec![]);
    let mut ok = 0;
    for _ in 0..1001 {
        if a.op(|tx| engine::credit_wallet(tx, EntryKind::Topup, MAX_GRANT, Reference::None, None)).is_ok() {
            ok += 1;
        }
    }
    assert_eq!((ok, a.state.wallet.balance), (1000, MAX_BALANCE));
}

/// Item 7: an in-bounds request whose exact numerator exceeds `i128` (the
/// largest flat rates with a tiny multiplier) still prices.
#[test]
fn in_bounds_usage_whose_i128_intermediate_overflows_still_prices() {
    let model = ModelPrice {
        credits: FlatRates { image: Some(Credits::whole(1_000_000_000)), ..FlatRates::default() },
        multiplier: Factor::from_units(1),
        ..ModelPrice::default()
    };
    model.validate().unwrap();
    let usage = Usage { images: 1_000_000_000, ..Usage::default() };
    let p = pricing::price(&model, &usage, "chat", RequestStatus::Success, &PricingPolicy::default()).unwrap();
    // 10^9 images × 10^9 credits × 10^-6.
    assert_eq!(p.credits, Credits::whole(1_000_000_000_000));
    // Rounded once, half up: 3 images of 1 µcr at 0.5× is 1.5 µcr → 2.
    let model = ModelPrice {
        credits: FlatRates { image: Some(Credits::from_units(1)), ..FlatRates::default() },
        multiplier: Factor::from_units(500_000),
        ..ModelPrice::default()
    };
    let usage = Usage { images: 3, ..Usage::default() };
    let p = pricing::price(&model, &usage, "chat", RequestStatus::Success, &PricingPolicy::default()).unwrap();
    assert_eq!(p.credits, Credits::from_units(2));
}

fn paid_plans() -> Vec<Plan> {
    let all = ModelAccess::All;
    let none = limits(None, None, None);
    vec![
        plan("starter", "10", 1000, none, all.clone()),
        plan("pro", "50", 5000, none, all.clone()),
        plan("ultra", "200", 20000, none, all),
    ]
}

/// Item 1: a period paid in advance and not started is credited in full at
/// a switch, beside the current period's proration.
#[test]
fn renewal_paid_in_advance_is_lost_on_plan_switch() {
    let mut a = Acct::new("2027-03-01T00:00:00Z", Billing::default(), paid_plans());
    a.subscribe("starter", SubscriptionKind::Monthly).unwrap();
    a.at("2027-03-30T00:00:00Z").renew().unwrap();
    a.at("2027-03-31T00:00:00Z");
    let p = a.subscribe("pro", SubscriptionKind::Monthly).unwrap().proration.unwrap();
    assert_eq!((p.credit_usd, p.credited), (usd("0.32"), cr(32)));
    assert_eq!((p.prepaid_usd, p.prepaid_credited), (usd("10"), cr(1000)));
    assert_eq!(a.state.wallet.balance, cr(1032));
    // Under carry_over the paid period is money all the same.
    let billing = Billing { on_switch: OnSwitch::CarryOver, ..Billing::default() };
    let mut a = Acct::new("2027-03-01T00:00:00Z", billing, paid_plans());
    a.subscribe("starter", SubscriptionKind::Monthly).unwrap();
    a.renew().unwrap();
    let p = a.subscribe("pro", SubscriptionKind::Monthly).unwrap().proration.unwrap();
    assert_eq!((p.credited, p.prepaid_credited), (Credits::ZERO, cr(1000)));
    assert_eq!(a.state.wallet.balance, cr(1000));
}

/// Item 4: the subscription remembers the price (and budget) it was bought
/// at; an operator's later price change does not reach it.
#[test]
fn proration_uses_the_plans_current_price() {
    let mut a = Acct::new("2027-03-01T00:00:00Z", Billing::default(), paid_plans());
    a.subscribe("starter", SubscriptionKind::Monthly).unwrap();
    let mut plans = paid_plans();
    plans[0].price_usd = usd("100");
    a.plans = PlanBook::new(plans);
    let (budget, _) = engine::budget(&a.view(), &a.plans, None).unwrap();
    assert_eq!(budget, usd("100"), "10 × the 10 USD paid");
    a.later(3600);
    let p = a.subscribe("ultra", SubscriptionKind::Monthly).unwrap().proration.unwrap();
    assert_eq!(p.credit_usd, usd("9"));
    // A renewal is bought at the price of its payment: 100 from then on.
    let mut a = Acct::new("2027-03-01T00:00:00Z", Billing::default(), paid_plans());
    a.subscribe("starter", SubscriptionKind::Monthly).unwrap();
    let mut plans = paid_plans();
    plans[0].price_usd = usd("100");
    a.plans = PlanBook::new(plans);
    a.renew().unwrap();
    a.at("2027-04-01T00:00:00Z").sync();
    let sub = a.state.subscription.clone().unwrap();
    assert_eq!((sub.period, sub.price_usd, sub.budget_usd), (1, Some(usd("100")), Some(usd("1000"))));
}

/// Item 5: a payment for the plan the account cancelled resumes it.
#[test]
fn cancel_then_pay_again_for_the_same_plan_drops_the_payment() {
    let mut a = Acct::new("2027-03-01T00:00:00Z", Billing::default(), paid_plans());
    a.subscribe("starter", SubscriptionKind::Monthly).unwrap();
    a.cancel().unwrap();
    let sub = a.renew().unwrap();
    assert!(!sub.cancel_at_period_end && sub.renewed());
    // Cancelled after the next period is paid: that period still runs (a
    // second payment for it is refused, nothing changes).
    a.cancel().unwrap();
    assert!(matches!(a.subscribe("starter", SubscriptionKind::Monthly), Err(Refusal::Conflict(_))));
    assert!(a.state.subscription.as_ref().unwrap().cancel_at_period_end);
    let mut a = Acct::new("2027-03-01T00:00:00Z", Billing::default(), paid_plans());
    a.subscribe("starter", SubscriptionKind::Monthly).unwrap();
    a.cancel().unwrap();
    let change = a.subscribe("starter", SubscriptionKind::Monthly).unwrap();
    assert!(!change.subscription.cancel_at_period_end && change.subscription.renewed());
    a.at("2027-04-01T00:00:00Z").sync();
    let sub = a.state.subscription.clone().unwrap();
    assert_eq!((sub.status, sub.period), (SubscriptionStatus::Active, 1));
}

/// Item 11: the first answer's `held_from` survives the expiry of a grant
/// the hold reserved on.
#[test]
fn authorize_replay_returns_a_different_body_after_the_held_grant_expired() {
    let mut a = Acct::new("2027-03-01T00:00:00Z", Billing::default(), vec![]);
    let short = NewGrant {
        kind: GrantKind::Promo,
        source: "t".into(),
        reason: None,
        amount: cr(100),
        priority: None,
        starts_at: None,
        expires_at: Some(ts("2027-03-01T00:01:00Z")),
        reference: Reference::None,
    };
    a.op(|tx| engine::grant(tx, short)).unwrap();
    let first = a.authorize(10).unwrap().hold;
    a.later(120).sync();
    let stored = a.holds[&first.request_id].clone();
    assert!(stored.parts.iter().all(|p| p.amount.is_zero()), "the expired grant took its share");
    assert_eq!(stored.held_from, first.held_from);
    assert_eq!(first.held_from.iter().map(|p| p.amount).sum::<Credits>(), cr(10));
}

/// Issue #19 item 6: the audit flags a hold still stored open more than a
/// minute past its expiry (a sweeper that stopped), and not before.
#[test]
fn the_audit_flags_a_hold_open_a_minute_past_its_expiry() {
    let mut a = Acct::new("2027-03-01T00:00:00Z", Billing::default(), vec![]);
    let pool = NewGrant {
        kind: GrantKind::Promo,
        source: "t".into(),
        reason: None,
        amount: cr(100),
        priority: None,
        starts_at: None,
        expires_at: None,
        reference: Reference::None,
    };
    a.op(|tx| engine::grant(tx, pool)).unwrap();
    let hold = a.authorize(10).unwrap().hold;
    let at = |secs| hold.expires_at + SignedDuration::from_secs(secs);
    let check = |secs| creditd_core::invariants::check_open_holds("a", std::slice::from_ref(&hold), at(secs));
    assert_eq!(check(-10), vec![]);
    assert_eq!(check(60), vec![]);
    let breaches = check(61);
    assert_eq!(breaches.iter().map(|b| b.invariant).collect::<Vec<_>>(), vec![12], "{breaches:?}");
}
