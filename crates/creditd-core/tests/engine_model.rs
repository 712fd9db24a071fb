//! Property test of the money rules: random sequences of grant, top-up,
//! adjustment, void, authorize, settle, release, one-shot usage and clock
//! advance run through the engine and through a plain reference model. After
//! every step the invariants of `semantics.md` §10 hold over everything a
//! store would have written, and the engine's balances equal the model's.

use std::collections::{BTreeMap, HashMap};

use creditd_core::account::{AccountState, Grant, GrantKind, Hold, HoldStatus, RequestDetails, Source, UsageRecord};
use creditd_core::campaign::Billing;
use creditd_core::engine::{self, AuthorizeInput, Context, NewGrant, Outcome, Prior, Refusal, UsageInput};
use creditd_core::invariants::{AccountRecords, check_account};
use creditd_core::ledger::{Changes, LedgerEntry, Reference};
use creditd_core::plan::PlanBook;
use creditd_core::pricing::{EstimateInput, ModelPrice, PricingPolicy, RequestStatus, TokenRates, Usage};
use creditd_core::units::Credits;
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

/// One credit per output token: estimates and prices are easy to state.
fn model() -> ModelPrice {
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

#[derive(Clone, Debug)]
enum Op {
    Grant { amount: i64, priority: u8, expires_in: Option<i64> },
    Topup { amount: i64 },
    Adjust { amount: i64 },
    Void { pick: usize },
    Authorize { max_output: u64, ttl: u32 },
    Settle { pick: usize, output: u64 },
    Release { pick: usize },
    Usage { output: u64, enforce: bool },
    Advance { seconds: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1i64..100, prop::sample::select(vec![10u8, 20, 30]), prop::option::of(1i64..3000))
            .prop_map(|(amount, priority, expires_in)| Op::Grant { amount, priority, expires_in }),
        (1i64..100).prop_map(|amount| Op::Topup { amount }),
        (-60i64..60).prop_map(|amount| Op::Adjust { amount }),
        any::<usize>().prop_map(|pick| Op::Void { pick }),
        (0u64..120, 1u32..2000).prop_map(|(max_output, ttl)| Op::Authorize { max_output, ttl }),
        (any::<usize>(), 0u64..200).prop_map(|(pick, output)| Op::Settle { pick, output }),
        any::<usize>().prop_map(|pick| Op::Release { pick }),
        (0u64..150, any::<bool>()).prop_map(|(output, enforce)| Op::Usage { output, enforce }),
        (0i64..1500).prop_map(|seconds| Op::Advance { seconds }),
    ]
}

// ---- the reference model: whole credits, plain loops, no shared code ----

#[derive(Clone, Debug)]
struct MGrant {
    id: String,
    priority: u8,
    expires_at: Option<i64>,
    remaining: i64,
    held: i64,
    voided: bool,
}

#[derive(Clone, Debug)]
struct MHold {
    /// (grant index or None for the wallet, amount)
    parts: Vec<(Option<usize>, i64)>,
    expires_at: i64,
    status: HoldStatus,
}

#[derive(Default, Debug)]
struct Model {
    now: i64,
    grants: Vec<MGrant>,
    wallet: i64,
    wallet_held: i64,
    holds: BTreeMap<String, MHold>,
    used: std::collections::HashSet<String>,
}

impl Model {
    fn usable(&self, i: usize, at: i64) -> bool {
        let g = &self.grants[i];
        !g.voided && g.expires_at.is_none_or(|e| e > at) && g.remaining - g.held > 0
    }

