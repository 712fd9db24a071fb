//! The PostgreSQL backend on a real server: the shared story, and what
//! several instances on one database must agree on. Each test has a fresh
//! database of its own (`creditd_testing::PgDatabase`).

mod story;

use std::sync::Arc;

use creditd_core::engine::Refusal;
use creditd_core::units::Credits;
use creditd_store::postgres::PgStore;
use creditd_store::{Command, EngineConfig, ManualClock, Reply, Store, StoreError, WriterLimits};
use creditd_testing::PgDatabase;

use story::{grant, model, outcome, promo, run, usage};

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(story::start()))
}

fn connect(db: &PgDatabase, config: EngineConfig, clock: &Arc<ManualClock>) -> PgStore {
    PgStore::connect(db.url(), config, WriterLimits::default(), clock.clone()).expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn story_on_postgres() {
    let db = PgDatabase::create();
    let clock = clock();
    let store = Arc::new(connect(&db, EngineConfig::default(), &clock));
    story::story(store, clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_on_postgres() {
    let db = PgDatabase::create();
    let clock = Arc::new(ManualClock::new(story::SUBSCRIPTIONS_START.parse().expect("time")));
    let store = Arc::new(connect(&db, story::subscription_config(), &clock));
    story::subscriptions(store, clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_ownership_on_postgres() {
    let db = PgDatabase::create();
    story::config_ownership(Arc::new(connect(&db, EngineConfig::default(), &clock()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_on_postgres() {
    let db = PgDatabase::create();
    let store = Arc::new(connect(&db, EngineConfig::default(), &clock()));
    story::idempotency(store).await;
}

/// Two instances on one database: what one writes, the other sees before
/// its next write to that account, even with the account in its cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_never_acts_on_an_outdated_copy_of_an_account() {
    let db = PgDatabase::create();
    let clock = clock();
    let a = connect(&db, EngineConfig::default(), &clock);
    let b = connect(&db, EngineConfig::default(), &clock);
    run(&a, Command::PutModel { id: "m1".into(), price: model(1) }).await;
    run(&a, Command::CreateAccount { id: "acct".into(), email: None, metadata: None }).await;
    grant(&a, "acct", promo(Credits::whole(100), None, "first")).await;
    // Both instances cache the account.
    run(&a, usage("acct", outcome("r1", "f", 10, 0), true)).await;
    run(&b, usage("acct", outcome("r2", "f", 10, 0), true)).await;
    // `a` charges again; `b`'s cached copy is now outdated.
    run(&a, usage("acct", outcome("r3", "f", 30, 0), true)).await;
    let Reply::Recorded(r) = run(&b, usage("acct", outcome("r4", "f", 50, 0), true)).await else { panic!() };
    assert_eq!(r.record.credits, Credits::whole(50));
    // 100 - 10 - 10 - 30 - 50: one more credit than is left is refused, on either instance.
    for store in [&a, &b] {
        let refusal = story::refused(store, usage("acct", outcome("r5", "f", 1, 0), true)).await;
        assert!(matches!(refusal, Refusal::InsufficientCredits { .. }), "{refusal:?}");
    }
    // A request id charged on one instance is a replay on the other.
    let Reply::Recorded(replay) = run(&b, usage("acct", outcome("r3", "f", 30, 0), true)).await else { panic!() };
    assert!(replay.replay);
    // A model added through `b` prices requests on `a`.
    run(&b, Command::PutModel { id: "m2".into(), price: model(2) }).await;
    grant(&b, "acct", promo(Credits::whole(10), None, "second")).await;
    let command = Command::RecordUsage {
        account_id: "acct".into(),
        outcome: outcome("r6", "f", 1, 0),
        model: "m2".into(),
        request_type: "chat".into(),
        enforce: true,
    };
    let Reply::Recorded(r) = run(&a, command).await else { panic!() };
    assert_eq!(r.record.credits, Credits::whole(2));
    assert_eq!(a.audit().await.expect("audit").breaches, vec![]);
}

/// Many concurrent charges through two instances at one account with a
/// limited balance: never more than granted, each acknowledged charge
/// recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_overspend_one_account() {
    let db = PgDatabase::create();
    let clock = clock();
    let a = Arc::new(connect(&db, EngineConfig::default(), &clock));
    let b = Arc::new(connect(&db, EngineConfig::default(), &clock));
    run(a.as_ref(), Command::PutModel { id: "m1".into(), price: model(1) }).await;
    run(a.as_ref(), Command::CreateAccount { id: "acct".into(), email: None, metadata: None }).await;
    grant(a.as_ref(), "acct", promo(Credits::whole(1000), None, "budget")).await;
    let mut tasks = Vec::new();
    for i in 0..400 {
        let store: Arc<dyn Store> = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            // Every request id is sent twice, once to each instance's queue.
            let id = format!("r{}", i / 2);
            store.execute(usage("acct", outcome(&id, "f", 7, 0), true), None).await
        }));
    }
    let mut charged = std::collections::HashSet::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(Reply::Recorded(r)) => {
                charged.insert(r.record.request_id.clone());
            }
            Err(StoreError::Refused(Refusal::InsufficientCredits { .. })) => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // 1000 credits at 7 each: 142 requests fit.
    assert_eq!(charged.len(), 142);
    let state = a.account_state("acct").await.expect("read").expect("account");
    assert_eq!(state.ledger_balance(), Credits::whole(1000 - 7 * 142));
    let report = b.audit().await.expect("audit");
    assert_eq!((report.breaches.len(), report.usage_records), (0, 142));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_on_postgres() {
    let db = PgDatabase::create();
    let clock = Arc::new(ManualClock::new(story::money::START.parse().expect("time")));
    let store = Arc::new(connect(&db, story::money::config(), &clock));
    story::money::money(store, clock).await;
}

/// Issue 19, item 7: a database that cannot be reached is `Unavailable`
/// (503 with Retry-After over HTTP), not an internal failure, for writes,
/// reads and the health of each part; once it is back, the writers serve
/// again at once, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_is_down_is_unavailable_and_the_writer_recovers() {
    use creditd_testing::proxy::PgProxy;
    let db = PgDatabase::create();
    let proxy = PgProxy::start(&creditd_testing::postgres_server_addr()).expect("proxy");
    let clock = clock();
    let store =
        PgStore::connect(&proxy.url_for(db.url()), EngineConfig::default(), WriterLimits::default(), clock.clone())
            .expect("connect");
    run(&store, Command::CreateAccount { id: "acct".into(), email: None, metadata: None }).await;
    let health = store.health().await;
    assert_eq!((health.writer, health.reader), (Ok(()), Ok(())));

    proxy.set_down(true);
    let down = store.execute(promo_grant("acct", 1), None).await;
    assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");
    let health = store.health().await;
    assert!(matches!(health.writer, Err(StoreError::Unavailable(_))), "{health:?}");
    assert!(matches!(health.reader, Err(StoreError::Unavailable(_))), "{health:?}");

    proxy.set_down(false);
    let started = std::time::Instant::now();
    let up = store.execute(promo_grant("acct", 2), None).await;
    assert!(matches!(up, Ok(Reply::Grant(_))), "{up:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "recovered in {:?}", started.elapsed());
    assert_eq!(store.health().await.writer, Ok(()));
}

fn promo_grant(account: &str, whole: i64) -> Command {
    Command::Grant { account_id: account.into(), grant: promo(Credits::whole(whole), None, "down") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_sees_issue_12_defects_on_postgres() {
    let db = PgDatabase::create();
    let clock = Arc::new(ManualClock::new(story::money::START.parse().expect("time")));
    let store = Arc::new(connect(&db, story::money::config(), &clock));
    story::money::audit_sees_the_defects(store, clock).await;
}
