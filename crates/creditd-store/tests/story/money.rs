//! Regressions of issue #12 ("money correctness") through a store: plan
//! payments and their refunds by webhook, switches, un-cancel, replays.
//! Each block is named after the defect it pins. Run by every backend on a
//! fresh store with [`config`] and a clock at [`START`].

use std::sync::Arc;

use creditd_core::account::GrantKind;
use creditd_core::engine::RefundShare;
use creditd_core::ledger::EntryKind;
use creditd_core::limits::RequestLimits;
use creditd_core::plan::{ModelAccess, Plan};
use creditd_core::subscription::{SubscriptionKind, SubscriptionStatus};
use creditd_core::units::{Credits, Factor, Usd};
use creditd_store::{
    AuthorizeRequest, Clock, Command, EngineConfig, LedgerFilter, ManualClock, Reply, Store, WebhookAction,
    WebhookEventIn, WebhookStatus,
};
use jiff::Timestamp;

use super::{all, model, outcome, promo, run, usage};

pub const START: &str = "2027-03-01T00:00:00Z";

pub fn config() -> EngineConfig {
    EngineConfig::default()
}

fn cr(n: i64) -> Credits {
    Credits::whole(n)
}

fn at(t: &str) -> Timestamp {
    t.parse().expect("time")
}

fn plan(id: &str, price: i64, monthly: i64) -> Plan {
    Plan {
        id: id.into(),
        name: id.into(),
        price_usd: Usd::whole(price),
        monthly_credits: cr(monthly),
        bonus_percent: Factor::whole(20),
        backup_multiplier: Factor::whole(3),
        limits: RequestLimits::default(),
        model_access: ModelAccess::All,
        cost_budget_multiplier: Some(Factor::whole(10)),
    }
}

struct Shop<'a> {
    s: &'a dyn Store,
    events: u32,
}

impl Shop<'_> {
    async fn event(&mut self, account: &str, action: WebhookAction) -> (WebhookStatus, Option<String>) {
        self.events += 1;
        let event = WebhookEventIn {
            provider: "creem".into(),
            event_id: Some(format!("evt_{}", self.events)),
            event_type: Some("test".into()),
            account_id: Some(account.into()),
            body: b"{}".to_vec(),
            action,
        };
        match run(self.s, Command::WebhookEvent { event }).await {
            Reply::WebhookEvent(e) => (e.status, e.reason),
            other => panic!("not an event: {other:?}"),
        }
    }

    async fn paid(&mut self, account: &str, plan: &str, payment: &str) -> (WebhookStatus, Option<String>) {
        let action = WebhookAction::Subscribe {
            account_id: account.into(),
            plan: plan.into(),
            kind: SubscriptionKind::Monthly,
            amount_usd: Usd::whole(10),
            payment_id: payment.into(),
            provider_subscription_id: None,
        };
        self.event(account, action).await
    }

    async fn refund(&mut self, account: &str, payment: &str) -> (WebhookStatus, Option<String>) {
        let action = WebhookAction::Refund {
            refund_id: format!("re_{payment}"),
            payment_ids: vec![payment.into()],
            share: RefundShare::Full,
            reason: None,
        };
        self.event(account, action).await
    }

    async fn wallet(&self, account: &str) -> Credits {
        self.s.account_state(account).await.expect("read").expect("state").wallet.balance
    }

    async fn entries(&self, account: &str, kind: EntryKind) -> Vec<creditd_core::ledger::LedgerEntry> {
        let filter = LedgerFilter { kind: Some(kind), ..LedgerFilter::default() };
        self.s.ledger(account, filter, all()).await.expect("ledger").data
    }
}

async fn create(s: &dyn Store, id: &str) {
    run(s, Command::CreateAccount { id: id.into(), email: None, metadata: None }).await;
}

