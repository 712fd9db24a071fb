//! Provider calls (`crate::outbox::ProviderCall`): calls owed to a payment
//! provider's API, written in the savepoint of the change that needs them
//! and kept like webhook deliveries (`sql/outbox.rs`: the same status,
//! lease, back-off and give-up). Everything here that writes runs on a
//! writer thread, inside the savepoint of a command.

use creditd_core::engine::Refusal;
use jiff::Timestamp;

use super::codec::{self, Corrupt};
use super::outbox::{give_up_at, make_due, take, write_attempt};
use super::reader::{bad_cursor, limit, paged};
use super::{Db, DbExt, Row, params};
use crate::{
    AttemptResult, CancelMode, DeliveryStatus, Page, Paged, ProviderAction, ProviderCall, ProviderCallFilter,
    StoreError,
};

const CALLS: &str = "provider_calls";

const CALL_COLUMNS: &str = "id, provider, action, provider_subscription_id, mode, account_id, subscription_id, \
     status, attempts, next_attempt_at, last_attempt_at, last_status, last_error, created_at, delivered_at";

fn opt_time(row: &dyn Row, i: usize) -> Result<Option<Timestamp>, StoreError> {
    Ok(row.get::<Option<i64>>(i)?.map(codec::timestamp).transpose()?)
}

fn call(row: &dyn Row) -> Result<ProviderCall, StoreError> {
    let action = match row.str(2)? {
        "cancel_subscription" => {
            let mode = row.str(4)?;
            ProviderAction::CancelSubscription {
                provider_subscription_id: row.get(3)?,
                mode: CancelMode::parse(mode).ok_or_else(|| Corrupt(format!("cancel mode {mode:?}")))?,
            }
        }
        other => return Err(Corrupt(format!("provider call action {other:?}")).into()),
    };
    let status = row.str(7)?;
    let status = DeliveryStatus::parse(status).ok_or_else(|| Corrupt(format!("provider call status {status:?}")))?;
    Ok(ProviderCall {
        id: row.get(0)?,
        provider: row.get(1)?,
        action,
        account_id: row.get(5)?,
        subscription_id: row.get(6)?,
        status,
        attempts: u32::try_from(row.get::<i64>(8)?).unwrap_or(u32::MAX),
        next_attempt_at: match status {
            DeliveryStatus::Pending => Some(codec::timestamp(row.get(9)?)?),
            _ => None,
        },
        last_attempt_at: opt_time(row, 10)?,
        last_status: row.get::<Option<i64>>(11)?.map(|s| u16::try_from(s).unwrap_or(0)),
        last_error: row.get(12)?,
        created_at: codec::timestamp(row.get(13)?)?,
        delivered_at: opt_time(row, 14)?,
    })
}

/// Writes a call, due at once; called inside the savepoint of the change
/// that needs it. A pending call asking the same of the same subscription
/// already says it: nothing more is written.
pub fn enqueue(
    conn: &dyn Db,
    provider: &str,
    action: &ProviderAction,
    account_id: &str,
    subscription_id: Option<&str>,
    now: Timestamp,
) -> Result<(), StoreError> {
    let ProviderAction::CancelSubscription { provider_subscription_id, mode } = action;
    let queued = conn.exists(
        "SELECT 1 FROM provider_calls WHERE status = 'pending' AND provider = ?1 AND action = ?2
            AND provider_subscription_id = ?3 AND mode = ?4",
        params![provider, action.as_str(), provider_subscription_id, mode.as_str()],
    )?;
    if queued {
        return Ok(());
    }
    let at = codec::micros(codec::truncate(now));
    conn.write(
        &format!(
            "INSERT INTO provider_calls ({CALL_COLUMNS}, give_up_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', 0, ?8, NULL, NULL, NULL, ?8, NULL, ?9)"
        ),
        params![
            uuid::Uuid::now_v7().to_string(),
            provider,
            action.as_str(),
            provider_subscription_id,
            mode.as_str(),
            account_id,
            subscription_id,
            at,
            give_up_at(now)
        ],
    )
}

