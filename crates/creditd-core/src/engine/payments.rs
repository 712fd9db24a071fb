//! Refunds of payments (`semantics.md` §9): a refund reverses what the
//! payment added as far as it is unspent; the spent rest becomes wallet
//! debt, which the account's other credits then repay (§5).

use super::advance::{period_pool_ids, pool_grant_id};
use super::{Refusal, Tx};
use crate::ledger::{EntryKind, Reference};
use crate::plan::PlanBook;
use crate::subscription::Subscription;
use crate::units::{Credits, MAX_GRANT, Usd, div_round_half_up};

/// Where a payment's credits went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Paid {
    /// A top-up: into the wallet.
    Wallet,
    /// A credit pack (one grant) or a plan period (its pools): into these
    /// grants, taken back from in this order.
    Grants(Vec<String>),
}

/// How much of a payment a refund gives back, in the provider's own
/// terms (any currency: only the ratio is used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundShare {
    /// Everything not refunded yet.
    Full,
    /// `refunded` of `paid` (minor units of one currency). At least all of
    /// it when `refunded ≥ paid` (a refund that includes the tax).
    Part { refunded: u64, paid: u64 },
}

/// The credits a refund reverses: the share of what the payment added,
/// rounded half up to the micro-credit, and never more than what earlier
/// refunds of the payment left. Zero when nothing is left to refund.
pub fn refund_credits(paid_credits: Credits, already_refunded: Credits, share: RefundShare) -> Credits {
    let left = (paid_credits - already_refunded).max(Credits::ZERO);
    let wanted = match share {
        RefundShare::Full => left,
        RefundShare::Part { paid: 0, .. } => left,
        RefundShare::Part { refunded, paid } if refunded >= paid => left,
        RefundShare::Part { refunded, paid } => {
            let exact = i128::from(paid_credits.units()) * i128::from(refunded);
            let units = div_round_half_up(exact, i128::from(paid));
            // `refunded < paid`, so the share is below `paid_credits` and fits.
            Credits::from_units(i64::try_from(units).unwrap_or(i64::MAX))
        }
    };
    wanted.min(left)
}

/// What the payment of a subscription's paid period adds: that period's
/// pools (the ids the engine gives them, whether they exist yet or come at
/// the period's start) and their credits under the subscription's plan.
pub fn paid_period_pools(sub: &Subscription, plans: &PlanBook) -> (Vec<String>, Credits) {
    let period = sub.paid_through.to_string();
    let ids = ["main", "backup"].iter().map(|part| pool_grant_id(sub, part, &period)).collect();
    let credits = plans
        .get(&sub.plan_id)
        .map_or(Credits::ZERO, |p| p.main_pool().min(MAX_GRANT) + p.backup_pool().min(MAX_GRANT));
    (ids, credits)
}

/// A refund to apply to the account that received the payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentRefund {
    /// The payment's id at its provider: the reference of the entries.
    pub payment_id: String,
    pub paid: Paid,
    /// What to reverse (see [`refund_credits`]); above zero.
    pub credits: Credits,
    /// Credits of the payment's grants that expired or were voided without
    /// being spent, as stored before this operation, and that no earlier
    /// refund of the payment counted: gone already, so reversing them costs
    /// nothing. What bringing the account to now expires is added.
    pub lapsed: Credits,
    /// What the payment later put in the wallet (its proration credit when
    /// its subscription was switched away) and no earlier refund reversed:
    /// reversed first, from the wallet.
    pub prorated: Credits,
    /// What the payment added that no earlier refund reversed (`credits` is
    /// a share of it): the base of the share of its period's price that a
    /// refund of the current period's payment takes back.
    pub unrefunded: Credits,
    pub reason: Option<String>,
}

/// What a payment refund did: `credits = from_grants + lapsed + from_wallet`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefundedPayment {
    pub credits: Credits,
    /// Taken back from the payment's own grants, as far as they were
    /// unspent (and not held).
    pub from_grants: Credits,
    /// Counted as already gone (expired or voided unspent).
    pub lapsed: Credits,
    /// Taken from the wallet: all of a top-up; what was spent of a grant.
    pub from_wallet: Credits,
    /// Of `from_wallet`, what the wallet did not have: the new debt, before
    /// the account's other credits repaid it.
    pub debt: Credits,
}

