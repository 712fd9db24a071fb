//! The writer's side of payments (`semantics.md` §9) and of the payment
//! providers' webhook events (`api.md` §Webhooks).
//!
//! Every payment is recorded in the same savepoint as its effect, and the
//! unique `(provider, external_id)` of `payments` means the same payment is
//! never applied twice, whichever way it arrives (API or webhook, replayed
//! or concurrent). A webhook event is recorded with its outcome in the same
//! savepoint as what it did; at most one record per provider event id is
//! `applied`. Everything here runs on the one writer thread, so "look, then
//! write" cannot race; the unique indexes are the last word all the same.

use creditd_core::account::Grant;
use creditd_core::engine::{
    self, Paid, PaymentRefund, RefundShare, Refusal, StartInput, SubscriptionChange, paid_period_pools,
    period_pool_ids, refund_credits,
};
use creditd_core::events::{Event, EventKind};
use creditd_core::subscription::{Subscription, SubscriptionKind};
use creditd_core::units::{Credits, Usd};

use super::{Pending, Writer, new_id, run_op};
use crate::sql::payments::{self as rows, RefundRow};
use crate::sql::rows as core_rows;
use crate::sql::{DbExt, WriterDb, params};
use crate::sql::{outbox, provider_calls};
use crate::{
    CancelMode, Command, Payment, PaymentKind, ProviderAction, Reply, StoreError, WebhookAction, WebhookEvent,
    WebhookEventIn, WebhookStatus,
};

/// What a webhook event came to.
// Moved once per event; `Pending` holds an account state unboxed on purpose.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Applied { pending: Pending, reason: Option<String> },
    Skipped { status: WebhookStatus, reason: String },
}

/// Facts an event's effect found about it, for its record.
#[derive(Default)]
struct Found {
    account_id: Option<String>,
    external_id: Option<String>,
}

fn duplicate_payment(provider: &str, external_id: &str) -> String {
    format!("payment {external_id:?} of {provider} was already applied")
}

/// What a payment added, for its record.
pub(super) struct Added {
    kind: PaymentKind,
    amount_usd: Usd,
    credits: Credits,
    grant_ids: Vec<String>,
    subscription_id: Option<String>,
    provider_subscription_id: Option<String>,
}

impl Added {
    pub(super) fn topup(amount_usd: Usd, credits: Credits) -> Added {
        Added {
            kind: PaymentKind::Topup,
            amount_usd,
            credits,
            grant_ids: Vec::new(),
            subscription_id: None,
            provider_subscription_id: None,
        }
    }

    pub(super) fn pack(amount_usd: Usd, grant: &Grant) -> Added {
        let grant_ids = vec![grant.id.clone()];
        Added {
            kind: PaymentKind::Pack,
            amount_usd,
            credits: grant.amount,
            grant_ids,
            subscription_id: None,
            provider_subscription_id: None,
        }
    }
}

impl<C: WriterDb> Writer<C> {
    fn payment_exists(&self, provider: &str, external_id: &str) -> Result<bool, StoreError> {
        self.conn
            .exists("SELECT 1 FROM payments WHERE provider = ?1 AND external_id = ?2", params![provider, external_id])
    }

    /// An API top-up or purchase naming a payment recorded before: `409 conflict`.
    pub(super) fn refuse_recorded(&self, provider: &str, external_id: &str) -> Result<(), StoreError> {
        if self.payment_exists(provider, external_id)? {
            return Err(Refusal::Conflict(duplicate_payment(provider, external_id)).into());
        }
        Ok(())
    }

    /// Records a payment; the unique `(provider, external_id)` refuses a second one.
    pub(super) fn record_payment(
        &self,
        provider: &str,
        external_id: &str,
        account_id: &str,
        added: Added,
    ) -> Result<(), StoreError> {
        let event = Event::new(new_id(), EventKind::PaymentApplied, account_id, self.now())
            .with("payment_id", external_id)
            .with("provider", provider)
            .with("kind", added.kind.as_str())
            .with("amount_usd", added.amount_usd)
            .with("credits", added.credits);
        let event = match &added.subscription_id {
            Some(id) => event.with("subscription_id", id),
            None => event,
        };
        outbox::write_events(&self.conn, &[event])?;
        rows::insert_payment(
            &self.conn,
            &Payment {
                provider: provider.to_string(),
                external_id: external_id.to_string(),
                account_id: account_id.to_string(),
                kind: added.kind,
                amount_usd: added.amount_usd,
                credits: added.credits,
                grant_ids: added.grant_ids,
                subscription_id: added.subscription_id,
                provider_subscription_id: added.provider_subscription_id,
                refunded_credits: Credits::ZERO,
                prorated_credits: Credits::ZERO,
                created_at: self.now(),
            },
        )
    }

