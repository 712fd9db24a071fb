//! `tables`: how fast can the table-writing side go in large transactions
//! (issue #16)? With a journal as the durable commit and the hot state in
//! memory, the SQLite tables are written behind, in transactions as large as
//! we like; this measures what that costs on random accounts, for today's
//! layout and for cheaper ones, before anything of the design is built.
//!
//! Every run starts from a copy of a seeded database (N accounts, each
//! opened and given one grant through the engine and the store's own row
//! writers). The charges are one-shot usage charges (`engine::record_usage`,
//! the bench model, 2,000 input and 500 output tokens, as `scripts/bench-http`
//! sends) on accounts drawn uniformly at random. The engine runs before each
//! transaction, outside the timed part (in the design it runs on the
//! journal's thread); what is timed is writing what the engine changed:
//! the statements, the `COMMIT` (WAL, `synchronous=FULL`: an `fsync` a
//! transaction) and the WAL checkpoints (`TRUNCATE` whenever the WAL passes
//! `--checkpoint-mib`, and once at the end), all on this one thread.
//!
//! Layouts (`--layout`):
//!
//! - `today`: what the writer does per charge now, in larger transactions:
//!   a savepoint, the two point reads of `prior` (hold and usage record by
//!   request id), then `rows::write_changes`.
//! - `current`: `rows::write_changes` alone: today's schema and statements
//!   (the grant upsert and its partial indexes, the usage record and its
//!   three indexes, the ledger entry and its index, the account row when it
//!   changed, outbox events).
//! - `coalesced`: today's schema; usage records, ledger entries and events
//!   per charge, but each grant and account row written once per
//!   transaction, as it is at its end (the hot state is in memory, so the
//!   tables need only its last value), or once every `--state-every`
//!   charges.
//! - `append`: `coalesced`, and `usage_records` and `ledger_entries` become
//!   append-only tables keyed by their sequence (no unique index, no
//!   per-account or per-time index, no AUTOINCREMENT, no foreign key); one
//!   narrow index `account_index (account_id, key) → seq` (WITHOUT ROWID)
//!   takes the per-account lookups: `u:<request id>` (idempotency, refunds),
//!   `t:<usage seq>` (usage in time order), `l:<entry seq>` (ledger in time
//!   order). A charge's three keys share the account prefix, so they land on
//!   the same leaf. They are inserted in key order, every `--index-every`
//!   charges (0: never, the floor of appending alone).
//! - `packed`: `append`, but a charge's usage record and its ledger entries
//!   share one row of `charges (seq, account_id, at, record BLOB)`, the
//!   record packed (length-prefixed fields, as a journal record would carry
//!   them) instead of 36 + 10 columns; two index keys a charge (`u:`, and
//!   `t:` for both the usage and the ledger timelines).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;
use creditd_core::account::{AccountState, Grant, GrantKind, RequestDetails, UsageRecord};
use creditd_core::engine::{self, NewGrant, Outcome, Prior, UsageInput};
use creditd_core::ledger::{Changes, LedgerEntry, Reference};
use creditd_core::plan::PlanBook;
use creditd_core::pricing::{ModelPrice, RequestStatus, Usage};
use creditd_core::units::Credits;
use creditd_store::EngineConfig;
use creditd_store::sql::{codec, outbox, rows};
use creditd_store::sqlite::SqliteStore;
use jiff::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::Connection;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Layout {
    Today,
    Current,
    Coalesced,
    Append,
    Packed,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Today => "today",
            Layout::Current => "current",
            Layout::Coalesced => "coalesced",
            Layout::Append => "append",
            Layout::Packed => "packed",
        }
    }
}

