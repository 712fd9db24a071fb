//! The SQLite schema, as numbered migrations embedded in the binary.
//!
//! `schema_migrations` records every version applied. All pending versions
//! are applied in one transaction, so a failed migration leaves the database
//! as it was.

use rusqlite::Connection;

use crate::StoreError;

/// Append only: a released migration is never edited, a change is a new one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, V1),
    (2, V2),
    (3, V3),
    (4, V4),
    (5, V5),
    (6, V6_PROXY_KEYS),
    (7, V7_DASHBOARD_SESSIONS),
    (8, V8_MODEL_IMPORTS),
    (9, V9_CONFIG_APPLIED),
    (10, V10_OUTGOING_WEBHOOKS),
    (11, V11_KEY_LAST_USED),
    (12, V12_LOW_CREDIT_MARKS),
    (13, V13_PROVIDER_CALLS),
    (14, V14_GRANT_EXPIRING),
];

const V1: &str = r#"
CREATE TABLE accounts (
    id             TEXT PRIMARY KEY NOT NULL,
    email          TEXT,
    metadata       TEXT,
    status         TEXT NOT NULL,
    wallet_balance INTEGER NOT NULL DEFAULT 0,
    wallet_held    INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL
);

-- `seq` is insertion order: grants are listed newest first by it.
CREATE TABLE grants (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    kind       TEXT NOT NULL,
    source     TEXT NOT NULL,
    reason     TEXT,
    amount     INTEGER NOT NULL,
    remaining  INTEGER NOT NULL,
    held       INTEGER NOT NULL,
    priority   INTEGER NOT NULL,
    starts_at  INTEGER NOT NULL,
    expires_at INTEGER,
    created_at INTEGER NOT NULL,
    voided     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX grants_by_account ON grants(account_id, seq);
-- The hot state loads only live grants; spent ones pile up over the years.
CREATE INDEX grants_live ON grants(account_id, seq) WHERE remaining > 0 OR held > 0;
-- The sweeper's question: which live grants are past their expiry?
CREATE INDEX grants_due ON grants(expires_at) WHERE expires_at IS NOT NULL AND (remaining > 0 OR held > 0);

CREATE TABLE holds (
    seq               INTEGER PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    account_id        TEXT NOT NULL REFERENCES accounts(id),
    request_id        TEXT NOT NULL,
    fingerprint       TEXT NOT NULL,
    model             TEXT NOT NULL,
    price_version     INTEGER NOT NULL,
    request_type      TEXT NOT NULL,
    project           TEXT,
    conversation      TEXT,
    estimate          INTEGER NOT NULL,
    estimate_cost_usd INTEGER NOT NULL,
    parts             TEXT NOT NULL,
    available_after   INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    status            TEXT NOT NULL,
    resolved_at       INTEGER,
    UNIQUE (account_id, request_id)
);
CREATE INDEX holds_open ON holds(account_id, seq) WHERE status = 'open';
CREATE INDEX holds_due ON holds(expires_at) WHERE status = 'open';

CREATE TABLE usage_records (
    seq                INTEGER PRIMARY KEY,
    account_id         TEXT NOT NULL REFERENCES accounts(id),
    request_id         TEXT NOT NULL,
    fingerprint        TEXT NOT NULL,
    hold_id            TEXT,
    request_type       TEXT NOT NULL,
    model              TEXT NOT NULL,
    price_version      INTEGER NOT NULL,
    status             TEXT NOT NULL,
    input_tokens       INTEGER NOT NULL,
    cache_read_tokens  INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    output_tokens      INTEGER NOT NULL,
    images             INTEGER NOT NULL,
    tool_calls         INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    system_tokens      INTEGER NOT NULL,
    context_tokens     INTEGER NOT NULL,
    project            TEXT,
    conversation       TEXT,
    region             TEXT,
    started_at         INTEGER,
    finished_at        INTEGER,
    latency_ms         INTEGER,
    retries            INTEGER,
    iterations         INTEGER,
    external_calls     INTEGER,
    context_bytes      INTEGER,
    tools              TEXT NOT NULL,
    metadata           TEXT,
    cost_usd           INTEGER NOT NULL,
    credits            INTEGER NOT NULL,
    charged_from       TEXT NOT NULL,
    debt_incurred      INTEGER NOT NULL,
    hold_expired       INTEGER NOT NULL,
    refunded           INTEGER NOT NULL DEFAULT 0,
    recorded_at        INTEGER NOT NULL,
    UNIQUE (account_id, request_id)
);
CREATE INDEX usage_by_time ON usage_records(account_id, recorded_at, seq);

-- Append only. Entry ids are UUIDs made by the writer; no index on them
-- keeps every insert to two b-trees.
CREATE TABLE ledger_entries (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL,
    account_id     TEXT NOT NULL REFERENCES accounts(id),
    at             INTEGER NOT NULL,
    kind           TEXT NOT NULL,
    amount         INTEGER NOT NULL,
    grant_id       TEXT,
    reference_kind TEXT NOT NULL,
    reference_id   TEXT,
    reason         TEXT,
    balance_after  INTEGER NOT NULL
);
CREATE INDEX ledger_by_time ON ledger_entries(account_id, at, seq);

CREATE TABLE models (
    id            TEXT NOT NULL,
    price_version INTEGER NOT NULL,
    price         TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (id, price_version)
) WITHOUT ROWID;

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY NOT NULL,
    role        TEXT NOT NULL,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE account_tokens (
    id          TEXT PRIMARY KEY NOT NULL,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    secret_hash TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE idempotency_keys (
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status      INTEGER NOT NULL,
    body        BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
"#;

/// Usage history and export (issue 4): the admin-wide export reads every
/// account in `recorded_at` order. Per-account lists, summaries and exports
/// use `usage_by_time` of V1. Times only grow, so inserts append at the
/// index's right edge.
const V2: &str = r#"
CREATE INDEX usage_by_recorded_at ON usage_records(recorded_at, seq);
"#;

/// Plans, subscriptions, request windows and gift marks (issue 3).
/// `accounts` gains the rest of the hot state: the request windows (the
/// last minute's admissions, this day's and week's counts; encoded by
/// `codec::encode_windows`) and, per gift cadence, the latest period start
/// already handled.
const V3: &str = r#"
ALTER TABLE accounts ADD COLUMN windows TEXT NOT NULL DEFAULT '';
ALTER TABLE accounts ADD COLUMN gifts_week INTEGER;
ALTER TABLE accounts ADD COLUMN gifts_month INTEGER;

CREATE TABLE plans (
    id                     TEXT PRIMARY KEY NOT NULL,
    name                   TEXT NOT NULL,
    price_usd              INTEGER NOT NULL,
    monthly_credits        INTEGER NOT NULL,
    bonus_percent          INTEGER NOT NULL,
    backup_multiplier      INTEGER NOT NULL,
    rate_per_minute        INTEGER,
    daily_requests         INTEGER,
    weekly_requests        INTEGER,
    model_access           TEXT NOT NULL,
    cost_budget_multiplier INTEGER,
    updated_at             INTEGER NOT NULL
);

-- Every subscription an account had; at most one live (active or past due).
CREATE TABLE subscriptions (
    seq                  INTEGER PRIMARY KEY,
    id                   TEXT NOT NULL UNIQUE,
    account_id           TEXT NOT NULL REFERENCES accounts(id),
    plan_id              TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    status               TEXT NOT NULL,
    cancel_at_period_end INTEGER NOT NULL,
    anchor               INTEGER NOT NULL,
    period               INTEGER NOT NULL,
    period_start         INTEGER NOT NULL,
    period_end           INTEGER NOT NULL,
    paid_through         INTEGER NOT NULL,
    budget_used_usd      INTEGER NOT NULL,
    main_amount          INTEGER NOT NULL,
    backup_amount        INTEGER NOT NULL,
    grace_ends_at        INTEGER,
    external_id          TEXT,
    created_at           INTEGER NOT NULL,
    ended_at             INTEGER
);
CREATE INDEX subscriptions_by_account ON subscriptions(account_id, seq);
CREATE UNIQUE INDEX subscriptions_live ON subscriptions(account_id) WHERE status IN ('active', 'past_due');
-- The sweeper's questions: which active periods or past-due graces are over?
CREATE INDEX subscriptions_period_due ON subscriptions(period_end) WHERE status = 'active';
CREATE INDEX subscriptions_grace_due ON subscriptions(grace_ends_at) WHERE status = 'past_due';
"#;

/// Payments and webhook events (issue 5). A payment is unique per
/// `(provider, external_id)` and a refund per `(provider, refund_id)`: the
/// writer records each in the same transaction as its effect, so the index
/// decides that the same payment is never applied twice. Every verified
/// webhook event is kept with its outcome; at most one per provider event
/// id is `applied`. `account_id` of an event is what the payload named,
/// which may be no account at all (then it was `ignored`).
const V4: &str = r#"
CREATE TABLE payments (
    seq              INTEGER PRIMARY KEY,
    provider         TEXT NOT NULL,
    external_id      TEXT NOT NULL,
    account_id       TEXT NOT NULL REFERENCES accounts(id),
    kind             TEXT NOT NULL,
    amount_usd       INTEGER NOT NULL,
    credits          INTEGER NOT NULL,
    grant_ids        TEXT NOT NULL,
    subscription_id  TEXT,
    refunded_credits INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    UNIQUE (provider, external_id)
);
CREATE INDEX payments_by_account ON payments(account_id, seq);

CREATE TABLE payment_refunds (
    seq         INTEGER PRIMARY KEY,
    provider    TEXT NOT NULL,
    refund_id   TEXT NOT NULL,
    payment_id  TEXT NOT NULL,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    credits     INTEGER NOT NULL,
    from_grants INTEGER NOT NULL,
    lapsed      INTEGER NOT NULL,
    from_wallet INTEGER NOT NULL,
    debt        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (provider, refund_id)
);
CREATE INDEX payment_refunds_by_payment ON payment_refunds(provider, payment_id);

CREATE TABLE webhook_events (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    provider    TEXT NOT NULL,
    event_id    TEXT,
    event_type  TEXT,
    status      TEXT NOT NULL,
    reason      TEXT,
    account_id  TEXT,
    external_id TEXT,
    received_at INTEGER NOT NULL,
    body        BLOB NOT NULL
);
CREATE UNIQUE INDEX webhook_events_applied ON webhook_events(provider, event_id) WHERE status = 'applied';
CREATE INDEX webhook_events_by_provider ON webhook_events(provider, seq);
CREATE INDEX webhook_events_by_status ON webhook_events(status, seq);
"#;

/// What money correctness needs remembered (issue #12): the parts an
/// authorize first answered (`held_from`; NULL on older rows: `parts`), the
/// price and budget a subscription's period was bought at and the price of
/// a period paid in advance (NULL on older rows: the plan's), and what a
/// plan payment later put in the wallet when its subscription was switched
/// away (`prorated_credits`), so that its refund reverses that too.
const V5: &str = r#"
ALTER TABLE holds ADD COLUMN held_from TEXT;
ALTER TABLE subscriptions ADD COLUMN price_usd INTEGER;
ALTER TABLE subscriptions ADD COLUMN budget_usd INTEGER;
ALTER TABLE subscriptions ADD COLUMN renewal_price_usd INTEGER;
ALTER TABLE payments ADD COLUMN prorated_credits INTEGER NOT NULL DEFAULT 0;
"#;

/// The metering proxy's keys (`docs/proxy.md`).
const V6_PROXY_KEYS: &str = r#"
CREATE TABLE proxy_keys (
    id           TEXT PRIMARY KEY NOT NULL,
    account_id   TEXT NOT NULL REFERENCES accounts(id),
    name         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER
);
CREATE INDEX proxy_keys_by_account ON proxy_keys(account_id, created_at);
"#;

/// Dashboard sign-in sessions (`creditd-server`'s `dashboard`): only the
/// SHA-256 of a session's secret is kept; revoking sets `revoked_at`.
/// `token_id` is the account token it was signed in with: revoking the
/// token (deleting its row) revokes its sessions.
const V7_DASHBOARD_SESSIONS: &str = r#"
CREATE TABLE dashboard_sessions (
    id          TEXT PRIMARY KEY NOT NULL,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    token_id    TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX dashboard_sessions_by_account ON dashboard_sessions(account_id);
CREATE INDEX dashboard_sessions_by_token ON dashboard_sessions(token_id);
"#;

/// Price-map imports (`docs/import.md`): each model version an import wrote.
/// A model whose current version is not here was set by the operator (API
/// or configuration), and an import leaves it alone unless asked.
const V8_MODEL_IMPORTS: &str = r#"
CREATE TABLE model_imports (
    id            TEXT NOT NULL,
    price_version INTEGER NOT NULL,
    format        TEXT NOT NULL,
    imported_at   INTEGER NOT NULL,
    PRIMARY KEY (id, price_version)
);
"#;

/// What the configuration said for each model and plan when it was last
/// applied at a start (`docs/configuration.md`): `applied` is the store's
/// canonical encoding of the entry (`codec::encode_price`,
/// `codec::encode_plan`). A start compares it with what the file says now
/// and with the stored row, to tell a configuration change from an API edit.
const V9_CONFIG_APPLIED: &str = r#"
CREATE TABLE config_applied (
    kind       TEXT NOT NULL,
    id         TEXT NOT NULL,
    applied    TEXT NOT NULL,
    applied_at INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);
"#;

/// Outgoing webhooks (`docs/webhooks.md`): the operator's endpoints, the
/// outbox of events (written in the transaction of what caused them), and
/// one delivery per event and endpoint that was subscribed when the event
/// was written. `secret` is NULL for an endpoint of the configuration: its
/// secret comes from the environment and is never stored. `events` is
/// `*` (every kind) or the kinds between commas (`,credits.low,`).
const V10_OUTGOING_WEBHOOKS: &str = r#"
CREATE TABLE webhook_endpoints (
    id          TEXT PRIMARY KEY NOT NULL,
    url         TEXT NOT NULL,
    secret      TEXT,
    events      TEXT NOT NULL,
    enabled     INTEGER NOT NULL,
    from_config INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE outbox_events (
    seq         INTEGER PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    data        TEXT NOT NULL
);

CREATE TABLE webhook_deliveries (
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    event_id        TEXT NOT NULL,
    endpoint_id     TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    give_up_at      INTEGER NOT NULL,
    last_attempt_at INTEGER,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    UNIQUE (event_id, endpoint_id)
);
-- The delivery worker's question: what is due now?
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE status = 'pending';
"#;

/// When each API key was last used (written at most once a minute per key
/// and instance, off the request's path; `docs/api.md`).
const V11_KEY_LAST_USED: &str = r#"
ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER;
"#;

/// The low-credit thresholds each account has crossed (`credits.low`,
/// `docs/webhooks.md`), part of its hot state (`codec::encode_low_marks`).
const V12_LOW_CREDIT_MARKS: &str = r#"
ALTER TABLE accounts ADD COLUMN low_marks TEXT NOT NULL DEFAULT '';
"#;

/// Calls owed to a payment provider's API (`outbox::ProviderCall`,
/// `docs/dashboard.md`): written in the transaction of the change that needs
/// them and sent until the provider accepts, with the back-off of webhook
/// deliveries. `provider_subscription_id` of a payment is the provider's
/// subscription it was a charge of (Creem's `sub_…`), which a switch away
/// from the subscription, or a cancel made in creditd, cancels there.
const V13_PROVIDER_CALLS: &str = r#"
ALTER TABLE payments ADD COLUMN provider_subscription_id TEXT;

CREATE TABLE provider_calls (
    seq                      INTEGER PRIMARY KEY,
    id                       TEXT NOT NULL UNIQUE,
    provider                 TEXT NOT NULL,
    action                   TEXT NOT NULL,
    provider_subscription_id TEXT NOT NULL,
    mode                     TEXT NOT NULL,
    account_id               TEXT NOT NULL,
    subscription_id          TEXT,
    status                   TEXT NOT NULL,
    attempts                 INTEGER NOT NULL,
    next_attempt_at          INTEGER NOT NULL,
    give_up_at               INTEGER NOT NULL,
    last_attempt_at          INTEGER,
    last_status              INTEGER,
    last_error               TEXT,
    created_at               INTEGER NOT NULL,
    delivered_at             INTEGER
);
-- The worker's question: what is due now?
CREATE INDEX provider_calls_due ON provider_calls(next_attempt_at) WHERE status = 'pending';
CREATE INDEX provider_calls_by_status ON provider_calls(status, seq);
CREATE INDEX provider_calls_by_account ON provider_calls(account_id, seq);
"#;

/// Whether each grant's `grant.expiring` warning is behind it (once per
/// grant, `docs/webhooks.md`), and the sweeper's question for it: which
/// live grants not yet warned are within the warning's reach of their
/// expiry? Grants that existed before are warned when they come due.
const V14_GRANT_EXPIRING: &str = r#"
ALTER TABLE grants ADD COLUMN expiring_told INTEGER NOT NULL DEFAULT 0;
CREATE INDEX grants_expiring ON grants(expires_at)
    WHERE expires_at IS NOT NULL AND (remaining > 0 OR held > 0) AND expiring_told = 0;
"#;

/// The newest schema version this build knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// Applies every pending migration in one transaction. Refuses a database
/// made by a newer creditd rather than guess at its schema.
pub fn migrate(conn: &Connection) -> Result<i64, StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = apply_pending(conn);
    match result {
        Ok(version) => {
            conn.execute_batch("COMMIT")?;
            Ok(version)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn apply_pending(conn: &Connection) -> Result<i64, StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY NOT NULL,
             applied_at INTEGER NOT NULL
         )",
    )?;
    let current: i64 =
        conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |row| row.get(0))?;
    if current > latest_version() {
        return Err(StoreError::Internal(format!(
            "the database has schema version {current}, newer than this creditd knows ({})",
            latest_version()
        )));
    }
    let now = jiff::Timestamp::now().as_microsecond();
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        conn.execute_batch(sql)?;
        conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)", (version, now))?;
    }
    Ok(latest_version())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op() {
        let conn = Connection::open_in_memory().expect("memory db");
        assert_eq!(migrate(&conn), Ok(latest_version()));
        assert_eq!(migrate(&conn), Ok(latest_version()));
        let versions: i64 = conn.query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0)).expect("count");
        assert_eq!(versions, MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_newer_database_is_refused() {
        let conn = Connection::open_in_memory().expect("memory db");
        migrate(&conn).expect("migrate");
        conn.execute("INSERT INTO schema_migrations VALUES (99, 0)", []).expect("insert");
        assert!(matches!(migrate(&conn), Err(StoreError::Internal(_))));
    }
}