    /// A paid plan period: renews the account's live monthly subscription
    /// to `plan`, otherwise starts (or switches to) `plan`. A switch away
    /// from a subscription paid through another of the provider's
    /// subscriptions cancels that one there (`cancel_replaced`).
    #[allow(clippy::too_many_arguments)]
    fn subscribe(
        &mut self,
        account_id: &str,
        plan: &str,
        kind: SubscriptionKind,
        amount_usd: Usd,
        provider: &str,
        payment_id: &str,
        provider_subscription_id: Option<String>,
        background: bool,
    ) -> Result<Pending, StoreError> {
        let state = self.cached_state(account_id, background)?;
        let last = core_rows::latest_subscription(&self.conn, account_id)?;
        let (change, state) = run_op(&self.conn, state, self.now(), self.ctx(), |tx| {
            let renews = |s: &Subscription| {
                s.plan_id == plan && s.kind == SubscriptionKind::Monthly && kind == SubscriptionKind::Monthly
            };
            let live = tx.state.subscription.clone().filter(|s| s.status.is_live() && renews(s));
            match live {
                // A renewal, or a cancelled subscription resumed.
                Some(_) => engine::renew_subscription(tx, last.as_ref()).map(|subscription| SubscriptionChange {
                    subscription,
                    previous: None,
                    proration: None,
                }),
                None => {
                    let input = StartInput { plan_id: plan.to_string(), kind, external_id: Some(payment_id.into()) };
                    engine::start_subscription(tx, input)
                }
            }
        })?;
        self.link_proration(account_id, &change)?;
        let paid_through = provider_subscription_id.as_deref().map(|id| (provider, id));
        self.cancel_replaced(account_id, &change, paid_through)?;
        let sub = change.subscription;
        let (grant_ids, credits) = paid_period_pools(&sub, &self.book.plans);
        let added = Added {
            kind: PaymentKind::Subscription,
            amount_usd,
            credits,
            grant_ids,
            subscription_id: Some(sub.id),
            provider_subscription_id,
        };
        self.record_payment(provider, payment_id, account_id, added)?;
        Ok(Pending::Account { state, background })
    }

    /// A change ended `change.previous` (a switch, or a start after it
    /// lapsed): the provider's subscription it was last paid through is
    /// cancelled there now, by a provider call written in this savepoint,
    /// unless it is the one the new subscription is paid through (`paid_through`).
    pub(super) fn cancel_replaced(
        &self,
        account_id: &str,
        change: &SubscriptionChange,
        paid_through: Option<(&str, &str)>,
    ) -> Result<(), StoreError> {
        let Some(old) = &change.previous else { return Ok(()) };
        let Some((provider, id)) = rows::provider_subscription(&self.conn, account_id, &old.id)? else {
            return Ok(());
        };
        if paid_through == Some((provider.as_str(), id.as_str())) {
            return Ok(());
        }
        let action = ProviderAction::CancelSubscription { provider_subscription_id: id, mode: CancelMode::Immediate };
        provider_calls::enqueue(&self.conn, &provider, &action, account_id, Some(&old.id), self.now())
    }

    /// A switch put the old subscription's unused share (and any period it
    /// had paid in advance) in the wallet: each part is added to the payment
    /// that bought it, so that refunding that payment reverses it too.
    pub(super) fn link_proration(&self, account_id: &str, change: &SubscriptionChange) -> Result<(), StoreError> {
        let (Some(old), Some(p)) = (&change.previous, &change.proration) else { return Ok(()) };
        if !p.credited.is_positive() && !p.prepaid_credited.is_positive() {
            return Ok(());
        }
        let payments = rows::payments_of_subscription(&self.conn, account_id, &old.id)?;
        let parts = [(old.period, p.credited), (old.paid_through, p.prepaid_credited)];
        for (period, credits) in parts.into_iter().filter(|(_, c)| c.is_positive()) {
            let ids = period_pool_ids(old, period);
            // The latest payment of that period (an earlier one may have been
            // refunded before it started, and the period paid again).
            if let Some(payment) = payments.iter().rev().find(|pay| pay.grant_ids == ids) {
                rows::add_prorated(&self.conn, &payment.provider, &payment.external_id, credits)?;
            }
        }
        Ok(())
    }

