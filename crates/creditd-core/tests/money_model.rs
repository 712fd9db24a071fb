//! Model-based test of the money rules with subscriptions (issue #12).
//!
//! Random sequences of operations run through the engine (with this file
//! standing in for the store: it keeps every record the engine writes and
//! the payments, as the writer does) and through a plain reference model
//! written from `semantics.md` and `docs/money.md`, sharing no code with
//! the engine. Every answer (refusal or success, credits, debt, where a
//! charge came from, proration) and every balance (wallet, each grant,
//! available, the subscription) is compared after each step, and the §10
//! invariants plus creditd's own (8 to 11) are checked over the records.
//!
//! Operations: promo grants (some expiring), top-ups, voids, usage
//! (enforced or not, ordinary and at the extreme of the bounds), usage
//! refunds, subscribe (start, switch, resubscribe after cancel), renew
//! (early, late, in grace), cancel, full refunds of top-ups and plan
//! payments (started, unstarted, switched away), an operator's plan price
//! changes, and clock moves (small, and jumps onto and across period and
//! grace ends).
//!
//! CI mode: `CREDITD_MODEL_OPS` unset runs 5,000 operations (about 10 seconds
//! in a debug build). Long mode: `CREDITD_MODEL_OPS=1000000 cargo test
//! --release -p creditd-core --test money_model -- --nocapture`.
//! `CREDITD_MODEL_SEED` picks the first seed.

use std::collections::BTreeMap;

use creditd_core::account::{AccountState, Grant, GrantKind, RequestDetails, Source, UsageRecord};
use creditd_core::campaign::Billing;
use creditd_core::engine::{
    self, Context, NewGrant, Outcome, Paid, PaymentRefund, Prior, RefundShare, Refusal, StartInput, UsageInput,
};
use creditd_core::invariants::{
    AccountRecords, PaymentFacts, PaymentKind, PaymentRecords, RefundFacts, check_account, check_payments,
};
use creditd_core::ledger::{Changes, EntryKind, LedgerEntry, Reference};
use creditd_core::limits::RequestLimits;
use creditd_core::plan::{ModelAccess, Plan, PlanBook};
use creditd_core::pricing::{ModelPrice, PricingPolicy, RequestStatus, TokenRates, Usage};
use creditd_core::subscription::{Subscription, SubscriptionKind, SubscriptionStatus};
use creditd_core::units::{Credits, Factor, Usd};
use jiff::{SignedDuration, Timestamp, ToSpan};

// ---- a small deterministic random source (no dependency, reproducible) ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

// ---- the reference model: µcr in i128, plain loops ----

const MICRO: i128 = 1_000_000;
const MAX_BALANCE: i128 = 1_000_000_000_000 * MICRO;

#[derive(Clone, Debug)]
struct MGrant {
    id: String,
    kind: GrantKind,
    priority: u8,
    created: Timestamp,
    expires: Option<Timestamp>,
    amount: i128,
    remaining: i128,
    expired: i128,
    voided: bool,
}

#[derive(Clone, Debug, PartialEq)]
struct MSub {
    id: String,
    plan: usize,
    anchor: Timestamp,
    period: u32,
    start: Timestamp,
    end: Timestamp,
    paid_through: u32,
    price: i128,
    renewal_price: Option<i128>,
    cancel: bool,
    past_due: bool,
    grace_end: Option<Timestamp>,
}

/// (price in USD, monthly credits): main = monthly × 1.2, backup × 3.
const PLANS: [(&str, i128, i128); 3] = [("starter", 10, 1000), ("pro", 50, 5000), ("ultra", 200, 20000)];

fn month_start(anchor: Timestamp, n: u32) -> Timestamp {
    anchor.to_zoned(jiff::tz::TimeZone::UTC).checked_add(i64::from(n).months()).unwrap().timestamp()
}

#[derive(Default)]
struct Model {
    grants: Vec<MGrant>,
    wallet: i128,
    sub: Option<MSub>,
    /// The latest subscription ever (for renew's answer without a live one).
    had_sub: bool,
    /// What a switch put in the wallet for each payment (by its index), as
    /// the model computed it.
    prorated: BTreeMap<usize, i128>,
    /// The plans' current prices (the operator changes them).
    prices: [i128; 3],
}

