//! The SQLite backend on real files: the shared story, and what only this
//! backend promises (durability across restarts, group commit, savepoints,
//! the idle sweeper).

mod story;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use creditd_core::engine::Refusal;
use creditd_core::ledger::EntryKind;
use creditd_core::units::Credits;
use creditd_store::sqlite::SqliteStore;
use creditd_store::{
    Clock, Command, EngineConfig, LedgerFilter, ManualClock, Page, Reply, Store, StoreError, WriterLimits,
};
use jiff::SignedDuration;
use tempfile::TempDir;

use story::{grant, model, outcome, promo, run, usage};

fn db(dir: &TempDir) -> PathBuf {
    dir.path().join("creditd.db")
}

fn open(path: &Path, clock: &Arc<ManualClock>) -> SqliteStore {
    SqliteStore::open(path, EngineConfig::default(), WriterLimits::default(), clock.clone()).expect("open")
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(story::start()))
}

#[tokio::test]
async fn story_on_sqlite() {
    let dir = TempDir::new().expect("tempdir");
    let clock = clock();
    let store = Arc::new(open(&db(&dir), &clock));
    story::story(store, clock).await;
}

#[tokio::test]
async fn subscriptions_on_sqlite() {
    let dir = TempDir::new().expect("tempdir");
    let clock = Arc::new(ManualClock::new(story::SUBSCRIPTIONS_START.parse().expect("time")));
    let store = SqliteStore::open(&db(&dir), story::subscription_config(), WriterLimits::default(), clock.clone())
        .expect("open");
    story::subscriptions(Arc::new(store), clock).await;
}

#[tokio::test]
async fn the_whole_hot_state_survives_a_restart() {
    let dir = TempDir::new().expect("tempdir");
    let path = db(&dir);
    let clock = Arc::new(ManualClock::new(story::SUBSCRIPTIONS_START.parse().expect("time")));
    let config = story::subscription_config();
    let before = {
        let store = SqliteStore::open(&path, config.clone(), WriterLimits::default(), clock.clone()).expect("open");
        let plan = creditd_core::Plan {
            id: "pro".into(),
            name: "Pro".into(),
            price_usd: creditd_core::Usd::whole(50),
            monthly_credits: Credits::whole(5000),
            bonus_percent: creditd_core::Factor::whole(20),
            backup_multiplier: creditd_core::Factor::whole(3),
            limits: creditd_core::limits::RequestLimits {
                rate_per_minute: Some(60),
                daily_requests: Some(500),
                weekly_requests: Some(1500),
            },
            model_access: creditd_core::plan::ModelAccess::List(vec!["m1".into()]),
            cost_budget_multiplier: Some(creditd_core::Factor::whole(10)),
        };
        run(&store, Command::PutPlan { plan }).await;
        run(&store, Command::PutModel { id: "m1".into(), price: model(1) }).await;
        run(&store, Command::CreateAccount { id: "r".into(), email: None, metadata: None }).await;
        run(
            &store,
            Command::StartSubscription {
                account_id: "r".into(),
                plan: "pro".into(),
                kind: creditd_core::subscription::SubscriptionKind::Monthly,
                external_id: None,
            },
        )
        .await;
        run(&store, usage("r", outcome("u1", "u1", 5, 5), true)).await;
        run(&store, usage("r", outcome("u2", "u2", 5, 5), true)).await;
        let state = store.account_state("r").await.expect("read").expect("state");
        assert_eq!(state.windows.recent.len(), 2);
        assert!(state.gifts.week.is_some() && state.subscription.is_some());
        state
    };
    let store = SqliteStore::open(&path, config, WriterLimits::default(), clock.clone()).expect("reopen");
    assert_eq!(store.account_state("r").await.expect("read"), Some(before));
    assert_eq!(store.plans().await.expect("plans").get("pro").map(|p| p.limits.daily_requests), Some(Some(500)));
}

