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