    /// The provider cancelled a subscription: creditd's stops renewing. A
    /// cancel of another subscription than the one the account's latest
    /// was paid through (one a switch replaced, which creditd cancelled
    /// there itself) changes nothing.
    fn cancel(
        &mut self,
        account_id: &str,
        provider: &str,
        provider_subscription_id: Option<&str>,
        background: bool,
    ) -> Result<Outcome, StoreError> {
        let state = self.cached_state(account_id, background)?;
        let last = core_rows::latest_subscription(&self.conn, account_id)?;
        if let (Some(cancelled), Some(last)) = (provider_subscription_id, &last)
            && let Some((paid_by, current)) = rows::provider_subscription(&self.conn, account_id, &last.id)?
            && paid_by == provider
            && current != cancelled
        {
            let reason = format!(
                "subscription {cancelled:?} of {provider} is not the one the account's subscription is paid through ({current:?})"
            );
            return Ok(Outcome::Skipped { status: WebhookStatus::Ignored, reason });
        }
        let (_, state) =
            run_op(&self.conn, state, self.now(), self.ctx(), |tx| engine::cancel_subscription(tx, last.as_ref()))?;
        Ok(Outcome::Applied { pending: Pending::Account { state, background }, reason: None })
    }

    /// `payment.refunded`, in the savepoint of the refund.
    fn refunded_event(&self, payment: &Payment, refund_id: &str, credits: Credits) -> Result<(), StoreError> {
        let event = Event::new(new_id(), EventKind::PaymentRefunded, &payment.account_id, self.now())
            .with("payment_id", &payment.external_id)
            .with("provider", &payment.provider)
            .with("refund_id", refund_id)
            .with("credits", credits);
        outbox::write_events(&self.conn, &[event])
    }

    /// Reverses what `payment` added (`semantics.md` §9) and records the refund.
    fn refund(
        &mut self,
        payment: &Payment,
        refund_id: &str,
        share: RefundShare,
        reason: Option<String>,
        background: bool,
    ) -> Result<Outcome, StoreError> {
        let now = self.now();
        // Bring the account to now first, so that what time has done to the
        // payment's grants (a plan period started, pools expired) is stored
        // like the rest before the refund looks at them.
        let state = self.cached_state(&payment.account_id, background)?;
        let ((), state) = run_op(&self.conn, state, now, self.ctx(), |_| Ok(()))?;
        // The payment of a period paid in advance that has not started: the
        // refund un-pays it (it will not start), and nothing else.
        if payment.kind == PaymentKind::Subscription
            && let Some(sub) = state.subscription.as_ref()
            && payment.subscription_id.as_deref() == Some(sub.id.as_str())
            && sub.is_active()
            && sub.renewed()
            && payment.grant_ids == period_pool_ids(sub, sub.paid_through)
            && payment.refunded_credits < payment.credits
        {
            let (_, state) = run_op(&self.conn, state, now, self.ctx(), engine::unpay_renewal)?;
            // Its credits were never granted: all of them count as lapsed.
            let left = payment.credits - payment.refunded_credits;
            let done = engine::RefundedPayment { credits: left, lapsed: left, ..Default::default() };
            let row = RefundRow { provider: &payment.provider, refund_id, payment, done, at: now };
            rows::insert_refund(&self.conn, &row)?;
            self.refunded_event(payment, refund_id, left)?;
            let summary = format!(
                "un-paid the period paid in advance by payment {:?} ({} credits never granted)",
                payment.external_id, left
            );
            return Ok(Outcome::Applied { pending: Pending::Account { state, background }, reason: Some(summary) });
        }
        // A plan payment has added the pools that exist: a period paid in
        // advance adds its pools only when it starts. What a switch put in
        // the wallet for it counts too.
        let added = match payment.kind {
            PaymentKind::Topup | PaymentKind::Pack => payment.credits,
            PaymentKind::Subscription => {
                let mut sum = Credits::ZERO;
                for id in &payment.grant_ids {
                    if let Some(g) = core_rows::grant_by_id(&self.conn, &payment.account_id, id)? {
                        sum += g.amount;
                    }
                }
                sum.min(payment.credits) + payment.prorated_credits
            }
        };
        let credits = refund_credits(added, payment.refunded_credits, share);
        if !credits.is_positive() {
            let why = if added.is_positive() {
                format!("payment {:?} is already refunded in full", payment.external_id)
            } else {
                format!("payment {:?} has added nothing yet (its plan period has not started)", payment.external_id)
            };
            return Ok(Outcome::Skipped { status: WebhookStatus::Ignored, reason: why });
        }
        let paid = match payment.kind {
            PaymentKind::Topup => Paid::Wallet,
            PaymentKind::Pack | PaymentKind::Subscription => Paid::Grants(payment.grant_ids.clone()),
        };
        let lapsed = rows::lapsed_credits(&self.conn, payment)?;
        // Each refund reverses the wallet part first, so what earlier refunds
        // left of it is what they did not cover.
        let prorated = (payment.prorated_credits - payment.refunded_credits).max(Credits::ZERO);
        let unrefunded = (added - payment.refunded_credits).max(Credits::ZERO);
        let refund = PaymentRefund {
            payment_id: payment.external_id.clone(),
            paid,
            credits,
            lapsed,
            prorated,
            unrefunded,
            reason,
        };
        let (done, state) = run_op(&self.conn, state, now, self.ctx(), |tx| engine::refund_payment(tx, refund))?;
        let row = RefundRow { provider: &payment.provider, refund_id, payment, done, at: now };
        rows::insert_refund(&self.conn, &row)?;
        self.refunded_event(payment, refund_id, done.credits)?;
        let summary = format!(
            "reversed {} credits of payment {:?}: {} unspent taken back, {} had lapsed, {} from the wallet ({} new debt)",
            done.credits, payment.external_id, done.from_grants, done.lapsed, done.from_wallet, done.debt
        );
        Ok(Outcome::Applied { pending: Pending::Account { state, background }, reason: Some(summary) })
    }