pub fn call_by_id(conn: &dyn Db, id: &str) -> Result<Option<ProviderCall>, StoreError> {
    conn.query_opt(&format!("SELECT {CALL_COLUMNS} FROM provider_calls WHERE id = ?1"), params![id], call)
}

fn not_found(id: &str) -> StoreError {
    Refusal::NotFound(format!("provider call {id:?}")).into()
}

/// Calls newest first; the cursor is the last one's `seq`.
pub fn calls(conn: &dyn Db, filter: &ProviderCallFilter, page: &Page) -> Result<Paged<ProviderCall>, StoreError> {
    let n = limit(page);
    let before: Option<i64> = match &page.cursor {
        Some(c) => Some(c.parse().map_err(|_| bad_cursor())?),
        None => None,
    };
    let data = conn.query_vec(
        &format!(
            "SELECT {CALL_COLUMNS}, seq FROM provider_calls
              WHERE (CAST(?1 AS TEXT) IS NULL OR status = ?1) AND (CAST(?2 AS TEXT) IS NULL OR account_id = ?2)
                AND (CAST(?3 AS BIGINT) IS NULL OR seq < ?3)
              ORDER BY seq DESC LIMIT ?4"
        ),
        params![filter.status.map(DeliveryStatus::as_str), filter.account_id, before, i64::from(n) + 1],
        |row| Ok((call(row)?, row.get::<i64>(15)?)),
    )?;
    let page = paged(data, n, |(_, seq)| seq.to_string());
    Ok(Paged { data: page.data.into_iter().map(|(c, _)| c).collect(), next_cursor: page.next_cursor })
}

/// How many calls there are of each status (every status, zero included).
pub fn counts(conn: &dyn Db) -> Result<Vec<(DeliveryStatus, u64)>, StoreError> {
    let found = conn.query_vec(
        "SELECT status, CAST(COUNT(*) AS BIGINT) FROM provider_calls GROUP BY status",
        params![],
        |row| Ok((row.get::<String>(0)?, row.get::<i64>(1)?)),
    )?;
    Ok(DeliveryStatus::ALL
        .into_iter()
        .map(|status| {
            let n = found.iter().find(|(s, _)| s == status.as_str()).map_or(0, |(_, n)| *n);
            (status, u64::try_from(n).unwrap_or(0))
        })
        .collect())
}

/// Takes up to `limit` due calls, oldest due first, each made due again at
/// `now + lease` in case its worker never reports back (`outbox::take`).
pub fn claim(conn: &dyn Db, now: Timestamp, limit: u32, lease_seconds: u32) -> Result<Vec<ProviderCall>, StoreError> {
    let ids = conn.query_vec(
        "SELECT id FROM provider_calls WHERE status = 'pending' AND next_attempt_at <= ?1
          ORDER BY next_attempt_at, seq LIMIT ?2",
        params![codec::micros(now), i64::from(limit)],
        |row| row.get::<String>(0),
    )?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if take(conn, CALLS, &id, now, lease_seconds)? {
            out.extend(call_by_id(conn, &id)?);
        }
    }
    Ok(out)
}

/// Records one attempt: delivered (the provider accepted), or due again
/// after the back-off, `failed` once that is past three days.
pub fn record_attempt(
    conn: &dyn Db,
    id: &str,
    result: &AttemptResult,
    now: Timestamp,
) -> Result<ProviderCall, StoreError> {
    let c = call_by_id(conn, id)?.ok_or_else(|| not_found(id))?;
    write_attempt(conn, CALLS, id, c.attempts, result, now)?;
    call_by_id(conn, id)?.ok_or_else(|| StoreError::Internal(format!("provider call {id:?} vanished")))
}

/// Makes a call due now, whatever its status; its three days start again.
pub fn retry(conn: &dyn Db, id: &str, now: Timestamp) -> Result<ProviderCall, StoreError> {
    if call_by_id(conn, id)?.is_none() {
        return Err(not_found(id));
    }
    make_due(conn, CALLS, id, now)?;
    call_by_id(conn, id)?.ok_or_else(|| StoreError::Internal(format!("provider call {id:?} vanished")))
}
