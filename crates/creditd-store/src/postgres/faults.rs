//! The writer on PostgreSQL under faults, with batches built by hand so
//! that their commands are certainly in one transaction: a COMMIT whose
//! answer is lost (`creditd_testing::proxy`).

use std::collections::HashMap;
use std::sync::Arc;

use creditd_core::account::GrantKind;
use creditd_core::engine::NewGrant;
use creditd_core::ledger::Reference;
use creditd_core::plan::PlanBook;
use creditd_core::units::{Credits, Usd};
use creditd_testing::PgDatabase;
use creditd_testing::proxy::PgProxy;
use tokio::sync::oneshot;

use super::conn::PgConn;
use super::schema;
use crate::sql::writer::{Job, Stats, Writer};
use crate::sql::{DbExt, params};
use crate::{Command, EngineConfig, ManualClock, Reply, StoreError, WriterLimits};

fn writer(url: &str) -> Writer<PgConn> {
    let clock = Arc::new(ManualClock::new("2026-01-01T00:00:00Z".parse().expect("time")));
    let conn = PgConn::connect_writer(url).expect("connect");
    let stats = Arc::new(Stats::default());
    Writer::new(
        conn,
        EngineConfig::default(),
        WriterLimits::default(),
        clock,
        HashMap::new(),
        PlanBook::default(),
        stats,
    )
}

