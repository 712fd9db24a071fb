//! The ledger invariants of `semantics.md` §10, checked over everything the
//! store holds for one account. `creditd audit`, the property tests and the
//! store's debug assertions all call [`check_account`].

use std::collections::{HashMap, HashSet};

use crate::account::{Grant, Hold, HoldStatus, Source, UsageRecord, Wallet};
use crate::ledger::{EntryKind, LedgerEntry};
use crate::subscription::Subscription;
use crate::units::{Credits, MAX_BALANCE, MAX_GRANT};

/// Everything stored for one account: every grant (spent ones too), the
/// wallet, every hold (closed ones too), every entry and usage record.
#[derive(Clone, Copy, Debug)]
pub struct AccountRecords<'a> {
    pub account_id: &'a str,
    pub grants: &'a [Grant],
    pub wallet: Wallet,
    pub holds: &'a [Hold],
    pub entries: &'a [LedgerEntry],
    pub usage: &'a [UsageRecord],
}

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breach {
    /// The number of the invariant in `semantics.md` §10.
    pub invariant: u8,
    pub account_id: String,
    pub message: String,
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invariant {} broken for account {}: {}", self.invariant, self.account_id, self.message)
    }
}

/// The invariants, as named in the audit's report: 1 to 7 are
/// `semantics.md` §10; 8 to 12 are creditd's own (`docs/audit.md`).
pub const INVARIANTS: [&str; 12] = [
    "1 each grant's entries sum to its remaining, and 0 <= held <= remaining",
    "2 the wallet's balance equals the sum of its entries",
    "3 all entries of an account sum to its grants' remaining plus its wallet",
    "4 each open hold's parts equal what it holds on each grant and the wallet",
    "5 while the wallet is negative no grant has unheld remaining credits",
    "6 each usage record's charge equals its charge entries, split as charged_from says (and a refunded record's refund entries)",
    "7 no request id is charged twice",
    "8 each entry's balance_after is the one before plus its amount, in the order written",
    "9 every value within its bounds: wallet within +-10^12 credits, 0 <= remaining <= amount <= 10^9, 0 <= held, debt_incurred within 0..=credits",
    "10 each payment reconciles with its refunds and effects: refunds sum to refunded_credits and each splits exactly, never more than the payment produced, the refund entries match, a top-up's and a pack's credits were added, what a switch put in the wallet for it was credited and is reversed first",
    "11 paid_through matches payments: a period paid in advance by a payment is not refunded, and a refunded unstarted period is not paid",
    "12 no hold is still open a minute past its expiry (the idle sweeper releases it)",
];

/// How long past its expiry a hold may still be stored as open before the
/// audit calls it a breach (invariant 12). The idle sweeper looks for due
/// holds every second, but only while its writer has no traffic, and a
/// batch of due accounts waits behind real commands: a minute is far past
/// any delay that is not a sweeper stopped for good.
pub const HOLD_SWEEP_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

/// Invariant 12: every open hold of the account expired less than
/// [`HOLD_SWEEP_GRACE`] before `now`. (An expired hold is already released
/// in every answer; only a sweeper that stopped leaves it open in the
/// database, holding what it holds there.)
pub fn check_open_holds(account_id: &str, holds: &[Hold], now: jiff::Timestamp) -> Vec<Breach> {
    holds
        .iter()
        .filter(|h| h.status == HoldStatus::Open)
        .filter(|h| now.duration_since(h.expires_at) > HOLD_SWEEP_GRACE)
        .map(|h| Breach {
            invariant: 12,
            account_id: account_id.to_string(),
            message: format!(
                "hold {} is open {} past its expiry {}",
                h.id,
                now.duration_since(h.expires_at),
                h.expires_at
            ),
        })
        .collect()
}