    fn order(&self, at: i64) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.grants.len()).filter(|&i| self.usable(i, at)).collect();
        // Ties on priority and expiry fall back to creation order (= index).
        v.sort_by_key(|&i| (self.grants[i].priority, self.grants[i].expires_at.unwrap_or(i64::MAX), i));
        v
    }

    fn available(&self) -> i64 {
        let grants: i64 = (0..self.grants.len())
            .filter(|&i| self.usable(i, self.now))
            .map(|i| self.grants[i].remaining - self.grants[i].held)
            .sum();
        grants + self.wallet - self.wallet_held
    }

    fn repay(&mut self, at: i64) {
        for i in self.order(at) {
            if self.wallet >= 0 {
                break;
            }
            let take = (self.grants[i].remaining - self.grants[i].held).min(-self.wallet);
            self.grants[i].remaining -= take;
            self.wallet += take;
        }
    }

    fn free(&mut self, parts: &[(Option<usize>, i64)]) {
        for &(target, amount) in parts {
            match target {
                None => self.wallet_held -= amount,
                Some(i) => {
                    self.grants[i].held -= amount;
                    if self.grants[i].voided {
                        self.grants[i].remaining -= amount;
                    }
                }
            }
        }
    }

    fn advance(&mut self, to: i64) {
        // Events in time order; at one instant holds expire before grants.
        let mut events: Vec<(i64, u8, String, usize)> = Vec::new();
        for (rid, h) in &self.holds {
            if h.status == HoldStatus::Open && h.expires_at <= to {
                events.push((h.expires_at, 0, rid.clone(), 0));
            }
        }
        for (i, g) in self.grants.iter().enumerate() {
            if let Some(e) = g.expires_at
                && e <= to
                && (g.remaining > 0 || g.held > 0)
            {
                events.push((e, 1, String::new(), i));
            }
        }
        events.sort();
        for (at, kind, rid, i) in events {
            if kind == 0 {
                let parts = self.holds[&rid].parts.clone();
                self.free(&parts);
                self.holds.get_mut(&rid).unwrap().status = HoldStatus::Expired;
                self.repay(at);
            } else {
                for h in self.holds.values_mut().filter(|h| h.status == HoldStatus::Open) {
                    for p in h.parts.iter_mut().filter(|p| p.0 == Some(i)) {
                        p.1 = 0;
                    }
                }
                self.grants[i].remaining = 0;
                self.grants[i].held = 0;
            }
        }
        self.now = to;
    }

    /// Takes `amount` in burn order; holds or spends. Returns the parts.
    fn take(&mut self, amount: i64, hold: bool) -> Vec<(Option<usize>, i64)> {
        let mut left = amount;
        let mut parts = Vec::new();
        for i in self.order(self.now) {
            if left == 0 {
                break;
            }
            let take = (self.grants[i].remaining - self.grants[i].held).min(left);
            if hold {
                self.grants[i].held += take;
            } else {
                self.grants[i].remaining -= take;
            }
            left -= take;
            parts.push((Some(i), take));
        }
        if left > 0 {
            if hold {
                self.wallet_held += left;
            } else {
                self.wallet -= left;
            }
            parts.push((None, left));
        }
        parts
    }

    fn total(&self) -> i64 {
        self.grants.iter().map(|g| g.remaining).sum::<i64>() + self.wallet
    }
}

// ---- what a store would hold, built from the engine's changes ----

#[derive(Default)]
struct Db {
    grants: BTreeMap<String, Grant>,
    holds: HashMap<String, Hold>,
    entries: Vec<LedgerEntry>,
    usage: Vec<UsageRecord>,
}

impl Db {
    fn write(&mut self, changes: Changes) {
        for g in changes.grants {
            self.grants.insert(g.id.clone(), g);
        }
        for h in changes.holds {
            self.holds.insert(h.request_id.clone(), h);
        }
        self.entries.extend(changes.entries);
        self.usage.extend(changes.usage);
    }

    fn prior(&self, request_id: &str) -> (Option<Hold>, Option<UsageRecord>) {
        (self.holds.get(request_id).cloned(), self.usage.iter().find(|u| u.request_id == request_id).cloned())
    }
}

fn ts(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + seconds).unwrap()
}

fn c(whole: i64) -> Credits {
    Credits::whole(whole)
}

