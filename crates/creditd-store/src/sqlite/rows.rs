//! Rows to values and back: the one place that knows each table's columns.
//! The writer and the readers share it, so that what the writer caches and
//! what a reader loads are decoded the same way.

use creditd_core::account::{
    AccountState, AccountStatus, GiftMarks, Grant, GrantKind, Hold, HoldStatus, RequestDetails, UsageRecord, Wallet,
};
use creditd_core::ledger::{Changes, EntryKind, LedgerEntry, Reference};
use creditd_core::limits::RequestLimits;
use creditd_core::plan::{Plan, PlanBook};
use creditd_core::pricing::{RequestStatus, Usage};
use creditd_core::subscription::{Subscription, SubscriptionKind, SubscriptionStatus};
use creditd_core::units::Factor;
use creditd_core::units::{Credits, Usd};
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::codec::{self, Corrupt};
use crate::{AccountRow, AccountToken, ApiKey, ModelVersion, Role, StoreError};

impl From<Corrupt> for StoreError {
    fn from(c: Corrupt) -> Self {
        StoreError::Internal(c.to_string())
    }
}

/// A stored value that cannot be decoded, as the error `query_map` wants.
fn bad(c: Corrupt) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, Type::Text, Box::new(c))
}

fn text_enum<T>(row: &Row<'_>, i: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let text = row.get_ref(i)?.as_str()?;
    parse(text).ok_or_else(|| bad(Corrupt(format!("column {i}: {text:?}"))))
}

fn ts(row: &Row<'_>, i: usize) -> rusqlite::Result<jiff::Timestamp> {
    codec::timestamp(row.get(i)?).map_err(bad)
}