/// Checks every invariant of `semantics.md` §10 for one account. Holds are
/// judged as stored: an open hold past its expiry is released by the engine
/// the next time the account is touched, so it still counts as open here.
pub fn check_account(r: AccountRecords<'_>) -> Vec<Breach> {
    let mut breaches = Vec::new();
    let mut breach = |invariant: u8, message: String| {
        breaches.push(Breach { invariant, account_id: r.account_id.to_string(), message });
    };

    // 1. Grants.
    let mut per_grant: HashMap<&str, Credits> = HashMap::new();
    let mut wallet_sum = Credits::ZERO;
    let mut total = Credits::ZERO;
    for e in r.entries {
        total += e.amount;
        match &e.grant_id {
            Some(g) => *per_grant.entry(g.as_str()).or_default() += e.amount,
            None => wallet_sum += e.amount,
        }
    }
    for g in r.grants {
        let sum = per_grant.remove(g.id.as_str()).unwrap_or_default();
        if sum != g.remaining {
            breach(1, format!("grant {}: entries sum to {sum} but remaining is {}", g.id, g.remaining));
        }
        if g.held.is_negative() || g.held > g.remaining {
            breach(1, format!("grant {}: held {} outside 0..={}", g.id, g.held, g.remaining));
        }
    }
    for (g, sum) in per_grant {
        breach(1, format!("entries of {sum} name grant {g}, which does not exist"));
    }

    // 2 and 3. Wallet and account totals.
    if wallet_sum != r.wallet.balance {
        breach(2, format!("wallet entries sum to {wallet_sum} but the balance is {}", r.wallet.balance));
    }
    let balance = r.grants.iter().map(|g| g.remaining).sum::<Credits>() + r.wallet.balance;
    if total != balance {
        breach(3, format!("entries sum to {total} but grants plus wallet are {balance}"));
    }

    // 4. Open holds equal what is held.
    let mut held_on: HashMap<&str, Credits> = HashMap::new();
    let mut wallet_held = Credits::ZERO;
    for h in r.holds.iter().filter(|h| h.status == HoldStatus::Open) {
        for p in &h.parts {
            match &p.source {
                Source::Grant { grant_id, .. } => *held_on.entry(grant_id.as_str()).or_default() += p.amount,
                Source::Wallet => wallet_held += p.amount,
            }
        }
    }
    for g in r.grants {
        let by_holds = held_on.remove(g.id.as_str()).unwrap_or_default();
        if by_holds != g.held {
            breach(4, format!("grant {}: open holds reserve {by_holds} but held is {}", g.id, g.held));
        }
    }
    for (g, amount) in held_on {
        breach(4, format!("open holds reserve {amount} on grant {g}, which does not exist"));
    }
    if wallet_held != r.wallet.held {
        breach(4, format!("open holds reserve {wallet_held} on the wallet but its held is {}", r.wallet.held));
    }

    // 5. Debt only when nothing unheld is left on a grant. A grant that is
    // voided, not started or expired cannot repay, so it does not count.
    if r.wallet.balance.is_negative() {
        for g in r.grants.iter().filter(|g| !g.voided && g.unheld().is_positive()) {
            // Without a clock, judge by what the store wrote: a grant with
            // unheld credits that has not been written off is live.
            if g.starts_at <= g.created_at {
                breach(5, format!("the wallet is {} while grant {} has {} unheld", r.wallet.balance, g.id, g.unheld()));
            }
        }
    }

    // 8. balance_after chains, in the order the entries were written.
    let mut running = Credits::ZERO;
    for e in r.entries {
        running = running.checked_add(e.amount).unwrap_or(running);
        if e.balance_after != running {
            breach(
                8,
                format!(
                    "entry {} ({}): balance_after {} but the entries so far sum to {running}",
                    e.id,
                    e.kind.as_str(),
                    e.balance_after
                ),
            );
            running = e.balance_after;
        }
    }

    // 9. Bounds.
    if r.wallet.balance.units().abs() > MAX_BALANCE.units() || r.wallet.held.is_negative() {
        breach(9, format!("wallet {} (held {}) outside +-{MAX_BALANCE}", r.wallet.balance, r.wallet.held));
    }
    for g in r.grants {
        if g.remaining.is_negative() || g.remaining > g.amount || g.amount > MAX_GRANT || !g.amount.is_positive() {
            breach(
                9,
                format!(
                    "grant {}: remaining {} of amount {} outside 0..=amount<={MAX_GRANT}",
                    g.id, g.remaining, g.amount
                ),
            );
        }
    }
    for u in r.usage {
        if u.debt_incurred.is_negative() || u.debt_incurred > u.credits || u.credits.is_negative() {
            breach(9, format!("request {}: debt_incurred {} of credits {}", u.request_id, u.debt_incurred, u.credits));
        }
    }

    // 6 and 7. Usage records against charge entries, and refunded records
    // against the refund entries that reference them.
    let mut charges: HashMap<&str, Vec<&LedgerEntry>> = HashMap::new();
    let mut refunds: HashMap<&str, Credits> = HashMap::new();
    for e in r.entries {
        if let crate::ledger::Reference::Request(id) = &e.reference {
            match e.kind {
                EntryKind::Charge => charges.entry(id.as_str()).or_default().push(e),
                EntryKind::Refund => *refunds.entry(id.as_str()).or_default() += e.amount,
                _ => {}
            }
        }
    }
    let mut seen = HashSet::new();
    for u in r.usage {
        if !seen.insert(u.request_id.as_str()) {
            breach(7, format!("request {} has more than one usage record", u.request_id));
        }
        let refunded = refunds.remove(u.request_id.as_str());
        match (u.refunded, refunded) {
            (true, Some(back)) if back == u.credits => {}
            (true, None) if u.credits.is_zero() => {}
            (false, None) => {}
            (flag, back) => breach(
                6,
                format!(
                    "request {}: refunded is {flag} but its refund entries return {}",
                    u.request_id,
                    back.unwrap_or_default()
                ),
            ),
        }
        let entries = charges.remove(u.request_id.as_str()).unwrap_or_default();
        let charged: Credits = -entries.iter().map(|e| e.amount).sum::<Credits>();
        let split: Credits = u.charged_from.iter().map(|p| p.amount).sum();
        if charged != u.credits || split != u.credits {
            breach(
                6,
                format!(
                    "request {}: credits {}, charge entries {charged}, charged_from {split}",
                    u.request_id, u.credits
                ),
            );
        }
        for p in &u.charged_from {
            let grant_id = match &p.source {
                Source::Grant { grant_id, .. } => Some(grant_id.as_str()),
                Source::Wallet => None,
            };
            let on_source: Credits =
                -entries.iter().filter(|e| e.grant_id.as_deref() == grant_id).map(|e| e.amount).sum::<Credits>();
            if on_source != p.amount {
                breach(
                    6,
                    format!("request {}: charged_from says {} but entries say {on_source}", u.request_id, p.amount),
                );
            }
        }
    }
    for (request_id, _) in charges {
        breach(7, format!("charge entries for request {request_id} without a usage record"));
    }
    for (request_id, _) in refunds {
        breach(6, format!("refund entries for request {request_id} without a usage record"));
    }
    breaches
}

