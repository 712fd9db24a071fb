//! Reads: a few read-only connections that never wait for the writer (WAL
//! gives each read a snapshot of the last commit).

use creditd_core::account::Grant;
use creditd_core::engine::{self, Refusal};
use creditd_core::invariants::{self, AccountRecords};
use creditd_core::ledger::LedgerEntry;
use creditd_core::units::Credits;
use jiff::Timestamp;

use super::codec;
use super::rows::{self, ENTRY_COLUMNS, GRANT_COLUMNS, HOLD_COLUMNS, USAGE_COLUMNS};
use crate::sql::{Db, DbExt, params};
use crate::{
    AccountRow, AuditReport, EngineConfig, LedgerFilter, ModelVersion, Page, Paged, StoreError, StoredAccount,
};

/// The most rows one page holds, whatever the caller asks.
pub const PAGE_MAX: u32 = 1000;
/// Accounts the audit holds in memory at once.
const AUDIT_CHUNK: i64 = 100;

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
pub fn accounts(conn: &dyn Db, page: &Page) -> Result<Paged<AccountRow>, StoreError> {
    let n = limit(page);
    // One statement per shape, so that the cursor is an index range.
    let after = if page.cursor.is_some() { "WHERE id > ?1" } else { "WHERE CAST(?1 AS TEXT) IS NULL" };
    let data = conn.query_vec(
        &format!("SELECT {} FROM accounts {after} ORDER BY id LIMIT ?2", rows::ACCOUNT_COLUMNS),
        params![page.cursor, i64::from(n) + 1],
        rows::account,
    )?;
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
    conn: &dyn Db,
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
    sql.push_str(if before.is_some() { " AND seq < ?2" } else { " AND CAST(?2 AS BIGINT) IS NULL" });
    sql.push_str(" ORDER BY seq DESC LIMIT ?3");
    let mut data = conn.query_vec(&sql, params![account_id, before, i64::from(n) + 1], |row| {
        Ok((rows::grant(row)?, row.get::<i64>(14)?))
    })?;
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

/// The account's hot state and the plans (read them in one snapshot).
pub fn stored_account(conn: &dyn Db, id: &str) -> Result<Option<StoredAccount>, StoreError> {
    let Some(state) = rows::load_state(conn, id)? else { return Ok(None) };
    Ok(Some(StoredAccount { state, plans: rows::load_plans(conn)? }))
}

/// Whether bringing the account to `now` would write ledger entries that
/// the stored ledger does not have yet (false for an unknown account).
pub fn behind_the_clock(conn: &dyn Db, id: &str, now: Timestamp, config: &EngineConfig) -> Result<bool, StoreError> {
    let Some(stored) = stored_account(conn, id)? else { return Ok(false) };
    let (_, changes) = engine::view_with_changes(&stored.state, now, config.context(&stored.plans));
    Ok(!changes.entries.is_empty())
}

/// Entries newest first by `(at, seq)`; the cursor is `at:seq` of the last row.
pub fn ledger(
    conn: &dyn Db,
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
        (filter.from.is_some(), " AND at >= ?2", " AND CAST(?2 AS BIGINT) IS NULL"),
        (filter.to.is_some(), " AND at < ?3", " AND CAST(?3 AS BIGINT) IS NULL"),
        (filter.kind.is_some(), " AND kind = ?4", " AND CAST(?4 AS TEXT) IS NULL"),
        (at.is_some(), " AND (at, seq) < (?5, ?6)", " AND CAST(?5 AS BIGINT) IS NULL AND CAST(?6 AS BIGINT) IS NULL"),
    ];
    for (given, clause, absent) in clauses {
        sql.push_str(if given { clause } else { absent });
    }
    sql.push_str(" ORDER BY at DESC, seq DESC LIMIT ?7");
    let data = conn.query_vec(
        &sql,
        params![
            account_id,
            filter.from.map(codec::micros),
            filter.to.map(codec::micros),
            filter.kind.map(|k| k.as_str()),
            at,
            seq,
            i64::from(n) + 1
        ],
        |row| Ok((rows::entry(row)?, row.get::<i64>(10)?)),
    )?;
    let page = paged(data, n, |(e, seq)| format!("{}:{seq}", codec::micros(e.at)));
    Ok(Paged { data: page.data.into_iter().map(|(e, _)| e).collect(), next_cursor: page.next_cursor })
}

pub fn model(conn: &dyn Db, id: &str) -> Result<Option<ModelVersion>, StoreError> {
    conn.query_opt(
        &format!("SELECT {} FROM models WHERE id = ?1 ORDER BY price_version DESC LIMIT 1", rows::MODEL_COLUMNS),
        params![id],
        rows::model,
    )
}

pub fn models(conn: &dyn Db) -> Result<Vec<ModelVersion>, StoreError> {
    conn.query_vec(
        &format!(
            "SELECT {} FROM models m
              WHERE price_version = (SELECT MAX(price_version) FROM models WHERE id = m.id)
              ORDER BY id",
            rows::MODEL_COLUMNS
        ),
        params![],
        rows::model,
    )
}