impl Model {
    fn usable(&self, i: usize, now: Timestamp) -> bool {
        let g = &self.grants[i];
        !g.voided && g.expires.is_none_or(|e| e > now) && g.remaining > 0
    }
    fn order(&self, now: Timestamp) -> Vec<usize> {
        let mut o: Vec<usize> = (0..self.grants.len()).filter(|&i| self.usable(i, now)).collect();
        o.sort_by(|&a, &b| {
            let (x, y) = (&self.grants[a], &self.grants[b]);
            (x.priority, x.expires.is_none(), x.expires, x.created, &x.id).cmp(&(
                y.priority,
                y.expires.is_none(),
                y.expires,
                y.created,
                &y.id,
            ))
        });
        o
    }
    fn grants_available(&self, now: Timestamp) -> i128 {
        self.order(now).iter().map(|&i| self.grants[i].remaining).sum()
    }
    fn available(&self, now: Timestamp) -> i128 {
        self.grants_available(now) + self.wallet
    }
    fn repay(&mut self, now: Timestamp) {
        for i in self.order(now) {
            if self.wallet >= 0 {
                break;
            }
            let take = self.grants[i].remaining.min(-self.wallet);
            self.grants[i].remaining -= take;
            self.wallet += take;
        }
    }
    /// Takes in burn order, then the wallet; returns (grant id or None, amount).
    fn take(&mut self, amount: i128, now: Timestamp) -> Vec<(Option<String>, i128)> {
        let mut left = amount;
        let mut parts = Vec::new();
        for i in self.order(now) {
            if left <= 0 {
                break;
            }
            let t = self.grants[i].remaining.min(left);
            self.grants[i].remaining -= t;
            left -= t;
            parts.push((Some(self.grants[i].id.clone()), t));
        }
        if left > 0 {
            self.wallet -= left;
            parts.push((None, left));
        }
        parts
    }
    fn expire(&mut self, i: usize, at: Timestamp) {
        let g = &mut self.grants[i];
        g.expired += g.remaining;
        g.remaining = 0;
        if g.expires.is_none_or(|e| e > at) {
            g.expires = Some(at);
        }
    }
    fn add_grant(&mut self, g: MGrant, at: Timestamp) {
        self.grants.push(g);
        self.repay(at);
    }
    fn start_period(&mut self, at: Timestamp, ids: (String, String)) {
        let sub = self.sub.as_ref().unwrap();
        let (_, _, monthly) = PLANS[sub.plan];
        let end = sub.end;
        for (id, kind, amount, priority) in
            [(ids.0, GrantKind::PlanMain, monthly * 12 / 10, 10), (ids.1, GrantKind::PlanBackup, monthly * 3, 20)]
        {
            let g = MGrant {
                id,
                kind,
                priority,
                created: at,
                expires: Some(end),
                amount: amount * MICRO,
                remaining: amount * MICRO,
                expired: 0,
                voided: false,
            };
            self.add_grant(g, at);
        }
    }
    /// Everything due up to `now`, in time order. `pool_ids` names the pools
    /// of a period (the engine derives them; ids are data here).
    fn advance(&mut self, now: Timestamp, pool_ids: &dyn Fn(&MSub, u32) -> (String, String)) {
        loop {
            let mut due: Option<(Timestamp, u8, usize)> = None;
            for (i, g) in self.grants.iter().enumerate() {
                if let Some(e) = g.expires.filter(|&e| e <= now)
                    && g.remaining > 0
                {
                    let key = (e, 0, i);
                    if due.is_none_or(|d| key < d) {
                        due = Some(key);
                    }
                }
            }
            if let Some(s) = &self.sub {
                let at = if s.past_due { s.grace_end.unwrap() } else { s.end };
                if at <= now && due.is_none_or(|d| (at, 1, 0) < d) {
                    due = Some((at, 1, 0));
                }
            }
            let Some((at, what, i)) = due else { break };
            if what == 0 {
                self.expire(i, at);
                continue;
            }
            let mut s = self.sub.clone().unwrap();
            if s.past_due {
                self.sub = None;
                continue;
            }
            if s.paid_through > s.period {
                s.period += 1;
                s.start = month_start(s.anchor, s.period);
                s.end = month_start(s.anchor, s.period + 1);
                s.price = s.renewal_price.take().unwrap_or(self.prices[s.plan]);
                let ids = pool_ids(&s, s.period);
                self.sub = Some(s);
                self.start_period(at, ids);
            } else if s.cancel {
                self.sub = None;
            } else {
                s.past_due = true;
                s.grace_end = Some(s.end + SignedDuration::from_hours(24));
                if s.grace_end.unwrap() <= at {
                    self.sub = None;
                } else {
                    self.sub = Some(s);
                }
            }
        }
    }
}