/// The decision (`semantics.md` §9): first what the payment put in the
/// wallet at a switch (`prorated`), then what of `refund.credits` each of
/// the payment's grants still has unspent (unheld, live), what had lapsed,
/// and the spent rest, which the wallet pays (a top-up is all wallet).
fn split_refund(tx: &Tx<'_>, refund: &PaymentRefund) -> (Vec<(String, Credits)>, Credits, Credits) {
    let mut left = refund.credits;
    // What the payment put in the wallet at a switch goes back first.
    let prorated = refund.prorated.max(Credits::ZERO).min(left);
    left -= prorated;
    let mut from_grants = Vec::new();
    if let Paid::Grants(ids) = &refund.paid {
        for id in ids {
            let unspent = tx
                .state
                .grant(id)
                .filter(|g| !g.voided && g.has_started(tx.now) && !g.is_expired(tx.now))
                .map_or(Credits::ZERO, |g| g.unheld().max(Credits::ZERO).min(left));
            if unspent.is_positive() {
                from_grants.push((id.clone(), unspent));
                left -= unspent;
            }
        }
    }
    let lapsed = match &refund.paid {
        Paid::Wallet => Credits::ZERO,
        Paid::Grants(ids) => {
            // What bringing the account to now has just expired counts too.
            let now: Credits = tx
                .changes
                .entries
                .iter()
                .filter(|e| matches!(e.kind, EntryKind::Expire | EntryKind::Void))
                .filter(|e| e.grant_id.as_ref().is_some_and(|g| ids.contains(g)))
                .map(|e| -e.amount)
                .sum();
            (refund.lapsed + now).max(Credits::ZERO).min(left)
        }
    };
    (from_grants, lapsed, prorated + left - lapsed)
}

/// Reverses `refund.credits` of a payment (`semantics.md` §9): from its own
/// grants as far as they are unspent; credits that lapsed unspent are
/// already gone; the spent rest is taken from the wallet, which may go
/// negative (debt). Each part is a `refund` entry (negative) referencing
/// the payment. Debt is then repaid from the account's other grants in
/// burn order, so invariant 5 of §10 holds.
pub fn refund_payment(tx: &mut Tx<'_>, refund: PaymentRefund) -> Result<RefundedPayment, Refusal> {
    if !refund.credits.is_positive() {
        return Err(Refusal::Conflict(format!("payment {:?} has nothing left to refund", refund.payment_id)));
    }
    let now = tx.now;
    let (from_grants, lapsed, from_wallet) = split_refund(tx, &refund);
    let reference = || Reference::Payment(refund.payment_id.clone());
    let mut done = RefundedPayment { credits: refund.credits, lapsed, from_wallet, ..RefundedPayment::default() };
    for (grant_id, amount) in from_grants {
        let grant = tx.grant_mut(&grant_id).expect("found by split_refund");
        grant.remaining -= amount;
        tx.entry_with_reason(now, EntryKind::Refund, -amount, Some(&grant_id), reference(), refund.reason.clone());
        done.from_grants += amount;
    }
    if from_wallet.is_positive() {
        let debt_before = tx.state.wallet.debt();
        tx.add_to_wallet(-from_wallet)?;
        done.debt = tx.state.wallet.debt() - debt_before;
        tx.entry_with_reason(now, EntryKind::Refund, -from_wallet, None, reference(), refund.reason.clone());
    }
    tx.repay_debt(now);
    lower_period_price(tx, &refund);
    Ok(done)
}