pub async fn money(store: Arc<dyn Store>, clock: Arc<ManualClock>) {
    let s = store.as_ref();
    assert_eq!(clock.now(), at(START));
    for p in [plan("starter", 10, 1000), plan("pro", 50, 5000), plan("ultra", 200, 20000), plan("basic", 10, 1000)] {
        run(s, Command::PutPlan { plan: p }).await;
    }
    run(s, Command::PutModel { id: "m1".into(), price: model(1) }).await;
    let mut shop = Shop { s, events: 0 };
    use WebhookStatus::Applied;

    // 1. A renewal paid in advance is lost on a plan switch: subscribe Mar 1,
    // renew Mar 30 (April paid), switch Mar 31. April is credited in full.
    for a in ["a1", "a2", "a3", "a4", "a5", "a6"] {
        create(s, a).await;
    }
    assert_eq!(shop.paid("a1", "starter", "t1").await.0, Applied);
    // 2. (set up) a2 pays March and April.
    assert_eq!(shop.paid("a2", "starter", "u1").await.0, Applied);
    // 3. (set up) a3 pays starter; 5. (set up) a5 pays starter.
    assert_eq!(shop.paid("a3", "starter", "v1").await.0, Applied);
    assert_eq!(shop.paid("a5", "starter", "x1").await.0, Applied);
    // 4. (set up) a4 buys basic at 10 USD.
    assert_eq!(shop.paid("a4", "basic", "w1").await.0, Applied);
    // (set up) a6 pays starter, for the switch after a full refund below.
    assert_eq!(shop.paid("a6", "starter", "y1").await.0, Applied);

    // 3. Refunding the old plan's payment after a switch leaves its
    // proration credit: a3 switches to ultra an hour later (900 credits to
    // the wallet), then the starter payment is refunded in full.
    clock.set(at("2027-03-01T01:00:00Z")).expect("clock");
    assert_eq!(shop.paid("a3", "ultra", "v2").await.0, Applied);
    assert_eq!(shop.wallet("a3").await, cr(900));
    assert_eq!(s.payment("creem", "v1").await.expect("read").expect("payment").prorated_credits, cr(900));
    let (status, reason) = shop.refund("a3", "v1").await;
    assert_eq!(status, Applied, "{reason:?}");
    assert_eq!(shop.wallet("a3").await, Credits::ZERO, "the proration credit is reversed");
    let refunds = shop.entries("a3", EntryKind::Refund).await;
    assert_eq!(
        refunds.iter().filter(|e| e.grant_id.is_none()).map(|e| e.amount).sum::<Credits>(),
        cr(-900),
        "{refunds:?}"
    );

    // A switch after the current period's payment was refunded in full
    // credits nothing for that period (found by the model test, seed 1600):
    // the refund lowers what the period was bought at to what is still paid.
    let (status, reason) = shop.refund("a6", "y1").await;
    assert_eq!(status, Applied, "{reason:?}");
    assert_eq!(s.subscription("a6").await.expect("read").expect("sub").price_usd, Some(Usd::ZERO));
    assert_eq!(shop.paid("a6", "pro", "y2").await.0, Applied);
    assert_eq!(shop.entries("a6", EntryKind::ProrationCredit).await, vec![]);
    assert_eq!(shop.wallet("a6").await, Credits::ZERO);

    // 4. Proration uses the plan's current price: the operator raises basic
    // to 100 USD, a4 (who paid 10) switches to ultra: at most 9 USD back.
    run(s, Command::PutPlan { plan: plan("basic", 100, 1000) }).await;
    let change = match run(
        s,
        Command::StartSubscription {
            account_id: "a4".into(),
            plan: "ultra".into(),
            kind: SubscriptionKind::Monthly,
            external_id: None,
        },
    )
    .await
    {
        Reply::Subscription(c) => c,
        other => panic!("{other:?}"),
    };
    let p = change.proration.expect("a switch");
    assert_eq!((p.credit_usd, p.credited), (Usd::whole(9), cr(900)));

    // 5. Cancel, then pay again for the same plan: the payment resumes it.
    assert_eq!(
        shop.event("a5", WebhookAction::CancelSubscription { account_id: "a5".into(), provider_subscription_id: None })
            .await
            .0,
        Applied
    );
    let (status, reason) = shop.paid("a5", "starter", "x2").await;
    assert_eq!(status, Applied, "{reason:?}");
    let sub = s.subscription("a5").await.expect("read").expect("sub");
    assert!(!sub.cancel_at_period_end && sub.renewed(), "{sub:?}");

    // 2. A refund of a renewal paid in advance un-pays that period.
    clock.set(at("2027-03-20T00:00:00Z")).expect("clock");
    assert_eq!(shop.paid("a2", "starter", "u2").await.0, Applied);
    assert!(s.subscription("a2").await.expect("read").expect("sub").renewed());
    let (status, reason) = shop.refund("a2", "u2").await;
    assert_eq!(status, Applied, "{reason:?}");
    let sub = s.subscription("a2").await.expect("read").expect("sub");
    assert_eq!((sub.paid_through, sub.period), (0, 0));
    assert_eq!(s.payment("creem", "u2").await.expect("read").expect("payment").refunded_credits, cr(1200 + 3000));

    // 1. (continued) a1 renews Mar 30 and switches to pro on Mar 31.
    clock.set(at("2027-03-30T00:00:00Z")).expect("clock");
    assert_eq!(shop.paid("a1", "starter", "t2").await.0, Applied);
    clock.set(at("2027-03-31T00:00:00Z")).expect("clock");
    assert_eq!(shop.paid("a1", "pro", "t3").await.0, Applied);
    let credits = shop.entries("a1", EntryKind::ProrationCredit).await;
    let total: Credits = credits.iter().map(|e| e.amount).sum();
    // March: 1 day of 31 left of 10 USD, but the 10% floor... time dominates: 0.32 USD;
    // April, paid and not started: 10 USD in full.
    assert_eq!(total, cr(32 + 1000), "{credits:?}");
    assert_eq!(s.payment("creem", "t2").await.expect("read").expect("payment").prorated_credits, cr(1000));
    assert_eq!(s.payment("creem", "t1").await.expect("read").expect("payment").prorated_credits, cr(32));
    // Refunding the April payment takes its 1000 credits back from the wallet.
    let before = shop.wallet("a1").await;
    assert_eq!(shop.refund("a1", "t2").await.0, Applied);
    assert_eq!(shop.wallet("a1").await, before - cr(1000));

    // 2. (continued) At the boundary the un-paid April does not start.
    clock.set(at("2027-04-01T00:00:00Z")).expect("clock");
    run(s, Command::Sweep { account_id: "a2".into() }).await;
    let sub = s.subscription("a2").await.expect("read").expect("sub");
    assert_eq!(sub.status, SubscriptionStatus::PastDue);
    let state = s.account_state("a2").await.expect("read").expect("state");
    assert!(state.grants.iter().all(|g| !g.is_plan_pool() || g.remaining.is_zero()), "{:?}", state.grants);
    // 5. (continued) a5's resumed subscription renews into April.
    run(s, Command::Sweep { account_id: "a5".into() }).await;
    let sub = s.subscription("a5").await.expect("read").expect("sub");
    assert_eq!((sub.status, sub.period), (SubscriptionStatus::Active, 1));

    // 10. balance_after on a charge split across sources: promo 50,
    // purchased 30, wallet 20, charge 90 → 50, 20, 10.
    create(s, "b1").await;
    run(s, Command::Grant { account_id: "b1".into(), grant: promo(cr(50), None, "p") }).await;
    let pack = Command::Purchase {
        account_id: "b1".into(),
        credits: cr(30),
        amount_usd: Usd::whole(1),
        provider: "manual".into(),
        external_id: None,
    };
    run(s, pack).await;
    run(
        s,
        Command::Topup {
            account_id: "b1".into(),
            amount_usd: Usd::parse("0.2").expect("usd"),
            provider: "manual".into(),
            external_id: None,
        },
    )
    .await;
    // model(1): 2 credits per output token.
    run(s, usage("b1", outcome("c1", "c1", 0, 45), false)).await;
    let mut charges = shop.entries("b1", EntryKind::Charge).await;
    charges.reverse();
    assert_eq!(
        charges.iter().map(|e| (e.amount, e.balance_after)).collect::<Vec<_>>(),
        [(cr(-50), cr(50)), (cr(-30), cr(20)), (cr(-10), cr(10))]
    );

    // 6. Refunding usage charged to a grant voided since pays the wallet.
    create(s, "b2").await;
    let Reply::Grant(g) = run(s, Command::Grant { account_id: "b2".into(), grant: promo(cr(100), None, "p") }).await
    else {
        panic!("not a grant")
    };
    run(s, usage("b2", outcome("d1", "d1", 0, 20), false)).await;
    run(s, Command::VoidGrant { account_id: "b2".into(), grant_id: g.id.clone(), reason: None }).await;
    run(s, Command::RefundUsage { account_id: "b2".into(), request_id: "d1".into(), reason: None }).await;
    let state = s.account_state("b2").await.expect("read").expect("state");
    assert_eq!(state.wallet.balance, Credits::ZERO);
    assert_eq!(state.available(clock.now()), Credits::ZERO);

    // 11. An authorize replay returns the first answer after the grant it
    // held on expired.
    create(s, "b3").await;
    let short = promo(cr(100), Some(clock.now() + jiff::SignedDuration::from_secs(60)), "short");
    run(s, Command::Grant { account_id: "b3".into(), grant: short }).await;
    let authorize = Command::Authorize {
        account_id: "b3".into(),
        request: AuthorizeRequest {
            request_id: "h1".into(),
            fingerprint: "h1".into(),
            model: "m1".into(),
            request_type: "chat".into(),
            estimate: creditd_core::pricing::EstimateInput { input_tokens: 2, ..Default::default() },
            hold_ttl_seconds: Some(900),
            project: None,
            conversation: None,
        },
    };
    let Reply::Authorized(first) = run(s, authorize.clone()).await else { panic!("not authorized") };
    assert_eq!(first.hold.held_from.iter().map(|p| p.amount).sum::<Credits>(), first.hold.estimate);
    clock.advance(120).expect("clock");
    run(s, Command::Sweep { account_id: "b3".into() }).await;
    let Reply::Authorized(again) = run(s, authorize).await else { panic!("not authorized") };
    assert!(again.replay);
    assert_eq!(
        (again.hold.held_from, again.hold.available_after),
        (first.hold.held_from.clone(), first.hold.available_after)
    );
    assert!(
        first.hold.held_from.iter().any(|p| p.amount.is_positive()
            && matches!(&p.source, creditd_core::Source::Grant { kind: GrantKind::Promo, .. }))
    );

    let report = s.audit().await.expect("audit");
    assert_eq!(report.breaches, vec![]);
}