fn gcd(a: u128, b: u128) -> u128 {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

/// A fraction `n/d`, reduced.
fn frac(n: u128, d: u128) -> (u128, u128) {
    let g = gcd(n, d);
    (n / g, d / g)
}

fn fmax(a: (u128, u128), b: (u128, u128)) -> (u128, u128) {
    if a.0 * b.1 >= b.0 * a.1 { a } else { b }
}

/// §7's credit, floored to the cent, in whole cents.
fn prorate_cents(
    old_usd: i128,
    new_usd: i128,
    elapsed: i128,
    length: i128,
    main: (i128, i128),
    backup: (i128, i128),
) -> i128 {
    let time = frac(elapsed.clamp(0, length) as u128, length as u128);
    let used = |(amount, remaining): (i128, i128)| -> (u128, u128) {
        if amount <= 0 { (0, 1) } else { frac((amount - remaining).max(0) as u128, amount as u128) }
    };
    let (m, b) = (used(main), used(backup));
    let usage = frac(3 * m.0 * b.1 + b.0 * m.1, 4 * m.1 * b.1);
    let mut consumed = fmax(fmax(time, usage), (1, 10));
    if consumed.0 > consumed.1 {
        consumed = (1, 1);
    }
    // old × (1 − consumed) in cents, exact: old×100×(d−n)/d.
    let unused_num = old_usd as u128 * 100 * (consumed.1 - consumed.0);
    let cap = (new_usd - old_usd).max(0) as u128 * 100;
    let unused_floor = unused_num / consumed.1;
    unused_floor.min(cap) as i128
}

// ---- the harness: the engine with a store around it ----

#[derive(Clone)]
struct Payment {
    id: String,
    kind: PaymentKind,
    credits: Credits,
    grant_ids: Vec<String>,
    subscription_id: Option<String>,
    refunded: Credits,
    prorated: Credits,
    refunds: Vec<RefundFacts>,
}

struct Harness {
    state: AccountState,
    now: Timestamp,
    counter: u64,
    grants: BTreeMap<String, Grant>,
    entries: Vec<LedgerEntry>,
    usage: Vec<UsageRecord>,
    subscriptions: BTreeMap<String, Subscription>,
    payments: Vec<Payment>,
    policy: PricingPolicy,
    billing: Billing,
    plans: PlanBook,
}

impl Harness {
    fn new(now: Timestamp) -> Harness {
        Harness {
            state: AccountState::new("acct"),
            now,
            counter: 0,
            grants: BTreeMap::new(),
            entries: Vec::new(),
            usage: Vec::new(),
            subscriptions: BTreeMap::new(),
            payments: Vec::new(),
            policy: PricingPolicy::default(),
            billing: Billing::default(),
            plans: Harness::plans(PLANS.map(|p| p.1)),
        }
    }

    /// The plans at `prices` (whole USD), as an operator sets them.
    fn plans(prices: [i128; 3]) -> PlanBook {
        let plans = PLANS.iter().zip(prices).map(|(&(id, _, monthly), price)| Plan {
            id: id.into(),
            name: id.into(),
            price_usd: Usd::whole(price as i64),
            monthly_credits: Credits::whole(monthly as i64),
            bonus_percent: Factor::whole(20),
            backup_multiplier: Factor::whole(3),
            limits: RequestLimits::default(),
            model_access: ModelAccess::All,
            cost_budget_multiplier: None,
        });
        PlanBook::new(plans)
    }

    fn op<T>(&mut self, f: impl FnOnce(&mut engine::Tx<'_>) -> Result<T, Refusal>) -> Result<T, Refusal> {
        let ctx = Context { policy: &self.policy, billing: &self.billing, plans: &self.plans };
        let mut counter = self.counter;
        let mut ids = || {
            counter += 1;
            format!("id-{counter:08}")
        };
        let result = engine::apply(&mut self.state, self.now, ctx, &mut ids, f);
        self.counter = counter;
        let (out, changes) = result?;
        self.write(changes);
        Ok(out)
    }

    fn write(&mut self, changes: Changes) {
        for g in changes.grants {
            self.grants.insert(g.id.clone(), g);
        }
        self.entries.extend(changes.entries);
        self.usage.extend(changes.usage);
        for s in changes.subscriptions {
            self.subscriptions.insert(s.id.clone(), s);
        }
        for r in changes.refunded {
            self.usage.iter_mut().find(|u| u.request_id == r).unwrap().refunded = true;
        }
    }

    fn last_subscription(&self) -> Option<Subscription> {
        self.subscriptions.values().max_by_key(|s| (s.created_at, s.id.clone())).cloned()
    }

    /// A plan payment, recorded as the writer records a webhook's.
    fn record_plan_payment(&mut self, sub: &Subscription) {
        let (grant_ids, credits) = engine::paid_period_pools(sub, &self.plans);
        let id = format!("pay-{}", self.payments.len());
        self.payments.push(Payment {
            id,
            kind: PaymentKind::Subscription,
            credits,
            grant_ids,
            subscription_id: Some(sub.id.clone()),
            refunded: Credits::ZERO,
            prorated: Credits::ZERO,
            refunds: Vec::new(),
        });
    }

    fn check(&self, step: &str) {
        let grants: Vec<Grant> = self.grants.values().cloned().collect();
        let mut breaches = check_account(AccountRecords {
            account_id: "acct",
            grants: &grants,
            wallet: self.state.wallet,
            holds: &[],
            entries: &self.entries,
            usage: &self.usage,
        });
        let payments: Vec<PaymentFacts> = self
            .payments
            .iter()
            .map(|p| PaymentFacts {
                external_id: p.id.clone(),
                kind: p.kind,
                credits: p.credits,
                grant_ids: p.grant_ids.clone(),
                subscription_id: p.subscription_id.clone(),
                refunded_credits: p.refunded,
                prorated_credits: p.prorated,
                refunds: p.refunds.clone(),
            })
            .collect();
        let subscriptions: Vec<Subscription> = self.subscriptions.values().cloned().collect();
        breaches.extend(check_payments(PaymentRecords {
            account_id: "acct",
            grants: &grants,
            entries: &self.entries,
            payments: &payments,
            subscriptions: &subscriptions,
        }));
        assert!(breaches.is_empty(), "{step}: {breaches:#?}");
    }
}

fn ordinary_model() -> ModelPrice {
    ModelPrice {
        credits_per_mtok: TokenRates {
            input: Some(Credits::ZERO),
            cache_read: Some(Credits::ZERO),
            cache_write: Some(Credits::ZERO),
            output: Some(Credits::whole(1_000_000)),
        },
        ..ModelPrice::default()
    }
}

/// 10^9 credits per million output tokens: 10^9 tokens cost 10^12 credits.
fn extreme_model() -> ModelPrice {
    ModelPrice {
        credits_per_mtok: TokenRates {
            output: Some(Credits::whole(1_000_000_000)),
            ..ordinary_model().credits_per_mtok
        },
        ..ModelPrice::default()
    }
}

fn c(micro: i128) -> Credits {
    Credits::from_units(i64::try_from(micro).unwrap())
}

/// One sequence of `ops` operations from `seed`; returns how many ran.
fn run(seed: u64, ops: usize) -> u64 {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let start: Timestamp = "2027-01-31T10:00:00Z".parse().unwrap();
    let mut h = Harness::new(start);
    let mut m = Model { prices: PLANS.map(|p| p.1), ..Model::default() };
    let ordinary = ordinary_model();
    let extreme = extreme_model();
    let mut next_request = 0u64;
    let mut done = 0u64;
    // The pool ids of a model subscription's period, from the engine's
    // subscription of the same id (ids are data, not logic).
    for step in 0..ops {
        let now = h.now;
        let pool_ids = |subs: &BTreeMap<String, Subscription>| {
            let subs = subs.clone();
            move |s: &MSub, n: u32| {
                let ids = engine::period_pool_ids(&subs[&s.id], n);
                (ids[0].clone(), ids[1].clone())
            }
        };
        m.advance(now, &pool_ids(&h.subscriptions));
        let label = format!("seed {seed} step {step}");
        match rng.below(100) {
            // Promo grant, sometimes expiring within days.
            0..=7 => {
                let amount = 1 + rng.below(500) as i64;
                let expires =
                    rng.chance(50).then(|| now + SignedDuration::from_secs(1 + rng.below(10 * 86_400) as i64));
                let new = NewGrant {
                    kind: GrantKind::Promo,
                    source: "t".into(),
                    reason: None,
                    amount: Credits::whole(amount),
                    priority: None,
                    starts_at: None,
                    expires_at: expires,
                    reference: Reference::None,
                };
                let g = h.op(|tx| engine::grant(tx, new)).unwrap();
                m.add_grant(
                    MGrant {
                        id: g.id,
                        kind: GrantKind::Promo,
                        priority: 10,
                        created: now,
                        expires,
                        amount: i128::from(amount) * MICRO,
                        remaining: i128::from(amount) * MICRO,
                        expired: 0,
                        voided: false,
                    },
                    now,
                );
            }
            // Top-up, recorded as a payment.
            8..=14 => {
                let amount = 1 + rng.below(300) as i64;
                let id = format!("pay-{}", h.payments.len());
                let reference = Reference::Payment(id.clone());
                let result =
                    h.op(|tx| engine::credit_wallet(tx, EntryKind::Topup, Credits::whole(amount), reference, None));
                let fits = m.wallet + i128::from(amount) * MICRO <= MAX_BALANCE;
                assert_eq!(result.is_ok(), fits, "{label}: top-up");
                if fits {
                    m.wallet += i128::from(amount) * MICRO;
                    h.payments.push(Payment {
                        id,
                        kind: PaymentKind::Topup,
                        credits: Credits::whole(amount),
                        grant_ids: Vec::new(),
                        subscription_id: None,
                        refunded: Credits::ZERO,
                        prorated: Credits::ZERO,
                        refunds: Vec::new(),
                    });
                }
            }
            // Void a grant (a promo, or a pool).
            15..=18 => {
                if m.grants.is_empty() {
                    continue;
                }
                let i = rng.below(m.grants.len() as u64) as usize;
                let id = m.grants[i].id.clone();
                let grant = h.state.grant(&id).cloned().unwrap_or_else(|| h.grants[&id].clone());
                h.op(|tx| engine::void(tx, grant, None)).unwrap();
                let g = &mut m.grants[i];
                if !g.voided && g.expires.is_none_or(|e| e > now) {
                    g.remaining = 0;
                }
                g.voided = true;
            }
            // Usage: ordinary, or at the extreme of the bounds.
            19..=44 => {
                let is_extreme = rng.chance(4);
                let tokens = if is_extreme { 1 + rng.below(1_000_000_000) } else { rng.below(400) };
                let enforce = rng.chance(60);
                let rid = format!("r{next_request}");
                next_request += 1;
                let price = if is_extreme { &extreme } else { &ordinary };
                let input = UsageInput {
                    outcome: Outcome {
                        request_id: rid.clone(),
                        fingerprint: rid.clone(),
                        status: RequestStatus::Success,
                        usage: Usage { output_tokens: tokens, ..Usage::default() },
                        details: RequestDetails::default(),
                    },
                    model_id: "m".into(),
                    model: Some((1, price)),
                    request_type: "chat".into(),
                    enforce,
                };
                let result = h.op(|tx| engine::record_usage(tx, input, Prior::default()));
                let cost = i128::from(tokens) * if is_extreme { 1_000 * MICRO } else { MICRO };
                let grants = m.grants_available(now);
                let refused_balance = enforce && cost > 0 && m.available(now) < cost;
                let refused_bound = m.wallet - (cost - grants).max(0) < -MAX_BALANCE;
                match result {
                    Err(Refusal::InsufficientCredits { available, estimate }) => {
                        assert!(refused_balance, "{label}: refused {available} < {estimate}");
                        assert_eq!((available, estimate), (c(m.available(now)), c(cost)), "{label}");
                    }
                    Err(Refusal::InvalidRequest(why)) => assert!(!refused_balance && refused_bound, "{label}: {why}"),
                    Err(other) => panic!("{label}: {other:?}"),
                    Ok(rec) => {
                        assert!(!refused_balance && !refused_bound, "{label}: admitted");
                        let debt_before = (-m.wallet).max(0);
                        let parts = m.take(cost, now);
                        let debt = (-m.wallet).max(0) - debt_before;
                        m.repay(now);
                        let r = rec.record;
                        assert_eq!((r.credits, r.debt_incurred), (c(cost), c(debt)), "{label}: charge");
                        let got: Vec<(Option<String>, Credits)> = r
                            .charged_from
                            .iter()
                            .map(|p| match &p.source {
                                Source::Grant { grant_id, .. } => (Some(grant_id.clone()), p.amount),
                                Source::Wallet => (None, p.amount),
                            })
                            .collect();
                        let want: Vec<(Option<String>, Credits)> = parts.into_iter().map(|(g, a)| (g, c(a))).collect();
                        assert_eq!(got, want, "{label}: charged_from");
                    }
                }
            }
            // Refund a usage record.
            45..=50 => {
                let open: Vec<UsageRecord> = h.usage.iter().filter(|u| !u.refunded).cloned().collect();
                if open.is_empty() {
                    continue;
                }
                let record = open[rng.below(open.len() as u64) as usize].clone();
                let stored: Vec<Grant> = h.grants.values().cloned().collect();
                let result = h.op(|tx| engine::refund_usage(tx, &record, &stored, None));
                match result {
                    Err(Refusal::InvalidRequest(_)) => {
                        // Only when the wallet would pass the top bound.
                        let back: i128 = record
                            .charged_from
                            .iter()
                            .filter(|p| matches!(p.source, Source::Wallet))
                            .map(|p| i128::from(p.amount.units()))
                            .sum();
                        assert!(m.wallet + back > MAX_BALANCE / 2, "{label}: refund refused");
                        continue;
                    }
                    other => {
                        other.unwrap();
                    }
                }
                for p in &record.charged_from {
                    let amount = i128::from(p.amount.units());
                    match &p.source {
                        Source::Wallet => m.wallet += amount,
                        Source::Grant { grant_id, .. } => {
                            let g = m.grants.iter_mut().find(|g| &g.id == grant_id).unwrap();
                            if g.voided {
                                // Stays void.
                            } else if g.expires.is_some_and(|e| e <= now) {
                                m.wallet += amount;
                            } else {
                                g.remaining += amount;
                            }
                        }
                    }
                }
                m.repay(now);
            }
            // Subscribe: start, switch, or resubscribe to a cancelled plan.
            51..=60 => {
                let plan = rng.below(3) as usize;
                let plan_id = PLANS[plan].0;
                let input = StartInput { plan_id: plan_id.into(), kind: SubscriptionKind::Monthly, external_id: None };
                let result = h.op(|tx| engine::start_subscription(tx, input));
                match m.sub.clone() {
                    Some(s) if !s.past_due && s.plan == plan && (!s.cancel || s.paid_through > s.period) => {
                        assert!(matches!(result, Err(Refusal::Conflict(_))), "{label}: same plan {result:?}");
                    }
                    Some(mut s) if !s.past_due && s.plan == plan => {
                        // Cancelled: resumed, the next period paid.
                        let change = result.unwrap_or_else(|e| panic!("{label}: resume {e}"));
                        s.cancel = false;
                        s.paid_through = s.period + 1;
                        s.renewal_price = Some(m.prices[plan]);
                        m.sub = Some(s);
                        assert!(change.proration.is_none());
                        h.record_plan_payment(&change.subscription);
                    }
                    old => {
                        let change = result.unwrap_or_else(|e| panic!("{label}: subscribe {e}"));
                        if let Some(s) = old.filter(|s| !s.past_due) {
                            // Switch: proration over the current period.
                            let pool = |part: usize| {
                                let ids = engine::period_pool_ids(&h.subscriptions[&s.id], s.period);
                                m.grants.iter().find(|g| g.id == ids[part]).map_or((0, 0), |g| (g.amount, g.remaining))
                            };
                            let (main, backup) = (pool(0), pool(1));
                            let elapsed = (now.as_microsecond() - s.start.as_microsecond()) as i128;
                            let length = (s.end.as_microsecond() - s.start.as_microsecond()) as i128;
                            let cents = prorate_cents(s.price, m.prices[plan], elapsed, length, main, backup);
                            for i in 0..m.grants.len() {
                                if matches!(m.grants[i].kind, GrantKind::PlanMain | GrantKind::PlanBackup)
                                    && m.grants[i].remaining > 0
                                {
                                    m.expire(i, now);
                                }
                            }
                            let p = change.proration.clone().unwrap();
                            assert_eq!(p.credited, c(cents * MICRO), "{label}: proration");
                            m.wallet += cents * MICRO;
                            m.repay(now);
                            let prepaid = if s.paid_through > s.period { s.renewal_price.unwrap() * 100 } else { 0 };
                            assert_eq!(p.prepaid_credited, c(prepaid * MICRO), "{label}: prepaid");
                            m.wallet += prepaid * MICRO;
                            m.repay(now);
                            // The store links both to the payments that bought them.
                            let old = change.previous.clone().unwrap();
                            let parts = [
                                (old.period, p.credited, cents * MICRO),
                                (old.paid_through, p.prepaid_credited, prepaid * MICRO),
                            ];
                            for (period, credits, modelled) in parts {
                                let ids = engine::period_pool_ids(&old, period);
                                if credits.is_positive()
                                    && let Some(k) = h.payments.iter().rposition(|pay| pay.grant_ids == ids)
                                {
                                    h.payments[k].prorated += credits;
                                    *m.prorated.entry(k).or_default() += modelled;
                                }
                            }
                        } else {
                            assert!(change.proration.is_none(), "{label}");
                        }
                        let sub = change.subscription.clone();
                        m.sub = Some(MSub {
                            id: sub.id.clone(),
                            plan,
                            anchor: now,
                            period: 0,
                            start: now,
                            end: month_start(now, 1),
                            paid_through: 0,
                            price: m.prices[plan],
                            renewal_price: None,
                            cancel: false,
                            past_due: false,
                            grace_end: None,
                        });
                        m.had_sub = true;
                        let ids = engine::period_pool_ids(&sub, 0);
                        m.start_period(now, (ids[0].clone(), ids[1].clone()));
                        h.record_plan_payment(&sub);
                    }
                }
            }
            // Renew (early, or in grace).
            61..=66 => {
                let last = h.last_subscription();
                let result = h.op(|tx| engine::renew_subscription(tx, last.as_ref()));
                match m.sub.clone() {
                    None if m.had_sub => assert_eq!(result.unwrap_err(), Refusal::SubscriptionExpired, "{label}"),
                    None => assert!(matches!(result, Err(Refusal::NotFound(_))), "{label}"),
                    Some(s) if !s.past_due && s.paid_through > s.period => {
                        assert!(matches!(result, Err(Refusal::Conflict(_))), "{label}: {result:?}");
                    }
                    Some(mut s) if !s.past_due => {
                        let sub = result.unwrap_or_else(|e| panic!("{label}: renew {e}"));
                        s.cancel = false;
                        s.paid_through = s.period + 1;
                        s.renewal_price = Some(m.prices[s.plan]);
                        m.sub = Some(s);
                        h.record_plan_payment(&sub);
                    }
                    Some(mut s) => {
                        let sub = result.unwrap_or_else(|e| panic!("{label}: late renew {e}"));
                        let mut n = s.period + 1;
                        while month_start(s.anchor, n + 1) <= now {
                            n += 1;
                        }
                        s.period = n;
                        s.paid_through = n;
                        s.start = month_start(s.anchor, n);
                        s.end = month_start(s.anchor, n + 1);
                        s.past_due = false;
                        s.grace_end = None;
                        s.cancel = false;
                        s.price = m.prices[s.plan];
                        m.sub = Some(s);
                        let ids = engine::period_pool_ids(&sub, n);
                        m.start_period(now, (ids[0].clone(), ids[1].clone()));
                        h.record_plan_payment(&sub);
                    }
                }
            }
            // Cancel.
            67..=70 => {
                let last = h.last_subscription();
                let result = h.op(|tx| engine::cancel_subscription(tx, last.as_ref()));
                match m.sub.clone() {
                    None => assert!(result.is_err(), "{label}: cancel"),
                    Some(s) if s.past_due => {
                        result.unwrap();
                        m.sub = None;
                    }
                    Some(mut s) => {
                        result.unwrap();
                        s.cancel = true;
                        m.sub = Some(s);
                    }
                }
            }
            // Full refund of a payment, as the writer applies it.
            71..=76 => {
                if h.payments.is_empty() {
                    continue;
                }
                let k = rng.below(h.payments.len() as u64) as usize;
                refund_payment(&mut h, &mut m, k, &label);
            }
            // The operator changes a plan's price (up to 10^6 USD): what was
            // bought keeps its price.
            77..=79 => {
                let plan = rng.below(3) as usize;
                m.prices[plan] = if rng.chance(10) { 1_000_000 } else { 1 + rng.below(500) as i128 };
                h.plans = Harness::plans(m.prices);
            }
            // Time: small steps, and jumps onto and past period and grace ends.
            _ => {
                let to = match (rng.below(4), &m.sub) {
                    (0, Some(s)) if !s.past_due => s.end + SignedDuration::from_secs(rng.below(3) as i64 - 1),
                    (1, Some(s)) if s.past_due => {
                        s.grace_end.unwrap() + SignedDuration::from_secs(rng.below(3) as i64 - 1)
                    }
                    (2, _) => now + SignedDuration::from_secs(rng.below(40 * 86_400) as i64),
                    _ => now + SignedDuration::from_secs(rng.below(3 * 86_400) as i64),
                };
                h.now = to.max(now);
                h.op(|_| Ok(())).unwrap();
                m.advance(h.now, &pool_ids(&h.subscriptions));
            }
        }
        done += 1;

        // The engine agrees with the model…
        let now = h.now;
        assert_eq!(h.state.wallet.balance, c(m.wallet), "{label}: wallet");
        let ctx = Context { policy: &h.policy, billing: &h.billing, plans: &h.plans };
        let view = engine::view(&h.state, now, ctx);
        assert_eq!(view.available(now), c(m.available(now)), "{label}: available");
        for g in &m.grants {
            let stored = h.state.grant(&g.id).unwrap_or_else(|| &h.grants[&g.id]);
            assert_eq!(stored.remaining, c(g.remaining), "{label}: grant {} ({:?})", g.id, g.kind);
        }
        match (&h.state.subscription, &m.sub) {
            (None, None) => {}
            (Some(s), Some(ms)) => {
                let state = (s.id.as_str(), s.period, s.paid_through, s.cancel_at_period_end, s.status);
                let status = if ms.past_due { SubscriptionStatus::PastDue } else { SubscriptionStatus::Active };
                assert_eq!(state, (ms.id.as_str(), ms.period, ms.paid_through, ms.cancel, status), "{label}: sub");
                assert_eq!((s.period_start, s.period_end), (ms.start, ms.end), "{label}: period");
                assert_eq!(s.price_usd, Some(Usd::whole(ms.price as i64)), "{label}: price");
            }
            (engine_sub, model_sub) => panic!("{label}: {engine_sub:?} vs {model_sub:?}"),
        }
        // …and every invariant holds over what a store would hold.
        h.check(&label);
    }
    done
}

/// A full refund of payment `k`, applied as the writer applies one (the
/// harness is the store), and what the model expects of it.
fn refund_payment(h: &mut Harness, m: &mut Model, k: usize, label: &str) {
    let now = h.now;
    let p = h.payments[k].clone();
    // The unstarted period paid in advance: un-paid.
    let live = h.state.subscription.clone();
    if p.kind == PaymentKind::Subscription
        && let Some(sub) = live.as_ref()
        && p.subscription_id.as_deref() == Some(sub.id.as_str())
        && sub.is_active()
        && sub.renewed()
        && p.grant_ids == engine::period_pool_ids(sub, sub.paid_through)
        && p.refunded < p.credits
    {
        h.op(engine::unpay_renewal).unwrap();
        let left = p.credits - p.refunded;
        let p = &mut h.payments[k];
        p.refunded += left;
        p.refunds.push(RefundFacts { credits: left, lapsed: left, ..RefundFacts::default() });
        let s = m.sub.as_mut().unwrap();
        s.paid_through = s.period;
        s.renewal_price = None;
        return;
    }
    let added = match p.kind {
        PaymentKind::Topup | PaymentKind::Pack => p.credits,
        PaymentKind::Subscription => {
            let sum: Credits = p.grant_ids.iter().filter_map(|id| h.grants.get(id)).map(|g| g.amount).sum();
            sum.min(p.credits) + p.prorated
        }
    };
    let credits = engine::refund_credits(added, p.refunded, RefundShare::Full);
    // What the payment produced, by the model: its credits (a top-up, or
    // the pools of a started period) and what a switch put in the wallet
    // for it. A full refund reverses all of it that is left.
    let produced = match p.kind {
        PaymentKind::Subscription => {
            m.grants.iter().filter(|g| p.grant_ids.contains(&g.id)).map(|g| g.amount).sum::<i128>()
                + m.prorated.get(&k).copied().unwrap_or(0)
        }
        _ => i128::from(p.credits.units()),
    };
    assert_eq!(credits, c((produced - i128::from(p.refunded.units())).max(0)), "{label}: refund of {}", p.id);
    if !credits.is_positive() {
        return;
    }
    let paid = match p.kind {
        PaymentKind::Topup => Paid::Wallet,
        _ => Paid::Grants(p.grant_ids.clone()),
    };
    // Lapsed as stored (expire and void entries of its grants), less what
    // earlier refunds counted: what the store's query gives.
    let stored_lapsed: Credits = h
        .entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Expire | EntryKind::Void))
        .filter(|e| e.grant_id.as_ref().is_some_and(|g| p.grant_ids.contains(g)))
        .map(|e| -e.amount)
        .sum();
    let counted: Credits = p.refunds.iter().map(|f| f.lapsed).sum();
    let lapsed = (stored_lapsed - counted).max(Credits::ZERO);
    let prorated = (p.prorated - p.refunded).max(Credits::ZERO);
    let unrefunded = (added - p.refunded).max(Credits::ZERO);
    let refund = PaymentRefund { payment_id: p.id.clone(), paid, credits, lapsed, prorated, unrefunded, reason: None };
    let grant_ids = p.grant_ids.clone();
    let result = h.op(|tx| engine::refund_payment(tx, refund));
    let done = match result {
        Err(Refusal::InvalidRequest(_)) => {
            assert!(m.wallet - i128::from(credits.units()) < -MAX_BALANCE, "{label}: payment refund refused");
            return;
        }
        other => other.unwrap_or_else(|e| panic!("{label}: refund {e}")),
    };
    let p = &mut h.payments[k];
    p.refunded += done.credits;
    p.refunds.push(RefundFacts {
        credits: done.credits,
        from_grants: done.from_grants,
        lapsed: done.lapsed,
        from_wallet: done.from_wallet,
        debt: done.debt,
    });
    // The model: the wallet part first, then the grants' unspent credits,
    // then what lapsed, then the spent rest from the wallet.
    let mut left = i128::from(credits.units());
    let wallet_first = i128::from(prorated.units()).min(left);
    left -= wallet_first;
    let mut from_grants = 0;
    for id in &grant_ids {
        if let Some(g) = m.grants.iter_mut().find(|g| &g.id == id)
            && !g.voided
            && g.expires.is_none_or(|e| e > now)
        {
            let t = g.remaining.min(left);
            g.remaining -= t;
            left -= t;
            from_grants += t;
        }
    }
    let lapsed_now = if grant_ids.is_empty() { 0 } else { i128::from(lapsed.units()).min(left) };
    left -= lapsed_now;
    m.wallet -= wallet_first + left;
    m.repay(now);
    // The current period's payment refunded in full: the period is no
    // longer paid for, so a switch credits nothing for it (docs/money.md).
    if let Some(sub) = live.as_ref().filter(|s| s.is_active())
        && grant_ids == engine::period_pool_ids(sub, sub.period)
        && let Some(s) = m.sub.as_mut()
    {
        s.price = 0;
    }
    assert_eq!(
        (done.from_grants, done.lapsed, done.from_wallet),
        (c(from_grants), c(lapsed_now), c(wallet_first + left)),
        "{label}: refund split"
    );
}

fn ops_wanted() -> usize {
    std::env::var("CREDITD_MODEL_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000)
}

#[test]
fn engine_matches_the_money_model() {
    let total = ops_wanted();
    let first: u64 = std::env::var("CREDITD_MODEL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let per_sequence = 250;
    let started = std::time::Instant::now();
    let (mut ran, mut sequences) = (0u64, 0u64);
    let mut seed = first;
    while (ran as usize) < total {
        ran += run(seed, per_sequence.min(total - ran as usize));
        sequences += 1;
        seed += 1;
    }
    println!(
        "money model: {ran} operations in {sequences} sequences (seeds {first}..{}), {:.1} s",
        seed - 1,
        started.elapsed().as_secs_f64()
    );
}
