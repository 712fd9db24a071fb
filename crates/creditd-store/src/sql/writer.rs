//! The single writer: one thread, one connection, group commit.
//!
//! Every write of the database goes through this thread, so the writes of
//! one account are serialised without locks, and an account's hot state can
//! live in memory: the cache is the truth as of the last command, and the
//! database is the same truth as of the last commit. Commands are taken off
//! a bounded queue in batches; each runs inside its own `SAVEPOINT` of one
//! `BEGIN IMMEDIATE` transaction, and callers are answered only after the
//! single `COMMIT` (one fsync for the whole batch).

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use creditd_core::account::{AccountState, AccountStatus, GrantKind, Hold, RequestDetails, UsageRecord};
use creditd_core::engine::{self, AuthorizeInput, Context, NewGrant, Prior, Refusal, StartInput, Tx, UsageInput};
use creditd_core::ledger::{EntryKind, Reference};
use creditd_core::plan::{Plan, PlanBook};
use creditd_core::pricing::ModelPrice;
use jiff::Timestamp;
use lru::LruCache;
use tokio::sync::{mpsc, oneshot};

use super::codec::{self, truncate};
use super::{Db, DbExt, WriterDb, outbox, params, payments, provider_calls, rows};

mod config;
mod imports;
mod webhooks;
use crate::{
    AccountRow, CancelMode, Clock, Command, EngineConfig, Idempotent, ModelVersion, ProviderAction, Reply, StoreError,
    StoredResponse, WebhookAction, WriterLimits,
};

/// One command on its way to the writer.
pub struct Job {
    pub command: Command,
    pub idempotent: Option<Idempotent>,
    /// `None` for the writer's own background sweeps: nobody waits for them.
    pub reply: Option<oneshot::Sender<Result<Reply, StoreError>>>,
}

/// Counters of what the writer has committed, for tests and operators.
#[derive(Debug, Default)]
pub struct Stats {
    pub batches_committed: AtomicU64,
    pub commands_committed: AtomicU64,
    pub batches_failed: AtomicU64,
    pub background_sweeps: AtomicU64,
}

/// How often an idle writer looks for expiries nobody has touched.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Accounts the idle sweeper picks up per scan.
const SWEEP_SCAN_MAX: i64 = 1000;
/// Accounts swept per transaction. Requests wait while a sweep runs, and
/// one account may have years of periods to catch up on (each weekly gift
/// is a grant and its expiry): small sweeps keep that wait short.
const SWEEP_BATCH_MAX: usize = 16;
/// Settles of older price versions are rare; keep only a few of those prices.
const OLD_PRICES_MAX: usize = 1024;

/// What a successful command leaves for the in-memory state, applied only
/// once its savepoint is released.
// Moved once per command, from `apply` to `keep`: boxing the account state
// (the hot path's variant) would cost an allocation per command and buy nothing.
#[allow(clippy::large_enum_variant)]
enum Pending {
    Nothing,
    Account {
        state: AccountState,
        background: bool,
    },
    /// Boxed: price changes are rare, account commands are the hot path.
    Model(Box<ModelVersion>),
    /// The versions an import wrote.
    Models(Vec<ModelVersion>),
    Plan(Box<Plan>),
    /// What applying the configuration wrote.
    Config {
        models: Vec<ModelVersion>,
        plans: Vec<Plan>,
    },
}

/// The price book: current versions, and older ones that holds still name;
/// and the plans.
#[derive(Default)]
struct Book {
    current: HashMap<String, ModelVersion>,
    old: HashMap<(String, i64), ModelPrice>,
    plans: PlanBook,
    /// Set when a failed transaction may have left `current` or `plans` ahead of the database.
    stale: bool,
}

pub struct Writer<C> {
    conn: C,
    config: EngineConfig,
    clock: Arc<dyn Clock>,
    cache: LruCache<String, AccountState>,
    book: Book,
    stats: Arc<Stats>,
    batch_max: usize,
    sweep_queue: VecDeque<String>,
    /// Whether this writer runs the idle sweeper (one writer of a store does).
    pub sweeps: bool,
    /// `(account, request id)` pairs of the open batch that the store had
    /// not seen when it began: their lookups are skipped, once each.
    unseen: HashSet<(String, String)>,
    /// The open batch's accounts that were not cached when it began (first
    /// touches, and accounts another writer changed), loaded together then,
    /// after their locks: each is taken at its first touch.
    preloaded: HashMap<String, AccountState>,
}

