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
use std::collections::HashMap;

use super::codec::{self, Corrupt};
use super::{Db, DbExt, Row, params};
use crate::{AccountRow, AccountToken, ApiKey, ModelVersion, Role, StoreError};

fn text_enum<T>(row: &dyn Row, i: usize, parse: fn(&str) -> Option<T>) -> Result<T, StoreError> {
    let text = row.str(i)?;
    parse(text).ok_or_else(|| Corrupt(format!("column {i}: {text:?}")).into())
}

fn ts(row: &dyn Row, i: usize) -> Result<jiff::Timestamp, StoreError> {
    Ok(codec::timestamp(row.get(i)?)?)
}

pub(super) fn ts_opt(row: &dyn Row, i: usize) -> Result<Option<jiff::Timestamp>, StoreError> {
    Ok(row.get::<Option<i64>>(i)?.map(codec::timestamp).transpose()?)
}

pub(super) fn count(row: &dyn Row, i: usize) -> Result<u64, StoreError> {
    Ok(codec::to_u64(row.get(i)?)?)
}

pub(super) fn count_opt(row: &dyn Row, i: usize) -> Result<Option<u64>, StoreError> {
    Ok(row.get::<Option<i64>>(i)?.map(codec::to_u64).transpose()?)
}

fn credits(row: &dyn Row, i: usize) -> Result<Credits, StoreError> {
    row.get(i).map(Credits::from_units)
}

pub const ACCOUNT_COLUMNS: &str = "id, email, metadata, status, created_at";

pub fn account(row: &dyn Row) -> Result<AccountRow, StoreError> {
    Ok(AccountRow {
        id: row.get(0)?,
        email: row.get(1)?,
        metadata: row.get(2)?,
        status: text_enum(row, 3, AccountStatus::parse)?,
        created_at: ts(row, 4)?,
    })
}

pub const GRANT_COLUMNS: &str = "id, account_id, kind, source, reason, amount, remaining, held, priority, starts_at, expires_at, created_at, voided, expiring_told";

pub fn grant(row: &dyn Row) -> Result<Grant, StoreError> {
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
        priority: u8::try_from(priority).map_err(|_| Corrupt(format!("priority {priority}")))?,
        starts_at: ts(row, 9)?,
        expires_at: ts_opt(row, 10)?,
        created_at: ts(row, 11)?,
        voided: row.get(12)?,
        expiring_told: row.get(13)?,
    })
}

pub const HOLD_COLUMNS: &str = "id, account_id, request_id, fingerprint, model, price_version, request_type, project, \
     conversation, estimate, estimate_cost_usd, parts, available_after, created_at, expires_at, status, resolved_at, \
     held_from";

pub fn hold(row: &dyn Row) -> Result<Hold, StoreError> {
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
        parts: codec::decode_portions(row.str(11)?)?,
        available_after: credits(row, 12)?,
        created_at: ts(row, 13)?,
        expires_at: ts(row, 14)?,
        status: text_enum(row, 15, HoldStatus::parse)?,
        resolved_at: ts_opt(row, 16)?,
        held_from: match row.get::<Option<String>>(17)? {
            Some(text) => codec::decode_portions(&text)?,
            None => codec::decode_portions(row.str(11)?)?,
        },
    })
}

pub const USAGE_COLUMNS: &str = "account_id, request_id, fingerprint, hold_id, request_type, model, price_version, \
     status, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, images, tool_calls, reasoning_tokens, \
     system_tokens, context_tokens, project, conversation, region, started_at, finished_at, latency_ms, retries, \
     iterations, external_calls, context_bytes, tools, metadata, cost_usd, credits, charged_from, debt_incurred, \
     hold_expired, refunded, recorded_at";

pub fn usage(row: &dyn Row) -> Result<UsageRecord, StoreError> {
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
            tools: codec::decode_tools(row.str(27)?)?,
            metadata: row.get(28)?,
        },
        cost_usd: Usd::from_units(row.get(29)?),
        credits: credits(row, 30)?,
        charged_from: codec::decode_portions(row.str(31)?)?,
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

pub fn entry(row: &dyn Row) -> Result<LedgerEntry, StoreError> {
    Ok(LedgerEntry {
        id: row.get(0)?,
        account_id: row.get(1)?,
        at: ts(row, 2)?,
        kind: text_enum(row, 3, EntryKind::parse)?,
        amount: credits(row, 4)?,
        grant_id: row.get(5)?,
        reference: reference(row.str(6)?, row.get(7)?)?,
        reason: row.get(8)?,
        balance_after: credits(row, 9)?,
    })
}