fn ts_opt(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<jiff::Timestamp>> {
    row.get::<_, Option<i64>>(i)?.map(codec::timestamp).transpose().map_err(bad)
}

fn count(row: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    codec::to_u64(row.get(i)?).map_err(bad)
}

fn count_opt(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<u64>> {
    row.get::<_, Option<i64>>(i)?.map(codec::to_u64).transpose().map_err(bad)
}

fn credits(row: &Row<'_>, i: usize) -> rusqlite::Result<Credits> {
    row.get(i).map(Credits::from_units)
}

pub const ACCOUNT_COLUMNS: &str = "id, email, metadata, status, created_at";

pub fn account(row: &Row<'_>) -> rusqlite::Result<AccountRow> {
    Ok(AccountRow {
        id: row.get(0)?,
        email: row.get(1)?,
        metadata: row.get(2)?,
        status: text_enum(row, 3, AccountStatus::parse)?,
        created_at: ts(row, 4)?,
    })
}

pub const GRANT_COLUMNS: &str = "id, account_id, kind, source, reason, amount, remaining, held, priority, starts_at, expires_at, created_at, voided";

pub fn grant(row: &Row<'_>) -> rusqlite::Result<Grant> {
    let priority: i64 = row.get(8)?;
    Ok(Grant {
        id: row.get(0)?,
        account_id: row.get(1)?,
        kind: text_enum(row, 2, GrantKind::parse)?,
        source: row.get(3)?,
        reason: row.get(4)?,
        amount: credits(row, 5)?,
        remaining: credits(row, 6)?,
        held: credits(row, 7)?,
        priority: u8::try_from(priority).map_err(|_| bad(Corrupt(format!("priority {priority}"))))?,
        starts_at: ts(row, 9)?,
        expires_at: ts_opt(row, 10)?,
        created_at: ts(row, 11)?,
        voided: row.get(12)?,
    })
}

pub const HOLD_COLUMNS: &str = "id, account_id, request_id, fingerprint, model, price_version, request_type, project, \
     conversation, estimate, estimate_cost_usd, parts, available_after, created_at, expires_at, status, resolved_at";

pub fn hold(row: &Row<'_>) -> rusqlite::Result<Hold> {
    Ok(Hold {
        id: row.get(0)?,
        account_id: row.get(1)?,
        request_id: row.get(2)?,
        fingerprint: row.get(3)?,
        model: row.get(4)?,
        price_version: row.get(5)?,
        request_type: row.get(6)?,
        project: row.get(7)?,
        conversation: row.get(8)?,
        estimate: credits(row, 9)?,
        estimate_cost_usd: Usd::from_units(row.get(10)?),
        parts: codec::decode_portions(row.get_ref(11)?.as_str()?).map_err(bad)?,
        available_after: credits(row, 12)?,
        created_at: ts(row, 13)?,
        expires_at: ts(row, 14)?,
        status: text_enum(row, 15, HoldStatus::parse)?,
        resolved_at: ts_opt(row, 16)?,
    })
}

pub const USAGE_COLUMNS: &str = "account_id, request_id, fingerprint, hold_id, request_type, model, price_version, \
     status, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, images, tool_calls, reasoning_tokens, \
     system_tokens, context_tokens, project, conversation, region, started_at, finished_at, latency_ms, retries, \
     iterations, external_calls, context_bytes, tools, metadata, cost_usd, credits, charged_from, debt_incurred, \
     hold_expired, refunded, recorded_at";

pub fn usage(row: &Row<'_>) -> rusqlite::Result<UsageRecord> {
    Ok(UsageRecord {
        account_id: row.get(0)?,
        request_id: row.get(1)?,
        fingerprint: row.get(2)?,
        hold_id: row.get(3)?,
        request_type: row.get(4)?,
        model: row.get(5)?,
        price_version: row.get(6)?,
        status: text_enum(row, 7, RequestStatus::parse)?,
        usage: Usage {
            input_tokens: count(row, 8)?,
            cache_read_tokens: count(row, 9)?,
            cache_write_tokens: count(row, 10)?,
            output_tokens: count(row, 11)?,
            images: count(row, 12)?,
            tool_calls: count(row, 13)?,
            reasoning_tokens: count(row, 14)?,
            system_tokens: count(row, 15)?,
            context_tokens: count(row, 16)?,
        },
        details: RequestDetails {
            project: row.get(17)?,
            conversation: row.get(18)?,
            region: row.get(19)?,
            started_at: ts_opt(row, 20)?,
            finished_at: ts_opt(row, 21)?,
            latency_ms: count_opt(row, 22)?,
            retries: count_opt(row, 23)?,
            iterations: count_opt(row, 24)?,
            external_calls: count_opt(row, 25)?,
            context_bytes: count_opt(row, 26)?,
            tools: codec::decode_tools(row.get_ref(27)?.as_str()?).map_err(bad)?,
            metadata: row.get(28)?,
        },
        cost_usd: Usd::from_units(row.get(29)?),
        credits: credits(row, 30)?,
        charged_from: codec::decode_portions(row.get_ref(31)?.as_str()?).map_err(bad)?,
        debt_incurred: credits(row, 32)?,
        hold_expired: row.get(33)?,
        refunded: row.get(34)?,
        recorded_at: ts(row, 35)?,
    })
}

pub const ENTRY_COLUMNS: &str =
    "id, account_id, at, kind, amount, grant_id, reference_kind, reference_id, reason, balance_after";

fn reference_parts(r: &Reference) -> (&'static str, Option<&str>) {
    match r {
        Reference::None => ("none", None),
        Reference::Request(id) => ("request", Some(id)),
        Reference::Subscription(id) => ("subscription", Some(id)),
        Reference::Payment(id) => ("payment", Some(id)),
        Reference::Grant(id) => ("grant", Some(id)),
    }
}

fn reference(kind: &str, id: Option<String>) -> Result<Reference, Corrupt> {
    let id = || id.clone().ok_or_else(|| Corrupt(format!("reference {kind} without an id")));
    Ok(match kind {
        "none" => Reference::None,
        "request" => Reference::Request(id()?),
        "subscription" => Reference::Subscription(id()?),
        "payment" => Reference::Payment(id()?),
        "grant" => Reference::Grant(id()?),
        other => return Err(Corrupt(format!("reference kind {other:?}"))),
    })
}

pub fn entry(row: &Row<'_>) -> rusqlite::Result<LedgerEntry> {
    Ok(LedgerEntry {
        id: row.get(0)?,
        account_id: row.get(1)?,
        at: ts(row, 2)?,
        kind: text_enum(row, 3, EntryKind::parse)?,
        amount: credits(row, 4)?,
        grant_id: row.get(5)?,
        reference: reference(row.get_ref(6)?.as_str()?, row.get(7)?).map_err(bad)?,
        reason: row.get(8)?,
        balance_after: credits(row, 9)?,
    })
}

pub const MODEL_COLUMNS: &str = "id, price_version, price, created_at";

pub fn model(row: &Row<'_>) -> rusqlite::Result<ModelVersion> {
    Ok(ModelVersion {
        id: row.get(0)?,
        price_version: row.get(1)?,
        price: codec::decode_price(row.get_ref(2)?.as_str()?).map_err(bad)?,
        created_at: ts(row, 3)?,
    })
}

pub const KEY_COLUMNS: &str = "id, role, name, secret_hash, created_at";

pub fn key(row: &Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: row.get(0)?,
        role: text_enum(row, 1, Role::parse)?,
        name: row.get(2)?,
        secret_hash: row.get(3)?,
        created_at: ts(row, 4)?,
    })
}

