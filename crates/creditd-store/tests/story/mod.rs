//! The acceptance story every backend must tell the same way. It knows only
//! the `Store` trait; a backend's test opens a fresh store on a
//! `ManualClock` and calls these functions.

use std::sync::Arc;

use creditd_core::account::{AccountStatus, GrantKind, HoldStatus, RequestDetails, Source};
use creditd_core::campaign::{Billing, Cadence, Campaigns, Eligible, RecurringGift, SignupBonus};
use creditd_core::config_apply::{ConfigDecision, ConfigWinner};
use creditd_core::engine::{NewGrant, Outcome, Refusal};
use creditd_core::ledger::{EntryKind, Reference};
use creditd_core::limits::RequestLimits;
use creditd_core::plan::{ModelAccess, Plan};
use creditd_core::pricing::{EstimateInput, ModelPrice, RequestStatus, TokenRates, Usage};
use creditd_core::subscription::{SubscriptionKind, SubscriptionStatus};
use creditd_core::units::Factor;
use creditd_core::units::{Credits, Usd};
use creditd_core::{Grant, Hold};
use creditd_store::{
    AccountToken, ApiKey, AuthorizeRequest, Clock, Command, ConfigApply, EngineConfig, Idempotent, LedgerFilter,
    ManualClock, Page, Reply, Role, Store, StoreError, StoredResponse,
};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};

pub mod expiring;
pub mod money;
pub mod reads;

pub const START: &str = "2026-01-01T00:00:00Z";

pub fn start() -> Timestamp {
    START.parse().expect("start time")
}

fn cr(whole: i64) -> Credits {
    Credits::whole(whole)
}

/// 1 credit per input token and 2 per output token at version 1 (`scale` 1),
/// twice that at version 2; at most 20 output tokens when none are given.
pub fn model(scale: i64) -> ModelPrice {
    ModelPrice {
        cost_usd_per_mtok: TokenRates {
            input: Some(Usd::whole(scale)),
            output: Some(Usd::whole(2 * scale)),
            ..TokenRates::default()
        },
        credits_per_mtok: TokenRates {
            input: Some(Credits::whole(1_000_000 * scale)),
            output: Some(Credits::whole(2_000_000 * scale)),
            ..TokenRates::default()
        },
        max_output_tokens: 20,
        ..ModelPrice::default()
    }
}

pub async fn run(store: &dyn Store, command: Command) -> Reply {
    let what = format!("{command:?}");
    match store.execute(command, None).await {
        Ok(reply) => reply,
        Err(e) => panic!("{what} failed: {e:?}"),
    }
}

pub async fn refused(store: &dyn Store, command: Command) -> Refusal {
    let what = format!("{command:?}");
    match store.execute(command, None).await {
        Err(StoreError::Refused(r)) => r,
        other => panic!("{what} should be refused, got {other:?}"),
    }
}

pub fn promo(amount: Credits, expires_at: Option<Timestamp>, reason: &str) -> NewGrant {
    NewGrant {
        kind: GrantKind::Promo,
        source: "story".into(),
        reason: Some(reason.into()),
        amount,
        priority: None,
        starts_at: None,
        expires_at,
        reference: Reference::None,
    }
}

pub async fn grant(store: &dyn Store, account: &str, new: NewGrant) -> Grant {
    match run(store, Command::Grant { account_id: account.into(), grant: new }).await {
        Reply::Grant(g) => g,
        other => panic!("not a grant: {other:?}"),
    }
}

pub fn authorize(account: &str, request_id: &str, fingerprint: &str, input: u64, max_output: Option<u64>) -> Command {
    Command::Authorize {
        account_id: account.into(),
        request: AuthorizeRequest {
            request_id: request_id.into(),
            fingerprint: fingerprint.into(),
            model: "m1".into(),
            request_type: "chat".into(),
            estimate: EstimateInput { input_tokens: input, max_output_tokens: max_output, ..EstimateInput::default() },
            hold_ttl_seconds: None,
            project: Some("proj".into()),
            conversation: None,
        },
    }
}

async fn hold(store: &dyn Store, command: Command) -> (Hold, bool) {
    match run(store, command).await {
        Reply::Authorized(a) => (a.hold, a.replay),
        other => panic!("not an authorization: {other:?}"),
    }
}

pub fn outcome(request_id: &str, fingerprint: &str, input: u64, output: u64) -> Outcome {
    Outcome {
        request_id: request_id.into(),
        fingerprint: fingerprint.into(),
        status: RequestStatus::Success,
        usage: Usage { input_tokens: input, output_tokens: output, ..Usage::default() },
        details: RequestDetails { latency_ms: Some(1200), tools: vec!["search".into()], ..RequestDetails::default() },
    }
}

pub fn usage(account: &str, outcome: Outcome, enforce: bool) -> Command {
    Command::RecordUsage {
        account_id: account.into(),
        outcome,
        model: "m1".into(),
        request_type: "chat".into(),
        enforce,
    }
}

async fn recorded(store: &dyn Store, command: Command) -> (creditd_core::UsageRecord, bool) {
    match run(store, command).await {
        Reply::Recorded(r) => (r.record, r.replay),
        other => panic!("not a usage record: {other:?}"),
    }
}

fn on_grant(g: &Grant, amount: Credits) -> creditd_core::Portion {
    creditd_core::Portion { source: Source::Grant { grant_id: g.id.clone(), kind: g.kind }, amount }
}

