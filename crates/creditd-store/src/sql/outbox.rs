//! The outbox (`crate::outbox`): events written with what caused them,
//! endpoints, and deliveries. Everything here that writes runs on a writer
//! thread, inside the savepoint of a command.

use creditd_core::engine::Refusal;
use creditd_core::events::{Event, EventKind};
use jiff::Timestamp;

use super::codec::{self, Corrupt};
use super::reader::{bad_cursor, limit, paged};
use super::{Db, DbExt, Row, params};
use crate::outbox::{GIVE_UP_AFTER, backoff};
use crate::{
    AttemptResult, Delivery, DeliveryFilter, DeliveryStatus, DueDelivery, Endpoint, EndpointUpdate, Page, Paged,
    StoreError,
};

/// A recorded last error is cut to this many bytes (a receiver's error page can be large).
const LAST_ERROR_MAX: usize = 500;

/// An event's fields as text: each name and value prefixed by its length in
/// bytes (`7:request2:r1`), so any text round-trips.
pub fn encode_data(data: &[(String, String)]) -> String {
    let mut out = String::new();
    for (name, value) in data {
        for part in [name, value] {
            out.push_str(&part.len().to_string());
            out.push(':');
            out.push_str(part);
        }
    }
    out
}

pub fn decode_data(all: &str) -> Result<Vec<(String, String)>, Corrupt> {
    let corrupt = || Corrupt(format!("event data {all:?}"));
    let mut text = all;
    let take = |text: &mut &str| -> Result<String, Corrupt> {
        let (len, rest) = text.split_once(':').ok_or_else(corrupt)?;
        let len: usize = len.parse().map_err(|_| corrupt())?;
        let part = rest.get(..len).ok_or_else(corrupt)?;
        *text = &rest[len..];
        Ok(part.to_string())
    };
    let mut out = Vec::new();
    while !text.is_empty() {
        let name = take(&mut text)?;
        let value = take(&mut text)?;
        out.push((name, value));
    }
    Ok(out)
}

fn encode_kinds(kinds: &[EventKind]) -> String {
    if kinds.is_empty() {
        return "*".into();
    }
    let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    format!(",{},", names.join(","))
}

fn decode_kinds(text: &str) -> Result<Vec<EventKind>, Corrupt> {
    if text == "*" {
        return Ok(Vec::new());
    }
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| EventKind::parse(s).ok_or_else(|| Corrupt(format!("event kind {s:?}"))))
        .collect()
}

fn kind(text: &str) -> Result<EventKind, StoreError> {
    Ok(EventKind::parse(text).ok_or_else(|| Corrupt(format!("event kind {text:?}")))?)
}

fn opt_time(row: &dyn Row, i: usize) -> Result<Option<Timestamp>, StoreError> {
    Ok(row.get::<Option<i64>>(i)?.map(codec::timestamp).transpose()?)
}

const ENDPOINT_COLUMNS: &str = "id, url, secret, events, enabled, from_config, created_at, updated_at";

fn endpoint(row: &dyn Row) -> Result<Endpoint, StoreError> {
    Ok(Endpoint {
        id: row.get(0)?,
        url: row.get(1)?,
        secret: row.get(2)?,
        events: decode_kinds(row.str(3)?)?,
        enabled: row.get(4)?,
        from_config: row.get(5)?,
        created_at: codec::timestamp(row.get(6)?)?,
        updated_at: codec::timestamp(row.get(7)?)?,
    })
}

/// The deliveries' columns, with their event's type and account.
const DELIVERY_COLUMNS: &str = "d.id, d.event_id, e.type, e.account_id, d.endpoint_id, d.status, d.attempts, \
     d.next_attempt_at, d.last_attempt_at, d.last_status, d.last_error, d.created_at, d.delivered_at";
const DELIVERY_FROM: &str = "webhook_deliveries d JOIN outbox_events e ON e.id = d.event_id";