#[derive(clap::Args)]
pub struct TablesArgs {
    /// Account counts, each its own seeded database.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u32, 1_000_000])]
    accounts: Vec<u32>,
    /// Charges per transaction.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000, 50_000])]
    batch: Vec<usize>,
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = [Layout::Current, Layout::Append])]
    layout: Vec<Layout>,
    /// Charges per run (rounded up to whole transactions).
    #[arg(long, default_value_t = 200_000)]
    charges: usize,
    /// Runs of every combination, one after the other.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// The writer's page cache (production: 64 MiB).
    #[arg(long, default_value_t = 64)]
    cache_mib: i64,
    /// WAL size past which a checkpoint runs after a commit (production
    /// wakes its checkpointer at 64 MiB).
    #[arg(long, default_value_t = 64)]
    checkpoint_mib: u64,
    /// `append`: insert the index entries every this many charges (0:
    /// never; default: at the end of each transaction).
    #[arg(long)]
    index_every: Option<usize>,
    /// `coalesced`, `append`, `packed`: write the last state of the grants
    /// and account rows changed every this many charges, in key order
    /// (default: at the end of each transaction). In the design the hot
    /// state lives in memory and the journal since the last such write is
    /// kept for recovery.
    #[arg(long)]
    state_every: Option<usize>,
    /// Where the databases go (seeded templates are kept there and reused);
    /// default: a temporary directory, removed at the end.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Usage records (each with its ledger entry, and for `append` their
    /// index entries) stored before the run, spread round robin over the
    /// accounts: copies of one charged record made with SQL (as
    /// `seed --history`), so that the indexes have a deployment's size.
    #[arg(long, default_value_t = 0)]
    history: u64,
    #[arg(long, default_value_t = 16)]
    seed: u64,
}

fn model() -> ModelPrice {
    crate::model()
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The connection a table writer would have: production's pragmas, but
/// checkpoints only where this bench runs them.
fn open(path: &Path, cache_mib: i64) -> Result<Connection> {
    let conn = Connection::open(path)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "no WAL mode: {mode}");
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "cache_size", -cache_mib * 1024)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// `CREATE TABLE` text of `table` as stored, made append-only: no
/// `UNIQUE`, no foreign key, no AUTOINCREMENT.
fn append_only_ddl(conn: &Connection, table: &str) -> Result<String> {
    let sql: String =
        conn.query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1", [table], |r| r.get(0))?;
    let mut out = sql.replace(" REFERENCES accounts(id)", "").replace(" AUTOINCREMENT", "");
    if let Some(at) = out.find(",\n    UNIQUE (") {
        let end = at + out[at..].find(')').context("UNIQUE without its end")? + 1;
        out.replace_range(at..end, "");
    }
    anyhow::ensure!(!out.contains("UNIQUE") && !out.contains("REFERENCES"), "unexpected DDL for {table}: {out}");
    Ok(out)
}

/// Creates the seeded database of `layout` and `accounts` at `path`.
fn seed(path: &Path, layout: Layout, accounts: u32, history: u64) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    SqliteStore::migrate(&tmp).context("migrate")?;
    let conn = open(&tmp, 256)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    if matches!(layout, Layout::Append | Layout::Packed) {
        let usage = append_only_ddl(&conn, "usage_records")?;
        let entries = append_only_ddl(&conn, "ledger_entries")?;
        conn.execute_batch(&format!(
            "DROP TABLE usage_records; {usage};
             DROP TABLE ledger_entries; {entries};
             CREATE TABLE account_index (
                 account_id TEXT NOT NULL,
                 key        TEXT NOT NULL,
                 seq        INTEGER NOT NULL,
                 PRIMARY KEY (account_id, key)
             ) WITHOUT ROWID;
             CREATE TABLE charges (
                 seq        INTEGER PRIMARY KEY,
                 account_id TEXT NOT NULL,
                 at         INTEGER NOT NULL,
                 record     BLOB NOT NULL
             );"
        ))?;
    }
    let config = EngineConfig::default();
    let plans = PlanBook::default();
    let started = Instant::now();
    let mut ids = new_id;
    let mut i = 0;
    while i < accounts {
        let end = (i + 50_000).min(accounts);
        conn.execute_batch("BEGIN")?;
        for n in i..end {
            let id = format!("acct-{n}");
            let now = Timestamp::now();
            conn.execute(
                "INSERT INTO accounts (id, email, metadata, status, wallet_balance, wallet_held, created_at)
                 VALUES (?1, NULL, NULL, 'active', 0, 0, ?2)",
                rusqlite::params![id, now.as_microsecond()],
            )?;
            let mut state = AccountState::new(id);
            let (_, changes) = engine::apply(&mut state, now, config.context(&plans), &mut ids, engine::open_account)?;
            rows::write_changes(&conn, &state, &changes)?;
            let grant = NewGrant {
                kind: GrantKind::Purchased,
                source: "bench".into(),
                reason: None,
                amount: Credits::whole(100_000_000),
                priority: None,
                starts_at: None,
                expires_at: None,
                reference: Reference::None,
            };
            let (_, changes) =
                engine::apply(&mut state, now, config.context(&plans), &mut ids, |tx| engine::grant(tx, grant))?;
            rows::write_changes(&conn, &state, &changes)?;
        }
        conn.execute_batch("COMMIT")?;
        i = end;
    }
    if history > 0 {
        store_history(&conn, accounts, history)?;
    }
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
    drop(conn);
    std::fs::rename(&tmp, path)?;
    eprintln!("seeded {} with {accounts} accounts in {:.1}s", path.display(), started.elapsed().as_secs_f64());
    Ok(())
}

