//! Stored history for the growth benchmark: millions of past usage records
//! and ledger entries, so that authorize can be measured against a database
//! the size of one that has served a product for months.
//!
//! Charging 10 million requests through the writer would take longer than
//! the benchmark itself, so one request is charged through the store (the
//! template) and then copied with SQL: every copy is a row the store itself
//! wrote, with its own account, request id and time. The copies' amounts are
//! the template's and no grant paid for them, so `creditd audit` does not
//! balance on such a database; it is for measuring sizes, not money.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use creditd_core::account::RequestDetails;
use creditd_core::engine::Outcome;
use creditd_core::pricing::{RequestStatus, Usage};
use creditd_store::{Command, Store};
use rusqlite::Connection;

const TEMPLATE_REQUEST: &str = "history-template";

/// Rows copied per transaction.
const ROWS_PER_TRANSACTION: u64 = 500_000;

/// The history's records are spread over the 30 days before the template.
const SPAN_MICROS: i64 = 30 * 24 * 3600 * 1_000_000;

/// Charges the one request every history row is copied from.
pub async fn record_template(store: &Arc<dyn Store>) -> Result<()> {
    let details = RequestDetails {
        project: Some("growth-bench".into()),
        conversation: Some("conversation-0".into()),
        latency_ms: Some(840),
        ..RequestDetails::default()
    };
    let outcome = Outcome {
        request_id: TEMPLATE_REQUEST.into(),
        fingerprint: TEMPLATE_REQUEST.into(),
        status: RequestStatus::Success,
        usage: Usage { input_tokens: 2000, output_tokens: 500, ..Usage::default() },
        details,
    };
    let command = Command::RecordUsage {
        account_id: "acct-0".into(),
        outcome,
        model: "bench-model".into(),
        request_type: "chat".into(),
        enforce: true,
    };
    store.execute(command, None).await.context("charge the history template")?;
    Ok(())
}

/// Copies the template's usage record and ledger entry `rows` times, round
/// robin over `accounts`, in `recorded_at` order.
pub fn replicate(db: &Path, accounts: u32, rows: u64) -> Result<()> {
    let conn = Connection::open(db)?;
    // A bulk load: a large page cache keeps the account indexes in memory.
    conn.pragma_update(None, "cache_size", -4_000_000)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let template: i64 = conn.query_row(
        "SELECT seq FROM usage_records WHERE account_id = 'acct-0' AND request_id = ?1",
        [TEMPLATE_REQUEST],
        |r| r.get(0),
    )?;
    // The copies end where the template is, one step apart.
    let step = SPAN_MICROS / i64::try_from(rows).unwrap_or(i64::MAX).max(1);
    let usage = copy_sql(&conn, "usage_records", |column| match column {
        "account_id" => Some("'acct-' || (n.i % ?3)".into()),
        "request_id" | "fingerprint" => Some("'history-' || n.i".into()),
        "recorded_at" => Some(format!("t.recorded_at - ({rows} - n.i) * {step}")),
        _ => None,
    })?;
    let entries = copy_sql(&conn, "ledger_entries", |column| match column {
        "id" | "reference_id" => Some("'history-' || n.i".into()),
        "account_id" => Some("'acct-' || (n.i % ?3)".into()),
        "at" => Some(format!("t.at - ({rows} - n.i) * {step}")),
        _ => None,
    })?;
    let entry_template: i64 =
        conn.query_row("SELECT seq FROM ledger_entries WHERE reference_id = ?1", [TEMPLATE_REQUEST], |r| r.get(0))?;
    let started = Instant::now();
    let mut done = 0;
    while done < rows {
        let last = (done + ROWS_PER_TRANSACTION).min(rows);
        let tx = conn.unchecked_transaction()?;
        tx.execute(&usage, rusqlite::params![done as i64, last as i64, accounts, template])?;
        tx.execute(&entries, rusqlite::params![done as i64, last as i64, accounts, entry_template])?;
        tx.commit()?;
        done = last;
        eprintln!("history: {done} of {rows} records ({:.0}/s)", done as f64 / started.elapsed().as_secs_f64());
    }
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
    Ok(())
}

/// `INSERT INTO table SELECT …` copying row `?4` for every `n.i` in
/// `[?1, ?2)`, with `replace` giving the expression of the columns that
/// differ per copy. The columns come from the table itself, so the copy
/// follows the schema.
pub(crate) fn copy_sql(conn: &Connection, table: &str, replace: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut statement = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}') WHERE name <> 'seq'"))?;
    let columns: Vec<String> = statement.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    let values: Vec<String> = columns.iter().map(|c| replace(c).unwrap_or_else(|| format!("t.{c}"))).collect();
    Ok(format!(
        "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?2)
         INSERT INTO {table} ({}) SELECT {} FROM n, (SELECT * FROM {table} WHERE seq = ?4) t",
        columns.join(", "),
        values.join(", ")
    ))
}