fn delivery(row: &dyn Row) -> Result<Delivery, StoreError> {
    let status = row.str(5)?;
    let status = DeliveryStatus::parse(status).ok_or_else(|| Corrupt(format!("delivery status {status:?}")))?;
    let last_status = row.get::<Option<i64>>(9)?.map(|s| u16::try_from(s).unwrap_or(0));
    Ok(Delivery {
        id: row.get(0)?,
        event_id: row.get(1)?,
        event_type: kind(row.str(2)?)?,
        account_id: row.get(3)?,
        endpoint_id: row.get(4)?,
        status,
        attempts: u32::try_from(row.get::<i64>(6)?).unwrap_or(u32::MAX),
        next_attempt_at: match status {
            DeliveryStatus::Pending => Some(codec::timestamp(row.get(7)?)?),
            _ => None,
        },
        last_attempt_at: opt_time(row, 8)?,
        last_status,
        last_error: row.get(10)?,
        created_at: codec::timestamp(row.get(11)?)?,
        delivered_at: opt_time(row, 12)?,
    })
}

/// Writes `events` into the outbox with a pending delivery, due at once,
/// for every enabled endpoint that receives its kind. Called inside the
/// savepoint of what caused them.
pub fn write_events(conn: &dyn Db, events: &[Event]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let endpoints =
        conn.query_vec("SELECT id, events FROM webhook_endpoints WHERE enabled = 1 ORDER BY id", params![], |row| {
            Ok((row.get::<String>(0)?, decode_kinds(row.str(1)?)?))
        })?;
    for e in events {
        let at = codec::micros(codec::truncate(e.at));
        let give_up = give_up_at(e.at);
        conn.write(
            "INSERT INTO outbox_events (id, type, account_id, occurred_at, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![e.id, e.kind.as_str(), e.account_id, at, encode_data(&e.data)],
        )?;
        for (endpoint_id, kinds) in &endpoints {
            if !kinds.is_empty() && !kinds.contains(&e.kind) {
                continue;
            }
            conn.write(
                "INSERT INTO webhook_deliveries
                        (id, event_id, endpoint_id, status, attempts, next_attempt_at, give_up_at, created_at)
                 VALUES (?1, ?2, ?3, 'pending', 0, ?4, ?5, ?4)",
                params![uuid::Uuid::now_v7().to_string(), e.id, endpoint_id, at, give_up],
            )?;
        }
    }
    Ok(())
}

pub fn endpoints(conn: &dyn Db) -> Result<Vec<Endpoint>, StoreError> {
    conn.query_vec(
        &format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id"),
        params![],
        endpoint,
    )
}

