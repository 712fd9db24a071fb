//! Rows of `payments`, `payment_refunds` and `webhook_events`, and their
//! reads. Writes happen on the writer's connection only (see
//! `writer/webhooks.rs`).

use creditd_core::units::{Credits, Usd};

use super::codec::{self, Corrupt};
use super::reader::{bad_cursor, limit, paged};
use super::{Db, DbExt, Row, params};
use crate::{Page, Paged, Payment, PaymentKind, StoreError, WebhookEvent, WebhookEventFilter, WebhookStatus};

fn ts(row: &dyn Row, i: usize) -> Result<jiff::Timestamp, StoreError> {
    Ok(codec::timestamp(row.get(i)?)?)
}

/// Grant ids are UUIDs or derived ids: no spaces.
fn encode_ids(ids: &[String]) -> String {
    ids.join(" ")
}

fn decode_ids(text: &str) -> Vec<String> {
    text.split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

pub const PAYMENT_COLUMNS: &str = "provider, external_id, account_id, kind, amount_usd, credits, grant_ids, \
     subscription_id, refunded_credits, created_at, prorated_credits, provider_subscription_id";

pub fn payment(row: &dyn Row) -> Result<Payment, StoreError> {
    let kind = row.str(3)?;
    Ok(Payment {
        provider: row.get(0)?,
        external_id: row.get(1)?,
        account_id: row.get(2)?,
        kind: PaymentKind::parse(kind).ok_or_else(|| Corrupt(format!("payment kind {kind:?}")))?,
        amount_usd: Usd::from_units(row.get(4)?),
        credits: Credits::from_units(row.get(5)?),
        grant_ids: decode_ids(row.str(6)?),
        subscription_id: row.get(7)?,
        refunded_credits: Credits::from_units(row.get(8)?),
        created_at: ts(row, 9)?,
        prorated_credits: Credits::from_units(row.get(10)?),
        provider_subscription_id: row.get(11)?,
    })
}

pub fn payment_by_id(conn: &dyn Db, provider: &str, external_id: &str) -> Result<Option<Payment>, StoreError> {
    conn.query_opt(
        &format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE provider = ?1 AND external_id = ?2"),
        params![provider, external_id],
        payment,
    )
}

pub fn insert_payment(conn: &dyn Db, p: &Payment) -> Result<(), StoreError> {
    conn.write(
        &format!("INSERT INTO payments ({PAYMENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
        params![
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
            p.prorated_credits.units(),
            p.provider_subscription_id,
        ],
    )
}

/// The provider and provider's subscription that `subscription_id` was last
/// paid through (its latest payment that names one), if any.
pub fn provider_subscription(
    conn: &dyn Db,
    account_id: &str,
    subscription_id: &str,
) -> Result<Option<(String, String)>, StoreError> {
    conn.query_opt(
        "SELECT provider, provider_subscription_id FROM payments
          WHERE account_id = ?1 AND subscription_id = ?2 AND provider_subscription_id IS NOT NULL
          ORDER BY seq DESC LIMIT 1",
        params![account_id, subscription_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
}

/// The payments of one subscription.
pub fn payments_of_subscription(
    conn: &dyn Db,
    account_id: &str,
    subscription_id: &str,
) -> Result<Vec<Payment>, StoreError> {
    conn.query_vec(
        &format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE account_id = ?1 AND subscription_id = ?2 ORDER BY seq"),
        params![account_id, subscription_id],
        payment,
    )
}

/// Adds what a switch put in the wallet to the payment that bought it.
pub fn add_prorated(conn: &dyn Db, provider: &str, external_id: &str, credits: Credits) -> Result<(), StoreError> {
    conn.write(
        "UPDATE payments SET prorated_credits = prorated_credits + ?3 WHERE provider = ?1 AND external_id = ?2",
        params![provider, external_id, credits.units()],
    )
}

/// One refund of a payment, as the writer applied it.
pub struct RefundRow<'a> {
    pub provider: &'a str,
    pub refund_id: &'a str,
    pub payment: &'a Payment,
    pub done: creditd_core::engine::RefundedPayment,
    pub at: jiff::Timestamp,
}

pub fn refund_exists(conn: &dyn Db, provider: &str, refund_id: &str) -> Result<bool, StoreError> {
    conn.exists("SELECT 1 FROM payment_refunds WHERE provider = ?1 AND refund_id = ?2", params![provider, refund_id])
}

/// Records a refund and adds it to its payment's `refunded_credits`.
pub fn insert_refund(conn: &dyn Db, r: &RefundRow<'_>) -> Result<(), StoreError> {
    conn.write(
        "INSERT INTO payment_refunds
             (provider, refund_id, payment_id, account_id, credits, from_grants, lapsed, from_wallet, debt, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
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
        ],
    )?;
    conn.write(
        "UPDATE payments SET refunded_credits = refunded_credits + ?3 WHERE provider = ?1 AND external_id = ?2",
        params![r.provider, r.payment.external_id, r.done.credits.units()],
    )
}

/// Credits of the payment's grants that expired or were voided, as stored,
/// less what earlier refunds of the payment already counted as lapsed.
pub fn lapsed_credits(conn: &dyn Db, payment: &Payment) -> Result<Credits, StoreError> {
    let mut lapsed = Credits::ZERO;
    for grant_id in &payment.grant_ids {
        let units = conn.query_one(
            "SELECT CAST(COALESCE(-SUM(amount), 0) AS BIGINT) FROM ledger_entries
              WHERE account_id = ?1 AND grant_id = ?2 AND kind IN ('expire', 'void')",
            params![payment.account_id, grant_id],
            |row| row.get(0),
        )?;
        lapsed += Credits::from_units(units);
    }
    let counted: i64 = conn.query_one(
        "SELECT CAST(COALESCE(SUM(lapsed), 0) AS BIGINT) FROM payment_refunds WHERE provider = ?1 AND payment_id = ?2",
        params![payment.provider, payment.external_id],
        |row| row.get(0),
    )?;
    Ok((lapsed - Credits::from_units(counted)).max(Credits::ZERO))
}

pub const EVENT_COLUMNS: &str =
    "id, provider, event_id, event_type, status, reason, account_id, external_id, received_at, body";

pub fn event(row: &dyn Row) -> Result<WebhookEvent, StoreError> {
    let status = row.str(4)?;
    Ok(WebhookEvent {
        id: row.get(0)?,
        provider: row.get(1)?,
        event_id: row.get(2)?,
        event_type: row.get(3)?,
        status: WebhookStatus::parse(status).ok_or_else(|| Corrupt(format!("webhook status {status:?}")))?,
        reason: row.get(5)?,
        account_id: row.get(6)?,
        external_id: row.get(7)?,
        received_at: ts(row, 8)?,
        body: row.get(9)?,
    })
}

pub fn insert_event(conn: &dyn Db, e: &WebhookEvent) -> Result<(), StoreError> {
    conn.write(
        &format!("INSERT INTO webhook_events ({EVENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
        params![
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
        ],
    )
}

/// Whether the provider's event was applied before (a point lookup on the
/// unique index of applied events).
pub fn event_applied(conn: &dyn Db, provider: &str, event_id: &str) -> Result<bool, StoreError> {
    conn.exists(
        "SELECT 1 FROM webhook_events WHERE provider = ?1 AND event_id = ?2 AND status = 'applied'",
        params![provider, event_id],
    )
}

/// Events newest first; the cursor is the last row's insertion number.
pub fn events(conn: &dyn Db, filter: &WebhookEventFilter, page: &Page) -> Result<Paged<WebhookEvent>, StoreError> {
    let n = limit(page);
    let before: Option<i64> = match &page.cursor {
        Some(c) => Some(c.parse().map_err(|_| bad_cursor())?),
        None => None,
    };
    let data = conn.query_vec(
        &format!(
            "SELECT {EVENT_COLUMNS}, seq FROM webhook_events
              WHERE (CAST(?1 AS TEXT) IS NULL OR provider = ?1) AND (CAST(?2 AS TEXT) IS NULL OR status = ?2)
                AND (CAST(?3 AS BIGINT) IS NULL OR seq < ?3)
              ORDER BY seq DESC LIMIT ?4"
        ),
        params![filter.provider, filter.status.map(WebhookStatus::as_str), before, i64::from(n) + 1],
        |row| Ok((event(row)?, row.get::<i64>(10)?)),
    )?;
    let page = paged(data, n, |(_, seq)| seq.to_string());
    Ok(Paged { data: page.data.into_iter().map(|(e, _)| e).collect(), next_cursor: page.next_cursor })
}

/// An account's payments with their refunds, for the audit (invariants 10
/// and 11 of `docs/audit.md`).
pub fn payment_facts(
    conn: &dyn Db,
    account_id: &str,
) -> Result<Vec<creditd_core::invariants::PaymentFacts>, StoreError> {
    use creditd_core::invariants::{PaymentFacts, PaymentKind as Kind, RefundFacts};
    let payments = conn.query_vec(
        &format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE account_id = ?1 ORDER BY seq"),
        params![account_id],
        payment,
    )?;
    let refunds = conn.query_vec(
        "SELECT provider, payment_id, credits, from_grants, lapsed, from_wallet, debt FROM payment_refunds
          WHERE account_id = ?1 ORDER BY seq",
        params![account_id],
        |row| {
            let c = |i| -> Result<Credits, StoreError> { Ok(Credits::from_units(row.get(i)?)) };
            Ok((
                row.get::<String>(0)?,
                row.get::<String>(1)?,
                RefundFacts { credits: c(2)?, from_grants: c(3)?, lapsed: c(4)?, from_wallet: c(5)?, debt: c(6)? },
            ))
        },
    )?;
    Ok(payments
        .into_iter()
        .map(|p| PaymentFacts {
            refunds: refunds
                .iter()
                .filter(|(provider, id, _)| provider == &p.provider && id == &p.external_id)
                .map(|(_, _, f)| *f)
                .collect(),
            kind: match p.kind {
                PaymentKind::Topup => Kind::Topup,
                PaymentKind::Pack => Kind::Pack,
                PaymentKind::Subscription => Kind::Subscription,
            },
            external_id: p.external_id,
            credits: p.credits,
            grant_ids: p.grant_ids,
            subscription_id: p.subscription_id,
            refunded_credits: p.refunded_credits,
            prorated_credits: p.prorated_credits,
        })
        .collect())
}