pub const MODEL_COLUMNS: &str = "id, price_version, price, created_at";

pub fn model(row: &dyn Row) -> Result<ModelVersion, StoreError> {
    Ok(ModelVersion {
        id: row.get(0)?,
        price_version: row.get(1)?,
        price: codec::decode_price(row.str(2)?)?,
        created_at: ts(row, 3)?,
    })
}

pub const KEY_COLUMNS: &str = "id, role, name, secret_hash, created_at, last_used_at";

pub fn key(row: &dyn Row) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: row.get(0)?,
        role: text_enum(row, 1, Role::parse)?,
        name: row.get(2)?,
        secret_hash: row.get(3)?,
        created_at: ts(row, 4)?,
        last_used_at: ts_opt(row, 5)?,
    })
}

pub const TOKEN_COLUMNS: &str = "id, account_id, secret_hash, expires_at, created_at";

pub fn token(row: &dyn Row) -> Result<AccountToken, StoreError> {
    Ok(AccountToken {
        id: row.get(0)?,
        account_id: row.get(1)?,
        secret_hash: row.get(2)?,
        expires_at: ts(row, 3)?,
        created_at: ts(row, 4)?,
    })
}

pub const PROXY_KEY_COLUMNS: &str = "id, account_id, name, secret_hash, created_at, last_used_at, revoked_at";

pub fn proxy_key(row: &dyn Row) -> Result<crate::ProxyKey, StoreError> {
    Ok(crate::ProxyKey {
        id: row.get(0)?,
        account_id: row.get(1)?,
        name: row.get(2)?,
        secret_hash: row.get(3)?,
        created_at: ts(row, 4)?,
        last_used_at: ts_opt(row, 5)?,
        revoked_at: ts_opt(row, 6)?,
    })
}

pub const SUBSCRIPTION_COLUMNS: &str = "id, account_id, plan_id, kind, status, cancel_at_period_end, anchor, \
     period, period_start, period_end, paid_through, budget_used_usd, main_amount, backup_amount, grace_ends_at, \
     external_id, created_at, ended_at, price_usd, budget_usd, renewal_price_usd";

fn period(row: &dyn Row, i: usize) -> Result<u32, StoreError> {
    let n: i64 = row.get(i)?;
    Ok(u32::try_from(n).map_err(|_| Corrupt(format!("period {n}")))?)
}

pub fn subscription(row: &dyn Row) -> Result<Subscription, StoreError> {
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
        price_usd: row.get::<Option<i64>>(18)?.map(Usd::from_units),
        budget_usd: row.get::<Option<i64>>(19)?.map(Usd::from_units),
        renewal_price_usd: row.get::<Option<i64>>(20)?.map(Usd::from_units),
    })
}

pub const PLAN_COLUMNS: &str = "id, name, price_usd, monthly_credits, bonus_percent, backup_multiplier, \
     rate_per_minute, daily_requests, weekly_requests, model_access, cost_budget_multiplier";

fn limit(row: &dyn Row, i: usize) -> Result<Option<u32>, StoreError> {
    Ok(row.get::<Option<i64>>(i)?.map(|n| u32::try_from(n).map_err(|_| Corrupt(format!("limit {n}")))).transpose()?)
}

pub fn plan(row: &dyn Row) -> Result<Plan, StoreError> {
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
        model_access: codec::decode_model_access(row.str(9)?)?,
        cost_budget_multiplier: row.get::<Option<i64>>(10)?.map(Factor::from_units),
    })
}

// ---- Point reads shared by the writer and the readers ----

/// Every stored plan (and the built-in `free` when none is stored).
pub fn load_plans(conn: &dyn Db) -> Result<PlanBook, StoreError> {
    let plans = conn.query_vec(&format!("SELECT {PLAN_COLUMNS} FROM plans ORDER BY id"), params![], plan)?;
    Ok(PlanBook::new(plans))
}

/// The current version of every model.
pub fn load_book(conn: &dyn Db) -> Result<HashMap<String, ModelVersion>, StoreError> {
    let models = conn.query_vec(
        &format!(
            "SELECT {MODEL_COLUMNS} FROM models m
              WHERE price_version = (SELECT MAX(price_version) FROM models WHERE id = m.id)"
        ),
        params![],
        model,
    )?;
    Ok(models.into_iter().map(|m| (m.id.clone(), m)).collect())
}

/// The account's latest subscription, live or ended.
pub fn latest_subscription(conn: &dyn Db, account_id: &str) -> Result<Option<Subscription>, StoreError> {
    conn.query_opt(
        &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE account_id = ?1 ORDER BY seq DESC LIMIT 1"),
        params![account_id],
        subscription,
    )
}