pub const TOKEN_COLUMNS: &str = "id, account_id, secret_hash, expires_at, created_at";

pub fn token(row: &Row<'_>) -> rusqlite::Result<AccountToken> {
    Ok(AccountToken {
        id: row.get(0)?,
        account_id: row.get(1)?,
        secret_hash: row.get(2)?,
        expires_at: ts(row, 3)?,
        created_at: ts(row, 4)?,
    })
}

pub const SUBSCRIPTION_COLUMNS: &str = "id, account_id, plan_id, kind, status, cancel_at_period_end, anchor, \
     period, period_start, period_end, paid_through, budget_used_usd, main_amount, backup_amount, grace_ends_at, \
     external_id, created_at, ended_at";

fn period(row: &Row<'_>, i: usize) -> rusqlite::Result<u32> {
    let n: i64 = row.get(i)?;
    u32::try_from(n).map_err(|_| bad(Corrupt(format!("period {n}"))))
}

pub fn subscription(row: &Row<'_>) -> rusqlite::Result<Subscription> {
    Ok(Subscription {
        id: row.get(0)?,
        account_id: row.get(1)?,
        plan_id: row.get(2)?,
        kind: text_enum(row, 3, SubscriptionKind::parse)?,
        status: text_enum(row, 4, SubscriptionStatus::parse)?,
        cancel_at_period_end: row.get(5)?,
        anchor: ts(row, 6)?,
        period: period(row, 7)?,
        period_start: ts(row, 8)?,
        period_end: ts(row, 9)?,
        paid_through: period(row, 10)?,
        budget_used_usd: Usd::from_units(row.get(11)?),
        main_amount: credits(row, 12)?,
        backup_amount: credits(row, 13)?,
        grace_ends_at: ts_opt(row, 14)?,
        external_id: row.get(15)?,
        created_at: ts(row, 16)?,
        ended_at: ts_opt(row, 17)?,
    })
}

pub const PLAN_COLUMNS: &str = "id, name, price_usd, monthly_credits, bonus_percent, backup_multiplier, \
     rate_per_minute, daily_requests, weekly_requests, model_access, cost_budget_multiplier";

fn limit(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<u32>> {
    row.get::<_, Option<i64>>(i)?.map(|n| u32::try_from(n).map_err(|_| bad(Corrupt(format!("limit {n}"))))).transpose()
}

pub fn plan(row: &Row<'_>) -> rusqlite::Result<Plan> {
    Ok(Plan {
        id: row.get(0)?,
        name: row.get(1)?,
        price_usd: Usd::from_units(row.get(2)?),
        monthly_credits: credits(row, 3)?,
        bonus_percent: Factor::from_units(row.get(4)?),
        backup_multiplier: Factor::from_units(row.get(5)?),
        limits: RequestLimits {
            rate_per_minute: limit(row, 6)?,
            daily_requests: limit(row, 7)?,
            weekly_requests: limit(row, 8)?,
        },
        model_access: codec::decode_model_access(row.get_ref(9)?.as_str()?).map_err(bad)?,
        cost_budget_multiplier: row.get::<_, Option<i64>>(10)?.map(Factor::from_units),
    })
}

// ---- Point reads shared by the writer and the readers ----

/// Every stored plan (and the built-in `free` when none is stored).
pub fn load_plans(conn: &Connection) -> Result<PlanBook, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {PLAN_COLUMNS} FROM plans ORDER BY id"))?;
    let plans = stmt.query_map([], plan)?.collect::<Result<Vec<_>, _>>()?;
    Ok(PlanBook::new(plans))
}

/// The account's latest subscription, live or ended.
pub fn latest_subscription(conn: &Connection, account_id: &str) -> Result<Option<Subscription>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE account_id = ?1 ORDER BY seq DESC LIMIT 1"
    ))?;
    Ok(stmt.query_row([account_id], subscription).optional()?)
}

pub fn account_row(conn: &Connection, id: &str) -> Result<Option<AccountRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"))?;
    Ok(stmt.query_row([id], account).optional()?)
}