/// How a payment added its credits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentKind {
    Topup,
    Pack,
    Subscription,
}

/// One refund of a payment, as recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefundFacts {
    pub credits: Credits,
    pub from_grants: Credits,
    pub lapsed: Credits,
    pub from_wallet: Credits,
    pub debt: Credits,
}

/// One payment of an account, as recorded, with its refunds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentFacts {
    /// The provider's id: what its entries reference.
    pub external_id: String,
    pub kind: PaymentKind,
    pub credits: Credits,
    pub grant_ids: Vec<String>,
    pub subscription_id: Option<String>,
    pub refunded_credits: Credits,
    pub prorated_credits: Credits,
    pub refunds: Vec<RefundFacts>,
}

/// An account's payments and subscriptions, with what invariants 10 and 11
/// compare them to.
#[derive(Clone, Copy, Debug)]
pub struct PaymentRecords<'a> {
    pub account_id: &'a str,
    pub grants: &'a [Grant],
    pub entries: &'a [LedgerEntry],
    pub payments: &'a [PaymentFacts],
    /// Every subscription of the account (ended ones too).
    pub subscriptions: &'a [Subscription],
}

/// Invariants 10 and 11: payments against their refunds, their effects and
/// the periods they paid (`docs/audit.md`).
pub fn check_payments(r: PaymentRecords<'_>) -> Vec<Breach> {
    use crate::ledger::Reference;
    let mut breaches = Vec::new();
    let mut breach = |invariant: u8, message: String| {
        breaches.push(Breach { invariant, account_id: r.account_id.to_string(), message });
    };
    let by_payment = |id: &str, kind: EntryKind| -> Credits {
        r.entries
            .iter()
            .filter(|e| e.kind == kind && matches!(&e.reference, Reference::Payment(p) if p == id))
            .map(|e| e.amount)
            .sum()
    };
    for p in r.payments {
        let id = p.external_id.as_str();
        // Entries name a payment by its id alone: where two providers used
        // the same id, they cannot be told apart.
        let unique = r.payments.iter().filter(|q| q.external_id == p.external_id).count() == 1;
        let refunded: Credits = p.refunds.iter().map(|f| f.credits).sum();
        if refunded != p.refunded_credits {
            breach(
                10,
                format!("payment {id}: refunds sum to {refunded} but refunded_credits is {}", p.refunded_credits),
            );
        }
        for f in &p.refunds {
            if f.from_grants + f.lapsed + f.from_wallet != f.credits || f.debt.is_negative() || f.debt > f.from_wallet {
                breach(
                    10,
                    format!(
                        "payment {id}: a refund of {} splits into {} + {} + {} (debt {})",
                        f.credits, f.from_grants, f.lapsed, f.from_wallet, f.debt
                    ),
                );
            }
        }
        if p.refunded_credits > p.credits + p.prorated_credits {
            breach(
                10,
                format!("payment {id}: {} refunded of {} produced", p.refunded_credits, p.credits + p.prorated_credits),
            );
        }
        // The refund entries take back what the refunds say came from the
        // grants and the wallet.
        let taken: Credits = p.refunds.iter().map(|f| f.from_grants + f.from_wallet).sum();
        let entries = -by_payment(id, EntryKind::Refund);
        if unique && entries != taken {
            breach(10, format!("payment {id}: refund entries take {entries} but its refunds took {taken}"));
        }
        // What a switch put in the wallet for it goes back first.
        let wallet_back: Credits = p.refunds.iter().map(|f| f.from_wallet).sum();
        let owed = p.prorated_credits.min(p.refunded_credits);
        if wallet_back < owed {
            breach(
                10,
                format!(
                    "payment {id}: refunds took {wallet_back} from the wallet but the payment put {owed} of what is refunded there at a switch"
                ),
            );
        }
        match p.kind {
            PaymentKind::Topup if unique => {
                let added = by_payment(id, EntryKind::Topup);
                if added != p.credits {
                    breach(10, format!("top-up {id}: topup entries add {added}, the payment {}", p.credits));
                }
            }
            PaymentKind::Pack => {
                let grant = p.grant_ids.first().and_then(|g| r.grants.iter().find(|x| &x.id == g));
                if grant.is_none_or(|g| g.amount != p.credits) {
                    breach(10, format!("pack {id}: its grant does not hold its {} credits", p.credits));
                }
            }
            PaymentKind::Topup | PaymentKind::Subscription => {}
        }
    }
    // Proration credits of each subscription: what its payments say a
    // switch put in the wallet was credited.
    for sub in r.subscriptions {
        let linked: Credits = r
            .payments
            .iter()
            .filter(|p| p.subscription_id.as_deref() == Some(sub.id.as_str()))
            .map(|p| p.prorated_credits)
            .sum();
        let credited: Credits = r
            .entries
            .iter()
            .filter(|e| {
                e.kind == EntryKind::ProrationCredit
                    && matches!(&e.reference, Reference::Subscription(s) if s == &sub.id)
            })
            .map(|e| e.amount)
            .sum();
        if linked > credited {
            breach(
                10,
                format!(
                    "subscription {}: its payments say {linked} was credited at a switch, the entries {credited}",
                    sub.id
                ),
            );
        }
        // 11. Periods paid against payments.
        let paid: Vec<(u32, &PaymentFacts)> = r
            .payments
            .iter()
            .filter(|p| p.kind == PaymentKind::Subscription && p.subscription_id.as_deref() == Some(sub.id.as_str()))
            .filter_map(|p| {
                (0..=sub.paid_through + 1)
                    .find(|&n| crate::engine::period_pool_ids(sub, n) == p.grant_ids)
                    .map(|n| (n, p))
            })
            .collect();
        if paid.is_empty() {
            continue; // Started through the API: no payment rows to compare.
        }
        let refunded_in_full =
            |p: &PaymentFacts| p.refunded_credits >= p.credits + p.prorated_credits && p.refunded_credits.is_positive();
        if sub.status.is_live() && sub.renewed() {
            // The period may have been paid, un-paid by a refund and paid
            // again: one payment for it not refunded is enough.
            let payments_of = |n: u32| paid.iter().filter(move |(m, _)| *m == n);
            let standing = payments_of(sub.paid_through).find(|(_, p)| !refunded_in_full(p));
            match standing.or_else(|| payments_of(sub.paid_through).next_back()) {
                Some((_, p)) if refunded_in_full(p) => breach(
                    11,
                    format!(
                        "subscription {}: period {} is paid but its payment {} is refunded",
                        sub.id, sub.paid_through, p.external_id
                    ),
                ),
                // A renewal through the API records no payment: nothing to compare.
                _ => {}
            }
        }
        for (n, p) in &paid {
            if *n > sub.paid_through && !refunded_in_full(p) {
                breach(
                    11,
                    format!(
                        "subscription {}: payment {} paid period {n} beyond paid_through {}",
                        sub.id, p.external_id, sub.paid_through
                    ),
                );
            }
        }
    }
    breaches
}