fn on_wallet(amount: Credits) -> creditd_core::Portion {
    creditd_core::Portion { source: Source::Wallet, amount }
}

pub fn all() -> Page {
    Page { limit: 1000, cursor: None }
}

async fn entries_of(store: &dyn Store, account: &str, kind: EntryKind) -> Vec<creditd_core::ledger::LedgerEntry> {
    let filter = LedgerFilter { kind: Some(kind), ..LedgerFilter::default() };
    store.ledger(account, filter, all()).await.expect("ledger").data
}

/// The life of one account, from creation to audit.
pub async fn story(store: Arc<dyn Store>, clock: Arc<ManualClock>) {
    let s = store.as_ref();
    let t0 = clock.now();

    // Accounts.
    let Reply::Account(row) =
        run(s, Command::CreateAccount { id: "u1".into(), email: Some("u1@example.com".into()), metadata: None }).await
    else {
        panic!("not an account")
    };
    assert_eq!((row.status, row.created_at), (AccountStatus::Active, t0));
    assert!(matches!(
        refused(s, Command::CreateAccount { id: "u1".into(), email: None, metadata: None }).await,
        Refusal::Conflict(_)
    ));
    assert!(matches!(refused(s, Command::Sweep { account_id: "nobody".into() }).await, Refusal::NotFound(_)));
    assert!(matches!(
        refused(s, Command::Grant { account_id: "nobody".into(), grant: promo(cr(1), None, "x") }).await,
        Refusal::NotFound(_)
    ));
    assert_eq!(s.account("u1").await.expect("read"), Some(row));

    // The price book.
    let Reply::Model(v1) = run(s, Command::PutModel { id: "m1".into(), price: model(1) }).await else {
        panic!("not a model")
    };
    assert_eq!(v1.price_version, 1);
    let Reply::Model(same) = run(s, Command::PutModel { id: "m1".into(), price: model(1) }).await else {
        panic!("not a model")
    };
    assert_eq!(same.price_version, 1, "the same price is not a new version");
    let bad = ModelPrice { multiplier: creditd_core::Factor::whole(-1), ..model(1) };
    assert!(matches!(refused(s, Command::PutModel { id: "m1".into(), price: bad }).await, Refusal::InvalidRequest(_)));

    // Credits: a promo grant and a top-up.
    let g1 = grant(s, "u1", promo(cr(100), Some(t0 + SignedDuration::from_hours(24 * 7)), "welcome")).await;
    assert_eq!((g1.remaining, g1.priority, g1.kind), (cr(100), 10, GrantKind::Promo));
    let Reply::Wallet { wallet, entry } = run(
        s,
        Command::Topup {
            account_id: "u1".into(),
            amount_usd: Usd::whole(1),
            provider: "manual".into(),
            external_id: Some("pay_1".into()),
        },
    )
    .await
    else {
        panic!("not a wallet")
    };
    assert_eq!(wallet.balance, cr(100));
    assert_eq!(
        (entry.kind, entry.amount, entry.reference),
        (EntryKind::Topup, cr(100), Reference::Payment("pay_1".into()))
    );
    assert_eq!(entry.balance_after, cr(200));

    // Authorize: 10 input + 20 output (the model's default) = 50 credits, held on the grant.
    let (h1, replay) = hold(s, authorize("u1", "r1", "f1", 10, None)).await;
    assert!(!replay);
    assert_eq!((h1.estimate, h1.available_after, h1.price_version), (cr(50), cr(150), 1));
    assert_eq!(h1.parts, vec![on_grant(&g1, cr(50))]);
    let (again, replay) = hold(s, authorize("u1", "r1", "f1", 10, None)).await;
    assert!(replay, "the same request id again is a replay");
    assert_eq!(again, h1);
    assert_eq!(refused(s, authorize("u1", "r1", "other body", 10, None)).await, Refusal::IdempotencyConflict);

    // A second hold, released, twice; it cannot be settled any more.
    let (h2, _) = hold(s, authorize("u1", "r2", "f2", 10, None)).await;
    assert_eq!(h2.available_after, cr(100));
    let Reply::Released(released) = run(s, Command::Release { account_id: "u1".into(), request_id: "r2".into() }).await
    else {
        panic!("not released")
    };
    assert_eq!(released.status, HoldStatus::Released);
    let Reply::Released(twice) = run(s, Command::Release { account_id: "u1".into(), request_id: "r2".into() }).await
    else {
        panic!("not released")
    };
    assert_eq!(twice, released);
    assert_eq!(
        refused(s, Command::Settle { account_id: "u1".into(), outcome: outcome("r2", "s2", 1, 1) }).await,
        Refusal::HoldNotOpen { status: HoldStatus::Released }
    );
    assert!(matches!(
        refused(s, Command::Release { account_id: "u1".into(), request_id: "never".into() }).await,
        Refusal::NotFound(_)
    ));

    // A new price version; the open hold still settles at version 1.
    let Reply::Model(v2) = run(s, Command::PutModel { id: "m1".into(), price: model(2) }).await else {
        panic!("not a model")
    };
    assert_eq!(v2.price_version, 2);

    // Settle above what is available: 10 + 200 = 210 credits, 10 become debt.
    let settle_r1 = Command::Settle { account_id: "u1".into(), outcome: outcome("r1", "s1", 10, 100) };
    let (r1, replay) = recorded(s, settle_r1.clone()).await;
    assert!(!replay);
    assert_eq!((r1.credits, r1.debt_incurred, r1.price_version, r1.hold_expired), (cr(210), cr(10), 1, false));
    assert_eq!(r1.charged_from, vec![on_grant(&g1, cr(100)), on_wallet(cr(110))]);
    assert_eq!(r1.cost_usd, Usd::parse("0.00021").expect("usd"));
    assert_eq!(r1.details.project.as_deref(), Some("proj"), "the hold's project is kept");
    assert_eq!(r1.hold_id.as_deref(), Some(h1.id.as_str()));
    let (again, replay) = recorded(s, settle_r1).await;
    assert!(replay);
    assert_eq!(again, r1);
    assert_eq!(
        refused(s, Command::Settle { account_id: "u1".into(), outcome: outcome("r1", "changed", 10, 100) }).await,
        Refusal::IdempotencyConflict
    );
    assert_eq!(s.usage_record("u1", "r1").await.expect("read"), Some(r1.clone()));
    let state = s.account_state("u1").await.expect("read").expect("state");
    assert_eq!(state.wallet.balance, cr(-10));
    assert!(state.grants.is_empty() && state.holds.is_empty());

    // One-shot usage that already happened: nothing refuses it, it is debt.
    let (r3, _) = recorded(s, usage("u1", outcome("r3", "u3", 5, 0), false)).await;
    assert_eq!((r3.credits, r3.debt_incurred, r3.price_version), (cr(10), cr(10), 2));
    assert_eq!(r3.charged_from, vec![on_wallet(cr(10))]);
    let (again, replay) = recorded(s, usage("u1", outcome("r3", "u3", 5, 0), false)).await;
    assert!(replay);
    assert_eq!(again, r3);
    assert_eq!(
        refused(s, usage("u1", outcome("r4", "u4", 1, 0), true)).await,
        Refusal::InsufficientCredits { available: cr(-20), estimate: cr(2) }
    );
    assert_eq!(
        refused(s, usage("u1", outcome("r1", "u1", 1, 0), false)).await,
        Refusal::IdempotencyConflict,
        "a settled request id cannot be used again"
    );

    // A grant repays the debt first.
    let g2 = grant(s, "u1", promo(cr(50), None, "make good")).await;
    assert_eq!(g2.remaining, cr(30));
    let repayments = entries_of(s, "u1", EntryKind::DebtRepayment).await;
    assert_eq!(repayments.len(), 2);
    assert_eq!(repayments.iter().map(|e| e.amount).sum::<Credits>(), Credits::ZERO);
    assert_eq!(s.account_state("u1").await.expect("read").expect("state").wallet.balance, Credits::ZERO);

    // A hold that expires before its settle: still charged, and said so.
    let mut short = authorize("u1", "r5", "f5", 1, Some(1));
    if let Command::Authorize { request, .. } = &mut short {
        request.hold_ttl_seconds = Some(60);
    }
    let (h5, _) = hold(s, short).await;
    assert_eq!((h5.estimate, h5.price_version), (cr(6), 2));
    clock.advance(120).expect("clock");
    let (r5, _) = recorded(s, Command::Settle { account_id: "u1".into(), outcome: outcome("r5", "s5", 1, 1) }).await;
    assert!(r5.hold_expired);
    assert_eq!((r5.credits, r5.charged_from.clone()), (cr(6), vec![on_grant(&g2, cr(6))]));

    // A grant that expires is written off with an `expire` entry.
    let soon = clock.now() + SignedDuration::from_hours(1);
    let g3 = grant(s, "u1", promo(cr(10), Some(soon), "short lived")).await;
    clock.advance(2 * 3600).expect("clock");
    assert_eq!(run(s, Command::Sweep { account_id: "u1".into() }).await, Reply::Swept);
    let expired = entries_of(s, "u1", EntryKind::Expire).await;
    assert_eq!(expired.len(), 1);
    assert_eq!((expired[0].amount, expired[0].grant_id.as_deref()), (cr(-10), Some(g3.id.as_str())));
    assert_eq!(expired[0].at, soon, "written as of the expiry, not of the sweep");

    // Grants newest first; spent ones only on request.
    let listed = s.grants("u1", true, all()).await.expect("grants").data;
    assert_eq!(listed.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(), [&g3.id, &g2.id, &g1.id]);
    let live = s.grants("u1", false, all()).await.expect("grants").data;
    assert_eq!(live.iter().map(|g| (g.id.as_str(), g.remaining)).collect::<Vec<_>>(), [(g2.id.as_str(), cr(24))]);

    // Purchases, wallet adjustments and voids.
    let Reply::Grant(pack) = run(
        s,
        Command::Purchase {
            account_id: "u1".into(),
            credits: cr(500),
            amount_usd: Usd::whole(5),
            provider: "manual".into(),
            external_id: Some("pay_2".into()),
        },
    )
    .await
    else {
        panic!("not a grant")
    };
    assert_eq!(
        (pack.kind, pack.source.as_str(), pack.priority, pack.expires_at),
        (GrantKind::Purchased, "purchase", 30, None)
    );
    assert!(matches!(
        refused(s, Command::AdjustWallet { account_id: "u1".into(), amount: cr(-5), reason: None }).await,
        Refusal::Conflict(_)
    ));
    let Reply::Wallet { wallet, entry } =
        run(s, Command::AdjustWallet { account_id: "u1".into(), amount: cr(5), reason: Some("goodwill".into()) }).await
    else {
        panic!("not a wallet")
    };
    assert_eq!((wallet.balance, entry.kind, entry.reason.as_deref()), (cr(5), EntryKind::Adjustment, Some("goodwill")));
    let void = |grant_id: &str| Command::VoidGrant {
        account_id: "u1".into(),
        grant_id: grant_id.into(),
        reason: Some("fraud".into()),
    };
    let Reply::Grant(voided) = run(s, void(&pack.id)).await else { panic!("not a grant") };
    assert!(voided.voided);
    assert_eq!(voided.remaining, Credits::ZERO);
    let Reply::Grant(spent) = run(s, void(&g1.id)).await else { panic!("not a grant") };
    assert!(spent.voided, "a spent grant is voided all the same");
    assert!(matches!(refused(s, void("no-such-grant")).await, Refusal::NotFound(_)));

    // Suspension stops metering.
    run(s, Command::SetAccountStatus { account_id: "u1".into(), status: AccountStatus::Suspended }).await;
    assert_eq!(refused(s, authorize("u1", "r6", "f6", 1, Some(1))).await, Refusal::AccountSuspended);
    let Reply::Account(resumed) =
        run(s, Command::SetAccountStatus { account_id: "u1".into(), status: AccountStatus::Active }).await
    else {
        panic!("not an account")
    };
    assert_eq!(resumed.status, AccountStatus::Active);
    hold(s, authorize("u1", "r6", "f6", 1, Some(1))).await;

    // Keys and tokens.
    let now = clock.now();
    let mut key = ApiKey {
        id: "k1".into(),
        role: Role::Gateway,
        name: "gw".into(),
        secret_hash: "h".into(),
        created_at: now,
        last_used_at: None,
    };
    assert_eq!(run(s, Command::CreateKey { key: key.clone() }).await, Reply::Key(key.clone()));
    assert!(matches!(refused(s, Command::CreateKey { key: key.clone() }).await, Refusal::Conflict(_)));
    assert_eq!(s.key("k1").await.expect("read"), Some(key.clone()));
    assert_eq!(s.keys().await.expect("read"), vec![key.clone()]);
    // A key's use is recorded; an older use never moves it back (issue 13.6).
    let later = now + SignedDuration::from_mins(5);
    assert_eq!(run(s, Command::TouchKey { id: "k1".into(), at: later }).await, Reply::Touched);
    run(s, Command::TouchKey { id: "k1".into(), at: now }).await;
    key.last_used_at = Some(later);
    assert_eq!(s.keys().await.expect("read"), vec![key]);
    assert_eq!(run(s, Command::DeleteKey { id: "k1".into() }).await, Reply::Deleted);
    assert!(matches!(refused(s, Command::DeleteKey { id: "k1".into() }).await, Refusal::NotFound(_)));
    assert_eq!(s.key("k1").await.expect("read"), None);
    let token = |account_id: &str| AccountToken {
        id: format!("t-{account_id}"),
        account_id: account_id.into(),
        secret_hash: "h".into(),
        expires_at: now + SignedDuration::from_hours(1),
        created_at: now,
    };
    assert_eq!(run(s, Command::CreateAccountToken { token: token("u1") }).await, Reply::Token(token("u1")));
    assert_eq!(s.account_token("t-u1").await.expect("read"), Some(token("u1")));
    assert_eq!(s.account_tokens("u1").await.expect("read"), vec![token("u1")]);
    assert_eq!(s.account_tokens("u2").await.expect("read"), vec![]);
    assert!(matches!(refused(s, Command::CreateAccountToken { token: token("nobody") }).await, Refusal::NotFound(_)));

    // Reads: models, accounts by page, the ledger by page.
    assert_eq!(s.models().await.expect("read").iter().map(|m| m.price_version).collect::<Vec<_>>(), [2]);
    assert_eq!(s.model("m1").await.expect("read").map(|m| m.price), Some(model(2)));
    run(s, Command::CreateAccount { id: "u2".into(), email: None, metadata: Some("{\"a\":1}".into()) }).await;
    let first = s.accounts(Page { limit: 1, cursor: None }).await.expect("read");
    assert_eq!(first.data.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["u1"]);
    let second = s.accounts(Page { limit: 1, cursor: first.next_cursor }).await.expect("read");
    assert_eq!(second.data.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["u2"]);
    assert_eq!(second.next_cursor, None);

    let everything = s.ledger("u1", LedgerFilter::default(), all()).await.expect("ledger").data;
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.ledger("u1", LedgerFilter::default(), Page { limit: 3, cursor }).await.expect("ledger");
        paged.extend(page.data);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, everything, "pages add up to the whole ledger");
    assert!(everything.windows(2).all(|w| (w[0].at) >= (w[1].at)), "newest first");
    let state = s.account_state("u1").await.expect("read").expect("state");
    assert_eq!(everything.iter().map(|e| e.amount).sum::<Credits>(), state.ledger_balance());
    let window = LedgerFilter { from: Some(t0), to: Some(t0 + SignedDuration::from_secs(1)), kind: None };
    let opening = s.ledger("u1", window, all()).await.expect("ledger").data;
    assert!(opening.iter().all(|e| e.at == t0) && opening.len() >= 2);
    assert!(s.ledger("u1", LedgerFilter::default(), Page { limit: 3, cursor: Some("junk".into()) }).await.is_err());

    let report = s.audit().await.expect("audit");
    assert_eq!(report.breaches, vec![]);
    assert_eq!((report.accounts, report.usage_records), (2, 3));
    assert_eq!(report.entries as usize, everything.len());
}