/// The hot state as stored: status, wallet, live grants, open holds. The
/// writer's cache must always equal this for every account it holds.
pub fn load_state(conn: &Connection, id: &str) -> Result<Option<AccountState>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT status, wallet_balance, wallet_held, windows, gifts_week, gifts_month FROM accounts WHERE id = ?1",
    )?;
    let head = stmt
        .query_row([id], |row| {
            Ok((
                text_enum(row, 0, AccountStatus::parse)?,
                Wallet { balance: credits(row, 1)?, held: credits(row, 2)? },
                codec::decode_windows(row.get_ref(3)?.as_str()?).map_err(bad)?,
                GiftMarks { week: ts_opt(row, 4)?, month: ts_opt(row, 5)? },
            ))
        })
        .optional()?;
    let Some((status, wallet, windows, gifts)) = head else { return Ok(None) };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {GRANT_COLUMNS} FROM grants WHERE account_id = ?1 AND (remaining > 0 OR held > 0) ORDER BY seq"
    ))?;
    let grants = stmt.query_map([id], grant)?.collect::<Result<Vec<_>, _>>()?;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = ?1 AND status = 'open' ORDER BY seq"
    ))?;
    let holds = stmt.query_map([id], hold)?.collect::<Result<Vec<_>, _>>()?;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE account_id = ?1 AND status IN ('active', 'past_due')"
    ))?;
    let subscription = stmt.query_row([id], subscription).optional()?;
    Ok(Some(AccountState { account_id: id.to_string(), status, grants, wallet, holds, subscription, windows, gifts }))
}

pub fn grant_by_id(conn: &Connection, account_id: &str, grant_id: &str) -> Result<Option<Grant>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1 AND account_id = ?2"))?;
    Ok(stmt.query_row([grant_id, account_id], grant).optional()?)
}

pub fn hold_by_request(conn: &Connection, account_id: &str, request_id: &str) -> Result<Option<Hold>, StoreError> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = ?1 AND request_id = ?2"))?;
    Ok(stmt.query_row([account_id, request_id], hold).optional()?)
}

pub fn usage_by_request(
    conn: &Connection,
    account_id: &str,
    request_id: &str,
) -> Result<Option<UsageRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {USAGE_COLUMNS} FROM usage_records WHERE account_id = ?1 AND request_id = ?2"
    ))?;
    Ok(stmt.query_row([account_id, request_id], usage).optional()?)
}

// ---- Writes (the writer's connection only) ----

fn opt_micros(t: Option<jiff::Timestamp>) -> Option<i64> {
    t.map(codec::micros)
}

fn opt_count(n: Option<u64>) -> Result<Option<i64>, Corrupt> {
    n.map(codec::to_i64).transpose()
}

pub fn upsert_grant(conn: &Connection, g: &Grant) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO grants ({GRANT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (id) DO UPDATE SET
             remaining = excluded.remaining, held = excluded.held, voided = excluded.voided,
             expires_at = excluded.expires_at"
    ))?;
    stmt.execute(params![
        g.id,
        g.account_id,
        g.kind.as_str(),
        g.source,
        g.reason,
        g.amount.units(),
        g.remaining.units(),
        g.held.units(),
        i64::from(g.priority),
        codec::micros(g.starts_at),
        opt_micros(g.expires_at),
        codec::micros(g.created_at),
        g.voided,
    ])?;
    Ok(())
}

pub fn upsert_hold(conn: &Connection, h: &Hold) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO holds ({HOLD_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
         ON CONFLICT (id) DO UPDATE SET
             parts = excluded.parts, status = excluded.status, resolved_at = excluded.resolved_at"
    ))?;
    stmt.execute(params![
        h.id,
        h.account_id,
        h.request_id,
        h.fingerprint,
        h.model,
        h.price_version,
        h.request_type,
        h.project,
        h.conversation,
        h.estimate.units(),
        h.estimate_cost_usd.units(),
        codec::encode_portions(&h.parts),
        h.available_after.units(),
        codec::micros(h.created_at),
        codec::micros(h.expires_at),
        h.status.as_str(),
        opt_micros(h.resolved_at),
    ])?;
    Ok(())
}

pub fn insert_entry(conn: &Connection, e: &LedgerEntry) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO ledger_entries ({ENTRY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))?;
    let (reference_kind, reference_id) = reference_parts(&e.reference);
    stmt.execute(params![
        e.id,
        e.account_id,
        codec::micros(e.at),
        e.kind.as_str(),
        e.amount.units(),
        e.grant_id,
        reference_kind,
        reference_id,
        e.reason,
        e.balance_after.units(),
    ])?;
    Ok(())
}