#[tokio::test]
async fn config_ownership_on_sqlite() {
    let dir = TempDir::new().expect("tempdir");
    story::config_ownership(Arc::new(open(&db(&dir), &clock()))).await;
}

#[tokio::test]
async fn idempotency_keys_on_sqlite() {
    let dir = TempDir::new().expect("tempdir");
    let store = Arc::new(open(&db(&dir), &clock()));
    story::idempotency(store).await;
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = TempDir::new().expect("tempdir");
    let path = db(&dir);
    let clock = clock();
    let store = open(&path, &clock);
    run(&store, Command::CreateAccount { id: "d".into(), email: None, metadata: None }).await;
    run(&store, Command::PutModel { id: "m1".into(), price: model(1) }).await;
    let g = grant(&store, "d", promo(Credits::whole(100), None, "keep")).await;
    let authorize = story_authorize("d", "open-hold");
    let Reply::Authorized(held) = run(&store, authorize.clone()).await else { panic!("not authorized") };
    run(&store, usage("d", outcome("done", "f", 3, 0), true)).await;
    let state = store.account_state("d").await.expect("read").expect("state");
    assert_eq!(state.holds.len(), 1);
    assert_eq!(state.grants[0].remaining, Credits::whole(97));
    let ledger = store.ledger("d", LedgerFilter::default(), Page { limit: 100, cursor: None }).await.expect("ledger");
    drop(store);

    // Dropping the store stopped the writer and closed every connection:
    // the last one folded the WAL into the database, and nothing holds a lock.
    assert!(!dir.path().join("creditd.db-wal").exists(), "the WAL is checkpointed and removed");
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.busy_timeout(Duration::ZERO).expect("timeout");
        conn.execute_batch("BEGIN IMMEDIATE; COMMIT;").expect("no one else holds the database");
    }

    let store = open(&path, &clock);
    assert_eq!(store.account_state("d").await.expect("read"), Some(state));
    assert_eq!(
        store.ledger("d", LedgerFilter::default(), Page { limit: 100, cursor: None }).await.expect("ledger"),
        ledger
    );
    assert_eq!(store.model("m1").await.expect("read").map(|m| m.price_version), Some(1));
    // The writer's cache reloads from disk: replays and settles behave as before.
    let Reply::Authorized(again) = run(&store, authorize).await else { panic!("not authorized") };
    assert!(again.replay);
    assert_eq!(again.hold, held.hold);
    let Reply::Recorded(settled) =
        run(&store, Command::Settle { account_id: "d".into(), outcome: outcome("open-hold", "s", 2, 1) }).await
    else {
        panic!("not recorded")
    };
    assert_eq!((settled.record.credits, settled.record.price_version), (Credits::whole(4), 1));
    let Reply::Recorded(replayed) = run(&store, usage("d", outcome("done", "f", 3, 0), true)).await else {
        panic!("not recorded")
    };
    assert!(replayed.replay, "the usage record is still there");
    let grants = store.grants("d", false, Page { limit: 10, cursor: None }).await.expect("grants").data;
    assert_eq!(grants.iter().map(|x| (&x.id, x.remaining)).collect::<Vec<_>>(), [(&g.id, Credits::whole(93))]);
    assert_eq!(store.audit().await.expect("audit").breaches, vec![]);
}