pub fn keyed(key: &str, fingerprint: &str) -> Idempotent {
    Idempotent {
        scope: "POST /v1/accounts/{id}/grants".into(),
        key: key.into(),
        fingerprint: fingerprint.into(),
        render: Box::new(|reply| match reply {
            Reply::Grant(g) => StoredResponse { status: 201, body: g.id.clone().into_bytes() },
            other => StoredResponse { status: 500, body: format!("{other:?}").into_bytes() },
        }),
    }
}

/// `Idempotency-Key`: a replay answers the first response and does nothing,
/// a different body is a conflict, a refusal is not remembered.
pub async fn idempotency(store: Arc<dyn Store>) {
    let s = store.as_ref();
    run(s, Command::CreateAccount { id: "ik".into(), email: None, metadata: None }).await;
    let reward = || Command::Grant { account_id: "ik".into(), grant: promo(cr(5), None, "github star") };

    let first = s.execute(reward(), Some(keyed("star-1", "body-a"))).await.expect("first");
    let Reply::Grant(g) = first else { panic!("not a grant: {first:?}") };
    let replay = s.execute(reward(), Some(keyed("star-1", "body-a"))).await.expect("replay");
    assert_eq!(replay, Reply::Replayed(StoredResponse { status: 201, body: g.id.clone().into_bytes() }));
    assert_eq!(
        s.execute(reward(), Some(keyed("star-1", "body-b"))).await,
        Err(StoreError::Refused(Refusal::IdempotencyConflict))
    );
    let grants = s.grants("ik", true, all()).await.expect("grants").data;
    assert_eq!(grants.len(), 1, "the reward was granted once");

    // A refused command stores nothing: the key may be used again.
    let zero = Command::Grant { account_id: "ik".into(), grant: promo(Credits::ZERO, None, "nothing") };
    assert!(matches!(
        s.execute(zero, Some(keyed("star-2", "body-c"))).await,
        Err(StoreError::Refused(Refusal::InvalidRequest(_)))
    ));
    let retried = s.execute(reward(), Some(keyed("star-2", "body-d"))).await.expect("retry");
    assert!(matches!(retried, Reply::Grant(_)), "{retried:?}");

    // Keys are scoped: the same key elsewhere is another key.
    let mut other_scope = keyed("star-1", "body-a");
    other_scope.scope = "POST /v1/accounts/{id}/purchases".into();
    assert!(matches!(s.execute(reward(), Some(other_scope)).await, Ok(Reply::Grant(_))));
    assert_eq!(s.grants("ik", true, all()).await.expect("grants").data.len(), 3);
    assert_eq!(s.audit().await.expect("audit").breaches, vec![]);
}