pub fn insert_usage(conn: &Connection, u: &UsageRecord) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO usage_records ({USAGE_COLUMNS}) VALUES (
             ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
             ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35, ?36)"
    ))?;
    let n = codec::to_i64;
    let d = &u.details;
    stmt.execute(params![
        u.account_id,
        u.request_id,
        u.fingerprint,
        u.hold_id,
        u.request_type,
        u.model,
        u.price_version,
        u.status.as_str(),
        n(u.usage.input_tokens)?,
        n(u.usage.cache_read_tokens)?,
        n(u.usage.cache_write_tokens)?,
        n(u.usage.output_tokens)?,
        n(u.usage.images)?,
        n(u.usage.tool_calls)?,
        n(u.usage.reasoning_tokens)?,
        n(u.usage.system_tokens)?,
        n(u.usage.context_tokens)?,
        d.project,
        d.conversation,
        d.region,
        opt_micros(d.started_at),
        opt_micros(d.finished_at),
        opt_count(d.latency_ms)?,
        opt_count(d.retries)?,
        opt_count(d.iterations)?,
        opt_count(d.external_calls)?,
        opt_count(d.context_bytes)?,
        codec::encode_tools(&d.tools),
        d.metadata,
        u.cost_usd.units(),
        u.credits.units(),
        codec::encode_portions(&u.charged_from),
        u.debt_incurred.units(),
        u.hold_expired,
        u.refunded,
        codec::micros(u.recorded_at),
    ])?;
    Ok(())
}

pub fn upsert_subscription(conn: &Connection, s: &Subscription) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
         ON CONFLICT (id) DO UPDATE SET
             status = excluded.status, cancel_at_period_end = excluded.cancel_at_period_end,
             period = excluded.period, period_start = excluded.period_start, period_end = excluded.period_end,
             paid_through = excluded.paid_through, budget_used_usd = excluded.budget_used_usd,
             main_amount = excluded.main_amount, backup_amount = excluded.backup_amount,
             grace_ends_at = excluded.grace_ends_at, ended_at = excluded.ended_at"
    ))?;
    stmt.execute(params![
        s.id,
        s.account_id,
        s.plan_id,
        s.kind.as_str(),
        s.status.as_str(),
        s.cancel_at_period_end,
        codec::micros(s.anchor),
        i64::from(s.period),
        codec::micros(s.period_start),
        codec::micros(s.period_end),
        i64::from(s.paid_through),
        s.budget_used_usd.units(),
        s.main_amount.units(),
        s.backup_amount.units(),
        opt_micros(s.grace_ends_at),
        s.external_id,
        codec::micros(s.created_at),
        opt_micros(s.ended_at),
    ])?;
    Ok(())
}

pub fn upsert_plan(conn: &Connection, p: &Plan, now: jiff::Timestamp) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO plans ({PLAN_COLUMNS}, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    ))?;
    let limit = |n: Option<u32>| n.map(i64::from);
    stmt.execute(params![
        p.id,
        p.name,
        p.price_usd.units(),
        p.monthly_credits.units(),
        p.bonus_percent.units(),
        p.backup_multiplier.units(),
        limit(p.limits.rate_per_minute),
        limit(p.limits.daily_requests),
        limit(p.limits.weekly_requests),
        codec::encode_model_access(&p.model_access),
        p.cost_budget_multiplier.map(Factor::units),
        codec::micros(now),
    ])?;
    Ok(())
}

/// Writes what one engine operation changed. `state` is the account after it.
pub fn write_changes(conn: &Connection, state: &AccountState, changes: &Changes) -> Result<(), StoreError> {
    for g in &changes.grants {
        upsert_grant(conn, g)?;
    }
    if changes.account {
        let mut stmt = conn.prepare_cached(
            "UPDATE accounts SET wallet_balance = ?2, wallet_held = ?3, windows = ?4, gifts_week = ?5, gifts_month = ?6
             WHERE id = ?1",
        )?;
        stmt.execute(params![
            state.account_id,
            state.wallet.balance.units(),
            state.wallet.held.units(),
            codec::encode_windows(&state.windows),
            opt_micros(state.gifts.week),
            opt_micros(state.gifts.month),
        ])?;
    } else if changes.wallet {
        let mut stmt =
            conn.prepare_cached("UPDATE accounts SET wallet_balance = ?2, wallet_held = ?3 WHERE id = ?1")?;
        stmt.execute(params![state.account_id, state.wallet.balance.units(), state.wallet.held.units()])?;
    }
    for s in &changes.subscriptions {
        upsert_subscription(conn, s)?;
    }
    for request_id in &changes.refunded {
        let mut stmt =
            conn.prepare_cached("UPDATE usage_records SET refunded = 1 WHERE account_id = ?1 AND request_id = ?2")?;
        stmt.execute(params![state.account_id, request_id])?;
    }
    for h in &changes.holds {
        upsert_hold(conn, h)?;
    }
    for e in &changes.entries {
        insert_entry(conn, e)?;
    }
    if let Some(u) = &changes.usage {
        insert_usage(conn, u)?;
    }
    Ok(())
}
