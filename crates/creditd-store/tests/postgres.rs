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
async fn the_sweeper_tells_an_expiring_grant_once_on_postgres() {
    let db = PgDatabase::create();
    let clock = clock();
    let store = Arc::new(connect(&db, EngineConfig::default(), &clock));
    let counted = Arc::clone(&store);
    story::expiring::the_sweeper_tells_an_expiring_grant_once(store, clock, move || counted.stats().background_sweeps)
        .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_see_only_committed_states_on_postgres() {
    let db = PgDatabase::create();
    story::reads::reads_see_only_committed_states(Arc::new(connect(&db, EngineConfig::default(), &clock()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_summary_sums_exactly_net_of_refunds_on_postgres() {
    let db = PgDatabase::create();
    let store = connect(&db, EngineConfig::default(), &clock());
    story::reads::the_usage_summary_sums_exactly_net_of_refunds(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_is_as_of_the_clock_on_postgres() {
    let db = PgDatabase::create();
    let clock = clock();
    story::reads::the_ledger_is_as_of_the_clock(Arc::new(connect(&db, EngineConfig::default(), &clock)), clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_leaves_the_readers_serving_on_postgres() {
    let db = PgDatabase::create();
    story::reads::a_failed_read_leaves_the_readers_serving(Arc::new(connect(&db, EngineConfig::default(), &clock())))
        .await;
}

/// Every read the API makes, answered again at once after the database
/// ended the connections.
async fn reads_answer(store: &PgStore, within: std::time::Duration) {
    let started = std::time::Instant::now();
    // More at once than there are read connections, so that every one of
    // them is used.
    let reads = (0..12).map(|_| async {
        store.account_state("acct").await.map(drop)?;
        store.ledger("acct", Default::default(), story::all()).await.map(drop)?;
        store.key("no-such-key").await.map(drop)?;
        store.account_token("no-such-token").await.map(drop)
    });
    for read in futures_util::future::join_all(reads).await {
        assert_eq!(read, Ok(()), "a read after the connections ended");
    }
    let health = store.health().await;
    assert_eq!((health.writer, health.reader), (Ok(()), Ok(())));
    assert!(started.elapsed() < within, "{:?}", started.elapsed());
}

/// Issue #19 item 1: after every connection is cut (a restart, a network
/// failure), reads recover by themselves within a second: the read pool
/// closes a connection that failed and connects anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_recover_after_the_connections_are_cut() {
    use creditd_testing::proxy::PgProxy;
    let db = PgDatabase::create();
    let proxy = PgProxy::start(&creditd_testing::postgres_server_addr()).expect("proxy");
    let clock = clock();
    let store =
        PgStore::connect(&proxy.url_for(db.url()), EngineConfig::default(), WriterLimits::default(), clock.clone())
            .expect("connect");
    run(&store, Command::CreateAccount { id: "acct".into(), email: None, metadata: None }).await;
    reads_answer(&store, std::time::Duration::from_secs(1)).await;
    for _ in 0..2 {
        proxy.cut_all();
        reads_answer(&store, std::time::Duration::from_secs(1)).await;
    }
    // A database that is down is unavailable for reads, and they recover
    // once it is back.
    proxy.set_down(true);
    proxy.cut_all();
    let down = store.account_state("acct").await;
    assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");
    proxy.set_down(false);
    reads_answer(&store, std::time::Duration::from_secs(1)).await;
}

/// Issue #19 item 1: the same after `pg_terminate_backend` of every server
/// process of the database (what an operator or a failover does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_recover_after_the_server_processes_are_terminated() {
    let db = PgDatabase::create();
    let clock = clock();
    let store = connect(&db, EngineConfig::default(), &clock);
    run(&store, Command::CreateAccount { id: "acct".into(), email: None, metadata: None }).await;
    reads_answer(&store, std::time::Duration::from_secs(1)).await;
    terminate_all(&db);
    reads_answer(&store, std::time::Duration::from_secs(1)).await;
}

/// Ends every other server process of the test's database.
fn terminate_all(db: &PgDatabase) {
    let name = db.url().rsplit('/').next().expect("a database name").to_string();
    let admin = creditd_testing::postgres_admin_url();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await.expect("admin");
            tokio::spawn(connection);
            let ended = client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&name],
                )
                .await
                .expect("terminate");
            assert!(ended.len() >= 5, "{} server processes ended", ended.len());
        });
    })
    .join()
    .expect("terminate thread");
}

/// Issue #19 item 1: the idle sweeper's connection (writer 0's) recovers
/// too: a hold that expires after every connection was cut is released in
/// the database without anyone touching its account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_sweeper_recovers_after_the_connections_are_cut() {
    use creditd_testing::proxy::PgProxy;
    let db = PgDatabase::create();
    let proxy = PgProxy::start(&creditd_testing::postgres_server_addr()).expect("proxy");
    let clock = clock();
    let store =
        PgStore::connect(&proxy.url_for(db.url()), EngineConfig::default(), WriterLimits::default(), clock.clone())
            .expect("connect");
    run(&store, Command::PutModel { id: "m1".into(), price: model(1) }).await;
    run(&store, Command::CreateAccount { id: "acct".into(), email: None, metadata: None }).await;
    grant(&store, "acct", promo(Credits::whole(100), None, "pool")).await;
    let mut request = story::authorize("acct", "r1", "f", 10, None);
    if let Command::Authorize { request, .. } = &mut request {
        request.hold_ttl_seconds = Some(60);
    }
    run(&store, request).await;
    // Let the sweeper scan once on the connection, then cut it.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    proxy.cut_all();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    clock.advance(61).expect("forward");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let stored = store.account_state("acct").await.expect("read").expect("account");
        if stored.holds.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the expired hold is still open in the database");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
