//! Reads: a few read-only connections that never wait for the writer (WAL
//! gives each read a snapshot of the last commit).

use std::path::Path;
use std::sync::{Condvar, Mutex};

use creditd_core::account::Grant;
use creditd_core::engine::{self, Refusal};
use creditd_core::invariants::{self, AccountRecords};
use creditd_core::ledger::LedgerEntry;
use creditd_core::units::Credits;
use jiff::Timestamp;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::codec;
use super::rows::{self, ENTRY_COLUMNS, GRANT_COLUMNS, HOLD_COLUMNS, USAGE_COLUMNS};
use crate::{AccountRow, AuditReport, EngineConfig, LedgerFilter, ModelVersion, Page, Paged, StoreError};

/// The most rows one page holds, whatever the caller asks.
pub const PAGE_MAX: u32 = 1000;
/// Accounts the audit holds in memory at once.
const AUDIT_CHUNK: i64 = 100;

pub struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    returned: Condvar,
}

/// A connection borrowed from the pool; it goes back even if the read panics.
struct Lease<'a> {
    pool: &'a ReadPool,
    conn: Option<Connection>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            self.pool.returned.notify_one();
        }
    }
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl ReadPool {
    pub fn open(path: &Path, size: usize) -> Result<Self, StoreError> {
        let conns = (0..size.max(1)).map(|_| open_reader(path)).collect::<Result<Vec<_>, _>>()?;
        Ok(ReadPool { idle: Mutex::new(conns), returned: Condvar::new() })
    }

    /// Runs `f` on an idle connection, waiting for one if all are busy.
    /// Blocking: call it from `spawn_blocking`.
    pub fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let conn = loop {
            match idle.pop() {
                Some(conn) => break conn,
                None => idle = self.returned.wait(idle).unwrap_or_else(|e| e.into_inner()),
            }
        };
        drop(idle);
        let lease = Lease { pool: self, conn: Some(conn) };
        match &lease.conn {
            Some(conn) => f(conn),
            None => Err(StoreError::Internal("no read connection".into())),
        }
    }
}

pub(super) fn bad_cursor() -> StoreError {
    Refusal::InvalidRequest("the cursor is not one this server gave".into()).into()
}

pub(super) fn limit(page: &Page) -> u32 {
    page.limit.clamp(1, PAGE_MAX)
}

/// Cuts the extra row fetched to learn whether another page follows.
pub(super) fn paged<T>(mut data: Vec<T>, limit: u32, cursor_of: impl Fn(&T) -> String) -> Paged<T> {
    let more = data.len() > limit as usize;
    data.truncate(limit as usize);
    let next_cursor = if more { data.last().map(cursor_of) } else { None };
    Paged { data, next_cursor }
}

/// Accounts in id order; the cursor is the last id.
pub fn accounts(conn: &Connection, page: &Page) -> Result<Paged<AccountRow>, StoreError> {
    let n = limit(page);
    // One statement per shape, so that the cursor is an index range.
    let after = if page.cursor.is_some() { "WHERE id > ?1" } else { "WHERE ?1 IS NULL" };
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {} FROM accounts {after} ORDER BY id LIMIT ?2", rows::ACCOUNT_COLUMNS))?;
    let data = stmt.query_map(params![page.cursor, i64::from(n) + 1], rows::account)?.collect::<Result<Vec<_>, _>>()?;
    Ok(paged(data, n, |a| a.id.clone()))
}