pub fn endpoint_by_id(conn: &dyn Db, id: &str) -> Result<Option<Endpoint>, StoreError> {
    conn.query_opt(&format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?1"), params![id], endpoint)
}

fn not_found_endpoint(id: &str) -> StoreError {
    Refusal::NotFound(format!("webhook endpoint {id:?}")).into()
}

fn insert_endpoint(conn: &dyn Db, e: &Endpoint) -> Result<(), StoreError> {
    conn.write(
        &format!("INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![
            e.id,
            e.url,
            e.secret,
            encode_kinds(&e.events),
            e.enabled,
            e.from_config,
            codec::micros(e.created_at),
            codec::micros(e.updated_at)
        ],
    )
}

fn update_endpoint_row(conn: &dyn Db, e: &Endpoint) -> Result<(), StoreError> {
    conn.write(
        "UPDATE webhook_endpoints SET url = ?2, events = ?3, enabled = ?4, updated_at = ?5 WHERE id = ?1",
        params![e.id, e.url, encode_kinds(&e.events), e.enabled, codec::micros(e.updated_at)],
    )
}

pub fn create_endpoint(conn: &dyn Db, mut endpoint: Endpoint, now: Timestamp) -> Result<Endpoint, StoreError> {
    if endpoint_by_id(conn, &endpoint.id)?.is_some() {
        return Err(Refusal::Conflict(format!("webhook endpoint {:?} already exists", endpoint.id)).into());
    }
    endpoint.created_at = now;
    endpoint.updated_at = now;
    insert_endpoint(conn, &endpoint)?;
    Ok(endpoint)
}

pub fn update_endpoint(
    conn: &dyn Db,
    id: &str,
    update: EndpointUpdate,
    now: Timestamp,
) -> Result<Endpoint, StoreError> {
    let mut e = endpoint_by_id(conn, id)?.ok_or_else(|| not_found_endpoint(id))?;
    if e.from_config {
        return Err(Refusal::Conflict(format!(
            "webhook endpoint {id:?} is defined in the configuration; change it there"
        ))
        .into());
    }
    if let Some(url) = update.url {
        e.url = url;
    }
    if let Some(events) = update.events {
        e.events = events;
    }
    if let Some(enabled) = update.enabled {
        e.enabled = enabled;
    }
    e.updated_at = now;
    update_endpoint_row(conn, &e)?;
    Ok(e)
}

/// The configuration's endpoints become the stored ones of the
/// configuration: an endpoint no longer configured is disabled (its
/// deliveries stay listed). An id the API took first is refused.
pub fn sync_config_endpoints(
    conn: &dyn Db,
    wanted: Vec<Endpoint>,
    now: Timestamp,
) -> Result<Vec<Endpoint>, StoreError> {
    let stored = endpoints(conn)?;
    let mut out = Vec::new();
    for mut e in wanted {
        e.secret = None;
        e.from_config = true;
        e.updated_at = now;
        match stored.iter().find(|s| s.id == e.id) {
            Some(s) if !s.from_config => {
                return Err(Refusal::Conflict(format!(
                    "webhook endpoint {:?} of the configuration was created over the API",
                    e.id
                ))
                .into());
            }
            Some(s) => {
                e.created_at = s.created_at;
                if s.url != e.url || s.events != e.events || s.enabled != e.enabled {
                    update_endpoint_row(conn, &e)?;
                } else {
                    e.updated_at = s.updated_at;
                }
            }
            None => {
                e.created_at = now;
                insert_endpoint(conn, &e)?;
            }
        }
        out.push(e);
    }
    for mut s in stored.into_iter().filter(|s| s.from_config && s.enabled) {
        if !out.iter().any(|e| e.id == s.id) {
            s.enabled = false;
            s.updated_at = now;
            update_endpoint_row(conn, &s)?;
        }
    }
    Ok(out)
}

pub fn delivery_by_id(conn: &dyn Db, id: &str) -> Result<Option<Delivery>, StoreError> {
    conn.query_opt(&format!("SELECT {DELIVERY_COLUMNS} FROM {DELIVERY_FROM} WHERE d.id = ?1"), params![id], delivery)
}

/// Deliveries newest first; the cursor is the last one's `seq`.
pub fn deliveries(conn: &dyn Db, filter: &DeliveryFilter, page: &Page) -> Result<Paged<Delivery>, StoreError> {
    let n = limit(page);
    let before: Option<i64> = match &page.cursor {
        Some(c) => Some(c.parse().map_err(|_| bad_cursor())?),
        None => None,
    };
    let data = conn.query_vec(
        &format!(
            "SELECT {DELIVERY_COLUMNS}, d.seq FROM {DELIVERY_FROM}
              WHERE (CAST(?1 AS TEXT) IS NULL OR d.endpoint_id = ?1) AND (CAST(?2 AS TEXT) IS NULL OR d.event_id = ?2)
                AND (CAST(?3 AS TEXT) IS NULL OR d.status = ?3) AND (CAST(?4 AS BIGINT) IS NULL OR d.seq < ?4)
              ORDER BY d.seq DESC LIMIT ?5"
        ),
        params![
            filter.endpoint_id,
            filter.event_id,
            filter.status.map(DeliveryStatus::as_str),
            before,
            i64::from(n) + 1
        ],
        |row| Ok((delivery(row)?, row.get::<i64>(13)?)),
    )?;
    let page = paged(data, n, |(_, seq)| seq.to_string());
    Ok(Paged { data: page.data.into_iter().map(|(d, _)| d).collect(), next_cursor: page.next_cursor })
}

/// Takes due deliveries of enabled endpoints, oldest due first, each made
/// due again at `now + lease` in case its worker never reports back. The
/// update re-checks that the row is still due, so that a worker of another
/// instance that claimed it first (PostgreSQL) keeps it.
pub fn claim(conn: &dyn Db, now: Timestamp, limit: u32, lease_seconds: u32) -> Result<Vec<DueDelivery>, StoreError> {
    let now_us = codec::micros(now);
    let ids = conn.query_vec(
        "SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints p ON p.id = d.endpoint_id
          WHERE d.status = 'pending' AND d.next_attempt_at <= ?1 AND p.enabled = 1
          ORDER BY d.next_attempt_at, d.seq LIMIT ?2",
        params![now_us, i64::from(limit)],
        |row| row.get::<String>(0),
    )?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if !take(conn, DELIVERIES, &id, now, lease_seconds)? {
            continue;
        }
        let found = conn.query_opt(
            &format!(
                "SELECT {DELIVERY_COLUMNS}, e.occurred_at, e.data, p.url, p.secret
                   FROM {DELIVERY_FROM} JOIN webhook_endpoints p ON p.id = d.endpoint_id WHERE d.id = ?1"
            ),
            params![id],
            |row| {
                let delivery = delivery(row)?;
                let event = Event {
                    id: delivery.event_id.clone(),
                    kind: delivery.event_type,
                    account_id: delivery.account_id.clone(),
                    at: codec::timestamp(row.get(13)?)?,
                    data: decode_data(row.str(14)?)?,
                };
                Ok(DueDelivery { delivery, event, url: row.get(15)?, secret: row.get(16)? })
            },
        )?;
        out.extend(found);
    }
    Ok(out)
}