/// Where the subscription story starts: a Sunday, the 31st of a month.
pub const SUBSCRIPTIONS_START: &str = "2027-01-31T10:00:00Z";

/// The engine settings of the subscription story: days in Paris, a day of
/// renewal grace, a signup bonus and a weekly gift.
pub fn subscription_config() -> EngineConfig {
    EngineConfig {
        billing: Billing {
            timezone: TimeZone::get("Europe/Paris").expect("tzdb"),
            campaigns: Campaigns {
                signup_bonus: Some(SignupBonus { amount: cr(5), expires_after: Some(30.days().fieldwise()) }),
                recurring: vec![RecurringGift {
                    amount: cr(2),
                    every: Cadence::Week,
                    expires_after: Some(7.days().fieldwise()),
                    eligible: Eligible::All,
                }],
            },
            ..Billing::default()
        },
        ..EngineConfig::default()
    }
}

fn paid_plan(id: &str, price: i64, monthly: i64, rate: Option<u32>) -> Plan {
    Plan {
        id: id.into(),
        name: id.to_uppercase(),
        price_usd: Usd::whole(price),
        monthly_credits: cr(monthly),
        bonus_percent: Factor::whole(20),
        backup_multiplier: Factor::whole(3),
        limits: RequestLimits { rate_per_minute: rate, daily_requests: Some(1000), weekly_requests: None },
        model_access: ModelAccess::All,
        cost_budget_multiplier: Some(Factor::whole(10)),
    }
}