/// Grants newest first; the cursor is the last row's insertion number.
/// Live grants are shown as of `now` (an expiry not yet written by the
/// writer is shown as written), as every read must.
///
/// Grants that time alone has made and the writer has not written yet (a
/// gift at a period start, a renewed period's pools) are on the first page,
/// above the stored ones, with the ids the writer will give them.
pub fn grants(
    conn: &Connection,
    account_id: &str,
    include_spent: bool,
    page: &Page,
    now: Timestamp,
    config: &EngineConfig,
) -> Result<Paged<Grant>, StoreError> {
    let n = limit(page);
    let before: Option<i64> = match &page.cursor {
        Some(c) => Some(c.parse().map_err(|_| bad_cursor())?),
        None => None,
    };
    let mut sql = format!("SELECT {GRANT_COLUMNS}, seq FROM grants WHERE account_id = ?1");
    if !include_spent {
        sql.push_str(" AND remaining > 0");
    }
    sql.push_str(if before.is_some() { " AND seq < ?2" } else { " AND ?2 IS NULL" });
    sql.push_str(" ORDER BY seq DESC LIMIT ?3");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut data = stmt
        .query_map(params![account_id, before, i64::from(n) + 1], |row| {
            Ok((rows::grant(row)?, row.get::<_, i64>(13)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut fresh: Vec<Grant> = Vec::new();
    if let Some(stored) = rows::load_state(conn, account_id)? {
        let plans = rows::load_plans(conn)?;
        let (current, changes) = engine::view_with_changes(&stored, now, config.context(&plans));
        for (g, _) in data.iter_mut() {
            if stored.grant(&g.id).is_none() {
                continue;
            }
            match changes.grants.iter().find(|c| c.id == g.id).or_else(|| current.grant(&g.id)) {
                Some(now_g) => *g = now_g.clone(),
                None => {
                    g.remaining = Credits::ZERO;
                    g.held = Credits::ZERO;
                }
            }
        }
        if before.is_none() {
            fresh = changes.grants.into_iter().filter(|g| stored.grant(&g.id).is_none()).collect();
            fresh.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        }
    }
    let page = paged(data, n, |(_, seq)| seq.to_string());
    let mut grants: Vec<Grant> = fresh;
    grants.extend(page.data.into_iter().map(|(g, _)| g));
    if !include_spent {
        grants.retain(|g| g.remaining.is_positive());
    }
    Ok(Paged { data: grants, next_cursor: page.next_cursor })
}

/// Entries newest first by `(at, seq)`; the cursor is `at:seq` of the last row.
pub fn ledger(
    conn: &Connection,
    account_id: &str,
    filter: &LedgerFilter,
    page: &Page,
) -> Result<Paged<LedgerEntry>, StoreError> {
    let n = limit(page);
    let (at, seq): (Option<i64>, Option<i64>) = match &page.cursor {
        Some(c) => {
            let (at, seq) = c.split_once(':').ok_or_else(bad_cursor)?;
            (Some(at.parse().map_err(|_| bad_cursor())?), Some(seq.parse().map_err(|_| bad_cursor())?))
        }
        None => (None, None),
    };
    // Only the filters given are in the statement, so that the time window
    // and the cursor are ranges of the (account_id, at, seq) index.
    let mut sql = format!("SELECT {ENTRY_COLUMNS}, seq FROM ledger_entries WHERE account_id = ?1");
    let clauses = [
        (filter.from.is_some(), " AND at >= ?2", " AND ?2 IS NULL"),
        (filter.to.is_some(), " AND at < ?3", " AND ?3 IS NULL"),
        (filter.kind.is_some(), " AND kind = ?4", " AND ?4 IS NULL"),
        (at.is_some(), " AND (at, seq) < (?5, ?6)", " AND ?5 IS NULL AND ?6 IS NULL"),
    ];
    for (given, clause, absent) in clauses {
        sql.push_str(if given { clause } else { absent });
    }
    sql.push_str(" ORDER BY at DESC, seq DESC LIMIT ?7");
    let mut stmt = conn.prepare_cached(&sql)?;
    let data = stmt
        .query_map(
            params![
                account_id,
                filter.from.map(codec::micros),
                filter.to.map(codec::micros),
                filter.kind.map(|k| k.as_str()),
                at,
                seq,
                i64::from(n) + 1
            ],
            |row| Ok((rows::entry(row)?, row.get::<_, i64>(10)?)),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let page = paged(data, n, |(e, seq)| format!("{}:{seq}", codec::micros(e.at)));
    Ok(Paged { data: page.data.into_iter().map(|(e, _)| e).collect(), next_cursor: page.next_cursor })
}

pub fn model(conn: &Connection, id: &str) -> Result<Option<ModelVersion>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM models WHERE id = ?1 ORDER BY price_version DESC LIMIT 1",
        rows::MODEL_COLUMNS
    ))?;
    Ok(stmt.query_row([id], rows::model).optional()?)
}

pub fn models(conn: &Connection) -> Result<Vec<ModelVersion>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM models m
          WHERE price_version = (SELECT MAX(price_version) FROM models WHERE id = m.id)
          ORDER BY id",
        rows::MODEL_COLUMNS
    ))?;
    Ok(stmt.query_map([], rows::model)?.collect::<Result<Vec<_>, _>>()?)
}