/// The defects of issue #12 that leave stored records inconsistent, run
/// without checking any answer, then only the audit: on a build without
/// the fixes it reports breaches of invariants 8 to 11 (see
/// `docs/audit.md`). Errors are ignored: a fixed build refuses some steps.
pub async fn audit_sees_the_defects(store: Arc<dyn Store>, clock: Arc<ManualClock>) {
    let s = store.as_ref();
    let go = |command: Command| async move {
        let _ = s.execute(command, None).await;
    };
    for p in [plan("starter", 10, 1000), plan("ultra", 200, 20000)] {
        go(Command::PutPlan { plan: p }).await;
    }
    let extreme = creditd_core::pricing::ModelPrice {
        credits_per_mtok: creditd_core::pricing::TokenRates {
            input: Some(Credits::ZERO),
            cache_read: Some(Credits::ZERO),
            cache_write: Some(Credits::ZERO),
            output: Some(Credits::whole(1_000_000_000)),
        },
        ..creditd_core::pricing::ModelPrice::default()
    };
    go(Command::PutModel { id: "m1".into(), price: model(1) }).await;
    go(Command::PutModel { id: "extreme".into(), price: extreme }).await;
    let mut shop = Shop { s, events: 0 };
    for a in ["x1", "x2", "x3", "x4"] {
        create(s, a).await;
    }
    // Item 10: a charge split over three sources.
    go(Command::Grant { account_id: "x1".into(), grant: promo(cr(50), None, "p") }).await;
    let topup = |a: &str| Command::Topup {
        account_id: a.into(),
        amount_usd: Usd::whole(1),
        provider: "manual".into(),
        external_id: None,
    };
    go(topup("x1")).await;
    go(usage("x1", outcome("c1", "c1", 0, 60), false)).await;
    // Item 7: unenforced usage at the bounds, far past 10^12 credits of debt
    // (a release build without the bound wraps at the tenth).
    for i in 0..8 {
        let mut o = outcome(&format!("e{i}"), "e", 0, 1_000_000_000);
        o.usage.output_tokens = 1_000_000_000;
        let command = Command::RecordUsage {
            account_id: "x2".into(),
            outcome: o,
            model: "extreme".into(),
            request_type: "chat".into(),
            enforce: false,
        };
        go(command).await;
    }
    // Item 3: switch away an hour in, then refund the old plan's payment.
    shop.paid("x3", "starter", "y1").await;
    clock.advance(3600).expect("clock");
    shop.paid("x3", "ultra", "y2").await;
    shop.refund("x3", "y1").await;
    // Item 2: renew in advance, refund the renewal.
    shop.paid("x4", "starter", "z1").await;
    shop.paid("x4", "starter", "z2").await;
    shop.refund("x4", "z2").await;
    let report = s.audit().await.expect("audit");
    assert_eq!(report.breaches, vec![], "the audit found the defects of issue #12");
}