async fn subscription_reply(store: &dyn Store, command: Command) -> creditd_core::engine::SubscriptionChange {
    match run(store, command).await {
        Reply::Subscription(change) => change,
        other => panic!("not a subscription: {other:?}"),
    }
}

/// Plans, a subscription's life (start, limits, early renewal, a period
/// boundary across a month end, a switch with proration, cancel, expiry),
/// campaigns and a refund. The store is opened with [`subscription_config`]
/// on a clock at [`SUBSCRIPTIONS_START`].
pub async fn subscriptions(store: Arc<dyn Store>, clock: Arc<ManualClock>) {
    let s = store.as_ref();
    let at = |t: &str| t.parse::<Timestamp>().expect("time");
    assert_eq!(clock.now(), at(SUBSCRIPTIONS_START));

    // Plans: free only allows free models; two paid plans.
    let free = Plan {
        id: "free".into(),
        name: "Free".into(),
        price_usd: Usd::ZERO,
        monthly_credits: Credits::ZERO,
        bonus_percent: Factor::whole(20),
        backup_multiplier: Factor::whole(3),
        limits: RequestLimits { rate_per_minute: Some(1), daily_requests: Some(1000), weekly_requests: None },
        model_access: ModelAccess::Free,
        cost_budget_multiplier: None,
    };
    for plan in [free.clone(), paid_plan("pro", 1, 100, Some(2)), paid_plan("max", 3, 300, None)] {
        assert_eq!(run(s, Command::PutPlan { plan: plan.clone() }).await, Reply::Plan(plan));
    }
    let bad = Plan { id: "no spaces".into(), ..free.clone() };
    assert!(matches!(refused(s, Command::PutPlan { plan: bad }).await, Refusal::InvalidRequest(_)));
    let plans = s.plans().await.expect("plans");
    assert_eq!(plans.all().iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["free", "max", "pro"]);
    assert_eq!(plans.get("pro").map(|p| p.main_pool()), Some(cr(120)));

    // A new account gets the signup bonus and is on free.
    run(s, Command::PutModel { id: "m1".into(), price: model(1) }).await;
    run(s, Command::CreateAccount { id: "s1".into(), email: None, metadata: None }).await;
    let state = s.account_state("s1").await.expect("read").expect("state");
    assert_eq!(
        state.grants.iter().map(|g| (g.source.as_str(), g.amount)).collect::<Vec<_>>(),
        [("signup_bonus", cr(5))]
    );
    assert_eq!(state.grants[0].expires_at, Some(at("2027-03-02T10:00:00Z")));
    assert!(state.subscription.is_none());
    assert!(matches!(refused(s, usage("s1", outcome("f1", "f1", 1, 0), true)).await, Refusal::ModelNotAllowed { .. }));
    assert!(matches!(refused(s, Command::RenewSubscription { account_id: "s1".into() }).await, Refusal::NotFound(_)));

    // Subscribe: pools for the first period, Jan 31 to Feb 28.
    let start = |plan: &str| Command::StartSubscription {
        account_id: "s1".into(),
        plan: plan.into(),
        kind: SubscriptionKind::Monthly,
        external_id: Some(format!("pay-{plan}")),
    };
    assert!(matches!(
        refused(
            s,
            Command::StartSubscription {
                account_id: "s1".into(),
                plan: "free".into(),
                kind: SubscriptionKind::Monthly,
                external_id: None,
            }
        )
        .await,
        Refusal::InvalidRequest(_)
    ));
    let change = subscription_reply(s, start("pro")).await;
    assert!(change.proration.is_none() && change.previous.is_none());
    let pro = change.subscription;
    assert_eq!((pro.period_start, pro.period_end), (at("2027-01-31T10:00:00Z"), at("2027-02-28T10:00:00Z")));
    assert_eq!(s.subscription("s1").await.expect("read"), Some(pro.clone()));
    let pools = |state: &creditd_core::AccountState| -> Vec<(GrantKind, Credits)> {
        let mut p: Vec<_> = state.grants.iter().filter(|g| g.is_plan_pool()).map(|g| (g.kind, g.remaining)).collect();
        p.sort();
        p
    };
    let state = s.account_state("s1").await.expect("read").expect("state");
    assert_eq!(pools(&state), [(GrantKind::PlanMain, cr(120)), (GrantKind::PlanBackup, cr(300))]);

    // Two requests a minute on pro; the third waits for the first's slot.
    run(s, usage("s1", outcome("p1", "p1", 10, 0), true)).await;
    clock.advance(10).expect("clock");
    run(s, usage("s1", outcome("p2", "p2", 10, 0), true)).await;
    clock.advance(20).expect("clock");
    assert_eq!(
        refused(s, usage("s1", outcome("p3", "p3", 10, 0), true)).await,
        Refusal::RateLimited { limit: 2, retry_after_seconds: 30 }
    );
    clock.advance(30).expect("clock");
    run(s, usage("s1", outcome("p3", "p3", 10, 0), true)).await;
    let state = s.account_state("s1").await.expect("read").expect("state");
    assert_eq!(state.windows.day_count, 3, "the refused request counted for nothing");
    assert!(state.subscription.as_ref().is_some_and(|s| s.budget_used_usd == Usd::parse("0.00003").expect("usd")));

    // Renewed early; the next period starts at the boundary with fresh pools.
    let renewed = subscription_reply(s, Command::RenewSubscription { account_id: "s1".into() }).await.subscription;
    assert!(renewed.renewed());
    assert!(matches!(refused(s, Command::RenewSubscription { account_id: "s1".into() }).await, Refusal::Conflict(_)));
    clock.set(at("2027-02-28T10:00:00Z")).expect("clock");
    assert_eq!(run(s, Command::Sweep { account_id: "s1".into() }).await, Reply::Swept);
    let state = s.account_state("s1").await.expect("read").expect("state");
    let sub = state.subscription.clone().expect("live");
    assert_eq!(
        (sub.period, sub.period_start, sub.period_end),
        (1, at("2027-02-28T10:00:00Z"), at("2027-03-31T09:00:00Z"))
    );
    assert_eq!(pools(&state), [(GrantKind::PlanMain, cr(120)), (GrantKind::PlanBackup, cr(300))]);
    assert_eq!(sub.budget_used_usd, Usd::ZERO);

    // Switch to max ten days in: time dominates (240 h of 743 h), and the
    // wallet gets the unused part of 1 USD, floored to the cent.
    clock.set(at("2027-03-10T10:00:00Z")).expect("clock");
    let change = subscription_reply(s, start("max")).await;
    let p = change.proration.expect("a switch prorates");
    assert_eq!((p.from_plan.as_str(), p.to_plan.as_str()), ("pro", "max"));
    assert_eq!((p.time_used.to_string(), p.consumed.to_string()), ("0.323015".to_string(), "0.323015".to_string()));
    assert_eq!((p.credit_usd, p.credited), (Usd::parse("0.67").expect("usd"), cr(67)));
    let previous = change.previous.expect("previous");
    assert_eq!((previous.id.as_str(), previous.status), (pro.id.as_str(), SubscriptionStatus::Switched));
    let max = change.subscription;
    // 11:00 in Paris, CET then CEST.
    assert_eq!(max.period_end, at("2027-04-10T09:00:00Z"));
    let credits = entries_of(s, "s1", EntryKind::ProrationCredit).await;
    assert_eq!(credits.len(), 1);
    assert_eq!((credits[0].amount, &credits[0].reference), (cr(67), &Reference::Subscription(pro.id.clone())));
    let state = s.account_state("s1").await.expect("read").expect("state");
    assert_eq!(pools(&state), [(GrantKind::PlanMain, cr(360)), (GrantKind::PlanBackup, cr(900))]);
    assert_eq!(state.wallet.balance, cr(67));

    // Cancel: it runs to its period end, then the account is on free again.
    let cancelled = subscription_reply(s, Command::CancelSubscription { account_id: "s1".into() }).await.subscription;
    assert!(cancelled.cancel_at_period_end);
    clock.set(at("2027-04-10T09:00:00Z")).expect("clock");
    // Before anything is written, a read shows this week's gift (made by
    // time alone) with the id the writer will give it.
    let live_gifts = |grants: Vec<creditd_core::Grant>| -> Vec<(String, Timestamp)> {
        grants.into_iter().filter(|g| g.source == "weekly_gift").map(|g| (g.id, g.starts_at)).collect()
    };
    let shown = live_gifts(s.grants("s1", false, all()).await.expect("grants").data);
    assert_eq!(shown.iter().map(|(_, t)| *t).collect::<Vec<_>>(), [at("2027-04-04T22:00:00Z")]);
    run(s, Command::Sweep { account_id: "s1".into() }).await;
    assert_eq!(live_gifts(s.grants("s1", false, all()).await.expect("grants").data), shown);
    let ended = s.subscription("s1").await.expect("read").expect("latest");
    assert_eq!(
        (ended.id.as_str(), ended.status, ended.ended_at),
        (max.id.as_str(), SubscriptionStatus::Expired, Some(max.period_end))
    );
    let state = s.account_state("s1").await.expect("read").expect("state");
    assert!(state.subscription.is_none() && pools(&state).is_empty());
    assert_eq!(refused(s, Command::RenewSubscription { account_id: "s1".into() }).await, Refusal::SubscriptionExpired);

    // A weekly gift every Monday 00:00 in Paris (23:00 UTC in winter,
    // 22:00 in summer), each made once.
    let gifts: Vec<Timestamp> = {
        let mut g: Vec<Timestamp> = s
            .grants("s1", true, all())
            .await
            .expect("grants")
            .data
            .iter()
            .filter(|g| g.source == "weekly_gift")
            .map(|g| g.starts_at)
            .collect();
        g.sort();
        g
    };
    assert_eq!(gifts.len(), 10, "{gifts:?}");
    assert_eq!(
        (gifts[0], gifts[8], gifts[9]),
        (at("2027-01-31T23:00:00Z"), at("2027-03-28T22:00:00Z"), at("2027-04-04T22:00:00Z"))
    );

    // Disputed usage: refunded once, to the wallet where the grants expired.
    let p1 = s.usage_record("s1", "p1").await.expect("read").expect("record");
    let refund =
        Command::RefundUsage { account_id: "s1".into(), request_id: "p1".into(), reason: Some("dispute".into()) };
    let Reply::Recorded(r) = run(s, refund.clone()).await else { panic!("not a record") };
    assert!(r.record.refunded);
    assert!(matches!(refused(s, refund).await, Refusal::Conflict(_)));
    assert!(s.usage_record("s1", "p1").await.expect("read").expect("record").refunded);
    let refunds = entries_of(s, "s1", EntryKind::Refund).await;
    assert_eq!(refunds.iter().map(|e| e.amount).sum::<Credits>(), p1.credits);
    assert!(refunds.iter().all(|e| e.reference == Reference::Request("p1".into()) && e.grant_id.is_none()));
    assert!(matches!(
        refused(s, Command::RefundUsage { account_id: "s1".into(), request_id: "nope".into(), reason: None }).await,
        Refusal::NotFound(_)
    ));

    let report = s.audit().await.expect("audit");
    assert_eq!(report.breaches, vec![]);
}

