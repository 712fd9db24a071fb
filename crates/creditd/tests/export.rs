//! `creditd export` as an operator runs it: the real binary on a real
//! database file, while a store (as `creditd serve` would) has it open.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use creditd_core::account::RequestDetails;
use creditd_core::engine::Outcome;
use creditd_core::pricing::{ModelPrice, RequestStatus, TokenRates, Usage};
use creditd_core::units::Usd;
use creditd_server::export::CSV_COLUMNS;
use creditd_store::sqlite::SqliteStore;
use creditd_store::{Command as StoreCommand, EngineConfig, ManualClock, Store, WriterLimits};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_creditd");
const ROWS: usize = 2_345;
const ACCOUNTS: [&str; 3] = ["a_1", "a_2", "a_3"];

fn creditd(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command.current_dir(dir).env("CREDITD_LOG", "warn");
    for (name, _) in std::env::vars() {
        if name.starts_with("CREDITD_") && name != "CREDITD_LOG" {
            command.env_remove(name);
        }
    }
    command.args(args).stdin(Stdio::null()).output().expect("run creditd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A database with `ROWS` usage records over three accounts, 100 a second
/// from 2026-03-01T00:00:00Z, projects with commas, quotes, line breaks and
/// non-ASCII text. The store stays open, as a running server's would.
async fn database(dir: &Path) -> (SqliteStore, PathBuf) {
    let path = dir.join("creditd.db");
    let clock = Arc::new(ManualClock::new("2026-03-01T00:00:00Z".parse().unwrap()));
    let store = SqliteStore::open(&path, EngineConfig::default(), WriterLimits::default(), clock.clone()).unwrap();
    let price = ModelPrice {
        cost_usd_per_mtok: TokenRates {
            input: Some(Usd::whole(3)),
            output: Some(Usd::whole(15)),
            ..TokenRates::default()
        },
        ..ModelPrice::default()
    };
    store.execute(StoreCommand::PutModel { id: "m".into(), price }, None).await.unwrap();
    for id in ACCOUNTS {
        store.execute(StoreCommand::CreateAccount { id: id.into(), email: None, metadata: None }, None).await.unwrap();
    }
    let projects = ["plain", "Acme, Inc.", "say \"hi\"", "two\nlines", "Проект 日本 ü"];
    let mut n = 0;
    while n < ROWS {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..100.min(ROWS - n) {
            let store = store.clone();
            let account = ACCOUNTS[n % ACCOUNTS.len()].to_string();
            let request_id = format!("r{n:05}");
            let details = RequestDetails {
                project: Some(projects[n % projects.len()].to_string()),
                tools: vec!["web".into(), "a,b".into()],
                ..RequestDetails::default()
            };
            calls.spawn(async move {
                let outcome = Outcome {
                    request_id: request_id.clone(),
                    fingerprint: request_id,
                    status: RequestStatus::Success,
                    usage: Usage { input_tokens: 1000, output_tokens: 100, ..Usage::default() },
                    details,
                };
                let command = StoreCommand::RecordUsage {
                    account_id: account,
                    outcome,
                    model: "m".into(),
                    request_type: "chat".into(),
                    enforce: false,
                };
                store.execute(command, None).await.map(|_| ())
            });
            n += 1;
        }
        while let Some(done) = calls.join_next().await {
            done.unwrap().unwrap();
        }
        clock.advance(1).unwrap();
    }
    (store, path)
}

fn url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

fn csv_rows(bytes: &[u8]) -> Vec<csv::StringRecord> {
    let mut reader = csv::Reader::from_reader(bytes);
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header, CSV_COLUMNS);
    reader.records().collect::<Result<_, _>>().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn export_writes_every_record_in_order_while_the_database_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = database(dir.path()).await;
    let db = url(&path);

    // CSV to a file: every record, once, in recorded_at order. Standard
    // error is not a terminal: no progress bar, nothing at all.
    let out = dir.path().join("usage.csv");
    let run = creditd(dir.path(), &["export", "--db", &db, "-o", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_eq!(text(&run.stderr), "", "no progress bar when standard error is not a terminal");
    assert_eq!(text(&run.stdout), "");
    let file = std::fs::read(&out).unwrap();
    let rows = csv_rows(&file);
    assert_eq!(rows.len(), ROWS);
    let ids: Vec<&str> = rows.iter().map(|r| r.get(0).unwrap()).collect();
    let times: Vec<&str> = rows.iter().map(|r| r.get(30).unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "recorded_at order");
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ROWS, "every record once");
    assert_eq!(rows[0].get(30), Some("2026-03-01T00:00:00Z"));
    assert_eq!(rows[ROWS - 1].get(30), Some("2026-03-01T00:00:23Z"));
    let projects: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.get(2).unwrap()).collect();
    assert!(projects.contains("two\nlines") && projects.contains("say \"hi\"") && projects.contains("Проект 日本 ü"));
    assert!(rows.iter().all(|r| r.get(20) == Some("web;a,b")));

    // The same bytes on standard output, piped.
    let piped = creditd(dir.path(), &["export", "--db", &db, "--format", "csv"]);
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    assert_eq!(piped.stdout, file);
    assert_eq!(text(&piped.stderr), "");

    // JSONL, one account, a time window: the store's own records.
    let jsonl = creditd(
        dir.path(),
        &[
            "export",
            "--db",
            &db,
            "--format",
            "jsonl",
            "--account",
            "a_2",
            "--from",
            "2026-03-01T00:00:05Z",
            "--to",
            "2026-03-01T00:00:10Z",
        ],
    );
    assert!(jsonl.status.success(), "{}", text(&jsonl.stderr));
    let records: Vec<Value> = text(&jsonl.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut expected: Vec<String> = (500..1000).filter(|n| n % 3 == 1).map(|n| format!("r{n:05}")).collect();
    let got: Vec<String> = records.iter().map(|r| r["request_id"].as_str().unwrap().to_string()).collect();
    // In the same order as the full export (within a second, the writer's order).
    let in_full_order: Vec<String> =
        ids.iter().filter(|id| expected.contains(&id.to_string())).map(|id| id.to_string()).collect();
    assert_eq!(got, in_full_order);
    let mut sorted = got.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected);
    let first = &records[0];
    let id = first["request_id"].as_str().unwrap();
    let stored = store.usage_record("a_2", id).await.unwrap().unwrap();
    assert_eq!(first["credits"], stored.credits.to_string());
    assert_eq!(first["recorded_at"], stored.recorded_at.to_string());
    assert_eq!(first["usage"]["input_tokens"], 1000);

    // The export wrote nothing: the store's writer still works.
    store.execute(StoreCommand::CreateAccount { id: "after".into(), email: None, metadata: None }, None).await.unwrap();
    drop(store);
}

#[tokio::test]
async fn export_refuses_what_it_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = database(dir.path()).await;
    drop(store);
    let db = url(&path);
    let bad_from = creditd(dir.path(), &["export", "--db", &db, "--from", "yesterday"]);
    assert_eq!(bad_from.status.code(), Some(2), "{}", text(&bad_from.stderr));
    assert!(text(&bad_from.stderr).contains("--from"));
    let bad_status = creditd(dir.path(), &["export", "--db", &db, "--status", "fine"]);
    assert_eq!(bad_status.status.code(), Some(2));
    let nobody = creditd(dir.path(), &["export", "--db", &db, "--account", "nobody"]);
    assert_eq!(nobody.status.code(), Some(1));
    assert!(text(&nobody.stderr).contains("no account"), "{}", text(&nobody.stderr));
    let missing = creditd(dir.path(), &["export", "--db", "sqlite://missing.db"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(!dir.path().join("missing.db").exists(), "export never creates a database");
    // An empty selection is the header alone.
    let empty = creditd(dir.path(), &["export", "--db", &db, "--model", "none"]);
    assert!(empty.status.success());
    assert_eq!(text(&empty.stdout), format!("{}\r\n", CSV_COLUMNS.join(",")));
}

/// On a terminal (a pseudo-terminal made by `script`), standard error shows
/// a progress bar that ends at 100%.
#[tokio::test]
async fn export_draws_a_progress_bar_on_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` to make a terminal");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = database(dir.path()).await;
    drop(store);
    let out = dir.path().join("usage.jsonl");
    let typescript = dir.path().join("typescript");
    let command = format!("{BIN} export --db {} --format jsonl -o {}", url(&path), out.display());
    let run = Command::new("script")
        .args(["-q", "-e", "-c", &command, typescript.to_str().unwrap()])
        .env("CREDITD_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run.stderr));
    let screen = text(&std::fs::read(&typescript).unwrap());
    assert!(screen.contains(&format!("100%  {ROWS}/{ROWS} records")), "{screen:?}");
    assert!(screen.contains(&format!("exported {ROWS} records to {}", out.display())), "{screen:?}");
    assert_eq!(text(&std::fs::read(&out).unwrap()).lines().count(), ROWS);
}