fn not_found_account(id: &str) -> StoreError {
    Refusal::NotFound(format!("account {id:?}")).into()
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Counts the database keeps as signed integers; refuse what does not fit
/// before the engine runs, so that a bad body is a refusal, not a failure.
fn check_details(d: &RequestDetails) -> Result<(), Refusal> {
    let counts = [d.latency_ms, d.retries, d.iterations, d.external_calls, d.context_bytes];
    if counts.into_iter().flatten().any(|n| i64::try_from(n).is_err()) {
        return Err(Refusal::InvalidRequest("a count in the request details is too large".into()));
    }
    Ok(())
}

fn truncate_details(d: &mut RequestDetails) {
    d.started_at = d.started_at.map(truncate);
    d.finished_at = d.finished_at.map(truncate);
}

/// Runs one engine operation on a copy of the account and writes what it
/// changed. The caller keeps the returned state only if its savepoint holds.
fn run_op<T>(
    conn: &dyn Db,
    mut state: AccountState,
    now: Timestamp,
    ctx: Context<'_>,
    op: impl FnOnce(&mut Tx<'_>) -> Result<T, Refusal>,
) -> Result<(T, AccountState), StoreError> {
    let mut ids = new_id;
    let (answer, changes) = engine::apply(&mut state, now, ctx, &mut ids, op)?;
    rows::write_changes(conn, &state, &changes)?;
    verify_cache(conn, &state)?;
    Ok((answer, state))
}

/// In debug builds, every command checks that the state it leaves in the
/// cache is exactly what a fresh load from the database gives: a divergence
/// is a bug in the store or the core, found where it happens.
#[cfg(debug_assertions)]
fn verify_cache(conn: &dyn Db, state: &AccountState) -> Result<(), StoreError> {
    fn normalised(mut s: AccountState) -> AccountState {
        s.grants.sort_by(|a, b| a.id.cmp(&b.id));
        s.holds.sort_by(|a, b| a.id.cmp(&b.id));
        s
    }
    let stored = rows::load_state(conn, &state.account_id)?.map(normalised);
    if stored.as_ref() != Some(&normalised(state.clone())) {
        return Err(StoreError::Internal(format!(
            "the cached state of account {:?} differs from the database: cached {state:?}, stored {stored:?}",
            state.account_id
        )));
    }
    Ok(())
}

#[cfg(not(debug_assertions))]
fn verify_cache(_: &dyn Db, _: &AccountState) -> Result<(), StoreError> {
    Ok(())
}

/// Attempts a job alone gets after its batch failed as a whole.
const ALONE_ATTEMPTS: usize = 3;

/// What became of one attempt at a batch.
enum Attempt {
    /// Every job was answered.
    Answered,
    /// The batch was not committed and nobody was answered; `retry`: the
    /// failure was not the commands' own (see [`WriterDb::retry_may_succeed`]).
    Failed { jobs: Vec<Job>, error: StoreError, retry: bool },
}

/// Answers every job with `error`.
fn fail_all(jobs: Vec<Job>, error: &StoreError) {
    for job in jobs {
        if let Some(reply) = job.reply {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

/// `why` as an error of the same kind as `e`: an unreachable database
/// stays unavailable (worth retrying shortly), anything else is internal.
fn same_kind(e: &StoreError, why: String) -> StoreError {
    match e {
        StoreError::Unavailable(_) => StoreError::Unavailable(why),
        StoreError::Refused(_) | StoreError::Internal(_) => StoreError::Internal(why),
    }
}

/// Why the writer's wait for a command ended without one.
enum NoJob {
    Idle,
    Closed,
}

impl<C: WriterDb> Writer<C> {
    pub fn new(
        conn: C,
        config: EngineConfig,
        limits: WriterLimits,
        clock: Arc<dyn Clock>,
        book: HashMap<String, ModelVersion>,
        plans: PlanBook,
        stats: Arc<Stats>,
    ) -> Self {
        let capacity = NonZeroUsize::new(limits.cached_accounts).unwrap_or(NonZeroUsize::MIN);
        Writer {
            conn,
            config,
            clock,
            cache: LruCache::new(capacity),
            book: Book { current: book, plans, ..Book::default() },
            stats,
            batch_max: limits.batch_max.max(1),
            sweep_queue: VecDeque::new(),
            unseen: HashSet::new(),
            preloaded: HashMap::new(),
            sweeps: true,
        }
    }

    /// The writer's loop; returns once every sender is gone and the queue
    /// is drained, so that dropping the store loses no acknowledged write.
    pub fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        // A private timer lets the blocking receive give up after a while,
        // which is when the idle sweeper runs.
        let timer = tokio::runtime::Builder::new_current_thread().enable_time().build();
        if let Err(e) = &timer {
            tracing::error!(error = %e, "no timer for the writer: background sweeps are off");
        }
        let mut last_scan = Instant::now();
        loop {
            if self.sweeps && self.sweep_queue.is_empty() && last_scan.elapsed() >= SWEEP_EVERY && rx.is_empty() {
                self.scan_due();
                last_scan = Instant::now();
            }
            let first = if self.sweep_queue.is_empty() {
                let wait = SWEEP_EVERY.saturating_sub(last_scan.elapsed()).max(Duration::from_millis(10));
                let received = match &timer {
                    Ok(rt) => match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                        Ok(Some(job)) => Ok(job),
                        Ok(None) => Err(NoJob::Closed),
                        Err(_) => Err(NoJob::Idle),
                    },
                    Err(_) => rx.blocking_recv().ok_or(NoJob::Closed),
                };
                match received {
                    Ok(job) => job,
                    Err(NoJob::Idle) => continue,
                    Err(NoJob::Closed) => break,
                }
            } else {
                // Sweeping is work the queue can always pre-empt.
                match rx.try_recv() {
                    Ok(job) => job,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        self.sweep_some();
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            };
            let mut batch = Vec::with_capacity(self.batch_max.min(64));
            batch.push(first);
            while batch.len() < self.batch_max {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.run_batch(batch);
        }
    }

    fn now(&self) -> Timestamp {
        truncate(self.clock.now())
    }

    /// Finds accounts with expiries due that nobody has touched.
    fn scan_due(&mut self) {
        let found = match self.find_due() {
            // A connection that died while the writer was idle is noticed
            // here first: connect again and look once more, rather than
            // leaving expired holds open until the next batch.
            Err(StoreError::Unavailable(why)) => {
                tracing::warn!(error = %why, "the sweeper lost its connection; connecting again");
                self.find_due()
            }
            other => other,
        };
        match found {
            Ok(ids) => self.sweep_queue.extend(ids),
            Err(e) => tracing::warn!(error = %e, "the sweeper could not look for due expiries"),
        }
    }

    fn find_due(&self) -> Result<Vec<String>, StoreError> {
        self.conn.recover()?;
        let now = self.now();
        let live = self.conn.live_grant();
        // Grants entering their `grant.expiring` warning: the engine's
        // question (`expires_at - notice <= now`, not yet told), so that
        // each account found has the warning to write and is not found again.
        let warn_until =
            self.config.billing.grant_expiring.map(|notice| codec::micros(creditd_core::calendar::later(now, notice)));
        let expiring = match warn_until {
            Some(_) => format!(
                "UNION
                 SELECT account_id FROM grants
                  WHERE expires_at IS NOT NULL AND {live} AND expiring_told = 0 AND expires_at <= ?3"
            ),
            None => String::new(),
        };
        let sql = format!(
            "SELECT account_id FROM holds WHERE status = 'open' AND expires_at <= ?1
             UNION
             SELECT account_id FROM grants WHERE expires_at IS NOT NULL AND {live} AND expires_at <= ?1
             UNION
             SELECT account_id FROM subscriptions WHERE status = 'active' AND period_end <= ?1
             UNION
             SELECT account_id FROM subscriptions WHERE status = 'past_due' AND grace_ends_at <= ?1
             {expiring}
             LIMIT ?2"
        );
        let now = codec::micros(now);
        let account = |row: &dyn super::Row| row.get::<String>(0);
        match warn_until {
            Some(until) => self.conn.query_vec(&sql, params![now, SWEEP_SCAN_MAX, until], account),
            None => self.conn.query_vec(&sql, params![now, SWEEP_SCAN_MAX], account),
        }
    }

    fn sweep_some(&mut self) {
        let n = self.sweep_queue.len().min(self.batch_max).min(SWEEP_BATCH_MAX);
        let batch: Vec<Job> = self
            .sweep_queue
            .drain(..n)
            .map(|account_id| Job { command: Command::Sweep { account_id }, idempotent: None, reply: None })
            .collect();
        self.stats.background_sweeps.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.run_batch(batch);
    }

    /// Forgets everything in memory that a failed transaction may have made
    /// disagree with the database.
    fn reset(&mut self) {
        self.cache.clear();
        self.book.old.clear();
        self.book.stale = true;
    }

    fn ensure_book(&mut self) -> Result<(), StoreError> {
        if self.book.stale {
            self.book.current = rows::load_book(&self.conn)?;
            self.book.plans = rows::load_plans(&self.conn)?;
            self.book.stale = false;
        }
        Ok(())
    }

    /// What the engine applies to every account.
    fn ctx(&self) -> Context<'_> {
        self.config.context(&self.book.plans)
    }

    /// Applies `jobs` in one transaction and answers them once it is
    /// committed. If the transaction fails as a whole (an error only the
    /// commit or the database itself reports), the batch is rolled back and
    /// each job runs again alone, so that one bad command cannot fail the
    /// others and the one that fails is answered with its own error. A job
    /// alone runs again (at most [`ALONE_ATTEMPTS`] times) while its failure
    /// was not its own: another writer's conflicting transaction (a unique
    /// key, a deadlock) or a connection lost before COMMIT. A batch whose
    /// commit has an unknown outcome (its answer lost, the database not
    /// there to ask) never runs again: it may have been committed.
    pub fn run_batch(&mut self, jobs: Vec<Job>) {
        let alone = jobs.len() == 1;
        let Attempt::Failed { jobs, error, retry } = self.try_batch(jobs) else { return };
        if alone && !retry {
            fail_all(jobs, &error);
            return;
        }
        for job in jobs {
            self.run_alone(job, if alone { ALONE_ATTEMPTS - 1 } else { ALONE_ATTEMPTS });
        }
    }

    /// One job in a batch of its own, `attempts` times at most.
    fn run_alone(&mut self, mut job: Job, attempts: usize) {
        for attempt in 1..=attempts {
            let Attempt::Failed { mut jobs, error, retry } = self.try_batch(vec![job]) else { return };
            let Some(again) = jobs.pop() else { return };
            if !retry || attempt == attempts {
                fail_all(vec![again], &error);
                return;
            }
            tracing::info!(error = %error, attempt, "a command runs again after a conflict or a lost connection");
            if matches!(error, StoreError::Unavailable(_)) {
                std::thread::sleep(Duration::from_millis(50 * attempt as u64));
            }
            job = again;
        }
    }

    /// The accounts the commands of a batch will lock, sorted and without
    /// duplicates: those they name, and those their webhook events name
    /// (a refund's account is its payment's, recorded earlier), so that a
    /// batch locks every account it will touch at its start, in one order
    /// for all writers: no two batches wait for each other in a circle.
    fn batch_accounts(&self, jobs: &[Job]) -> Vec<String> {
        let mut accounts: Vec<String> = Vec::with_capacity(jobs.len());
        for job in jobs {
            match &job.command {
                Command::WebhookEvent { event } => match &event.action {
                    WebhookAction::Topup { account_id, .. }
                    | WebhookAction::Pack { account_id, .. }
                    | WebhookAction::Subscribe { account_id, .. }
                    | WebhookAction::CancelSubscription { account_id, .. } => accounts.push(account_id.clone()),
                    WebhookAction::Refund { payment_ids, .. } => {
                        // A payment's account never changes: looked up
                        // before the batch, it is locked with the others.
                        for id in payment_ids {
                            if let Ok(Some(payment)) = super::payments::payment_by_id(&self.conn, &event.provider, id) {
                                accounts.push(payment.account_id);
                                break;
                            }
                        }
                    }
                    WebhookAction::Record { .. } => {}
                },
                other => accounts.extend(other.account_id().map(str::to_string)),
            }
        }
        accounts.sort_unstable();
        accounts.dedup();
        accounts
    }

    /// One attempt at a batch: every job answered, or (the batch not
    /// committed) none, and whether running them again may succeed.
    fn try_batch(&mut self, jobs: Vec<Job>) -> Attempt {
        let started = Instant::now();
        let n = jobs.len();
        let owned = self.batch_accounts(&jobs);
        let accounts: Vec<&str> = owned.iter().map(String::as_str).collect();
        let requests: Vec<(&str, &str)> = jobs.iter().filter_map(|job| job.command.request()).collect();
        self.unseen.clear();
        self.preloaded.clear();
        let begun = self.conn.begin_batch(&accounts, &requests).and_then(|begun| {
            for id in &begun.stale {
                self.cache.pop(id.as_str());
            }
            if let Some(seen) = &begun.seen {
                self.unseen = requests
                    .iter()
                    .map(|&(a, r)| (a.to_string(), r.to_string()))
                    .filter(|pair| !seen.contains(pair))
                    .collect();
            }
            self.book.stale |= begun.book_changed;
            self.ensure_book()?;
            // First touches and accounts another writer changed: loaded now,
            // all at once, rather than one after another as each is reached.
            let missing: Vec<&str> = accounts.iter().copied().filter(|id| !self.cache.contains(*id)).collect();
            self.preloaded = rows::load_states(&self.conn, &missing)?;
            Ok(())
        });
        if let Err(e) = begun {
            self.stats.batches_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "the writer could not begin a transaction");
            let retry = self.conn.retry_may_succeed();
            self.conn.rollback_batch();
            self.reset();
            let error = same_kind(&e, format!("could not begin a transaction: {e}"));
            if retry {
                // A deadlock victim, a connection lost and found again:
                // nothing was done, so the batch may run again.
                return Attempt::Failed { jobs, error, retry };
            }
            fail_all(jobs, &error);
            return Attempt::Answered;
        }
        let mut results = Vec::with_capacity(n);
        let mut broken = None;
        for job in &jobs {
            let background = job.reply.is_none();
            let result = self.run_one(job.command.clone(), job.idempotent.as_ref(), background);
            if self.conn.transaction_lost() {
                let why = match &result {
                    Err(e) => e.clone(),
                    // A connection lost under the batch is `Unavailable` (a
                    // 503 if it stays lost), a disk error is not.
                    Ok(_) if self.conn.retry_may_succeed() => {
                        StoreError::Unavailable("the connection was lost during the transaction".into())
                    }
                    Ok(_) => StoreError::Internal("the transaction was rolled back by the database".into()),
                };
                broken = Some(why);
                break;
            }
            results.push(result);
        }
        let commit_started = Instant::now();
        let committed = match broken {
            Some(e) => Err(e),
            None => self.conn.commit_batch(),
        };
        metrics::histogram!("creditd_writer_commit_seconds").record(commit_started.elapsed().as_secs_f64());
        metrics::histogram!("creditd_writer_batch_seconds").record(started.elapsed().as_secs_f64());
        match committed {
            Ok(()) => {
                self.stats.batches_committed.fetch_add(1, Ordering::Relaxed);
                self.stats.commands_committed.fetch_add(n as u64, Ordering::Relaxed);
                metrics::histogram!("creditd_writer_batch_size").record(n as f64);
                for (job, result) in jobs.into_iter().zip(results) {
                    if let Some(reply) = job.reply {
                        let _ = reply.send(result);
                    }
                }
                Attempt::Answered
            }
            Err(e) => {
                self.stats.batches_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, commands = n, "a writer batch failed to commit");
                let retry = self.conn.retry_may_succeed();
                self.conn.rollback_batch();
                self.reset();
                if e.outcome_unknown() {
                    // The commit's outcome is unknown: it may have been
                    // committed, so nothing runs again.
                    fail_all(jobs, &e);
                    return Attempt::Answered;
                }
                let error = same_kind(&e, format!("the write was not applied: {e}"));
                Attempt::Failed { jobs, error, retry }
            }
        }
    }

    /// One command in its own savepoint: whatever it does, it either all
    /// stays in the batch or none of it does.
    fn run_one(
        &mut self,
        command: Command,
        idempotent: Option<&Idempotent>,
        background: bool,
    ) -> Result<Reply, StoreError> {
        self.conn.savepoint("command")?;
        // The engine asserts what it believes cannot happen; if it ever
        // does, one caller gets an error instead of every caller losing the
        // writer. The cache is safe: only `keep` below changes it.
        let outcome = catch_unwind(AssertUnwindSafe(|| self.apply_keyed(command, idempotent, background)))
            .unwrap_or_else(|_| Err(StoreError::Internal("the command failed unexpectedly".into())));
        let outcome = outcome.and_then(|done| self.conn.release_savepoint("command").map(|()| done));
        match outcome {
            Ok((reply, pending)) => {
                self.keep(pending);
                Ok(reply)
            }
            Err(e) => {
                let _ = self.conn.rollback_to_savepoint("command");
                let _ = self.conn.release_savepoint("command");
                Err(e)
            }
        }
    }

    fn keep(&mut self, pending: Pending) {
        match pending {
            Pending::Nothing => {}
            Pending::Account { state, background: false } => {
                self.cache.put(state.account_id.clone(), state);
            }
            // A background sweep must not push real traffic out of the cache.
            Pending::Account { state, background: true } => {
                if let Some(cached) = self.cache.peek_mut(&state.account_id) {
                    *cached = state;
                }
            }
            Pending::Model(model) => {
                self.book.current.insert(model.id.clone(), *model);
            }
            Pending::Models(models) => {
                for model in models {
                    self.book.current.insert(model.id.clone(), model);
                }
            }
            Pending::Plan(plan) => {
                self.book.plans.insert(*plan);
            }
            Pending::Config { models, plans } => {
                for model in models {
                    self.book.current.insert(model.id.clone(), model);
                }
                for plan in plans {
                    self.book.plans.insert(plan);
                }
            }
        }
    }

    fn apply_keyed(
        &mut self,
        command: Command,
        idempotent: Option<&Idempotent>,
        background: bool,
    ) -> Result<(Reply, Pending), StoreError> {
        if let Some(key) = idempotent {
            let stored = self.conn.query_opt(
                "SELECT fingerprint, status, body FROM idempotency_keys WHERE scope = ?1 AND key = ?2",
                params![key.scope, key.key],
                |row| Ok((row.get::<String>(0)?, row.get::<i64>(1)?, row.get::<Vec<u8>>(2)?)),
            )?;
            if let Some((fingerprint, status, body)) = stored {
                if fingerprint != key.fingerprint {
                    return Err(Refusal::IdempotencyConflict.into());
                }
                let status = u16::try_from(status)
                    .map_err(|_| StoreError::Internal(format!("stored response status {status}")))?;
                return Ok((Reply::Replayed(StoredResponse { status, body }), Pending::Nothing));
            }
        }
        let (reply, pending) = self.apply(command, background)?;
        if let Some(Idempotent { scope, key, fingerprint, render }) = idempotent {
            let response = render(&reply);
            self.conn.write(
                "INSERT INTO idempotency_keys (scope, key, fingerprint, status, body, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![scope, key, fingerprint, i64::from(response.status), response.body, codec::micros(self.now())],
            )?;
        }
        Ok((reply, pending))
    }

    /// The account's hot state, loaded on first touch. Background work reads
    /// through the cache without making room in it.
    fn cached_state(&mut self, account_id: &str, background: bool) -> Result<AccountState, StoreError> {
        // Where other writers share the database, the account is locked
        // first, and a copy they may have outdated is dropped.
        if self.conn.lock_account(account_id)? {
            self.cache.pop(account_id);
        }
        let cached = if background { self.cache.peek(account_id) } else { self.cache.get(account_id) };
        if let Some(state) = cached {
            return Ok(state.clone());
        }
        let state = match self.preloaded.remove(account_id) {
            Some(state) => state,
            None => rows::load_state(&self.conn, account_id)?.ok_or_else(|| not_found_account(account_id))?,
        };
        if !background {
            self.cache.put(account_id.to_string(), state.clone());
        }
        Ok(state)
    }

    /// What the store has for a request id. An open hold is in the cache,
    /// and then there can be no usage record: settling closes the hold.
    fn prior(
        &mut self,
        state: &AccountState,
        request_id: &str,
    ) -> Result<(Option<Hold>, Option<UsageRecord>), StoreError> {
        if let Some(open) = state.open_hold(request_id) {
            return Ok((Some(open.clone()), None));
        }
        // Unseen when the batch began, and not since: this command may
        // create them, so a second one for the same pair looks them up.
        if self.unseen.remove(&(state.account_id.clone(), request_id.to_string())) {
            return Ok((None, None));
        }
        let hold = rows::hold_by_request(&self.conn, &state.account_id, request_id)?;
        let usage = rows::usage_by_request(&self.conn, &state.account_id, request_id)?;
        Ok((hold, usage))
    }

    fn model_at(&mut self, id: &str, version: i64) -> Result<Option<ModelPrice>, StoreError> {
        if let Some(current) = self.book.current.get(id)
            && current.price_version == version
        {
            return Ok(Some(current.price.clone()));
        }
        let key = (id.to_string(), version);
        if let Some(price) = self.book.old.get(&key) {
            return Ok(Some(price.clone()));
        }
        let text = self.conn.query_opt(
            "SELECT price FROM models WHERE id = ?1 AND price_version = ?2",
            params![id, version],
            |row| row.get::<String>(0),
        )?;
        let Some(text) = text else { return Ok(None) };
        let price = codec::decode_price(&text)?;
        if self.book.old.len() >= OLD_PRICES_MAX {
            self.book.old.clear();
        }
        self.book.old.insert(key, price.clone());
        Ok(Some(price))
    }

    fn account_exists(&self, id: &str) -> Result<bool, StoreError> {
        if self.cache.contains(id) {
            return Ok(true);
        }
        self.conn.exists("SELECT 1 FROM accounts WHERE id = ?1", params![id])
    }

    fn renew_or_cancel(
        &mut self,
        account_id: &str,
        background: bool,
        renew: bool,
    ) -> Result<(Reply, Pending), StoreError> {
        let state = self.cached_state(account_id, background)?;
        let cancelled_before = state.subscription.as_ref().filter(|s| s.cancel_at_period_end).map(|s| s.id.clone());
        // Tells "never subscribed" from "expired" when no subscription is live.
        let last = rows::latest_subscription(&self.conn, account_id)?;
        let (subscription, state) = run_op(&self.conn, state, self.now(), self.ctx(), |tx| {
            if renew {
                engine::renew_subscription(tx, last.as_ref())
            } else {
                engine::cancel_subscription(tx, last.as_ref())
            }
        })?;
        if !renew && cancelled_before.as_deref() != Some(subscription.id.as_str()) {
            self.cancel_at_provider(&subscription)?;
        }
        let change = engine::SubscriptionChange { subscription, previous: None, proration: None };
        Ok((Reply::Subscription(change), Pending::Account { state, background }))
    }

    /// A cancel made in creditd (API, dashboard) of a subscription paid
    /// through a provider's subscription: a provider call, in this
    /// savepoint, cancels that one at its period end (`scheduled`), or now
    /// when creditd's ended now (it was past due).
    fn cancel_at_provider(&self, sub: &creditd_core::subscription::Subscription) -> Result<(), StoreError> {
        let Some((provider, id)) = payments::provider_subscription(&self.conn, &sub.account_id, &sub.id)? else {
            return Ok(());
        };
        let mode = if sub.status.is_live() { CancelMode::Scheduled } else { CancelMode::Immediate };
        let action = ProviderAction::CancelSubscription { provider_subscription_id: id, mode };
        provider_calls::enqueue(&self.conn, &provider, &action, &sub.account_id, Some(&sub.id), self.now())
    }

    fn apply(&mut self, command: Command, background: bool) -> Result<(Reply, Pending), StoreError> {
        let account = |state: AccountState| Pending::Account { state, background };
        match command {
            Command::CreateAccount { id, email, metadata } => {
                if id.is_empty() {
                    return Err(Refusal::InvalidRequest("an account id may not be empty".into()).into());
                }
                if self.account_exists(&id)? {
                    return Err(Refusal::Conflict(format!("account {id:?} already exists")).into());
                }
                let now = self.now();
                self.conn.write(
                    "INSERT INTO accounts (id, email, metadata, status, wallet_balance, wallet_held, created_at)
                     VALUES (?1, ?2, ?3, ?4, 0, 0, ?5)",
                    params![id, email, metadata, AccountStatus::Active.as_str(), codec::micros(now)],
                )?;
                let row =
                    AccountRow { id: id.clone(), email, metadata, status: AccountStatus::Active, created_at: now };
                // The signup bonus, and the gift marks from which recurring gifts count.
                let (_, state) = run_op(&self.conn, AccountState::new(id), now, self.ctx(), engine::open_account)?;
                Ok((Reply::Account(row), account(state)))
            }
            Command::SetAccountStatus { account_id, status } => {
                let mut state = self.cached_state(&account_id, background)?;
                self.conn
                    .write("UPDATE accounts SET status = ?2 WHERE id = ?1", params![account_id, status.as_str()])?;
                state.status = status;
                let row = rows::account_row(&self.conn, &account_id)?.ok_or_else(|| not_found_account(&account_id))?;
                Ok((Reply::Account(row), account(state)))
            }
            Command::PutModel { id, price } => {
                if id.is_empty() {
                    return Err(Refusal::InvalidRequest("a model id may not be empty".into()).into());
                }
                price.validate().map_err(|e| Refusal::InvalidRequest(e.to_string()))?;
                let current = self.book.current.get(&id);
                // Writing the same price again is not a change: no new version.
                if let Some(current) = current
                    && current.price == price
                {
                    return Ok((Reply::Model(current.clone()), Pending::Nothing));
                }
                let price_version = current.map_or(1, |m| m.price_version + 1);
                let now = self.now();
                self.conn.write(
                    "INSERT INTO models (id, price_version, price, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![id, price_version, codec::encode_price(&price), codec::micros(now)],
                )?;
                let model = ModelVersion { id, price_version, price, created_at: now };
                Ok((Reply::Model(model.clone()), Pending::Model(Box::new(model))))
            }
            Command::CreateKey { mut key } => {
                if self.conn.exists("SELECT 1 FROM api_keys WHERE id = ?1", params![key.id])? {
                    return Err(Refusal::Conflict(format!("key {:?} already exists", key.id)).into());
                }
                key.created_at = truncate(key.created_at);
                key.last_used_at = None;
                self.conn.write(
                    "INSERT INTO api_keys (id, role, name, secret_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![key.id, key.role.as_str(), key.name, key.secret_hash, codec::micros(key.created_at)],
                )?;
                Ok((Reply::Key(key), Pending::Nothing))
            }
            Command::DeleteKey { id } => {
                if self.conn.execute("DELETE FROM api_keys WHERE id = ?1", params![id])? == 0 {
                    return Err(Refusal::NotFound(format!("key {id:?}")).into());
                }
                Ok((Reply::Deleted, Pending::Nothing))
            }
            Command::CreateAccountToken { mut token } => {
                if !self.account_exists(&token.account_id)? {
                    return Err(not_found_account(&token.account_id));
                }
                if self.conn.exists("SELECT 1 FROM account_tokens WHERE id = ?1", params![token.id])? {
                    return Err(Refusal::Conflict(format!("token {:?} already exists", token.id)).into());
                }
                token.expires_at = truncate(token.expires_at);
                token.created_at = truncate(token.created_at);
                self.conn.write(
                    &format!("INSERT INTO account_tokens ({}) VALUES (?1, ?2, ?3, ?4, ?5)", rows::TOKEN_COLUMNS),
                    params![
                        token.id,
                        token.account_id,
                        token.secret_hash,
                        codec::micros(token.expires_at),
                        codec::micros(token.created_at)
                    ],
                )?;
                Ok((Reply::Token(token), Pending::Nothing))
            }
            Command::CreateProxyKey { mut key } => {
                if !self.account_exists(&key.account_id)? {
                    return Err(not_found_account(&key.account_id));
                }
                if self.conn.exists("SELECT 1 FROM proxy_keys WHERE id = ?1", params![key.id])? {
                    return Err(Refusal::Conflict(format!("proxy key {:?} already exists", key.id)).into());
                }
                key.created_at = truncate(key.created_at);
                self.conn.write(
                    &format!(
                        "INSERT INTO proxy_keys ({}) VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL)",
                        rows::PROXY_KEY_COLUMNS
                    ),
                    params![key.id, key.account_id, key.name, key.secret_hash, codec::micros(key.created_at)],
                )?;
                key.last_used_at = None;
                key.revoked_at = None;
                Ok((Reply::ProxyKey(key), Pending::Nothing))
            }
            Command::RevokeProxyKey { account_id, id } => {
                let now = codec::micros(self.now());
                self.conn.execute(
                    "UPDATE proxy_keys SET revoked_at = ?3 WHERE id = ?1 AND account_id = ?2 AND revoked_at IS NULL",
                    params![id, account_id, now],
                )?;
                let key = self
                    .conn
                    .query_opt(
                        &format!(
                            "SELECT {} FROM proxy_keys WHERE id = ?1 AND account_id = ?2",
                            rows::PROXY_KEY_COLUMNS
                        ),
                        params![id, account_id],
                        rows::proxy_key,
                    )?
                    .ok_or_else(|| Refusal::NotFound(format!("proxy key {id:?}")))?;
                Ok((Reply::ProxyKey(key), Pending::Nothing))
            }
            Command::TouchKey { id, at } => {
                self.conn.execute(
                    "UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
                    params![id, codec::micros(truncate(at))],
                )?;
                Ok((Reply::Touched, Pending::Nothing))
            }
            Command::TouchProxyKey { id, at } => {
                self.conn.execute(
                    "UPDATE proxy_keys SET last_used_at = ?2 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
                    params![id, codec::micros(truncate(at))],
                )?;
                Ok((Reply::Touched, Pending::Nothing))
            }
            Command::CreateSession { session } => Ok((super::sessions::create(&self.conn, session)?, Pending::Nothing)),
            Command::RevokeSessions { account_id, session_id } => {
                let reply = super::sessions::revoke(&self.conn, &account_id, session_id.as_deref(), self.now())?;
                Ok((reply, Pending::Nothing))
            }
            Command::RevokeAccountToken { account_id, token_id } => {
                Ok((super::sessions::revoke_token(&self.conn, &account_id, &token_id, self.now())?, Pending::Nothing))
            }
            Command::Grant { account_id, mut grant } => {
                grant.starts_at = grant.starts_at.map(truncate);
                grant.expires_at = grant.expires_at.map(truncate);
                let state = self.cached_state(&account_id, background)?;
                let (g, state) = run_op(&self.conn, state, self.now(), self.ctx(), |tx| engine::grant(tx, grant))?;
                Ok((Reply::Grant(g), account(state)))
            }
            Command::VoidGrant { account_id, grant_id, reason } => {
                let state = self.cached_state(&account_id, background)?;
                let grant = match state.grant(&grant_id) {
                    Some(live) => live.clone(),
                    None => rows::grant_by_id(&self.conn, &account_id, &grant_id)?
                        .ok_or_else(|| Refusal::NotFound(format!("grant {grant_id:?}")))?,
                };
                let (g, state) =
                    run_op(&self.conn, state, self.now(), self.ctx(), |tx| engine::void(tx, grant, reason))?;
                Ok((Reply::Grant(g), account(state)))
            }
            Command::Topup { account_id, amount_usd, provider, external_id } => {
                // Every payment is recorded, once per (provider, external id).
                let external_id = external_id.unwrap_or_else(new_id);
                self.refuse_recorded(&provider, &external_id)?;
                let state = self.cached_state(&account_id, background)?;
                let reference = Reference::Payment(external_id.clone());
                let credits_per_usd = self.config.policy.credits_per_usd;
                let (entry, state) = run_op(&self.conn, state, self.now(), self.ctx(), |tx| {
                    let credits = engine::usd_to_credits(amount_usd, credits_per_usd)?;
                    engine::credit_wallet(tx, EntryKind::Topup, credits, reference, None)
                })?;
                let paid = webhooks::Added::topup(amount_usd, entry.amount);
                self.record_payment(&provider, &external_id, &account_id, paid)?;
                Ok((Reply::Wallet { wallet: state.wallet, entry }, account(state)))
            }
            Command::AdjustWallet { account_id, amount, reason } => {
                let state = self.cached_state(&account_id, background)?;
                let (entry, state) =
                    run_op(&self.conn, state, self.now(), self.ctx(), |tx| engine::adjust_wallet(tx, amount, reason))?;
                Ok((Reply::Wallet { wallet: state.wallet, entry }, account(state)))
            }
            Command::Purchase { account_id, credits, amount_usd, provider, external_id } => {
                let external_id = external_id.unwrap_or_else(new_id);
                self.refuse_recorded(&provider, &external_id)?;
                let state = self.cached_state(&account_id, background)?;
                let new = NewGrant {
                    kind: GrantKind::Purchased,
                    source: "purchase".into(),
                    reason: None,
                    amount: credits,
                    priority: None,
                    starts_at: None,
                    expires_at: None,
                    reference: Reference::Payment(external_id.clone()),
                };
                let (g, state) = run_op(&self.conn, state, self.now(), self.ctx(), |tx| engine::grant(tx, new))?;
                self.record_payment(&provider, &external_id, &account_id, webhooks::Added::pack(amount_usd, &g))?;
                Ok((Reply::Grant(g), account(state)))
            }
            Command::Authorize { account_id, request } => {
                let state = self.cached_state(&account_id, background)?;
                let (hold, usage) = self.prior(&state, &request.request_id)?;
                let input = AuthorizeInput {
                    request_id: request.request_id,
                    fingerprint: request.fingerprint,
                    model: self.book.current.get(&request.model).map(|m| (m.price_version, &m.price)),
                    model_id: request.model,
                    request_type: request.request_type,
                    estimate: request.estimate,
                    ttl_seconds: request.hold_ttl_seconds.unwrap_or(self.config.hold_ttl_seconds),
                    project: request.project,
                    conversation: request.conversation,
                };
                let prior = Prior { hold: hold.as_ref(), usage: usage.as_ref() };
                let (authorized, state) =
                    run_op(&self.conn, state, self.now(), self.ctx(), |tx| engine::authorize(tx, input, prior))?;
                Ok((Reply::Authorized(authorized), account(state)))
            }
            Command::Settle { account_id, mut outcome } => {
                check_details(&outcome.details)?;
                truncate_details(&mut outcome.details);
                let state = self.cached_state(&account_id, background)?;
                let (hold, usage) = self.prior(&state, &outcome.request_id)?;
                // A replay needs no price; otherwise the hold's version prices it.
                let model = match (&hold, &usage) {
                    (Some(h), None) => self.model_at(&h.model, h.price_version)?,
                    _ => None,
                };
                let prior = Prior { hold: hold.as_ref(), usage: usage.as_ref() };
                let (recorded, state) = run_op(&self.conn, state, self.now(), self.ctx(), |tx| {
                    engine::settle(tx, outcome, model.as_ref(), prior)
                })?;
                Ok((Reply::Recorded(recorded), account(state)))
            }
            Command::Release { account_id, request_id } => {
                let state = self.cached_state(&account_id, background)?;
                let (hold, usage) = self.prior(&state, &request_id)?;
                let prior = Prior { hold: hold.as_ref(), usage: usage.as_ref() };
                let (released, state) =
                    run_op(&self.conn, state, self.now(), self.ctx(), |tx| engine::release(tx, &request_id, prior))?;
                Ok((Reply::Released(released), account(state)))
            }
            Command::RecordUsage { account_id, mut outcome, model, request_type, enforce } => {
                check_details(&outcome.details)?;
                truncate_details(&mut outcome.details);
                let state = self.cached_state(&account_id, background)?;
                let (hold, usage) = self.prior(&state, &outcome.request_id)?;
                let input = UsageInput {
                    outcome,
                    model: self.book.current.get(&model).map(|m| (m.price_version, &m.price)),
                    model_id: model,
                    request_type,
                    enforce,
                };
                let prior = Prior { hold: hold.as_ref(), usage: usage.as_ref() };
                let (recorded, state) =
                    run_op(&self.conn, state, self.now(), self.ctx(), |tx| engine::record_usage(tx, input, prior))?;
                Ok((Reply::Recorded(recorded), account(state)))
            }
            Command::Sweep { account_id } => {
                let state = self.cached_state(&account_id, background)?;
                let ((), state) = run_op(&self.conn, state, self.now(), self.ctx(), |_| Ok(()))?;
                Ok((Reply::Swept, account(state)))
            }
            Command::PutPlan { plan } => {
                plan.validate().map_err(|e| Refusal::InvalidRequest(e.to_string()))?;
                rows::upsert_plan(&self.conn, &plan, self.now())?;
                Ok((Reply::Plan(plan.clone()), Pending::Plan(Box::new(plan))))
            }
            Command::StartSubscription { account_id, plan, kind, external_id } => {
                let state = self.cached_state(&account_id, background)?;
                let input = StartInput { plan_id: plan, kind, external_id };
                let (change, state) =
                    run_op(&self.conn, state, self.now(), self.ctx(), |tx| engine::start_subscription(tx, input))?;
                self.link_proration(&account_id, &change)?;
                self.cancel_replaced(&account_id, &change, None)?;
                Ok((Reply::Subscription(change), account(state)))
            }
            Command::RenewSubscription { account_id } => self.renew_or_cancel(&account_id, background, true),
            Command::CancelSubscription { account_id } => self.renew_or_cancel(&account_id, background, false),
            Command::RefundUsage { account_id, request_id, reason } => {
                let state = self.cached_state(&account_id, background)?;
                let record = rows::usage_by_request(&self.conn, &account_id, &request_id)?
                    .ok_or_else(|| Refusal::NotFound(format!("usage record {request_id:?}")))?;
                // The record's grants that have left the hot state (spent out).
                let mut stored = Vec::new();
                for part in &record.charged_from {
                    if let creditd_core::Source::Grant { grant_id, .. } = &part.source
                        && state.grant(grant_id).is_none()
                        && let Some(g) = rows::grant_by_id(&self.conn, &account_id, grant_id)?
                    {
                        stored.push(g);
                    }
                }
                let (refunded, state) = run_op(&self.conn, state, self.now(), self.ctx(), |tx| {
                    engine::refund_usage(tx, &record, &stored, reason)
                })?;
                Ok((Reply::Recorded(engine::Recorded { record: refunded, replay: false }), account(state)))
            }
            Command::WebhookEvent { event } => self.webhook_event(event, background),
            Command::Ping => Ok((Reply::Swept, Pending::Nothing)),
            Command::ImportModels { import } => self.import_models(import),
            Command::ApplyConfig { apply } => self.apply_config(apply),
            Command::CreateEndpoint { endpoint } => {
                let endpoint = outbox::create_endpoint(&self.conn, endpoint, self.now())?;
                Ok((Reply::Endpoint(endpoint), Pending::Nothing))
            }
            Command::UpdateEndpoint { id, update } => {
                let endpoint = outbox::update_endpoint(&self.conn, &id, update, self.now())?;
                Ok((Reply::Endpoint(endpoint), Pending::Nothing))
            }
            Command::SyncConfigEndpoints { endpoints } => {
                let endpoints = outbox::sync_config_endpoints(&self.conn, endpoints, self.now())?;
                Ok((Reply::Endpoints(endpoints), Pending::Nothing))
            }
            Command::ClaimDeliveries { limit, lease_seconds } => {
                let claimed = outbox::claim(&self.conn, self.now(), limit, lease_seconds)?;
                Ok((Reply::Claimed(claimed), Pending::Nothing))
            }
            Command::RecordAttempt { id, result } => {
                Ok((Reply::Delivery(outbox::record_attempt(&self.conn, &id, &result, self.now())?), Pending::Nothing))
            }
            Command::RetryDelivery { id } => {
                Ok((Reply::Delivery(outbox::retry(&self.conn, &id, self.now())?), Pending::Nothing))
            }
            Command::ClaimProviderCalls { limit, lease_seconds } => {
                let claimed = provider_calls::claim(&self.conn, self.now(), limit, lease_seconds)?;
                Ok((Reply::ProviderCalls(claimed), Pending::Nothing))
            }
            Command::RecordProviderCall { id, result } => {
                let call = provider_calls::record_attempt(&self.conn, &id, &result, self.now())?;
                Ok((Reply::ProviderCall(call), Pending::Nothing))
            }
            Command::RetryProviderCall { id } => {
                Ok((Reply::ProviderCall(provider_calls::retry(&self.conn, &id, self.now())?), Pending::Nothing))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use crate::sqlite::{open_writer_connection, schema};
    use creditd_core::units::Credits;

    fn writer(dir: &tempfile::TempDir) -> (Writer<rusqlite::Connection>, Arc<Stats>) {
        let conn = open_writer_connection(&dir.path().join("w.db")).expect("open");
        schema::migrate(&conn).expect("migrate");
        let stats = Arc::new(Stats::default());
        let clock = Arc::new(ManualClock::new("2026-01-01T00:00:00Z".parse().expect("time")));
        let w = Writer::new(
            conn,
            EngineConfig::default(),
            WriterLimits::default(),
            clock,
            HashMap::new(),
            PlanBook::default(),
            stats.clone(),
        );
        (w, stats)
    }

    fn job(command: Command) -> (Job, oneshot::Receiver<Result<Reply, StoreError>>) {
        let (tx, rx) = oneshot::channel();
        (Job { command, idempotent: None, reply: Some(tx) }, rx)
    }

    fn grant(account_id: &str, whole: i64, reason: &str) -> Command {
        Command::Grant {
            account_id: account_id.into(),
            grant: NewGrant {
                kind: GrantKind::Promo,
                source: "test".into(),
                reason: Some(reason.into()),
                amount: Credits::whole(whole),
                priority: None,
                starts_at: None,
                expires_at: None,
                reference: Reference::None,
            },
        }
    }

    /// The batch is built by hand so that all commands are certainly in one
    /// transaction: one refused, one failing in SQL, the others kept.
    #[test]
    fn one_failing_command_does_not_spoil_its_batch() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let (mut w, stats) = writer(&dir);
        w.conn
            .execute_batch(
                "CREATE TRIGGER boom BEFORE INSERT ON ledger_entries WHEN NEW.reason = 'boom'
                 BEGIN SELECT RAISE(ABORT, 'boom'); END;",
            )
            .expect("trigger");
        let commands = vec![
            Command::CreateAccount { id: "a".into(), email: None, metadata: None },
            grant("a", 10, "first"),
            Command::CreateAccount { id: "a".into(), email: None, metadata: None },
            grant("a", 5, "boom"),
            grant("missing", 5, "nowhere"),
            grant("a", 7, "second"),
        ];
        let (jobs, answers): (Vec<_>, Vec<_>) = commands.into_iter().map(job).unzip();
        w.run_batch(jobs);
        assert_eq!(stats.batches_committed.load(Ordering::Relaxed), 1);
        let answers: Vec<_> = answers.into_iter().map(|mut rx| rx.try_recv().expect("answered")).collect();
        assert!(matches!(answers[0], Ok(Reply::Account(_))));
        assert!(matches!(answers[1], Ok(Reply::Grant(_))));
        assert!(matches!(answers[2], Err(StoreError::Refused(Refusal::Conflict(_)))));
        assert!(matches!(answers[3], Err(StoreError::Internal(_))), "{:?}", answers[3]);
        assert!(matches!(answers[4], Err(StoreError::Refused(Refusal::NotFound(_)))));
        assert!(matches!(answers[5], Ok(Reply::Grant(_))));

        // The failed grant left neither a row nor a trace in the cache.
        let cached = w.cache.peek("a").expect("cached").clone();
        assert_eq!(cached.grants.len(), 2);
        assert_eq!(cached.ledger_balance(), Credits::whole(17));
        assert_eq!(rows::load_state(&w.conn, "a").expect("load"), Some(cached));
        let grants: i64 = w.conn.query_row("SELECT COUNT(*) FROM grants", [], |r| r.get(0)).expect("count");
        assert_eq!(grants, 2);
    }

    /// After a batch fails as a whole, each command runs again alone: only
    /// the one that fails by itself is answered with an error.
    fn only_the_second_fails(answers: Vec<oneshot::Receiver<Result<Reply, StoreError>>>) {
        let answers: Vec<_> = answers.into_iter().map(|mut rx| rx.try_recv().expect("answered")).collect();
        assert!(matches!(answers[0], Ok(Reply::Account(_))), "{:?}", answers[0]);
        assert!(matches!(answers[1], Err(StoreError::Internal(_))), "{:?}", answers[1]);
        assert!(matches!(answers[2], Ok(Reply::Grant(_))), "{:?}", answers[2]);
    }

    #[test]
    fn a_failed_commit_runs_each_command_again_alone() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let (mut w, stats) = writer(&dir);
        // A deferred foreign key is checked only at COMMIT, which then fails.
        w.conn
            .execute_batch(
                "CREATE TABLE orphans (account_id TEXT REFERENCES accounts(id) DEFERRABLE INITIALLY DEFERRED);
                 CREATE TRIGGER late AFTER INSERT ON grants WHEN NEW.reason = 'late'
                 BEGIN INSERT INTO orphans VALUES ('nobody'); END;",
            )
            .expect("trigger");
        let (jobs, answers): (Vec<_>, Vec<_>) = vec![
            Command::CreateAccount { id: "a".into(), email: None, metadata: None },
            grant("a", 1, "late"),
            grant("a", 2, "after"),
        ]
        .into_iter()
        .map(job)
        .unzip();
        w.run_batch(jobs);
        // The batch, then the late grant alone, failed; the other two committed alone.
        assert_eq!(stats.batches_failed.load(Ordering::Relaxed), 2);
        assert_eq!(stats.batches_committed.load(Ordering::Relaxed), 2);
        only_the_second_fails(answers);
        assert!(w.conn.is_autocommit(), "no transaction is left open");
        let stored = rows::load_state(&w.conn, "a").expect("load").expect("account");
        assert_eq!(stored.ledger_balance(), Credits::whole(2));
        assert_eq!(w.cache.peek("a"), Some(&stored));
    }

    #[test]
    fn a_command_that_ends_the_transaction_fails_only_itself() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let (mut w, stats) = writer(&dir);
        // RAISE(ROLLBACK) ends the transaction, as a full disk would.
        w.conn
            .execute_batch(
                "CREATE TRIGGER gone AFTER INSERT ON grants WHEN NEW.reason = 'gone'
                 BEGIN SELECT RAISE(ROLLBACK, 'gone'); END;",
            )
            .expect("trigger");
        let (jobs, answers): (Vec<_>, Vec<_>) = vec![
            Command::CreateAccount { id: "a".into(), email: None, metadata: None },
            grant("a", 1, "gone"),
            grant("a", 2, "after"),
        ]
        .into_iter()
        .map(job)
        .unzip();
        w.run_batch(jobs);
        assert_eq!(stats.batches_committed.load(Ordering::Relaxed), 2);
        only_the_second_fails(answers);
        let stored = rows::load_state(&w.conn, "a").expect("load").expect("account");
        assert_eq!(stored.ledger_balance(), Credits::whole(2));
    }
}