pub fn account_row(conn: &dyn Db, id: &str) -> Result<Option<AccountRow>, StoreError> {
    conn.query_opt(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"), params![id], account)
}

/// The hot state as stored: status, wallet, live grants, open holds. The
/// writer's cache must always equal this for every account it holds.
pub fn load_state(conn: &dyn Db, id: &str) -> Result<Option<AccountState>, StoreError> {
    Ok(load_states(conn, &[id])?.remove(id))
}

/// [`load_state`] of several accounts at once (four queries in all, one
/// round trip on PostgreSQL), by id; accounts that do not exist are absent.
pub fn load_states(conn: &dyn Db, ids: &[&str]) -> Result<HashMap<String, AccountState>, StoreError> {
    let mut states = HashMap::with_capacity(ids.len());
    if ids.is_empty() {
        return Ok(states);
    }
    let queries = [
        "SELECT id, status, wallet_balance, wallet_held, windows, gifts_week, gifts_month, low_marks FROM accounts
          WHERE id = ANY(?1)"
            .to_string(),
        format!("SELECT {GRANT_COLUMNS} FROM grants WHERE account_id = ANY(?1) AND {} ORDER BY seq", conn.live_grant()),
        format!("SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = ANY(?1) AND status = 'open' ORDER BY seq"),
        format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions
              WHERE account_id = ANY(?1) AND status IN ('active', 'past_due')"
        ),
    ];
    let queries = queries.each_ref().map(String::as_str);
    // The accounts' rows come first, then each query's rows in turn. A row
    // of an account created after the first query read (a reader has no
    // transaction) belongs to no state read here, and is left out.
    conn.query_any(&queries, ids, &mut |query, row| {
        match query {
            0 => {
                let state = AccountState {
                    account_id: row.get(0)?,
                    status: text_enum(row, 1, AccountStatus::parse)?,
                    grants: Vec::new(),
                    wallet: Wallet { balance: credits(row, 2)?, held: credits(row, 3)? },
                    holds: Vec::new(),
                    subscription: None,
                    windows: codec::decode_windows(row.str(4)?)?,
                    gifts: GiftMarks { week: ts_opt(row, 5)?, month: ts_opt(row, 6)? },
                    low: codec::decode_low_marks(row.str(7)?)?,
                };
                states.insert(state.account_id.clone(), state);
            }
            1 => {
                let g = grant(row)?;
                if let Some(state) = states.get_mut(&g.account_id) {
                    state.grants.push(g);
                }
            }
            2 => {
                let h = hold(row)?;
                if let Some(state) = states.get_mut(&h.account_id) {
                    state.holds.push(h);
                }
            }
            _ => {
                let s = subscription(row)?;
                if let Some(state) = states.get_mut(&s.account_id) {
                    state.subscription = Some(s);
                }
            }
        }
        Ok(())
    })?;
    Ok(states)
}

pub fn grant_by_id(conn: &dyn Db, account_id: &str, grant_id: &str) -> Result<Option<Grant>, StoreError> {
    conn.query_opt(
        &format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1 AND account_id = ?2"),
        params![grant_id, account_id],
        grant,
    )
}

pub fn hold_by_request(conn: &dyn Db, account_id: &str, request_id: &str) -> Result<Option<Hold>, StoreError> {
    conn.query_opt(
        &format!("SELECT {HOLD_COLUMNS} FROM holds WHERE account_id = ?1 AND request_id = ?2"),
        params![account_id, request_id],
        hold,
    )
}

pub fn usage_by_request(conn: &dyn Db, account_id: &str, request_id: &str) -> Result<Option<UsageRecord>, StoreError> {
    conn.query_opt(
        &format!("SELECT {USAGE_COLUMNS} FROM usage_records WHERE account_id = ?1 AND request_id = ?2"),
        params![account_id, request_id],
        usage,
    )
}

// ---- Writes (the writer's connection only) ----

fn opt_micros(t: Option<jiff::Timestamp>) -> Option<i64> {
    t.map(codec::micros)
}

fn opt_count(n: Option<u64>) -> Result<Option<i64>, Corrupt> {
    n.map(codec::to_i64).transpose()
}

pub fn upsert_grant(conn: &dyn Db, g: &Grant) -> Result<(), StoreError> {
    conn.write_keyed(
        &format!(
            "INSERT INTO grants ({GRANT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT (id) DO UPDATE SET
                 remaining = excluded.remaining, held = excluded.held, voided = excluded.voided,
                 expires_at = excluded.expires_at, expiring_told = excluded.expiring_told"
        ),
        params![
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
            g.expiring_told,
        ],
    )
}