fn run(w: &mut Writer<PgConn>, commands: Vec<Command>) -> Vec<Result<Reply, StoreError>> {
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

fn grant(whole: i64) -> Command {
    Command::Grant {
        account_id: "a".into(),
        grant: NewGrant {
            kind: GrantKind::Promo,
            source: "test".into(),
            reason: None,
            amount: Credits::whole(whole),
            priority: None,
            starts_at: None,
            expires_at: None,
            reference: Reference::None,
        },
    }
}

fn entries(db: &PgDatabase) -> Vec<(String, i64)> {
    let conn = PgConn::connect(db.url()).expect("connect");
    conn.query_vec(
        "SELECT kind, COUNT(*) FROM ledger_entries WHERE account_id = ?1 GROUP BY kind ORDER BY kind",
        params!["a"],
        |row| Ok((row.get::<String>(0)?, row.get::<i64>(1)?)),
    )
    .expect("entries")
}

/// Issue 19, item 3: the answer to a COMMIT that succeeded is lost. The
/// writer used to run each command of the batch again alone: grants,
/// adjustments and top-ups without an idempotency key were stored twice.
/// Now it asks the database whether the batch committed, and answers it.
#[test]
fn a_lost_commit_acknowledgement_is_not_applied_twice() {
    let db = PgDatabase::create();
    schema::migrate(&PgConn::connect(db.url()).expect("connect")).expect("migrate");
    let proxy = PgProxy::start(&creditd_testing::postgres_server_addr()).expect("proxy");
    let mut w = writer(&proxy.url_for(db.url()));
    let created = run(&mut w, vec![Command::CreateAccount { id: "a".into(), email: None, metadata: None }]);
    assert!(matches!(created[0], Ok(Reply::Account(_))), "{created:?}");

    proxy.cut_next_commits(1);
    let topup = |external_id: &str| Command::Topup {
        account_id: "a".into(),
        amount_usd: Usd::whole(1),
        provider: "manual".into(),
        external_id: Some(external_id.into()),
    };
    let adjust = Command::AdjustWallet { account_id: "a".into(), amount: Credits::whole(5), reason: None };
    let answers = run(&mut w, vec![grant(10), adjust, topup("p1")]);
    assert_eq!(proxy.commits().1, 1, "the COMMIT was cut");
    for answer in &answers {
        assert!(answer.is_ok(), "a committed batch is answered as committed: {answer:?}");
    }
    // Alone, too: a single command is answered, and stored, once.
    proxy.cut_next_commits(1);
    let answers = run(&mut w, vec![grant(7)]);
    assert!(matches!(answers[0], Ok(Reply::Grant(_))), "{answers:?}");
    assert_eq!(proxy.commits().1, 2);

    let expected = [("adjustment".to_string(), 1), ("grant".to_string(), 2), ("topup".to_string(), 1)];
    assert_eq!(entries(&db), expected);
    // And the writer goes on, its cache in step with the database.
    let answers = run(&mut w, vec![grant(1), topup("p2")]);
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let expected = [("adjustment".to_string(), 1), ("grant".to_string(), 3), ("topup".to_string(), 2)];
    assert_eq!(entries(&db), expected);
}

/// Runs each batch on a writer of its own, all at once (as several
/// instances would), and gives their answers in order.
fn race(url: &str, batches: Vec<Vec<Command>>) -> Vec<Vec<Result<Reply, StoreError>>> {
    let barrier = Arc::new(std::sync::Barrier::new(batches.len()));
    let threads: Vec<_> = batches
        .into_iter()
        .map(|commands| {
            let mut w = writer(url);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                run(&mut w, commands)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("writer thread")).collect()
}

fn migrated() -> PgDatabase {
    let db = PgDatabase::create();
    schema::migrate(&PgConn::connect(db.url()).expect("connect")).expect("migrate");
    db
}

fn create(id: &str) -> Command {
    Command::CreateAccount { id: id.into(), email: None, metadata: None }
}

/// Issue 19, item 4: the same account created on three instances at once
/// gave 500s: the losers' batches, of one command, failed on the unique key
/// and were not run again. Now they run again, and find the account: 409.
#[test]
fn racing_creates_of_one_account_answer_conflict_not_500() {
    let db = migrated();
    for round in 0..5 {
        let id = format!("acct-{round}");
        let answers = race(db.url(), vec![vec![create(&id)], vec![create(&id)], vec![create(&id)]]);
        let created = answers.iter().filter(|a| matches!(a[0], Ok(Reply::Account(_)))).count();
        let conflicts = answers
            .iter()
            .filter(|a| matches!(a[0], Err(StoreError::Refused(creditd_core::engine::Refusal::Conflict(_)))))
            .count();
        assert_eq!((created, conflicts), (1, 2), "round {round}: {answers:?}");
    }
}

fn topup_event(account: &str, event_id: &str, payment_id: &str) -> Command {
    Command::WebhookEvent {
        event: crate::WebhookEventIn {
            provider: "creem".into(),
            event_id: Some(event_id.into()),
            event_type: Some("checkout.completed".into()),
            account_id: Some(account.into()),
            body: b"{}".to_vec(),
            action: crate::WebhookAction::Topup {
                account_id: account.into(),
                amount_usd: Usd::whole(20),
                payment_id: payment_id.into(),
            },
        },
    }
}

fn webhook_status(answer: &Result<Reply, StoreError>) -> Option<crate::WebhookStatus> {
    match answer {
        Ok(Reply::WebhookEvent(e)) => Some(e.status),
        _ => None,
    }
}

/// Issue 19, item 4: one payment delivered to three instances at once (the
/// same event, and the same payment under another event id). The payment
/// checks ran before the account was locked, so a loser that raced past
/// them was recorded `ignored` (or failed); now every account a batch
/// touches is locked first, and the losers are `duplicate`.
#[test]
fn racing_webhook_deliveries_answer_duplicate_not_ignored() {
    use crate::WebhookStatus::{Applied, Duplicate};
    let db = migrated();
    let mut w = writer(db.url());
    assert!(run(&mut w, vec![create("a")])[0].is_ok());
    for round in 0..5 {
        let (event, payment) = (format!("evt-{round}"), format!("pay-{round}"));
        let answers = race(
            db.url(),
            vec![
                vec![topup_event("a", &event, &payment)],
                vec![topup_event("a", &event, &payment)],
                vec![topup_event("a", &format!("{event}-again"), &payment)],
            ],
        );
        let mut statuses: Vec<_> = answers.iter().map(|a| webhook_status(&a[0])).collect();
        statuses.sort_by_key(|s| s.map(|s| s.as_str()));
        assert_eq!(statuses, [Some(Applied), Some(Duplicate), Some(Duplicate)], "round {round}: {answers:?}");
    }
    let conn = PgConn::connect(db.url()).expect("connect");
    let wallet: i64 =
        conn.query_one("SELECT wallet_balance FROM accounts WHERE id = 'a'", params![], |r| r.get(0)).expect("wallet");
    assert_eq!(wallet, Credits::whole(5 * 2000).units());
}

/// Issue 19, item 5: a webhook locked its account in the middle of its
/// batch, outside the id order in which batches lock their accounts: a
/// batch holding `c` and waiting for `a` (the webhook's) deadlocked with one
/// holding `a` and waiting for `c`, and the victim got 500 after a second.
/// Now a batch locks every account it will touch, in order, at its start.
#[test]
fn webhooks_lock_their_account_in_order_no_deadlock() {
    let db = migrated();
    let mut w = writer(db.url());
    let created = run(&mut w, vec![create("a"), create("c")]);
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let grant_to = |account: &str| {
        let Command::Grant { grant, .. } = grant(1) else { unreachable!() };
        Command::Grant { account_id: account.into(), grant }
    };
    let started = std::time::Instant::now();
    for round in 0..10 {
        let answers = race(
            db.url(),
            vec![
                vec![grant_to("c"), topup_event("a", &format!("e{round}"), &format!("p{round}"))],
                vec![grant_to("a"), grant_to("c")],
            ],
        );
        for answer in answers.iter().flatten() {
            assert!(answer.is_ok(), "round {round}: {answer:?}");
        }
    }
    // A deadlock costs a second (PostgreSQL's deadlock_timeout) before its victim is chosen,
    // so ten deadlocking rounds take at least ten seconds; the bound leaves room for a loaded
    // machine (the rounds themselves took over 5 s at a load average of 20).
    assert!(started.elapsed() < std::time::Duration::from_secs(9), "{:?}", started.elapsed());
}
