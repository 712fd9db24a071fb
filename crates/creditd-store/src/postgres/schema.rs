//! The PostgreSQL schema: the same tables, columns and indexes as SQLite's
//! (every integer a `BIGINT`, bytes `BYTEA`, `seq` an identity column), plus
//! what several instances on one database need: a `version` per account and
//! a version of the price book and plans; and, for heap-only updates of
//! grants, the indexes of live grants on a generated column `live` (V2).
//! Text compares bytewise (`COLLATE "C"`), as in SQLite, so that cursors and
//! groups come in the same order on both backends.

use super::conn::PgConn;
use crate::StoreError;

/// Migrations in order; a database records the ones applied.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, V1),
    (2, V2),
    (3, V3),
    (4, V4_PROXY_KEYS),
    (5, V5_DASHBOARD_SESSIONS),
    (6, V6_MODEL_IMPORTS),
    (7, V7_CONFIG_APPLIED),
    (8, V8_OUTGOING_WEBHOOKS),
    (9, V9_KEY_LAST_USED),
    (10, V10_LOW_CREDIT_MARKS),
    (11, V11_PROVIDER_CALLS),
    (12, V12_GRANT_EXPIRING),
];

const V1: &str = r#"
CREATE TABLE accounts (
    id             TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    email          TEXT COLLATE "C",
    metadata       TEXT COLLATE "C",
    status         TEXT COLLATE "C" NOT NULL,
    wallet_balance BIGINT NOT NULL DEFAULT 0,
    wallet_held    BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    windows        TEXT COLLATE "C" NOT NULL DEFAULT '',
    gifts_week     BIGINT,
    gifts_month    BIGINT,
    -- Bumped by every writer batch that changes the account: another
    -- creditd instance compares it with the version its cached copy has.
    version        BIGINT NOT NULL DEFAULT 0
);