/// Records one attempt. A failure is due again after the back-off, or
/// `failed` once the next attempt would come later than three days after
/// the event was written.
pub fn record_attempt(conn: &dyn Db, id: &str, result: &AttemptResult, now: Timestamp) -> Result<Delivery, StoreError> {
    let d = delivery_by_id(conn, id)?.ok_or_else(|| Refusal::NotFound(format!("webhook delivery {id:?}")))?;
    write_attempt(conn, DELIVERIES, id, d.attempts, result, now)?;
    delivery_by_id(conn, id)?.ok_or_else(|| StoreError::Internal(format!("delivery {id:?} vanished")))
}

/// Makes a delivery due now. Its attempts keep counting; its three days
/// start again from now, so a retried delivery is not given up at once.
pub fn retry(conn: &dyn Db, id: &str, now: Timestamp) -> Result<Delivery, StoreError> {
    if delivery_by_id(conn, id)?.is_none() {
        return Err(Refusal::NotFound(format!("webhook delivery {id:?}")).into());
    }
    make_due(conn, DELIVERIES, id, now)?;
    delivery_by_id(conn, id)?.ok_or_else(|| StoreError::Internal(format!("delivery {id:?} vanished")))
}

// ---------------------------------------------------------------------------
// What every outbox's rows share (webhook deliveries, provider calls): a
// status, the attempts, when the next one is due and when to give up, the
// last answer. `table` is one of the outboxes' tables, never input.

pub(super) const DELIVERIES: &str = "webhook_deliveries";