    /// The effect of one event, before it is recorded. A refusal of the
    /// engine is an outcome (`ignored`, with its reason), not a failure.
    fn webhook_effect(
        &mut self,
        provider: &str,
        action: WebhookAction,
        found: &mut Found,
        background: bool,
    ) -> Result<Outcome, StoreError> {
        let unknown =
            |id: &str| Outcome::Skipped { status: WebhookStatus::Ignored, reason: format!("unknown account {id:?}") };
        let applied = |pending| Ok(Outcome::Applied { pending, reason: None });
        match action {
            WebhookAction::Record { status, reason } => Ok(Outcome::Skipped { status, reason }),
            WebhookAction::Topup { account_id, amount_usd, payment_id } => {
                found.external_id = Some(payment_id.clone());
                if self.payment_exists(provider, &payment_id)? {
                    let reason = duplicate_payment(provider, &payment_id);
                    return Ok(Outcome::Skipped { status: WebhookStatus::Duplicate, reason });
                }
                if !self.account_exists(&account_id)? {
                    return Ok(unknown(&account_id));
                }
                let external_id = Some(payment_id);
                let command = Command::Topup { account_id, amount_usd, provider: provider.into(), external_id };
                let (_, pending) = self.apply(command, background)?;
                applied(pending)
            }
            WebhookAction::Pack { account_id, credits, amount_usd, payment_id } => {
                found.external_id = Some(payment_id.clone());
                if self.payment_exists(provider, &payment_id)? {
                    let reason = duplicate_payment(provider, &payment_id);
                    return Ok(Outcome::Skipped { status: WebhookStatus::Duplicate, reason });
                }
                if !self.account_exists(&account_id)? {
                    return Ok(unknown(&account_id));
                }
                let external_id = Some(payment_id);
                let command =
                    Command::Purchase { account_id, credits, amount_usd, provider: provider.into(), external_id };
                let (_, pending) = self.apply(command, background)?;
                applied(pending)
            }
            WebhookAction::Subscribe { account_id, plan, kind, amount_usd, payment_id, provider_subscription_id } => {
                found.external_id = Some(payment_id.clone());
                if self.payment_exists(provider, &payment_id)? {
                    let reason = duplicate_payment(provider, &payment_id);
                    return Ok(Outcome::Skipped { status: WebhookStatus::Duplicate, reason });
                }
                if !self.account_exists(&account_id)? {
                    return Ok(unknown(&account_id));
                }
                let pending = self.subscribe(
                    &account_id,
                    &plan,
                    kind,
                    amount_usd,
                    provider,
                    &payment_id,
                    provider_subscription_id,
                    background,
                )?;
                applied(pending)
            }
            WebhookAction::CancelSubscription { account_id, provider_subscription_id } => {
                if !self.account_exists(&account_id)? {
                    return Ok(unknown(&account_id));
                }
                self.cancel(&account_id, provider, provider_subscription_id.as_deref(), background)
            }
            WebhookAction::Refund { refund_id, payment_ids, share, reason } => {
                found.external_id = Some(refund_id.clone());
                if rows::refund_exists(&self.conn, provider, &refund_id)? {
                    let reason = format!("refund {refund_id:?} of {provider} was already applied");
                    return Ok(Outcome::Skipped { status: WebhookStatus::Duplicate, reason });
                }
                let mut payment = None;
                for id in &payment_ids {
                    if let Some(p) = rows::payment_by_id(&self.conn, provider, id)? {
                        payment = Some(p);
                        break;
                    }
                }
                let Some(payment) = payment else {
                    let reason = format!("the refund names no payment creditd recorded (looked for {payment_ids:?})");
                    return Ok(Outcome::Skipped { status: WebhookStatus::Ignored, reason });
                };
                found.account_id = Some(payment.account_id.clone());
                // Where other writers share the database, one may be applying
                // this refund, or another of the same payment: lock the
                // payment's account, then look again at what was refunded.
                if self.conn.lock_account(&payment.account_id)? {
                    self.cache.pop(&payment.account_id);
                }
                if rows::refund_exists(&self.conn, provider, &refund_id)? {
                    let reason = format!("refund {refund_id:?} of {provider} was already applied");
                    return Ok(Outcome::Skipped { status: WebhookStatus::Duplicate, reason });
                }
                let payment = rows::payment_by_id(&self.conn, provider, &payment.external_id)?.unwrap_or(payment);
                self.refund(&payment, &refund_id, share, reason, background)
            }
        }
    }

