//! The ledger invariants of `semantics.md` §10, checked over everything the
//! store holds for one account. `creditd audit`, the property tests and the
//! store's debug assertions all call [`check_account`].

use std::collections::{HashMap, HashSet};

use crate::account::{Grant, Hold, HoldStatus, Source, UsageRecord, Wallet};
use crate::ledger::{EntryKind, LedgerEntry};
use crate::units::Credits;

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

/// The invariants, as named in the audit's report.
pub const INVARIANTS: [&str; 7] = [
    "1 each grant's entries sum to its remaining, and 0 <= held <= remaining",
    "2 the wallet's balance equals the sum of its entries",
    "3 all entries of an account sum to its grants' remaining plus its wallet",
    "4 each open hold's parts equal what it holds on each grant and the wallet",
    "5 while the wallet is negative no grant has unheld remaining credits",
    "6 each usage record's charge equals its charge entries, split as charged_from says (and a refunded record's refund entries)",
    "7 no request id is charged twice",
];

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