/// A refund of the payment for the live subscription's current period
/// lowers the price that period was bought at by the refunded share
/// (`docs/money.md`): proration at a later switch credits the unused share
/// of what is still paid, so a period refunded in full credits nothing.
/// The remaining price rounds down: never more than was paid.
fn lower_period_price(tx: &mut Tx<'_>, refund: &PaymentRefund) {
    let Paid::Grants(ids) = &refund.paid else { return };
    let plan_price = |plan_id: &str| tx.ctx.plans.get(plan_id).map(|p| p.price_usd);
    let Some(sub) = tx.state.subscription.as_ref().filter(|s| s.is_active()) else { return };
    if period_pool_ids(sub, sub.period) != *ids || !refund.unrefunded.is_positive() {
        return;
    }
    let price = sub.price_paid(plan_price(&sub.plan_id));
    let left = (refund.unrefunded - refund.credits).max(Credits::ZERO);
    let base = refund.unrefunded;
    // price ≤ 10^18 nano-USD and left ≤ base ≤ MAX_BALANCE: the product fits i128.
    let lowered = i128::from(price.units()) * i128::from(left.units()) / i128::from(base.units());
    let mut sub = sub.clone();
    sub.price_usd = Some(Usd::from_units(i64::try_from(lowered).unwrap_or(price.units())));
    tx.state.subscription = Some(sub);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::{AccountState, GrantKind};
    use crate::campaign::Billing;
    use crate::engine::{Context, NewGrant, apply, credit_wallet, grant};
    use crate::invariants::{AccountRecords, check_account};
    use crate::ledger::LedgerEntry;
    use crate::plan::PlanBook;
    use crate::pricing::PricingPolicy;
    use jiff::Timestamp;

    /// One account driven through the engine, keeping every grant and entry
    /// so the §10 invariants can be checked after each step.
    struct Fixture {
        state: AccountState,
        grants: Vec<crate::account::Grant>,
        entries: Vec<LedgerEntry>,
        next: u64,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture { state: AccountState::new("a"), grants: Vec::new(), entries: Vec::new(), next: 0 }
        }

        fn run<T>(&mut self, op: impl FnOnce(&mut Tx<'_>) -> Result<T, Refusal>) -> Result<T, Refusal> {
            let (policy, billing, plans) = (PricingPolicy::default(), Billing::default(), PlanBook::default());
            let ctx = Context { policy: &policy, billing: &billing, plans: &plans };
            let now: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
            let mut next = self.next;
            let mut ids = || {
                next += 1;
                format!("id-{next}")
            };
            let out = apply(&mut self.state, now, ctx, &mut ids, op);
            self.next = next;
            let (answer, changes) = out?;
            for g in changes.grants {
                match self.grants.iter_mut().find(|x| x.id == g.id) {
                    Some(x) => *x = g,
                    None => self.grants.push(g),
                }
            }
            self.entries.extend(changes.entries);
            let breaches = check_account(AccountRecords {
                account_id: "a",
                grants: &self.grants,
                wallet: self.state.wallet,
                holds: &[],
                entries: &self.entries,
                usage: &[],
            });
            // Spending here is a bare charge without a usage record: the
            // invariants a refund can break are 1 to 5.
            let breaches: Vec<_> = breaches.into_iter().filter(|b| b.invariant <= 5).collect();
            assert!(breaches.is_empty(), "{breaches:?}");
            Ok(answer)
        }

        fn grant(&mut self, kind: GrantKind, credits: &str) -> String {
            let new = NewGrant {
                kind,
                source: "test".into(),
                reason: None,
                amount: cr(credits),
                priority: None,
                starts_at: None,
                expires_at: None,
                reference: Reference::None,
            };
            self.run(|tx| grant(tx, new)).unwrap().id
        }

        fn topup(&mut self, credits: &str) {
            self.run(|tx| credit_wallet(tx, EntryKind::Topup, cr(credits), Reference::Payment("p".into()), None))
                .unwrap();
        }

        /// Spends in burn order, as a charge does.
        fn spend(&mut self, credits: &str) {
            self.run(|tx| tx.charge(cr(credits), "r", false).map(|_| ())).unwrap();
        }

        fn refund(&mut self, paid: Paid, credits: &str) -> RefundedPayment {
            self.refund_lapsed(paid, credits, "0")
        }

        fn refund_lapsed(&mut self, paid: Paid, credits: &str, lapsed: &str) -> RefundedPayment {
            let refund = PaymentRefund {
                payment_id: "p".into(),
                paid,
                credits: cr(credits),
                lapsed: cr(lapsed),
                prorated: Credits::ZERO,
                unrefunded: cr(credits),
                reason: None,
            };
            self.run(|tx| refund_payment(tx, refund)).unwrap()
        }

        fn remaining(&self, grant_id: &str) -> Credits {
            self.state.grant(grant_id).map_or(Credits::ZERO, |g| g.remaining)
        }
    }

    fn cr(text: &str) -> Credits {
        Credits::parse(text).unwrap()
    }

    #[test]
    fn shares_are_proportional_capped_and_never_refund_twice() {
        let paid = cr("2000");
        assert_eq!(refund_credits(paid, Credits::ZERO, RefundShare::Full), paid);
        assert_eq!(refund_credits(paid, Credits::ZERO, RefundShare::Part { refunded: 500, paid: 2000 }), cr("500"));
        // A refund of the amount paid with tax is all of it, not more.
        assert_eq!(refund_credits(paid, Credits::ZERO, RefundShare::Part { refunded: 2420, paid: 2000 }), paid);
        assert_eq!(refund_credits(paid, cr("1500"), RefundShare::Part { refunded: 1000, paid: 2000 }), cr("500"));
        assert_eq!(refund_credits(paid, paid, RefundShare::Full), Credits::ZERO);
        // Half up to the micro-credit: 1 of 3 of 1 credit.
        assert_eq!(refund_credits(cr("1"), Credits::ZERO, RefundShare::Part { refunded: 2, paid: 3 }), cr("0.666667"));
        assert_eq!(refund_credits(paid, Credits::ZERO, RefundShare::Part { refunded: 1, paid: 0 }), paid);
    }

    #[test]
    fn an_unspent_top_up_is_taken_back_whole() {
        let mut f = Fixture::new();
        f.topup("2000");
        let done = f.refund(Paid::Wallet, "2000");
        let expected = RefundedPayment { credits: cr("2000"), from_wallet: cr("2000"), ..RefundedPayment::default() };
        assert_eq!(done, expected);
        assert_eq!(f.state.wallet.balance, Credits::ZERO);
        let refund = f.entries.last().unwrap();
        assert_eq!((refund.kind, refund.amount, refund.grant_id.as_deref()), (EntryKind::Refund, cr("-2000"), None));
        assert_eq!(refund.reference, Reference::Payment("p".into()));
    }

    #[test]
    fn a_partly_spent_top_up_leaves_debt_that_other_credits_repay() {
        let mut f = Fixture::new();
        f.topup("2000");
        f.spend("1500");
        let done = f.refund(Paid::Wallet, "2000");
        assert_eq!(done.debt, cr("1500"));
        assert_eq!(f.state.wallet.balance, cr("-1500"));
        // A later grant repays the debt first (§5).
        let promo = f.grant(GrantKind::Promo, "1000");
        assert_eq!(f.remaining(&promo), Credits::ZERO);
        assert_eq!(f.state.wallet.balance, cr("-500"));
    }

    #[test]
    fn a_pack_refund_takes_its_unspent_grant_and_turns_the_spent_rest_into_debt() {
        let mut f = Fixture::new();
        let pack = f.grant(GrantKind::Purchased, "500");
        f.spend("200");
        let done = f.refund(Paid::Grants(vec![pack.clone()]), "500");
        let expected = RefundedPayment {
            credits: cr("500"),
            from_grants: cr("300"),
            lapsed: Credits::ZERO,
            from_wallet: cr("200"),
            debt: cr("200"),
        };
        assert_eq!(done, expected);
        assert_eq!(f.remaining(&pack), Credits::ZERO);
        assert_eq!(f.state.wallet.balance, cr("-200"));
    }

    #[test]
    fn debt_from_a_refund_is_repaid_at_once_from_other_grants() {
        let mut f = Fixture::new();
        let promo = f.grant(GrantKind::Promo, "100");
        let pack = f.grant(GrantKind::Purchased, "500");
        // Promo first (priority 10), then 250 of the pack.
        f.spend("350");
        assert_eq!(f.remaining(&pack), cr("250"));
        f.topup("30");
        let done = f.refund(Paid::Grants(vec![pack.clone()]), "500");
        // 250 unspent back from the pack; 250 from the wallet, which had 30.
        assert_eq!((done.from_grants, done.from_wallet, done.debt), (cr("250"), cr("250"), cr("220")));
        assert_eq!(f.state.wallet.balance, cr("-220"));
        assert_eq!(f.remaining(&promo), Credits::ZERO);
    }

    #[test]
    fn a_partial_pack_refund_leaves_the_rest_of_the_grant() {
        let mut f = Fixture::new();
        let pack = f.grant(GrantKind::Purchased, "500");
        let done = f.refund(Paid::Grants(vec![pack.clone()]), "100");
        assert_eq!((done.from_grants, done.debt), (cr("100"), Credits::ZERO));
        assert_eq!(f.remaining(&pack), cr("400"));
    }

    #[test]
    fn nothing_left_to_refund_is_refused() {
        let mut f = Fixture::new();
        let refund = PaymentRefund {
            payment_id: "p".into(),
            paid: Paid::Wallet,
            credits: Credits::ZERO,
            lapsed: cr("5"),
            prorated: Credits::ZERO,
            unrefunded: Credits::ZERO,
            reason: None,
        };
        assert!(matches!(f.run(|tx| refund_payment(tx, refund)), Err(Refusal::Conflict(_))));
    }

    #[test]
    fn credits_that_lapsed_unspent_are_not_debt() {
        let mut f = Fixture::new();
        let main = f.grant(GrantKind::PlanMain, "1200");
        let backup = f.grant(GrantKind::PlanBackup, "3000");
        f.spend("1500");
        // Main spent; backup has 2700. Say 1000 of the period's credits had
        // expired unspent before: 4200 = 2700 back + 1000 lapsed + 500 debt.
        let done = f.refund_lapsed(Paid::Grants(vec![main.clone(), backup.clone()]), "4200", "1000");
        assert_eq!(
            (done.from_grants, done.lapsed, done.from_wallet, done.debt),
            (cr("2700"), cr("1000"), cr("500"), cr("500"))
        );
        assert_eq!(f.remaining(&backup), Credits::ZERO);
        assert_eq!(f.state.wallet.balance, cr("-500"));
        // A top-up never lapses: all of it comes from the wallet.
        let mut f = Fixture::new();
        f.topup("100");
        let done = f.refund_lapsed(Paid::Wallet, "100", "100");
        assert_eq!((done.lapsed, done.from_wallet), (Credits::ZERO, cr("100")));
    }
}