    /// Records a verified webhook event and applies what it asks for, in
    /// the command's savepoint: both or neither are committed.
    pub(super) fn webhook_event(
        &mut self,
        event: WebhookEventIn,
        background: bool,
    ) -> Result<(Reply, Pending), StoreError> {
        let WebhookEventIn { provider, event_id, event_type, account_id, body, action } = event;
        let mut record = WebhookEvent {
            id: new_id(),
            provider,
            event_id,
            event_type,
            status: WebhookStatus::Applied,
            reason: None,
            account_id,
            external_id: None,
            received_at: self.now(),
            body,
        };
        let replayed = match &record.event_id {
            Some(id) => rows::event_applied(&self.conn, &record.provider, id)?,
            None => false,
        };
        let mut found = Found::default();
        let outcome = if replayed {
            let reason = format!("event {:?} was applied before", record.event_id.as_deref().unwrap_or_default());
            Outcome::Skipped { status: WebhookStatus::Duplicate, reason }
        } else {
            // The effect in a savepoint of its own: a refusal part way
            // leaves nothing behind, and the event is still recorded.
            self.conn.savepoint("effect")?;
            let result = self.webhook_effect(&record.provider, action, &mut found, background);
            let result = match result {
                Ok(Outcome::Applied { pending, reason }) => {
                    self.conn.release_savepoint("effect").map(|()| Outcome::Applied { pending, reason })
                }
                other => {
                    self.conn.rollback_to_savepoint("effect")?;
                    self.conn.release_savepoint("effect")?;
                    other
                }
            };
            match result {
                Ok(outcome) => outcome,
                Err(StoreError::Refused(refusal)) => {
                    Outcome::Skipped { status: WebhookStatus::Ignored, reason: refusal.to_string() }
                }
                Err(e) => return Err(e),
            }
        };
        record.account_id = found.account_id.or(record.account_id);
        record.external_id = found.external_id;
        let pending = match outcome {
            Outcome::Applied { pending, reason } => {
                record.reason = reason;
                pending
            }
            Outcome::Skipped { status, reason } => {
                record.status = status;
                record.reason = Some(reason);
                Pending::Nothing
            }
        };
        rows::insert_event(&self.conn, &record)?;
        Ok((Reply::WebhookEvent(record), pending))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use creditd_core::PlanBook;
    use rusqlite::Connection;
    use tokio::sync::oneshot;

    use super::*;
    use crate::sql::writer::{Job, Stats};
    use crate::sqlite::{open_writer_connection, schema};
    use crate::{EngineConfig, ManualClock, WriterLimits};

    fn writer(dir: &tempfile::TempDir) -> Writer<Connection> {
        let conn = open_writer_connection(&dir.path().join("w.db")).expect("open");
        schema::migrate(&conn).expect("migrate");
        let clock = Arc::new(ManualClock::new("2026-03-01T00:00:00Z".parse().expect("time")));
        let limits = WriterLimits::default();
        let stats = Arc::new(Stats::default());
        Writer::new(conn, EngineConfig::default(), limits, clock, HashMap::new(), PlanBook::default(), stats)
    }

    fn run(w: &mut Writer<Connection>, commands: Vec<Command>) -> Vec<Result<Reply, StoreError>> {
        let (jobs, answers): (Vec<_>, Vec<_>) = commands
            .into_iter()
            .map(|command| {
                let (tx, rx) = oneshot::channel();
                (Job { command, idempotent: None, reply: Some(tx) }, rx)
            })
            .unzip();
        w.run_batch(jobs);
        answers.into_iter().map(|mut rx| rx.try_recv().expect("answered")).collect()
    }

    fn topup_event(event_id: &str, payment_id: &str) -> Command {
        Command::WebhookEvent {
            event: WebhookEventIn {
                provider: "creem".into(),
                event_id: Some(event_id.into()),
                event_type: Some("checkout.completed".into()),
                account_id: Some("a".into()),
                body: b"{}".to_vec(),
                action: WebhookAction::Topup {
                    account_id: "a".into(),
                    amount_usd: Usd::whole(20),
                    payment_id: payment_id.into(),
                },
            },
        }
    }

    fn status(reply: &Result<Reply, StoreError>) -> Option<WebhookStatus> {
        match reply {
            Ok(Reply::WebhookEvent(e)) => Some(e.status),
            _ => None,
        }
    }

    fn wallet(w: &Writer<Connection>) -> i64 {
        w.conn.query_row("SELECT wallet_balance FROM accounts WHERE id = 'a'", [], |r| r.get(0)).expect("wallet")
    }

    /// One batch holding the same event twice and the same payment under
    /// another event id: one applied, the others duplicates.
    #[test]
    fn duplicates_in_one_batch_are_applied_once() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let mut w = writer(&dir);
        let create = Command::CreateAccount { id: "a".into(), email: None, metadata: None };
        let answers =
            run(&mut w, vec![create, topup_event("e1", "p1"), topup_event("e1", "p1"), topup_event("e2", "p1")]);
        let got: Vec<_> = answers[1..].iter().map(status).collect();
        use WebhookStatus::{Applied, Duplicate};
        assert_eq!(got, [Some(Applied), Some(Duplicate), Some(Duplicate)]);
        assert_eq!(wallet(&w), Credits::whole(2000).units());
        let payments: i64 = w.conn.query_row("SELECT COUNT(*) FROM payments", [], |r| r.get(0)).expect("count");
        assert_eq!(payments, 1);
    }