/// Stores `rows` past usage records and ledger entries: one charge of
/// `acct-0` through the engine, then copies of it (`history::copy_sql`),
/// account `n % accounts` for the n-th, in time order.
fn store_history(conn: &Connection, accounts: u32, rows: u64) -> Result<()> {
    let started = Instant::now();
    conn.pragma_update(None, "cache_size", -2_000_000)?;
    let config = EngineConfig::default();
    let plans = PlanBook::default();
    let price = model();
    let mut state = rows::load_state(conn, "acct-0")?.context("no acct-0")?;
    let input = UsageInput {
        outcome: Outcome {
            request_id: "history-template".into(),
            fingerprint: format!("{:064x}", 0),
            status: RequestStatus::Success,
            usage: Usage { input_tokens: 2000, output_tokens: 500, ..Usage::default() },
            details: RequestDetails::default(),
        },
        model_id: "bench-model".into(),
        model: Some((1, &price)),
        request_type: "chat".into(),
        enforce: true,
    };
    let mut ids = new_id;
    let (_, changes) = engine::apply(&mut state, Timestamp::now(), config.context(&plans), &mut ids, |tx| {
        engine::record_usage(tx, input, Prior { hold: None, usage: None })
    })
    .map_err(|r| anyhow::anyhow!("charge refused: {r:?}"))?;
    rows::write_changes(conn, &state, &changes)?;
    let usage_template: i64 =
        conn.query_row("SELECT seq FROM usage_records WHERE request_id = 'history-template'", [], |r| r.get(0))?;
    let entry_template: i64 =
        conn.query_row("SELECT seq FROM ledger_entries WHERE reference_id = 'history-template'", [], |r| r.get(0))?;
    let usage = crate::history::copy_sql(conn, "usage_records", |column| match column {
        "account_id" => Some("'acct-' || (n.i % ?3)".into()),
        "request_id" | "fingerprint" => Some("'history-' || n.i".into()),
        "recorded_at" => Some(format!("t.recorded_at - ({rows} - n.i) * 1000")),
        _ => None,
    })?;
    let entries = crate::history::copy_sql(conn, "ledger_entries", |column| match column {
        "id" | "reference_id" => Some("'history-' || n.i".into()),
        "account_id" => Some("'acct-' || (n.i % ?3)".into()),
        "at" => Some(format!("t.at - ({rows} - n.i) * 1000")),
        _ => None,
    })?;
    let indexed = conn.query_row("SELECT 1 FROM sqlite_master WHERE name = 'account_index'", [], |_| Ok(())).is_ok();
    let mut done = 0;
    while done < rows {
        let last = (done + 500_000).min(rows);
        let (usage_from, entry_from): (i64, i64) = conn.query_row(
            "SELECT (SELECT MAX(seq) FROM usage_records), (SELECT MAX(seq) FROM ledger_entries)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        conn.execute_batch("BEGIN")?;
        conn.execute(&usage, rusqlite::params![done as i64, last as i64, accounts, usage_template])?;
        conn.execute(&entries, rusqlite::params![done as i64, last as i64, accounts, entry_template])?;
        if indexed {
            conn.execute(
                "INSERT INTO account_index (account_id, key, seq)
                 SELECT account_id, 'u:' || request_id, seq FROM usage_records WHERE seq > ?1
                 UNION ALL SELECT account_id, printf('t:%016x', seq), seq FROM usage_records WHERE seq > ?1
                 UNION ALL SELECT account_id, printf('l:%016x', seq), seq FROM ledger_entries WHERE seq > ?2",
                rusqlite::params![usage_from, entry_from],
            )?;
        }
        conn.execute_batch("COMMIT")?;
        done = last;
        eprintln!("history: {done} of {rows} ({:.0}/s)", done as f64 / started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// A charge's usage record and ledger entries as one value: each field
/// length-prefixed (text) or as 8 bytes (numbers), in a fixed order.
fn pack(u: &UsageRecord, entries: &[LedgerEntry]) -> Vec<u8> {
    fn text(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn int(out: &mut Vec<u8>, n: i64) {
        out.extend_from_slice(&n.to_le_bytes());
    }
    let mut out = Vec::with_capacity(512);
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for s in
        [u.request_id.as_str(), u.fingerprint.as_str(), u.request_type.as_str(), u.model.as_str(), u.status.as_str()]
    {
        text(&mut out, s);
    }
    text(&mut out, u.hold_id.as_deref().unwrap_or(""));
    int(&mut out, u.price_version);
    let k = &u.usage;
    for v in [
        k.input_tokens,
        k.cache_read_tokens,
        k.cache_write_tokens,
        k.output_tokens,
        k.images,
        k.tool_calls,
        k.reasoning_tokens,
        k.system_tokens,
        k.context_tokens,
    ] {
        int(&mut out, n(v));
    }
    let d = &u.details;
    for s in [&d.project, &d.conversation, &d.region, &d.metadata] {
        text(&mut out, s.as_deref().unwrap_or(""));
    }
    for t in [d.started_at, d.finished_at] {
        int(&mut out, t.map_or(-1, Timestamp::as_microsecond));
    }
    for v in [d.latency_ms, d.retries, d.iterations, d.external_calls, d.context_bytes] {
        int(&mut out, v.map_or(-1, n));
    }
    text(&mut out, &codec::encode_tools(&d.tools));
    int(&mut out, u.cost_usd.units());
    int(&mut out, u.credits.units());
    text(&mut out, &codec::encode_portions(&u.charged_from));
    int(&mut out, u.debt_incurred.units());
    int(&mut out, i64::from(u.hold_expired));
    int(&mut out, i64::from(u.refunded));
    int(&mut out, u.recorded_at.as_microsecond());
    int(&mut out, entries.len() as i64);
    for e in entries {
        text(&mut out, &e.id);
        text(&mut out, e.kind.as_str());
        int(&mut out, e.amount.units());
        text(&mut out, e.grant_id.as_deref().unwrap_or(""));
        int(&mut out, e.balance_after.units());
        int(&mut out, e.at.as_microsecond());
    }
    out
}

/// Time this thread has spent on a CPU (`/proc/thread-self/schedstat`),
/// so that a loaded machine's waits can be told from the work.
fn cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|ns| ns.parse().ok()))
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

/// One charge as the engine made it: the account after it, and its changes.
struct Charge {
    state: AccountState,
    changes: Changes,
}

#[derive(Default)]
struct Totals {
    charges: usize,
    engine: Duration,
    write: Duration,
    commit: Duration,
    checkpoint: Duration,
    /// CPU time of the timed parts.
    cpu: Duration,
    wal_bytes: u64,
    /// Per charge, from the first transaction: what the engine changed.
    grants: usize,
    entries: usize,
    usage: usize,
    account_rows: usize,
    events: usize,
}

fn wal_size(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(PathBuf::from(wal)).map(|m| m.len()).unwrap_or(0)
}

struct Run<'a> {
    conn: Connection,
    db: &'a Path,
    layout: Layout,
    accounts: u32,
    batch: usize,
    index_every: usize,
    checkpoint_bytes: u64,
    rng: StdRng,
    states: HashMap<String, AccountState>,
    /// `append`: index entries not yet inserted.
    pending_index: Vec<(String, String, i64)>,
    pending_charges: usize,
    /// Grants and account rows not yet written (`coalesced`, `append`,
    /// `packed`), and the charges since they were last written.
    pending_grants: BTreeMap<String, Grant>,
    pending_accounts: BTreeMap<String, AccountState>,
    pending_state_charges: usize,
    state_every: usize,
    counter: u64,
    totals: Totals,
}

impl Run<'_> {
    /// Runs the engine for one transaction's charges.
    fn prepare(&mut self) -> Result<Vec<Charge>> {
        let config = EngineConfig::default();
        let plans = PlanBook::default();
        let price = model();
        let picks: Vec<String> =
            (0..self.batch).map(|_| format!("acct-{}", self.rng.random_range(0..self.accounts))).collect();
        let missing: Vec<&str> = picks.iter().filter(|id| !self.states.contains_key(*id)).map(String::as_str).collect();
        let mut missing = missing;
        missing.sort_unstable();
        missing.dedup();
        for chunk in missing.chunks(500) {
            self.states.extend(rows::load_states(&self.conn, chunk)?);
        }
        let started = Instant::now();
        let mut ids = new_id;
        let mut charges = Vec::with_capacity(self.batch);
        for id in picks {
            self.counter += 1;
            let request_id = format!("t-{}-{}", self.batch, self.counter);
            let state = self.states.get_mut(&id).with_context(|| format!("no account {id}"))?;
            let input = UsageInput {
                outcome: Outcome {
                    request_id,
                    // A body's fingerprint is a SHA-256 in hex.
                    fingerprint: format!("{:064x}", self.counter),
                    status: RequestStatus::Success,
                    usage: Usage { input_tokens: 2000, output_tokens: 500, ..Usage::default() },
                    details: RequestDetails::default(),
                },
                model_id: "bench-model".into(),
                model: Some((1, &price)),
                request_type: "chat".into(),
                enforce: true,
            };
            let (_, changes) = engine::apply(state, Timestamp::now(), config.context(&plans), &mut ids, |tx| {
                engine::record_usage(tx, input, Prior { hold: None, usage: None })
            })
            .map_err(|r| anyhow::anyhow!("charge refused: {r:?}"))?;
            charges.push(Charge { state: state.clone(), changes });
        }
        self.totals.engine += started.elapsed();
        Ok(charges)
    }

    fn write(&mut self, charges: &[Charge]) -> Result<()> {
        let conn = &self.conn;
        conn.execute_batch("BEGIN IMMEDIATE")?;
        match self.layout {
            Layout::Today => {
                for c in charges {
                    let request_id = &c.changes.usage.as_ref().context("a charge without usage")?.request_id;
                    conn.execute_batch("SAVEPOINT command")?;
                    let hold = rows::hold_by_request(conn, &c.state.account_id, request_id)?;
                    let usage = rows::usage_by_request(conn, &c.state.account_id, request_id)?;
                    anyhow::ensure!(hold.is_none() && usage.is_none(), "request {request_id} seen before");
                    rows::write_changes(conn, &c.state, &c.changes)?;
                    conn.execute_batch("RELEASE command")?;
                }
            }
            Layout::Current => {
                for c in charges {
                    rows::write_changes(conn, &c.state, &c.changes)?;
                }
            }
            Layout::Coalesced | Layout::Append | Layout::Packed => {
                for c in charges {
                    if self.layout == Layout::Packed {
                        let u = c.changes.usage.as_ref().context("a charge without usage")?;
                        let record = pack(u, &c.changes.entries);
                        conn.prepare_cached("INSERT INTO charges (account_id, at, record) VALUES (?1, ?2, ?3)")?
                            .execute(rusqlite::params![u.account_id, u.recorded_at.as_microsecond(), record])?;
                        let seq = conn.last_insert_rowid();
                        self.pending_index.push((u.account_id.clone(), format!("u:{}", u.request_id), seq));
                        self.pending_index.push((u.account_id.clone(), format!("t:{seq:016x}"), seq));
                    }
                    let rows_of = if self.layout == Layout::Packed { &[][..] } else { &c.changes.entries[..] };
                    for e in rows_of {
                        rows::insert_entry(conn, e)?;
                        if self.layout == Layout::Append {
                            self.pending_index.push((
                                e.account_id.clone(),
                                format!("l:{:016x}", conn.last_insert_rowid()),
                                conn.last_insert_rowid(),
                            ));
                        }
                    }
                    if let Some(u) = c.changes.usage.as_ref().filter(|_| self.layout != Layout::Packed) {
                        rows::insert_usage(conn, u)?;
                        if self.layout == Layout::Append {
                            let seq = conn.last_insert_rowid();
                            self.pending_index.push((u.account_id.clone(), format!("u:{}", u.request_id), seq));
                            self.pending_index.push((u.account_id.clone(), format!("t:{seq:016x}"), seq));
                        }
                    }
                    outbox::write_events(conn, &c.changes.events)?;
                    self.pending_charges += 1;
                    anyhow::ensure!(
                        c.changes.holds.is_empty()
                            && c.changes.subscriptions.is_empty()
                            && c.changes.refunded.is_empty(),
                        "a one-shot charge changed holds, subscriptions or refunds"
                    );
                    // The last state of each grant and account row touched.
                    for g in &c.changes.grants {
                        self.pending_grants.insert(g.id.clone(), g.clone());
                    }
                    if c.changes.account || c.changes.wallet {
                        self.pending_accounts.insert(c.state.account_id.clone(), c.state.clone());
                    }
                    self.pending_state_charges += 1;
                }
                if self.pending_state_charges >= self.state_every {
                    self.flush_state()?;
                }
                if self.layout != Layout::Coalesced && self.index_every > 0 && self.pending_charges >= self.index_every
                {
                    self.flush_index()?;
                }
            }
        }
        Ok(())
    }

    /// Writes the last state of the grants and account rows changed since
    /// the last flush, in key order.
    fn flush_state(&mut self) -> Result<()> {
        self.pending_state_charges = 0;
        for g in std::mem::take(&mut self.pending_grants).values() {
            rows::upsert_grant(&self.conn, g)?;
        }
        for state in std::mem::take(&mut self.pending_accounts).values() {
            // `write_changes` of the account flag alone: the account row.
            let mut only_account = Changes::default();
            only_account.account = true;
            rows::write_changes(&self.conn, state, &only_account)?;
        }
        Ok(())
    }

    /// Inserts the pending `account_index` entries, in key order.
    fn flush_index(&mut self) -> Result<()> {
        self.pending_charges = 0;
        self.pending_index.sort_unstable();
        let mut insert =
            self.conn.prepare_cached("INSERT INTO account_index (account_id, key, seq) VALUES (?1, ?2, ?3)")?;
        for (account, key, seq) in self.pending_index.drain(..) {
            insert.execute(rusqlite::params![account, key, seq])?;
        }
        Ok(())
    }

    /// What is still pending at the end of a run, in a last transaction
    /// (timed like the others).
    fn flush_all(&mut self) -> Result<()> {
        if self.pending_index.is_empty() && self.pending_grants.is_empty() && self.pending_accounts.is_empty() {
            return Ok(());
        }
        let wal_before = wal_size(self.db);
        let cpu = cpu_time();
        let started = Instant::now();
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.flush_state()?;
        if self.index_every > 0 {
            self.flush_index()?;
        }
        let written = Instant::now();
        self.conn.execute_batch("COMMIT")?;
        self.totals.write += written - started;
        self.totals.commit += written.elapsed();
        self.totals.wal_bytes += wal_size(self.db).saturating_sub(wal_before);
        self.totals.cpu += cpu_time().saturating_sub(cpu);
        Ok(())
    }

    fn transaction(&mut self) -> Result<()> {
        let charges = self.prepare()?;
        if self.totals.charges == 0 {
            let n = charges.len();
            let sum = |f: &dyn Fn(&Changes) -> usize| charges.iter().map(|c| f(&c.changes)).sum::<usize>();
            self.totals.grants = sum(&|c| c.grants.len()) * 100 / n;
            self.totals.entries = sum(&|c| c.entries.len()) * 100 / n;
            self.totals.usage = sum(&|c| usize::from(c.usage.is_some())) * 100 / n;
            self.totals.account_rows = sum(&|c| usize::from(c.account || c.wallet)) * 100 / n;
            self.totals.events = sum(&|c| c.events.len()) * 100 / n;
        }
        let wal_before = wal_size(self.db);
        let cpu = cpu_time();
        let started = Instant::now();
        self.write(&charges)?;
        let written = Instant::now();
        self.conn.execute_batch("COMMIT")?;
        let committed = Instant::now();
        self.totals.write += written - started;
        self.totals.commit += committed - written;
        let wal_after = wal_size(self.db);
        self.totals.wal_bytes += wal_after.saturating_sub(wal_before);
        self.totals.charges += charges.len();
        self.totals.cpu += cpu_time().saturating_sub(cpu);
        if wal_after >= self.checkpoint_bytes {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<()> {
        let cpu = cpu_time();
        let started = Instant::now();
        let (busy, _, _): (i64, i64, i64) =
            self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        if busy != 0 {
            bail!("the checkpoint could not finish");
        }
        self.totals.checkpoint += started.elapsed();
        self.totals.cpu += cpu_time().saturating_sub(cpu);
        Ok(())
    }
}

fn run_one(args: &TablesArgs, template: &Path, dir: &Path, layout: Layout, accounts: u32, batch: usize) -> Result<()> {
    let db = dir.join("run.db");
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    std::fs::copy(template, &db)?;
    let index_every = args.index_every.unwrap_or(batch);
    let mut run = Run {
        conn: open(&db, args.cache_mib)?,
        db: &db,
        layout,
        accounts,
        batch,
        index_every,
        checkpoint_bytes: args.checkpoint_mib << 20,
        rng: StdRng::seed_from_u64(args.seed ^ u64::from(accounts) ^ batch as u64),
        states: HashMap::new(),
        pending_index: Vec::new(),
        pending_charges: 0,
        pending_grants: BTreeMap::new(),
        pending_accounts: BTreeMap::new(),
        pending_state_charges: 0,
        state_every: args.state_every.unwrap_or(batch),
        counter: 0,
        totals: Totals::default(),
    };
    let transactions = args.charges.div_ceil(batch);
    for _ in 0..transactions {
        run.transaction()?;
    }
    run.flush_all()?;
    run.checkpoint()?;
    let t = &run.totals;
    let secs = |d: Duration| d.as_secs_f64();
    let tables = secs(t.write + t.commit + t.checkpoint);
    let index = match layout {
        Layout::Append | Layout::Packed if index_every == 0 => " index_every=never".to_string(),
        Layout::Append | Layout::Packed => format!(" index_every={index_every}"),
        _ => String::new(),
    };
    let index = match layout {
        Layout::Coalesced | Layout::Append | Layout::Packed => {
            format!("{index} state_every={}", args.state_every.unwrap_or(batch))
        }
        _ => index,
    };
    println!(
        "RESULT tables layout={}{index} accounts={accounts} batch={batch} charges={} cache_mib={} \
         history={} charges_per_s={:.0} without_checkpoints_per_s={:.0} cpu_us_per_charge={:.1} wal_bytes_per_charge={:.0} write_s={:.2} commit_s={:.2} \
         checkpoint_s={:.2} engine_us_per_charge={:.1} per_charge_x100=grants:{},entries:{},usage:{},account_rows:{},events:{}",
        layout.name(),
        t.charges,
        args.cache_mib,
        args.history,
        t.charges as f64 / tables,
        t.charges as f64 / secs(t.write + t.commit),
        secs(t.cpu) * 1e6 / t.charges as f64,
        t.wal_bytes as f64 / t.charges as f64,
        secs(t.write),
        secs(t.commit),
        secs(t.checkpoint),
        secs(t.engine) * 1e6 / t.charges as f64,
        t.grants,
        t.entries,
        t.usage,
        t.account_rows,
        t.events,
    );
    drop(run);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    Ok(())
}

pub fn run(args: TablesArgs) -> Result<()> {
    let temp;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    for &accounts in &args.accounts {
        for &layout in &args.layout {
            // Today's schema serves `today`, `current` and `coalesced`.
            let schema = if matches!(layout, Layout::Append | Layout::Packed) { "append" } else { "indexed" };
            let template = dir.join(format!("tables-{schema}-{accounts}-{}.db", args.history));
            if !template.exists() {
                seed(&template, layout, accounts, args.history)?;
            }
            for _ in 0..args.rounds {
                for &batch in &args.batch {
                    run_one(&args, &template, &dir, layout, accounts, batch)?;
                }
            }
        }
    }
    Ok(())
}