pub fn key(conn: &Connection, id: &str) -> Result<Option<crate::ApiKey>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {} FROM api_keys WHERE id = ?1", rows::KEY_COLUMNS))?;
    Ok(stmt.query_row([id], rows::key).optional()?)
}

pub fn keys(conn: &Connection) -> Result<Vec<crate::ApiKey>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {} FROM api_keys ORDER BY created_at, id", rows::KEY_COLUMNS))?;
    Ok(stmt.query_map([], rows::key)?.collect::<Result<Vec<_>, _>>()?)
}

pub fn account_token(conn: &Connection, id: &str) -> Result<Option<crate::AccountToken>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {} FROM account_tokens WHERE id = ?1", rows::TOKEN_COLUMNS))?;
    Ok(stmt.query_row([id], rows::token).optional()?)
}

/// Every invariant over every account, in one read transaction so that the
/// whole database is judged as of one instant, and one account at a time so
/// that memory stays flat in the number of accounts.
pub fn audit(conn: &Connection) -> Result<AuditReport, StoreError> {
    conn.execute_batch("BEGIN")?;
    let report = audit_in_snapshot(conn);
    let _ = conn.execute_batch("COMMIT");
    report
}

fn audit_in_snapshot(conn: &Connection) -> Result<AuditReport, StoreError> {
    let mut report = AuditReport::default();
    // Every id sorts after the empty string, the first cursor.
    let mut after = String::new();
    loop {
        let mut stmt = conn.prepare_cached(
            "SELECT id, wallet_balance, wallet_held FROM accounts WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let chunk = stmt
            .query_map(params![after, AUDIT_CHUNK], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    creditd_core::account::Wallet {
                        balance: Credits::from_units(row.get(1)?),
                        held: Credits::from_units(row.get(2)?),
                    },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let Some((last, _)) = chunk.last() else { break };
        after = last.clone();
        for (id, wallet) in chunk {
            let all =
                |sql: &str| -> Result<rusqlite::CachedStatement<'_>, StoreError> { Ok(conn.prepare_cached(sql)?) };
            let grants = all(&format!("SELECT {GRANT_COLUMNS} FROM grants WHERE account_id = ?1 ORDER BY seq"))?
                .query_map([&id], rows::grant)?
                .collect::<Result<Vec<_>, _>>()?;
            let holds = all(&format!("SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = ?1 ORDER BY seq"))?
                .query_map([&id], rows::hold)?
                .collect::<Result<Vec<_>, _>>()?;
            let entries =
                all(&format!("SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE account_id = ?1 ORDER BY at, seq"))?
                    .query_map([&id], rows::entry)?
                    .collect::<Result<Vec<_>, _>>()?;
            let usage = all(&format!(
                "SELECT {USAGE_COLUMNS} FROM usage_records WHERE account_id = ?1 ORDER BY recorded_at, seq"
            ))?
            .query_map([&id], rows::usage)?
            .collect::<Result<Vec<_>, _>>()?;
            report.accounts += 1;
            report.entries += entries.len() as u64;
            report.usage_records += usage.len() as u64;
            report.breaches.extend(invariants::check_account(AccountRecords {
                account_id: &id,
                grants: &grants,
                wallet,
                holds: &holds,
                entries: &entries,
                usage: &usage,
            }));
        }
    }
    Ok(report)
}