fn outcome(request_id: &str, output: u64) -> Outcome {
    Outcome {
        request_id: request_id.to_string(),
        fingerprint: format!("{request_id}/{output}"),
        status: RequestStatus::Success,
        usage: Usage { output_tokens: output, ..Usage::default() },
        details: RequestDetails::default(),
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let policy = PricingPolicy::default();
    // No subscription and the built-in free plan: no check but the balance refuses.
    let (billing, plans) = (Billing::default(), PlanBook::default());
    let ctx = Context { policy: &policy, billing: &billing, plans: &plans };
    let price = model();
    let mut state = AccountState::new("acct");
    let mut db = Db::default();
    let mut m = Model::default();
    let mut counter = 0u64;
    let mut new_id = move || {
        counter += 1;
        format!("id{counter:08}")
    };
    let mut requests: Vec<String> = Vec::new();
    let mut next_request = 0u32;

    for (step, op) in ops.into_iter().enumerate() {
        let now = ts(m.now);
        let pick = |p: usize, requests: &[String]| (!requests.is_empty()).then(|| requests[p % requests.len()].clone());
        match op {
            Op::Advance { seconds } => {
                m.advance(m.now + seconds);
                let (_, changes) = engine::apply(&mut state, ts(m.now), ctx, &mut new_id, |_| Ok(())).unwrap();
                db.write(changes);
            }
            Op::Grant { amount, priority, expires_in } => {
                m.advance(m.now);
                let new = NewGrant {
                    kind: GrantKind::Promo,
                    source: "test".into(),
                    reason: None,
                    amount: c(amount),
                    priority: Some(priority),
                    starts_at: None,
                    expires_at: expires_in.map(|s| now + SignedDuration::from_secs(s)),
                    reference: Reference::None,
                };
                let (g, changes) =
                    engine::apply(&mut state, now, ctx, &mut new_id, |tx| engine::grant(tx, new)).unwrap();
                db.write(changes);
                m.grants.push(MGrant {
                    id: g.id,
                    priority,
                    expires_at: expires_in.map(|s| m.now + s),
                    remaining: amount,
                    held: 0,
                    voided: false,
                });
                m.repay(m.now);
            }
            Op::Topup { amount } => {
                let (_, changes) = engine::apply(&mut state, now, ctx, &mut new_id, |tx| {
                    engine::credit_wallet(tx, creditd_core::ledger::EntryKind::Topup, c(amount), Reference::None, None)
                })
                .unwrap();
                db.write(changes);
                m.advance(m.now);
                m.wallet += amount;
            }
            Op::Adjust { amount } => {
                let result =
                    engine::apply(&mut state, now, ctx, &mut new_id, |tx| engine::adjust_wallet(tx, c(amount), None));
                m.advance(m.now);
                let allowed = amount != 0 && (amount > 0 || m.wallet + amount >= m.wallet_held.max(0));
                prop_assert_eq!(result.is_ok(), allowed, "step {}: adjust {}", step, amount);
                if let Ok((_, changes)) = result {
                    db.write(changes);
                    m.wallet += amount;
                    m.repay(m.now);
                }
            }
            Op::Void { pick } => {
                if m.grants.is_empty() {
                    continue;
                }
                let i = pick % m.grants.len();
                let grant = db.grants[&m.grants[i].id].clone();
                let (_, changes) =
                    engine::apply(&mut state, now, ctx, &mut new_id, |tx| engine::void(tx, grant, None)).unwrap();
                db.write(changes);
                m.advance(m.now);
                let g = &mut m.grants[i];
                if !g.voided {
                    g.voided = true;
                    g.remaining = g.held;
                }
            }
            Op::Authorize { max_output, ttl } => {
                let rid = format!("r{next_request}");
                next_request += 1;
                let input = AuthorizeInput {
                    request_id: rid.clone(),
                    fingerprint: rid.clone(),
                    model_id: "m".into(),
                    model: Some((1, &price)),
                    request_type: "chat".into(),
                    estimate: EstimateInput { max_output_tokens: Some(max_output), ..EstimateInput::default() },
                    ttl_seconds: ttl,
                    project: None,
                    conversation: None,
                };
                let result = engine::apply(&mut state, now, ctx, &mut new_id, |tx| {
                    engine::authorize(tx, input, Prior::default())
                });
                m.advance(m.now);
                let estimate = max_output as i64;
                let available = m.available();
                if estimate > 0 && available < estimate {
                    prop_assert!(
                        matches!(result, Err(Refusal::InsufficientCredits { available: a, .. }) if a == c(available)),
                        "step {}: expected refusal at available {}, got {:?}",
                        step,
                        available,
                        result
                    );
                } else {
                    let (auth, changes) = result.map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                    db.write(changes);
                    let parts = m.take(estimate, true);
                    prop_assert_eq!(auth.hold.available_after, c(m.available()));
                    m.holds.insert(
                        rid.clone(),
                        MHold { parts, expires_at: m.now + i64::from(ttl), status: HoldStatus::Open },
                    );
                    requests.push(rid);
                }
            }
            Op::Settle { pick: p, output } => {
                let Some(rid) = pick(p, &requests) else { continue };
                let (hold, usage) = db.prior(&rid);
                let result = engine::apply(&mut state, now, ctx, &mut new_id, |tx| {
                    engine::settle(
                        tx,
                        outcome(&rid, output),
                        Some(&price),
                        Prior { hold: hold.as_ref(), usage: usage.as_ref() },
                    )
                });
                m.advance(m.now);
                let already = m.used.contains(&rid);
                let status = m.holds[&rid].status;
                match (already, status) {
                    (true, _) => {
                        // Same body replays; another body conflicts.
                        let first = usage.expect("settled before");
                        if first.fingerprint == format!("{rid}/{output}") {
                            prop_assert!(matches!(&result, Ok((r, _)) if r.replay && r.record == first));
                        } else {
                            prop_assert_eq!(result.map(|_| ()), Err(Refusal::IdempotencyConflict));
                        }
                    }
                    (false, HoldStatus::Released) => {
                        prop_assert_eq!(result.map(|_| ()), Err(Refusal::HoldNotOpen { status: HoldStatus::Released }));
                    }
                    (false, status) => {
                        let (rec, changes) = result.map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                        db.write(changes);
                        prop_assert_eq!(rec.record.hold_expired, status == HoldStatus::Expired);
                        let parts = m.holds[&rid].parts.clone();
                        if status == HoldStatus::Open {
                            m.free(&parts);
                        }
                        // Debt incurred is the growth of the wallet's debt
                        // (its negative balance) by this charge.
                        let debt_before = (-m.wallet).max(0);
                        let out = output as i64;
                        m.take(out, false);
                        let debt_incurred = (-m.wallet).max(0) - debt_before;
                        m.holds.get_mut(&rid).unwrap().status = HoldStatus::Settled;
                        m.used.insert(rid.clone());
                        m.repay(m.now);
                        prop_assert_eq!(rec.record.credits, c(out));
                        prop_assert_eq!(rec.record.debt_incurred, c(debt_incurred));
                    }
                }
            }
            Op::Release { pick: p } => {
                let Some(rid) = pick(p, &requests) else { continue };
                let (hold, _) = db.prior(&rid);
                let result = engine::apply(&mut state, now, ctx, &mut new_id, |tx| {
                    engine::release(tx, &rid, Prior { hold: hold.as_ref(), usage: None })
                });
                m.advance(m.now);
                match m.holds[&rid].status {
                    HoldStatus::Settled => {
                        prop_assert_eq!(result.map(|_| ()), Err(Refusal::HoldNotOpen { status: HoldStatus::Settled }))
                    }
                    status => {
                        let (h, changes) = result.map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                        db.write(changes);
                        prop_assert_eq!(h.status, HoldStatus::Released);
                        if status == HoldStatus::Open {
                            let parts = m.holds[&rid].parts.clone();
                            m.free(&parts);
                            m.repay(m.now);
                        }
                        m.holds.get_mut(&rid).unwrap().status = HoldStatus::Released;
                    }
                }
            }
            Op::Usage { output, enforce } => {
                let rid = format!("u{next_request}");
                next_request += 1;
                let input = UsageInput {
                    outcome: outcome(&rid, output),
                    model_id: "m".into(),
                    model: Some((1, &price)),
                    request_type: "chat".into(),
                    enforce,
                };
                let result = engine::apply(&mut state, now, ctx, &mut new_id, |tx| {
                    engine::record_usage(tx, input, Prior::default())
                });
                m.advance(m.now);
                let out = output as i64;
                if enforce && out > 0 && m.available() < out {
                    prop_assert!(matches!(result, Err(Refusal::InsufficientCredits { .. })), "step {}", step);
                } else {
                    let (rec, changes) = result.map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                    db.write(changes);
                    let debt_before = (-m.wallet).max(0);
                    m.take(out, false);
                    prop_assert_eq!(rec.record.debt_incurred, c((-m.wallet).max(0) - debt_before), "step {}", step);
                    m.repay(m.now);
                    m.used.insert(rid);
                }
            }
        }

        // The engine agrees with the model…
        let view = engine::view(&state, ts(m.now), ctx);
        prop_assert_eq!(view.available(ts(m.now)), c(m.available()), "step {}: available", step);
        prop_assert_eq!(state.wallet.balance, c(m.wallet), "step {}: wallet", step);
        prop_assert_eq!(state.wallet.held, c(m.wallet_held), "step {}: wallet held", step);
        prop_assert_eq!(state.ledger_balance(), c(m.total()), "step {}: total", step);
        for g in &m.grants {
            let stored = &db.grants[&g.id];
            prop_assert_eq!(stored.remaining, c(g.remaining), "step {}: grant {} remaining", step, g.id);
            prop_assert_eq!(stored.held, c(g.held), "step {}: grant {} held", step, g.id);
        }
        // …and everything written keeps the §10 invariants.
        let grants: Vec<Grant> = db.grants.values().cloned().collect();
        let holds: Vec<Hold> = db.holds.values().cloned().collect();
        let breaches = check_account(AccountRecords {
            account_id: "acct",
            grants: &grants,
            wallet: state.wallet,
            holds: &holds,
            entries: &db.entries,
            usage: &db.usage,
        });
        prop_assert!(breaches.is_empty(), "step {}: {:?}", step, breaches);
        // Every portion of a usage record names a real source.
        for u in &db.usage {
            for p in &u.charged_from {
                if let Source::Grant { grant_id, .. } = &p.source {
                    prop_assert!(db.grants.contains_key(grant_id));
                }
            }
        }
    }
    Ok(())
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N runs more.
    #[test]
    fn engine_matches_the_reference_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}

#[test]
fn debt_is_repaid_by_the_next_grant() {
    run(vec![
        Op::Usage { output: 30, enforce: false },
        Op::Grant { amount: 50, priority: 10, expires_in: None },
        Op::Usage { output: 10, enforce: true },
    ])
    .unwrap();
}