    /// The event record and its effect are one savepoint: if the record
    /// cannot be written, the top-up is not kept either (and the provider,
    /// answered with an error, delivers again).
    #[test]
    fn an_event_that_cannot_be_recorded_leaves_no_effect() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let mut w = writer(&dir);
        w.conn
            .execute_batch(
                "CREATE TRIGGER boom BEFORE INSERT ON webhook_events WHEN NEW.event_id = 'boom'
                 BEGIN SELECT RAISE(ABORT, 'boom'); END;",
            )
            .expect("trigger");
        let create = Command::CreateAccount { id: "a".into(), email: None, metadata: None };
        let answers = run(&mut w, vec![create, topup_event("boom", "p1"), topup_event("e2", "p2")]);
        assert!(matches!(answers[1], Err(StoreError::Internal(_))), "{:?}", answers[1]);
        assert_eq!(status(&answers[2]), Some(WebhookStatus::Applied));
        assert_eq!(wallet(&w), Credits::whole(2000).units(), "only the second top-up is kept");
        let ids: Vec<String> = w
            .conn
            .prepare("SELECT external_id FROM payments")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(ids, ["p2"]);
        // The cache agrees with the database (the failed command left no trace).
        let cached = w.cache.peek("a").expect("cached").clone();
        assert_eq!(core_rows::load_state(&w.conn, "a").expect("load"), Some(cached));
        // Delivered again once the failure is gone: applied.
        w.conn.execute_batch("DROP TRIGGER boom").expect("drop");
        let answers = run(&mut w, vec![topup_event("boom", "p1")]);
        assert_eq!(status(&answers[0]), Some(WebhookStatus::Applied));
        assert_eq!(wallet(&w), Credits::whole(4000).units());
    }
}