-- `seq` is insertion order: grants are listed newest first by it.
CREATE TABLE grants (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT COLLATE "C" NOT NULL UNIQUE,
    account_id TEXT COLLATE "C" NOT NULL REFERENCES accounts(id),
    kind       TEXT COLLATE "C" NOT NULL,
    source     TEXT COLLATE "C" NOT NULL,
    reason     TEXT COLLATE "C",
    amount     BIGINT NOT NULL,
    remaining  BIGINT NOT NULL,
    held       BIGINT NOT NULL,
    priority   BIGINT NOT NULL,
    starts_at  BIGINT NOT NULL,
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    voided     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX grants_by_account ON grants(account_id, seq);
-- The hot state loads only live grants; spent ones pile up over the years.
CREATE INDEX grants_live ON grants(account_id, seq) WHERE remaining > 0 OR held > 0;
-- The sweeper's question: which live grants are past their expiry?
CREATE INDEX grants_due ON grants(expires_at) WHERE expires_at IS NOT NULL AND (remaining > 0 OR held > 0);

CREATE TABLE holds (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                TEXT COLLATE "C" NOT NULL UNIQUE,
    account_id        TEXT COLLATE "C" NOT NULL REFERENCES accounts(id),
    request_id        TEXT COLLATE "C" NOT NULL,
    fingerprint       TEXT COLLATE "C" NOT NULL,
    model             TEXT COLLATE "C" NOT NULL,
    price_version     BIGINT NOT NULL,
    request_type      TEXT COLLATE "C" NOT NULL,
    project           TEXT COLLATE "C",
    conversation      TEXT COLLATE "C",
    estimate          BIGINT NOT NULL,
    estimate_cost_usd BIGINT NOT NULL,
    parts             TEXT COLLATE "C" NOT NULL,
    available_after   BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    status            TEXT COLLATE "C" NOT NULL,
    resolved_at       BIGINT,
    UNIQUE (account_id, request_id)
);
CREATE INDEX holds_open ON holds(account_id, seq) WHERE status = 'open';
CREATE INDEX holds_due ON holds(expires_at) WHERE status = 'open';

CREATE TABLE usage_records (
    seq                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id         TEXT COLLATE "C" NOT NULL REFERENCES accounts(id),
    request_id         TEXT COLLATE "C" NOT NULL,
    fingerprint        TEXT COLLATE "C" NOT NULL,
    hold_id            TEXT COLLATE "C",
    request_type       TEXT COLLATE "C" NOT NULL,
    model              TEXT COLLATE "C" NOT NULL,
    price_version      BIGINT NOT NULL,
    status             TEXT COLLATE "C" NOT NULL,
    input_tokens       BIGINT NOT NULL,
    cache_read_tokens  BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    output_tokens      BIGINT NOT NULL,
    images             BIGINT NOT NULL,
    tool_calls         BIGINT NOT NULL,
    reasoning_tokens   BIGINT NOT NULL,
    system_tokens      BIGINT NOT NULL,
    context_tokens     BIGINT NOT NULL,
    project            TEXT COLLATE "C",
    conversation       TEXT COLLATE "C",
    region             TEXT COLLATE "C",
    started_at         BIGINT,
    finished_at        BIGINT,
    latency_ms         BIGINT,
    retries            BIGINT,
    iterations         BIGINT,
    external_calls     BIGINT,
    context_bytes      BIGINT,
    tools              TEXT COLLATE "C" NOT NULL,
    metadata           TEXT COLLATE "C",
    cost_usd           BIGINT NOT NULL,
    credits            BIGINT NOT NULL,
    charged_from       TEXT COLLATE "C" NOT NULL,
    debt_incurred      BIGINT NOT NULL,
    hold_expired       BIGINT NOT NULL,
    refunded           BIGINT NOT NULL DEFAULT 0,
    recorded_at        BIGINT NOT NULL,
    UNIQUE (account_id, request_id)
);
CREATE INDEX usage_by_time ON usage_records(account_id, recorded_at, seq);

-- Append only. Entry ids are UUIDs made by the writer; no index on them
-- keeps every insert to two b-trees.
CREATE TABLE ledger_entries (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             TEXT COLLATE "C" NOT NULL,
    account_id     TEXT COLLATE "C" NOT NULL REFERENCES accounts(id),
    at             BIGINT NOT NULL,
    kind           TEXT COLLATE "C" NOT NULL,
    amount         BIGINT NOT NULL,
    grant_id       TEXT COLLATE "C",
    reference_kind TEXT COLLATE "C" NOT NULL,
    reference_id   TEXT COLLATE "C",
    reason         TEXT COLLATE "C",
    balance_after  BIGINT NOT NULL
);
CREATE INDEX ledger_by_time ON ledger_entries(account_id, at, seq);

CREATE TABLE models (
    id            TEXT COLLATE "C" NOT NULL,
    price_version BIGINT NOT NULL,
    price         TEXT COLLATE "C" NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (id, price_version)
);

CREATE TABLE api_keys (
    id          TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    role        TEXT COLLATE "C" NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    secret_hash TEXT COLLATE "C" NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE account_tokens (
    id          TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    account_id  TEXT COLLATE "C" NOT NULL REFERENCES accounts(id),
    secret_hash TEXT COLLATE "C" NOT NULL,
    expires_at  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE idempotency_keys (
    scope       TEXT COLLATE "C" NOT NULL,
    key         TEXT COLLATE "C" NOT NULL,
    fingerprint TEXT COLLATE "C" NOT NULL,
    status      BIGINT NOT NULL,
    body        BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE INDEX usage_by_recorded_at ON usage_records(recorded_at, seq);

CREATE TABLE plans (
    id                     TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    name                   TEXT COLLATE "C" NOT NULL,
    price_usd              BIGINT NOT NULL,
    monthly_credits        BIGINT NOT NULL,
    bonus_percent          BIGINT NOT NULL,
    backup_multiplier      BIGINT NOT NULL,
    rate_per_minute        BIGINT,
    daily_requests         BIGINT,
    weekly_requests        BIGINT,
    model_access           TEXT COLLATE "C" NOT NULL,
    cost_budget_multiplier BIGINT,
    updated_at             BIGINT NOT NULL
);

-- Every subscription an account had; at most one live (active or past due).
CREATE TABLE subscriptions (
    seq                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                   TEXT COLLATE "C" NOT NULL UNIQUE,
    account_id           TEXT COLLATE "C" NOT NULL REFERENCES accounts(id),
    plan_id              TEXT COLLATE "C" NOT NULL,
    kind                 TEXT COLLATE "C" NOT NULL,
    status               TEXT COLLATE "C" NOT NULL,
    cancel_at_period_end BIGINT NOT NULL,
    anchor               BIGINT NOT NULL,
    period               BIGINT NOT NULL,
    period_start         BIGINT NOT NULL,
    period_end           BIGINT NOT NULL,
    paid_through         BIGINT NOT NULL,
    budget_used_usd      BIGINT NOT NULL,
    main_amount          BIGINT NOT NULL,
    backup_amount        BIGINT NOT NULL,
    grace_ends_at        BIGINT,
    external_id          TEXT COLLATE "C",
    created_at           BIGINT NOT NULL,
    ended_at             BIGINT
);
CREATE INDEX subscriptions_by_account ON subscriptions(account_id, seq);
CREATE UNIQUE INDEX subscriptions_live ON subscriptions(account_id) WHERE status IN ('active', 'past_due');
-- The sweeper's questions: which active periods or past-due graces are over?
CREATE INDEX subscriptions_period_due ON subscriptions(period_end) WHERE status = 'active';
CREATE INDEX subscriptions_grace_due ON subscriptions(grace_ends_at) WHERE status = 'past_due';

CREATE TABLE payments (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider         TEXT COLLATE "C" NOT NULL,
    external_id      TEXT COLLATE "C" NOT NULL,
    account_id       TEXT COLLATE "C" NOT NULL REFERENCES accounts(id),
    kind             TEXT COLLATE "C" NOT NULL,
    amount_usd       BIGINT NOT NULL,
    credits          BIGINT NOT NULL,
    grant_ids        TEXT COLLATE "C" NOT NULL,
    subscription_id  TEXT COLLATE "C",
    refunded_credits BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    UNIQUE (provider, external_id)
);
CREATE INDEX payments_by_account ON payments(account_id, seq);

CREATE TABLE payment_refunds (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider    TEXT COLLATE "C" NOT NULL,
    refund_id   TEXT COLLATE "C" NOT NULL,
    payment_id  TEXT COLLATE "C" NOT NULL,
    account_id  TEXT COLLATE "C" NOT NULL REFERENCES accounts(id),
    credits     BIGINT NOT NULL,
    from_grants BIGINT NOT NULL,
    lapsed      BIGINT NOT NULL,
    from_wallet BIGINT NOT NULL,
    debt        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (provider, refund_id)
);
CREATE INDEX payment_refunds_by_payment ON payment_refunds(provider, payment_id);

CREATE TABLE webhook_events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          TEXT COLLATE "C" NOT NULL UNIQUE,
    provider    TEXT COLLATE "C" NOT NULL,
    event_id    TEXT COLLATE "C",
    event_type  TEXT COLLATE "C",
    status      TEXT COLLATE "C" NOT NULL,
    reason      TEXT COLLATE "C",
    account_id  TEXT COLLATE "C",
    external_id TEXT COLLATE "C",
    received_at BIGINT NOT NULL,
    body        BYTEA NOT NULL
);
CREATE UNIQUE INDEX webhook_events_applied ON webhook_events(provider, event_id) WHERE status = 'applied';
CREATE INDEX webhook_events_by_provider ON webhook_events(provider, seq);
CREATE INDEX webhook_events_by_status ON webhook_events(status, seq);

-- Bumped whenever models or plans change, so that every instance reloads
-- its price book and plans before its next batch.
CREATE TABLE book_version (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    version  BIGINT NOT NULL
);
INSERT INTO book_version (version) VALUES (0);
CREATE FUNCTION bump_book_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE book_version SET version = version + 1;
    RETURN NULL;
END $$;
CREATE TRIGGER models_changed AFTER INSERT OR UPDATE OR DELETE ON models
    FOR EACH STATEMENT EXECUTE FUNCTION bump_book_version();
CREATE TRIGGER plans_changed AFTER INSERT OR UPDATE OR DELETE ON plans
    FOR EACH STATEMENT EXECUTE FUNCTION bump_book_version();
"#;

/// What a charge costs the server. Every charge updates a grant: its
/// `remaining` and `held` were in the predicates of the live-grant indexes,
/// which makes PostgreSQL write a new entry in every index of `grants` for
/// every update (a predicate column that changes rules out a heap-only
/// update). The predicate is now `live`, a stored generated column, which
/// changes only when a grant is spent out or refilled, so the grant and
/// account updates of a charge are heap-only, with room left on each page
/// for them. And the tables written on every charge lose their foreign keys
/// to `accounts`: each cost an index probe and a row lock per row written,
/// to prove what the writer already knows (it writes only the rows of
/// accounts whose row it has locked, and accounts are never deleted).
const V2: &str = r#"
ALTER TABLE grants DROP CONSTRAINT grants_account_id_fkey;
ALTER TABLE holds DROP CONSTRAINT holds_account_id_fkey;
ALTER TABLE usage_records DROP CONSTRAINT usage_records_account_id_fkey;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_account_id_fkey;

ALTER TABLE grants ADD COLUMN live BOOLEAN GENERATED ALWAYS AS (remaining > 0 OR held > 0) STORED;
DROP INDEX grants_live;
DROP INDEX grants_due;
CREATE INDEX grants_live ON grants(account_id, seq) WHERE live;
CREATE INDEX grants_due ON grants(expires_at) WHERE expires_at IS NOT NULL AND live;

ALTER TABLE accounts SET (fillfactor = 80);
ALTER TABLE grants SET (fillfactor = 80);
"#;

/// What money correctness needs remembered (issue #12): see the SQLite
/// schema's V5, the same columns.
const V3: &str = r#"
ALTER TABLE holds ADD COLUMN held_from TEXT;
ALTER TABLE subscriptions ADD COLUMN price_usd BIGINT;
ALTER TABLE subscriptions ADD COLUMN budget_usd BIGINT;
ALTER TABLE subscriptions ADD COLUMN renewal_price_usd BIGINT;
ALTER TABLE payments ADD COLUMN prorated_credits BIGINT NOT NULL DEFAULT 0;
"#;

/// The metering proxy's keys (`docs/proxy.md`). No foreign key, as V2: the
/// writer checks the account while it holds it.
const V4_PROXY_KEYS: &str = r#"
CREATE TABLE proxy_keys (
    id           TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    account_id   TEXT COLLATE "C" NOT NULL,
    name         TEXT COLLATE "C" NOT NULL,
    secret_hash  TEXT COLLATE "C" NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX proxy_keys_by_account ON proxy_keys(account_id, created_at);
"#;

/// Dashboard sign-in sessions (`creditd-server`'s `dashboard`): only the
/// SHA-256 of a session's secret is kept; revoking sets `revoked_at`.
/// `token_id` is the account token it was signed in with: revoking the
/// token (deleting its row) revokes its sessions.
const V5_DASHBOARD_SESSIONS: &str = r#"
CREATE TABLE dashboard_sessions (
    id          TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    account_id  TEXT COLLATE "C" NOT NULL,
    token_id    TEXT COLLATE "C" NOT NULL,
    secret_hash TEXT COLLATE "C" NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX dashboard_sessions_by_account ON dashboard_sessions(account_id);
CREATE INDEX dashboard_sessions_by_token ON dashboard_sessions(token_id);
"#;

/// Price-map imports (`docs/import.md`): each model version an import wrote.
/// A model whose current version is not here was set by the operator (API
/// or configuration), and an import leaves it alone unless asked.
const V6_MODEL_IMPORTS: &str = r#"
CREATE TABLE model_imports (
    id            TEXT COLLATE "C" NOT NULL,
    price_version BIGINT NOT NULL,
    format        TEXT NOT NULL,
    imported_at   BIGINT NOT NULL,
    PRIMARY KEY (id, price_version)
);
"#;

/// What the configuration said for each model and plan when it was last
/// applied at a start (SQLite V9; `docs/configuration.md`).
const V7_CONFIG_APPLIED: &str = r#"
CREATE TABLE config_applied (
    kind       TEXT COLLATE "C" NOT NULL,
    id         TEXT COLLATE "C" NOT NULL,
    applied    TEXT COLLATE "C" NOT NULL,
    applied_at BIGINT NOT NULL,
    PRIMARY KEY (kind, id)
);
"#;

/// Outgoing webhooks (`docs/webhooks.md`): as SQLite's V10.
const V8_OUTGOING_WEBHOOKS: &str = r#"
CREATE TABLE webhook_endpoints (
    id          TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    url         TEXT COLLATE "C" NOT NULL,
    secret      TEXT COLLATE "C",
    events      TEXT COLLATE "C" NOT NULL,
    enabled     BIGINT NOT NULL,
    from_config BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE outbox_events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          TEXT COLLATE "C" NOT NULL UNIQUE,
    type        TEXT COLLATE "C" NOT NULL,
    account_id  TEXT COLLATE "C" NOT NULL,
    occurred_at BIGINT NOT NULL,
    data        TEXT COLLATE "C" NOT NULL
);

CREATE TABLE webhook_deliveries (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT COLLATE "C" NOT NULL UNIQUE,
    event_id        TEXT COLLATE "C" NOT NULL,
    endpoint_id     TEXT COLLATE "C" NOT NULL,
    status          TEXT COLLATE "C" NOT NULL,
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    give_up_at      BIGINT NOT NULL,
    last_attempt_at BIGINT,
    last_status     BIGINT,
    last_error      TEXT COLLATE "C",
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE status = 'pending';
"#;

/// When each API key was last used (SQLite V11).
const V9_KEY_LAST_USED: &str = r#"
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
"#;

/// Low-credit marks: as SQLite's V12.
const V10_LOW_CREDIT_MARKS: &str = r#"
ALTER TABLE accounts ADD COLUMN low_marks TEXT COLLATE "C" NOT NULL DEFAULT '';
"#;

/// Calls owed to a payment provider's API, and the provider's subscription
/// of a plan payment (SQLite V13).
const V11_PROVIDER_CALLS: &str = r#"
ALTER TABLE payments ADD COLUMN provider_subscription_id TEXT COLLATE "C";

CREATE TABLE provider_calls (
    seq                      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                       TEXT COLLATE "C" NOT NULL UNIQUE,
    provider                 TEXT COLLATE "C" NOT NULL,
    action                   TEXT COLLATE "C" NOT NULL,
    provider_subscription_id TEXT COLLATE "C" NOT NULL,
    mode                     TEXT COLLATE "C" NOT NULL,
    account_id               TEXT COLLATE "C" NOT NULL,
    subscription_id          TEXT COLLATE "C",
    status                   TEXT COLLATE "C" NOT NULL,
    attempts                 BIGINT NOT NULL,
    next_attempt_at          BIGINT NOT NULL,
    give_up_at               BIGINT NOT NULL,
    last_attempt_at          BIGINT,
    last_status              BIGINT,
    last_error               TEXT COLLATE "C",
    created_at               BIGINT NOT NULL,
    delivered_at             BIGINT
);
CREATE INDEX provider_calls_due ON provider_calls(next_attempt_at) WHERE status = 'pending';
CREATE INDEX provider_calls_by_status ON provider_calls(status, seq);
CREATE INDEX provider_calls_by_account ON provider_calls(account_id, seq);
"#;

/// `grant.expiring` marks: as SQLite's V14. The index's predicate is on
/// `live` and the mark, which a charge never changes: charges stay
/// heap-only.
const V12_GRANT_EXPIRING: &str = r#"
ALTER TABLE grants ADD COLUMN expiring_told BIGINT NOT NULL DEFAULT 0;
CREATE INDEX grants_expiring ON grants(expires_at) WHERE expires_at IS NOT NULL AND live AND expiring_told = 0;
"#;

/// Applies every pending migration in one transaction, under an advisory
/// lock so that instances starting together migrate once. Refuses a database
/// made by a newer creditd.
pub fn migrate(conn: &PgConn) -> Result<i64, StoreError> {
    conn.simple(
        "SELECT pg_advisory_lock(7362012);
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY NOT NULL,
             applied_at BIGINT NOT NULL
         );",
    )?;
    let result = apply_pending(conn);
    let unlocked = conn.simple("SELECT pg_advisory_unlock(7362012)");
    let version = result?;
    unlocked?;
    Ok(version)
}

fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

fn apply_pending(conn: &PgConn) -> Result<i64, StoreError> {
    use crate::sql::{DbExt, params};
    let current =
        conn.query_one("SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM schema_migrations", params![], |row| {
            row.get::<i64>(0)
        })?;
    if current > latest_version() {
        return Err(StoreError::Internal(format!(
            "the database has schema version {current}, newer than this creditd knows ({})",
            latest_version()
        )));
    }
    let now = jiff::Timestamp::now().as_microsecond();
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        conn.simple(&format!(
            "BEGIN; {sql}; INSERT INTO schema_migrations (version, applied_at) VALUES ({version}, {now}); COMMIT;"
        ))
        .inspect_err(|_| {
            let _ = conn.simple("ROLLBACK");
        })?;
    }
    Ok(latest_version())
}
