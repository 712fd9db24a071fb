//! Rows of `payments`, `payment_refunds` and `webhook_events`, and their
//! reads. Writes happen on the writer's connection only (see
//! `writer/webhooks.rs`).

use creditd_core::units::{Credits, Usd};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::codec::{self, Corrupt};
use super::reader::{bad_cursor, limit, paged};
use crate::{Page, Paged, Payment, PaymentKind, StoreError, WebhookEvent, WebhookEventFilter, WebhookStatus};

fn bad(c: Corrupt) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, Type::Text, Box::new(c))
}

fn ts(row: &Row<'_>, i: usize) -> rusqlite::Result<jiff::Timestamp> {
    codec::timestamp(row.get(i)?).map_err(bad)
}

/// Grant ids are UUIDs or derived ids: no spaces.
fn encode_ids(ids: &[String]) -> String {
    ids.join(" ")
}

fn decode_ids(text: &str) -> Vec<String> {
    text.split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

pub const PAYMENT_COLUMNS: &str = "provider, external_id, account_id, kind, amount_usd, credits, grant_ids, \
     subscription_id, refunded_credits, created_at";

pub fn payment(row: &Row<'_>) -> rusqlite::Result<Payment> {
    let kind: String = row.get(3)?;
    Ok(Payment {
        provider: row.get(0)?,
        external_id: row.get(1)?,
        account_id: row.get(2)?,
        kind: PaymentKind::parse(&kind).ok_or_else(|| bad(Corrupt(format!("payment kind {kind:?}"))))?,
        amount_usd: Usd::from_units(row.get(4)?),
        credits: Credits::from_units(row.get(5)?),
        grant_ids: decode_ids(row.get_ref(6)?.as_str()?),
        subscription_id: row.get(7)?,
        refunded_credits: Credits::from_units(row.get(8)?),
        created_at: ts(row, 9)?,
    })
}

pub fn payment_by_id(conn: &Connection, provider: &str, external_id: &str) -> Result<Option<Payment>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE provider = ?1 AND external_id = ?2"))?;
    Ok(stmt.query_row([provider, external_id], payment).optional()?)
}

pub fn insert_payment(conn: &Connection, p: &Payment) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO payments ({PAYMENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))?;
    stmt.execute(params![
        p.provider,
        p.external_id,
        p.account_id,
        p.kind.as_str(),
        p.amount_usd.units(),
        p.credits.units(),
        encode_ids(&p.grant_ids),
        p.subscription_id,
        p.refunded_credits.units(),
        codec::micros(p.created_at),
    ])?;
    Ok(())
}

/// One refund of a payment, as the writer applied it.
pub struct RefundRow<'a> {
    pub provider: &'a str,
    pub refund_id: &'a str,
    pub payment: &'a Payment,
    pub done: creditd_core::engine::RefundedPayment,
    pub at: jiff::Timestamp,
}

pub fn refund_exists(conn: &Connection, provider: &str, refund_id: &str) -> Result<bool, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM payment_refunds WHERE provider = ?1 AND refund_id = ?2")?;
    Ok(stmt.exists([provider, refund_id])?)
}

/// Records a refund and adds it to its payment's `refunded_credits`.
pub fn insert_refund(conn: &Connection, r: &RefundRow<'_>) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO payment_refunds
             (provider, refund_id, payment_id, account_id, credits, from_grants, lapsed, from_wallet, debt, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    stmt.execute(params![
        r.provider,
        r.refund_id,
        r.payment.external_id,
        r.payment.account_id,
        r.done.credits.units(),
        r.done.from_grants.units(),
        r.done.lapsed.units(),
        r.done.from_wallet.units(),
        r.done.debt.units(),
        codec::micros(r.at),
    ])?;
    let mut stmt = conn.prepare_cached(
        "UPDATE payments SET refunded_credits = refunded_credits + ?3 WHERE provider = ?1 AND external_id = ?2",
    )?;
    stmt.execute(params![r.provider, r.payment.external_id, r.done.credits.units()])?;
    Ok(())
}

/// Credits of the payment's grants that expired or were voided, as stored,
/// less what earlier refunds of the payment already counted as lapsed.
pub fn lapsed_credits(conn: &Connection, payment: &Payment) -> Result<Credits, StoreError> {
    let mut lapsed = Credits::ZERO;
    let mut stmt = conn.prepare_cached(
        "SELECT COALESCE(-SUM(amount), 0) FROM ledger_entries
          WHERE account_id = ?1 AND grant_id = ?2 AND kind IN ('expire', 'void')",
    )?;
    for grant_id in &payment.grant_ids {
        lapsed += Credits::from_units(stmt.query_row(params![payment.account_id, grant_id], |row| row.get(0))?);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT COALESCE(SUM(lapsed), 0) FROM payment_refunds WHERE provider = ?1 AND payment_id = ?2",
    )?;
    let counted: i64 = stmt.query_row(params![payment.provider, payment.external_id], |row| row.get(0))?;
    Ok((lapsed - Credits::from_units(counted)).max(Credits::ZERO))
}

pub const EVENT_COLUMNS: &str =
    "id, provider, event_id, event_type, status, reason, account_id, external_id, received_at, body";

pub fn event(row: &Row<'_>) -> rusqlite::Result<WebhookEvent> {
    let status: String = row.get(4)?;
    Ok(WebhookEvent {
        id: row.get(0)?,
        provider: row.get(1)?,
        event_id: row.get(2)?,
        event_type: row.get(3)?,
        status: WebhookStatus::parse(&status).ok_or_else(|| bad(Corrupt(format!("webhook status {status:?}"))))?,
        reason: row.get(5)?,
        account_id: row.get(6)?,
        external_id: row.get(7)?,
        received_at: ts(row, 8)?,
        body: row.get(9)?,
    })
}

pub fn insert_event(conn: &Connection, e: &WebhookEvent) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO webhook_events ({EVENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))?;
    stmt.execute(params![
        e.id,
        e.provider,
        e.event_id,
        e.event_type,
        e.status.as_str(),
        e.reason,
        e.account_id,
        e.external_id,
        codec::micros(e.received_at),
        e.body,
    ])?;
    Ok(())
}

/// Whether the provider's event was applied before (a point lookup on the
/// unique index of applied events).
pub fn event_applied(conn: &Connection, provider: &str, event_id: &str) -> Result<bool, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT 1 FROM webhook_events WHERE provider = ?1 AND event_id = ?2 AND status = 'applied'")?;
    Ok(stmt.exists([provider, event_id])?)
}

/// Events newest first; the cursor is the last row's insertion number.
pub fn events(conn: &Connection, filter: &WebhookEventFilter, page: &Page) -> Result<Paged<WebhookEvent>, StoreError> {
    let n = limit(page);
    let before: Option<i64> = match &page.cursor {
        Some(c) => Some(c.parse().map_err(|_| bad_cursor())?),
        None => None,
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS}, seq FROM webhook_events
          WHERE (?1 IS NULL OR provider = ?1) AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR seq < ?3)
          ORDER BY seq DESC LIMIT ?4"
    ))?;
    let data = stmt
        .query_map(
            params![filter.provider, filter.status.map(WebhookStatus::as_str), before, i64::from(n) + 1],
            |row| Ok((event(row)?, row.get::<_, i64>(10)?)),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let page = paged(data, n, |(_, seq)| seq.to_string());
    Ok(Paged { data: page.data.into_iter().map(|(e, _)| e).collect(), next_cursor: page.next_cursor })
}