pub fn upsert_hold(conn: &dyn Db, h: &Hold) -> Result<(), StoreError> {
    conn.write_keyed(
        &format!(
            "INSERT INTO holds ({HOLD_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
             ON CONFLICT (id) DO UPDATE SET
                 parts = excluded.parts, status = excluded.status, resolved_at = excluded.resolved_at"
        ),
        params![
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
            codec::encode_portions(&h.held_from),
        ],
    )
}

pub fn insert_entry(conn: &dyn Db, e: &LedgerEntry) -> Result<(), StoreError> {
    let (reference_kind, reference_id) = reference_parts(&e.reference);
    conn.append(
        &format!("INSERT INTO ledger_entries ({ENTRY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
        params![
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
        ],
    )
}

pub fn insert_usage(conn: &dyn Db, u: &UsageRecord) -> Result<(), StoreError> {
    let n = codec::to_i64;
    let d = &u.details;
    conn.append(
        &format!(
            "INSERT INTO usage_records ({USAGE_COLUMNS}) VALUES (
                 ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                 ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35, ?36)"
        ),
        params![
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
        ],
    )
}

pub fn upsert_subscription(conn: &dyn Db, s: &Subscription) -> Result<(), StoreError> {
    conn.write_keyed(
        &format!(
            "INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20,
                     ?21)
             ON CONFLICT (id) DO UPDATE SET
                 status = excluded.status, cancel_at_period_end = excluded.cancel_at_period_end,
                 period = excluded.period, period_start = excluded.period_start, period_end = excluded.period_end,
                 paid_through = excluded.paid_through, budget_used_usd = excluded.budget_used_usd,
                 main_amount = excluded.main_amount, backup_amount = excluded.backup_amount,
                 grace_ends_at = excluded.grace_ends_at, ended_at = excluded.ended_at,
                 price_usd = excluded.price_usd, budget_usd = excluded.budget_usd,
                 renewal_price_usd = excluded.renewal_price_usd"
        ),
        params![
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
            s.price_usd.map(Usd::units),
            s.budget_usd.map(Usd::units),
            s.renewal_price_usd.map(Usd::units),
        ],
    )
}

pub fn upsert_plan(conn: &dyn Db, p: &Plan, now: jiff::Timestamp) -> Result<(), StoreError> {
    let limit = |n: Option<u32>| n.map(i64::from);
    conn.write(
        &format!(
            "INSERT INTO plans ({PLAN_COLUMNS}, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (id) DO UPDATE SET
                 name = excluded.name, price_usd = excluded.price_usd, monthly_credits = excluded.monthly_credits,
                 bonus_percent = excluded.bonus_percent, backup_multiplier = excluded.backup_multiplier,
                 rate_per_minute = excluded.rate_per_minute, daily_requests = excluded.daily_requests,
                 weekly_requests = excluded.weekly_requests, model_access = excluded.model_access,
                 cost_budget_multiplier = excluded.cost_budget_multiplier, updated_at = excluded.updated_at"
        ),
        params![
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
        ],
    )
}

/// Writes what one engine operation changed. `state` is the account after it.
pub fn write_changes(conn: &dyn Db, state: &AccountState, changes: &Changes) -> Result<(), StoreError> {
    for g in &changes.grants {
        upsert_grant(conn, g)?;
    }
    if changes.account {
        conn.write_keyed(
            "UPDATE accounts SET wallet_balance = ?2, wallet_held = ?3, windows = ?4, gifts_week = ?5, gifts_month = ?6,
                    low_marks = ?7
             WHERE id = ?1",
            params![
                state.account_id,
                state.wallet.balance.units(),
                state.wallet.held.units(),
                codec::encode_windows(&state.windows),
                opt_micros(state.gifts.week),
                opt_micros(state.gifts.month),
                codec::encode_low_marks(&state.low),
            ],
        )?;
    } else if changes.wallet {
        conn.write_keyed(
            "UPDATE accounts SET wallet_balance = ?2, wallet_held = ?3 WHERE id = ?1",
            params![state.account_id, state.wallet.balance.units(), state.wallet.held.units()],
        )?;
    }
    for s in &changes.subscriptions {
        upsert_subscription(conn, s)?;
    }
    for request_id in &changes.refunded {
        conn.write(
            "UPDATE usage_records SET refunded = 1 WHERE account_id = ?1 AND request_id = ?2",
            params![state.account_id, request_id],
        )?;
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
    super::outbox::write_events(conn, &changes.events)
}