pub fn key(conn: &dyn Db, id: &str) -> Result<Option<crate::ApiKey>, StoreError> {
    conn.query_opt(&format!("SELECT {} FROM api_keys WHERE id = ?1", rows::KEY_COLUMNS), params![id], rows::key)
}

pub fn keys(conn: &dyn Db) -> Result<Vec<crate::ApiKey>, StoreError> {
    conn.query_vec(&format!("SELECT {} FROM api_keys ORDER BY created_at, id", rows::KEY_COLUMNS), params![], rows::key)
}

pub fn proxy_key(conn: &dyn Db, id: &str) -> Result<Option<crate::ProxyKey>, StoreError> {
    conn.query_opt(
        &format!("SELECT {} FROM proxy_keys WHERE id = ?1", rows::PROXY_KEY_COLUMNS),
        params![id],
        rows::proxy_key,
    )
}

pub fn proxy_keys(conn: &dyn Db, account_id: &str) -> Result<Vec<crate::ProxyKey>, StoreError> {
    conn.query_vec(
        &format!("SELECT {} FROM proxy_keys WHERE account_id = ?1 ORDER BY created_at, id", rows::PROXY_KEY_COLUMNS),
        params![account_id],
        rows::proxy_key,
    )
}

/// The account's tokens, oldest first (a revoked token is deleted).
pub fn account_tokens(conn: &dyn Db, account_id: &str) -> Result<Vec<crate::AccountToken>, StoreError> {
    conn.query_vec(
        &format!("SELECT {} FROM account_tokens WHERE account_id = ?1 ORDER BY created_at, id", rows::TOKEN_COLUMNS),
        params![account_id],
        rows::token,
    )
}

pub fn account_token(conn: &dyn Db, id: &str) -> Result<Option<crate::AccountToken>, StoreError> {
    conn.query_opt(
        &format!("SELECT {} FROM account_tokens WHERE id = ?1", rows::TOKEN_COLUMNS),
        params![id],
        rows::token,
    )
}

/// Every invariant over every account, in one read snapshot so that the
/// whole database is judged as of one instant (on PostgreSQL while other
/// instances write: a charge's entries and its grant's `remaining`, read by
/// two statements, must come from the same commits), and one account at a
/// time so that memory stays flat in the number of accounts. Holds are
/// judged open or not against `now` (invariant 12).
pub fn audit(conn: &dyn Db, now: Timestamp) -> Result<AuditReport, StoreError> {
    super::snapshot(conn, || audit_in_snapshot(conn, now))
}

fn audit_in_snapshot(conn: &dyn Db, now: Timestamp) -> Result<AuditReport, StoreError> {
    let mut report = AuditReport::default();
    // Every id sorts after the empty string, the first cursor.
    let mut after = String::new();
    loop {
        let chunk = conn.query_vec(
            "SELECT id, wallet_balance, wallet_held FROM accounts WHERE id > ?1 ORDER BY id LIMIT ?2",
            params![after, AUDIT_CHUNK],
            |row| {
                Ok((
                    row.get::<String>(0)?,
                    creditd_core::account::Wallet {
                        balance: Credits::from_units(row.get(1)?),
                        held: Credits::from_units(row.get(2)?),
                    },
                ))
            },
        )?;
        let Some((last, _)) = chunk.last() else { break };
        after = last.clone();
        for (id, wallet) in chunk {
            let grants = conn.query_vec(
                &format!("SELECT {GRANT_COLUMNS} FROM grants WHERE account_id = ?1 ORDER BY seq"),
                params![id],
                rows::grant,
            )?;
            let holds = conn.query_vec(
                &format!("SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = ?1 ORDER BY seq"),
                params![id],
                rows::hold,
            )?;
            let entries = conn.query_vec(
                // In the order written: balance_after chains in it (invariant 8).
                &format!("SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE account_id = ?1 ORDER BY seq"),
                params![id],
                rows::entry,
            )?;
            let usage = conn.query_vec(
                &format!("SELECT {USAGE_COLUMNS} FROM usage_records WHERE account_id = ?1 ORDER BY recorded_at, seq"),
                params![id],
                rows::usage,
            )?;
            report.accounts += 1;
            report.entries += entries.len() as u64;
            report.usage_records += usage.len() as u64;
            report.breaches.extend(invariants::check_open_holds(&id, &holds, now));
            report.breaches.extend(invariants::check_account(AccountRecords {
                account_id: &id,
                grants: &grants,
                wallet,
                holds: &holds,
                entries: &entries,
                usage: &usage,
            }));
            let payments = super::payments::payment_facts(conn, &id)?;
            let subscriptions = conn.query_vec(
                &format!("SELECT {} FROM subscriptions WHERE account_id = ?1 ORDER BY seq", rows::SUBSCRIPTION_COLUMNS),
                params![id],
                rows::subscription,
            )?;
            report.breaches.extend(invariants::check_payments(invariants::PaymentRecords {
                account_id: &id,
                grants: &grants,
                entries: &entries,
                payments: &payments,
                subscriptions: &subscriptions,
            }));
        }
    }
    Ok(report)
}