/// Takes a due row for a worker: it is made due again at `now + lease`, in
/// case the worker never reports back. Re-checks that the row is still due,
/// so that a worker of another instance that took it first (PostgreSQL)
/// keeps it. `false`: taken by another.
pub(super) fn take(
    conn: &dyn Db,
    table: &str,
    id: &str,
    now: Timestamp,
    lease_seconds: u32,
) -> Result<bool, StoreError> {
    let now_us = codec::micros(now);
    let lease = now_us.saturating_add(i64::from(lease_seconds) * 1_000_000);
    let taken = conn.execute(
        &format!(
            "UPDATE {table} SET next_attempt_at = ?2 WHERE id = ?1 AND status = 'pending' AND next_attempt_at <= ?3"
        ),
        params![id, lease, now_us],
    )?;
    Ok(taken > 0)
}

/// Writes one attempt of a row that had `attempts` before it: delivered, or
/// due again after the back-off, or `failed` once that would be later than
/// its `give_up_at`.
pub(super) fn write_attempt(
    conn: &dyn Db,
    table: &str,
    id: &str,
    attempts: u32,
    result: &AttemptResult,
    now: Timestamp,
) -> Result<(), StoreError> {
    let give_up =
        conn.query_one(&format!("SELECT give_up_at FROM {table} WHERE id = ?1"), params![id], |row| row.get::<i64>(0))?;
    let attempts = attempts.saturating_add(1);
    let now_us = codec::micros(now);
    match result {
        AttemptResult::Delivered { status } => conn.write(
            &format!(
                "UPDATE {table} SET status = 'delivered', attempts = ?2, last_attempt_at = ?3,
                        last_status = ?4, last_error = NULL, delivered_at = ?3 WHERE id = ?1"
            ),
            params![id, i64::from(attempts), now_us, i64::from(*status)],
        ),
        AttemptResult::Failed { status, error } => {
            let next = codec::truncate(creditd_core::calendar::later(now, backoff(attempts)));
            let status_text = if codec::micros(next) > give_up { "failed" } else { "pending" };
            let mut error = error.clone();
            if error.len() > LAST_ERROR_MAX {
                let mut cut = LAST_ERROR_MAX;
                while !error.is_char_boundary(cut) {
                    cut -= 1;
                }
                error.truncate(cut);
            }
            conn.write(
                &format!(
                    "UPDATE {table} SET status = ?2, attempts = ?3, next_attempt_at = ?4, last_attempt_at = ?5,
                            last_status = ?6, last_error = ?7 WHERE id = ?1"
                ),
                params![
                    id,
                    status_text,
                    i64::from(attempts),
                    codec::micros(next),
                    now_us,
                    status.map(i64::from),
                    error
                ],
            )
        }
    }
}

/// Makes a row due now, pending whatever its status; its three days start
/// again from now.
pub(super) fn make_due(conn: &dyn Db, table: &str, id: &str, now: Timestamp) -> Result<(), StoreError> {
    let now_us = codec::micros(now);
    conn.write(
        &format!("UPDATE {table} SET status = 'pending', next_attempt_at = ?2, give_up_at = ?3 WHERE id = ?1"),
        params![id, now_us, codec::micros(creditd_core::calendar::later(now, GIVE_UP_AFTER))],
    )
}

/// When a row written at `at` is given up: [`GIVE_UP_AFTER`] later.
pub(super) fn give_up_at(at: Timestamp) -> i64 {
    codec::micros(creditd_core::calendar::later(codec::truncate(at), GIVE_UP_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_round_trips_any_text() {
        let data = vec![
            ("account_id".to_string(), "a:1".to_string()),
            ("reason".to_string(), "12:ü,\n\"x\"".to_string()),
            ("empty".to_string(), String::new()),
        ];
        assert_eq!(decode_data(&encode_data(&data)), Ok(data));
        assert!(decode_data("5:ab").is_err());
        assert!(decode_data("x:ab").is_err());
    }

    #[test]
    fn kinds_round_trip() {
        assert_eq!(encode_kinds(&[]), "*");
        let kinds = vec![EventKind::CreditsLow, EventKind::PaymentApplied];
        assert_eq!(decode_kinds(&encode_kinds(&kinds)), Ok(kinds));
    }
}