fn story_authorize(account: &str, request_id: &str) -> Command {
    Command::Authorize {
        account_id: account.into(),
        request: creditd_store::AuthorizeRequest {
            request_id: request_id.into(),
            fingerprint: "a".into(),
            model: "m1".into(),
            request_type: "chat".into(),
            estimate: creditd_core::pricing::EstimateInput { input_tokens: 2, ..Default::default() },
            hold_ttl_seconds: None,
            project: None,
            conversation: None,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_share_one_commit() {
    const TASKS: usize = 64;
    let dir = TempDir::new().expect("tempdir");
    let store = Arc::new(open(&db(&dir), &clock()));
    run(store.as_ref(), Command::PutModel { id: "m1".into(), price: model(1) }).await;
    for i in 0..TASKS {
        run(store.as_ref(), Command::CreateAccount { id: format!("acct-{i}"), email: None, metadata: None }).await;
    }
    let before = store.stats();
    let start = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let (store, start) = (store.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                store.execute(usage(&format!("acct-{i}"), outcome("req", "f", 1, 1), false), None).await
            })
        })
        .collect();
    for task in tasks {
        let answer = task.await.expect("task");
        assert!(matches!(answer, Ok(Reply::Recorded(_))), "{answer:?}");
    }
    let after = store.stats();
    let commands = after.commands_committed - before.commands_committed;
    let batches = after.batches_committed - before.batches_committed;
    assert_eq!(commands, TASKS as u64);
    assert!(batches < commands, "{commands} commands took {batches} transactions: no group commit");
    let report = store.audit().await.expect("audit");
    assert_eq!((report.breaches, report.usage_records), (vec![], TASKS as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_failing_in_sql_changes_nothing_and_spares_the_others() {
    let dir = TempDir::new().expect("tempdir");
    let path = db(&dir);
    SqliteStore::migrate(&path).expect("migrate");
    {
        // A write that only the database refuses, after the engine has
        // already changed its copy of the account.
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON ledger_entries WHEN NEW.reason = 'boom'
             BEGIN SELECT RAISE(ABORT, 'boom'); END;",
        )
        .expect("trigger");
    }
    let store = Arc::new(open(&path, &clock()));
    for id in ["a", "b"] {
        run(store.as_ref(), Command::CreateAccount { id: id.into(), email: None, metadata: None }).await;
    }
    run(store.as_ref(), Command::PutModel { id: "m1".into(), price: model(1) }).await;
    grant(store.as_ref(), "a", promo(Credits::whole(10), None, "first")).await;

    let commands = vec![
        Command::Grant { account_id: "a".into(), grant: promo(Credits::whole(5), None, "boom") },
        Command::Grant { account_id: "a".into(), grant: promo(Credits::whole(7), None, "fine") },
        usage("b", outcome("r", "f", 1, 0), false),
        Command::Grant { account_id: "a".into(), grant: promo(Credits::ZERO, None, "refused") },
    ];
    let tasks: Vec<_> = commands
        .into_iter()
        .map(|c| {
            let store = store.clone();
            tokio::spawn(async move { store.execute(c, None).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    assert!(matches!(answers[0], Err(StoreError::Internal(_))), "{:?}", answers[0]);
    assert!(matches!(answers[1], Ok(Reply::Grant(_))));
    assert!(matches!(answers[2], Ok(Reply::Recorded(_))));
    assert!(matches!(answers[3], Err(StoreError::Refused(Refusal::InvalidRequest(_)))));

    // The writer's copy of the account forgot the failed grant too: the next
    // command builds on the stored state.
    let state = store.account_state("a").await.expect("read").expect("state");
    assert_eq!(state.ledger_balance(), Credits::whole(17));
    let g = grant(store.as_ref(), "a", promo(Credits::whole(1), None, "after")).await;
    assert_eq!(g.remaining, Credits::whole(1));
    let state = store.account_state("a").await.expect("read").expect("state");
    assert_eq!((state.grants.len(), state.ledger_balance()), (3, Credits::whole(18)));
    assert_eq!(store.audit().await.expect("audit").breaches, vec![]);
}

#[tokio::test]
async fn the_idle_writer_writes_out_expiries_nobody_touched() {
    let dir = TempDir::new().expect("tempdir");
    let clock = clock();
    let store = open(&db(&dir), &clock);
    run(&store, Command::CreateAccount { id: "idle".into(), email: None, metadata: None }).await;
    run(&store, Command::PutModel { id: "m1".into(), price: model(1) }).await;
    let expires = clock.now() + SignedDuration::from_hours(1);
    let g = grant(&store, "idle", promo(Credits::whole(50), Some(expires), "soon gone")).await;
    run(&store, story_authorize("idle", "held")).await;
    clock.advance(2 * 3600).expect("clock");

    // The stored state (a ledger read would bring the account to the
    // clock itself): the sweeper alone writes the expiry.
    let mut waited = Duration::ZERO;
    let state = loop {
        let state = store.account_state("idle").await.expect("read").expect("state");
        if (state.holds.is_empty() && state.grants.is_empty()) || waited > Duration::from_secs(10) {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    };
    assert!(state.holds.is_empty() && state.grants.is_empty(), "{state:?}");
    assert!(store.stats().background_sweeps >= 1);
    let filter = LedgerFilter { kind: Some(EntryKind::Expire), ..LedgerFilter::default() };
    let expired = store.ledger("idle", filter, Page { limit: 10, cursor: None }).await.expect("ledger").data;
    assert_eq!(expired.len(), 1, "the sweeper wrote the expiry without any command for the account");
    assert_eq!((expired[0].grant_id.as_deref(), expired[0].amount), (Some(g.id.as_str()), Credits::whole(-50)));
    assert_eq!(store.audit().await.expect("audit").breaches, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_tells_an_expiring_grant_once_on_sqlite() {
    let dir = TempDir::new().expect("tempdir");
    let clock = clock();
    let store = Arc::new(open(&db(&dir), &clock));
    let counted = Arc::clone(&store);
    story::expiring::the_sweeper_tells_an_expiring_grant_once(store, clock, move || counted.stats().background_sweeps)
        .await;
}

#[tokio::test]
async fn reads_show_grants_as_of_the_clock_before_the_writer_catches_up() {
    let dir = TempDir::new().expect("tempdir");
    let clock = clock();
    let store = open(&db(&dir), &clock);
    run(&store, Command::CreateAccount { id: "r".into(), email: None, metadata: None }).await;
    let expires = clock.now() + SignedDuration::from_secs(10);
    let g = grant(&store, "r", promo(Credits::whole(30), Some(expires), "soon gone")).await;
    clock.advance(20).expect("clock");
    // Straight away, before any sweep could run.
    let live = store.grants("r", false, Page { limit: 10, cursor: None }).await.expect("grants");
    assert_eq!(live.data, vec![]);
    let all = store.grants("r", true, Page { limit: 10, cursor: None }).await.expect("grants");
    assert_eq!(all.data.iter().map(|x| (&x.id, x.remaining)).collect::<Vec<_>>(), [(&g.id, Credits::ZERO)]);
}

#[tokio::test]
async fn bad_input_is_refused_not_a_failure() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&db(&dir), &clock());
    run(&store, Command::CreateAccount { id: "x".into(), email: None, metadata: None }).await;
    run(&store, Command::PutModel { id: "m1".into(), price: model(1) }).await;
    let mut huge = outcome("big", "f", 1, 0);
    huge.details.latency_ms = Some(u64::MAX);
    assert!(matches!(
        store.execute(usage("x", huge, false), None).await,
        Err(StoreError::Refused(Refusal::InvalidRequest(_)))
    ));
    let too_many = outcome("many", "f", u64::MAX, 0);
    assert!(matches!(
        store.execute(usage("x", too_many, false), None).await,
        Err(StoreError::Refused(Refusal::InvalidRequest(_)))
    ));
    assert!(matches!(
        store.execute(usage("x", outcome("m", "f", 1, 0), true).with_model("nope"), None).await,
        Err(StoreError::Refused(Refusal::UnknownModel(_)))
    ));
    for cursor in ["x", "1:", ":", "-"] {
        let page = Page { limit: 5, cursor: Some(cursor.into()) };
        assert!(store.grants("x", true, page.clone()).await.is_err(), "{cursor:?}");
        assert!(store.ledger("x", LedgerFilter::default(), page).await.is_err(), "{cursor:?}");
    }
    // Out-of-range limits are clamped, not refused.
    let page = Page { limit: 0, cursor: None };
    assert!(store.accounts(page).await.is_ok());
    store.ping().await.expect("ping");
}

trait WithModel {
    fn with_model(self, model: &str) -> Self;
}

impl WithModel for Command {
    fn with_model(mut self, name: &str) -> Self {
        if let Command::RecordUsage { model, .. } = &mut self {
            *model = name.to_string();
        }
        self
    }
}

#[tokio::test]
async fn money_on_sqlite() {
    let dir = TempDir::new().expect("tempdir");
    let clock = Arc::new(ManualClock::new(story::money::START.parse().expect("time")));
    let store =
        SqliteStore::open(&db(&dir), story::money::config(), WriterLimits::default(), clock.clone()).expect("open");
    story::money::money(Arc::new(store), clock).await;
}

#[tokio::test]
async fn audit_sees_issue_12_defects_on_sqlite() {
    let dir = TempDir::new().expect("tempdir");
    let clock = Arc::new(ManualClock::new(story::money::START.parse().expect("time")));
    let store =
        SqliteStore::open(&db(&dir), story::money::config(), WriterLimits::default(), clock.clone()).expect("open");
    story::money::audit_sees_the_defects(Arc::new(store), clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_see_only_committed_states_on_sqlite() {
    let dir = TempDir::new().expect("tempdir");
    story::reads::reads_see_only_committed_states(Arc::new(open(&db(&dir), &clock()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_summary_sums_exactly_net_of_refunds_on_sqlite() {
    let dir = TempDir::new().expect("tempdir");
    story::reads::the_usage_summary_sums_exactly_net_of_refunds(Arc::new(open(&db(&dir), &clock()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_is_as_of_the_clock_on_sqlite() {
    let dir = TempDir::new().expect("tempdir");
    let clock = clock();
    story::reads::the_ledger_is_as_of_the_clock(Arc::new(open(&db(&dir), &clock)), clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_leaves_the_readers_serving_on_sqlite() {
    let dir = TempDir::new().expect("tempdir");
    story::reads::a_failed_read_leaves_the_readers_serving(Arc::new(open(&db(&dir), &clock()))).await;
}

/// Issue 18 (the fuzz suite's hang): requests wait while a sweep runs, and
/// an account far behind the clock may take long to bring up to it, so
/// the sweeper takes few accounts per transaction (at most 16), never
/// every due account at once.
#[tokio::test]
async fn the_sweeper_takes_due_accounts_a_few_at_a_time() {
    let dir = TempDir::new().expect("tempdir");
    let clock = clock();
    let store = open(&db(&dir), &clock);
    let expires = clock.now() + SignedDuration::from_hours(1);
    for i in 0..40 {
        let id = format!("due{i}");
        run(&store, Command::CreateAccount { id: id.clone(), email: None, metadata: None }).await;
        grant(&store, &id, promo(Credits::whole(5), Some(expires), "soon gone")).await;
    }
    let before = store.stats();
    clock.advance(2 * 3600).expect("clock");
    let mut waited = Duration::ZERO;
    while store.stats().background_sweeps - before.background_sweeps < 40 && waited < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    // Sweeps are counted as they start: one command more, and the writer
    // (one thread) has committed every sweep before it. At least three
    // sweeps and that command.
    run(&store, Command::CreateAccount { id: "later".into(), email: None, metadata: None }).await;
    let after = store.stats();
    assert_eq!(after.background_sweeps - before.background_sweeps, 40, "every due account was swept");
    assert!(
        after.batches_committed - before.batches_committed > 3,
        "40 accounts in transactions of at most 16: {before:?} → {after:?}"
    );
    assert_eq!(store.audit().await.expect("audit").breaches, vec![]);
}