/// Applies `models` and `plans` as a start would, and returns what each
/// entry came to as `(id, decision, resolved, price_version)`.
async fn apply_config(
    store: &dyn Store,
    models: &[(&str, ModelPrice)],
    plans: &[Plan],
    on_conflict: Option<ConfigWinner>,
) -> (bool, Vec<(String, ConfigDecision, Option<ConfigWinner>, Option<i64>)>) {
    let apply = ConfigApply {
        models: models.iter().map(|(id, p)| (id.to_string(), p.clone())).collect(),
        plans: plans.to_vec(),
        on_conflict,
    };
    let Reply::ConfigApplied(outcome) = run(store, Command::ApplyConfig { apply }).await else {
        panic!("not ConfigApplied")
    };
    let entries = outcome.entries.into_iter().map(|e| (e.id, e.decision, e.resolved, e.price_version)).collect();
    (outcome.applied, entries)
}

/// Issue 13.2: a price or plan changed through the API was put back to the
/// configuration's at the next start. The configuration now writes only
/// what it changed since it was last applied; where both changed, nothing
/// is written until the operator says which side wins.
pub async fn config_ownership(store: Arc<dyn Store>) {
    use ConfigDecision::*;
    let s = store.as_ref();
    let price = |id: &'static str| async move { s.model(id).await.expect("model").map(|m| (m.price_version, m.price)) };
    let pro = |daily: u32| Plan {
        limits: RequestLimits { rate_per_minute: None, daily_requests: Some(daily), weekly_requests: None },
        ..paid_plan("pro", 50, 5000, None)
    };
    let daily = |book: creditd_core::PlanBook| book.get("pro").and_then(|p| p.limits.daily_requests);

    // First start: everything is created.
    let (applied, entries) = apply_config(s, &[("m", model(1))], &[pro(500)], None).await;
    assert!(applied);
    assert_eq!(entries, [("m".into(), Create, None, Some(1)), ("pro".into(), Create, None, None)]);
    // A restart with nothing changed writes nothing.
    let (_, entries) = apply_config(s, &[("m", model(1))], &[pro(500)], None).await;
    assert_eq!(entries, [("m".into(), Unchanged, None, Some(1)), ("pro".into(), Unchanged, None, None)]);

    // The API edits both; a restart with the same configuration keeps the edits.
    run(s, Command::PutModel { id: "m".into(), price: model(2) }).await;
    run(s, Command::PutPlan { plan: pro(600) }).await;
    let (applied, entries) = apply_config(s, &[("m", model(1))], &[pro(500)], None).await;
    assert!(applied);
    assert_eq!(entries, [("m".into(), KeepEdit, None, Some(2)), ("pro".into(), KeepEdit, None, None)]);
    assert_eq!(price("m").await, Some((2, model(2))));
    assert_eq!(daily(s.plans().await.expect("plans")), Some(600));

    // Now the configuration changes too: a conflict, and nothing is written,
    // not even a new model of the same configuration.
    let models = [("m", model(3)), ("new", model(1))];
    let (applied, entries) = apply_config(s, &models, &[pro(700)], None).await;
    assert!(!applied);
    assert_eq!(
        entries,
        [
            ("m".into(), Conflict, None, Some(2)),
            ("new".into(), Create, None, None),
            ("pro".into(), Conflict, None, None)
        ]
    );
    assert_eq!(price("m").await, Some((2, model(2))));
    assert_eq!(price("new").await, None);
    assert_eq!(daily(s.plans().await.expect("plans")), Some(600));
    // Still a conflict at the next start: nothing was recorded either.
    assert!(!apply_config(s, &models, &[pro(700)], None).await.0);

    // The API wins: its versions stay and the configuration's count as applied,
    // so the next start (same configuration) keeps them without asking.
    let (applied, entries) = apply_config(s, &models, &[pro(700)], Some(ConfigWinner::Api)).await;
    assert!(applied);
    assert_eq!(entries[0], ("m".into(), Conflict, Some(ConfigWinner::Api), Some(2)));
    assert_eq!(entries[1], ("new".into(), Create, None, Some(1)));
    assert_eq!(price("m").await, Some((2, model(2))));
    assert_eq!(daily(s.plans().await.expect("plans")), Some(600));
    let (_, entries) = apply_config(s, &models, &[pro(700)], None).await;
    assert_eq!(entries[0].1, KeepEdit);
    assert_eq!(entries[2].1, KeepEdit);

    // The configuration changes again: a conflict, which the configuration wins.
    let models = [("m", model(4)), ("new", model(1))];
    assert!(!apply_config(s, &models, &[pro(800)], None).await.0);
    let (applied, entries) = apply_config(s, &models, &[pro(800)], Some(ConfigWinner::Config)).await;
    assert!(applied);
    assert_eq!(entries[0], ("m".into(), Conflict, Some(ConfigWinner::Config), Some(3)));
    assert_eq!(price("m").await, Some((3, model(4))));
    assert_eq!(daily(s.plans().await.expect("plans")), Some(800));

    // The configuration changes and the store was not edited since: written.
    let (_, entries) = apply_config(s, &[("m", model(5))], &[pro(900)], None).await;
    assert_eq!(entries, [("m".into(), Update, None, Some(4)), ("pro".into(), Update, None, None)]);
    assert_eq!(price("m").await, Some((4, model(5))));
    assert_eq!(daily(s.plans().await.expect("plans")), Some(900));

    // A model made through the API and later added to the configuration with
    // another price: nothing says which is newer, so the operator decides.
    run(s, Command::PutModel { id: "api".into(), price: model(1) }).await;
    let (applied, entries) = apply_config(s, &[("api", model(2))], &[], None).await;
    assert!(!applied);
    assert_eq!(entries, [("api".into(), Conflict, None, Some(1))]);
    // The same price in both: nothing to decide.
    let (applied, entries) = apply_config(s, &[("api", model(1))], &[], None).await;
    assert!(applied);
    assert_eq!(entries, [("api".into(), Unchanged, None, Some(1))]);
}
