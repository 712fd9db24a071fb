//! The [`Store`] over either backend: writer threads with their batching
//! [`Writer`]s, and a small pool of read connections used from blocking
//! threads.
//!
//! SQLite has one writer (the database has one write lock). PostgreSQL can
//! have several, each with its own connection and transactions: accounts are
//! hashed over them, so every command of an account goes to the same writer
//! and its cache, and the writers' batches run in parallel on the server.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use creditd_core::account::{AccountState, Grant, UsageRecord};
use creditd_core::ledger::LedgerEntry;
use creditd_core::plan::PlanBook;
use creditd_core::subscription::Subscription;
use tokio::sync::{mpsc, oneshot};

use super::writer::{Job, Stats, Writer};
use super::{Db, DbExt, WriterDb, outbox, payments, provider_calls, reader, rows, snapshot, usage};
use crate::{
    AccountRow, AccountToken, ApiKey, AuditReport, Clock, Command, EngineConfig, ExportEncoder, ExportSink, GroupBy,
    Idempotent, LedgerFilter, ModelVersion, Page, Paged, Reply, Store, StoreError, StoreHealth, StoredAccount,
    UsageFilter, UsageSummary, WriterLimits,
};

/// How long `health` waits for each part of the store.
const HEALTH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens one more read connection (the pool's connections are replaced
/// with it when they fail).
pub type Connect<C> = Box<dyn Fn() -> Result<C, StoreError> + Send + Sync>;

/// Read connections, each used by one read at a time.
///
/// A connection that a read leaves in doubt is never handed out again: any
/// error but a refusal (a refusal is decided before or beside the SQL, and
/// leaves the connection as it was, which [`Db::reusable`] confirms), a
/// panic, or a connection that is no longer [`Db::reusable`] after the read
/// (a transaction left open, a failed statement). Its place is filled by a
/// new connection when a read next needs one, so that reads recover by
/// themselves after a database restart or a terminated server process.
pub struct ReadPool<C> {
    slots: Mutex<Slots<C>>,
    returned: Condvar,
    connect: Connect<C>,
}

struct Slots<C> {
    idle: Vec<C>,
    /// Connections open, idle or leased; at most `size`.
    open: usize,
    size: usize,
}

/// A connection borrowed from the pool; it goes back when the lease ends,
/// unless the read discarded it or panicked.
struct Lease<'a, C> {
    pool: &'a ReadPool<C>,
    conn: Option<C>,
}

impl<C> Lease<'_, C> {
    /// Closes the connection instead of returning it. After a lost
    /// connection the idle ones go too: a restart or a terminated database
    /// has most likely ended them as well, and each would fail one more read.
    fn discard(&mut self, lost: bool) {
        let conn = self.conn.take();
        let idle = {
            let mut slots = self.pool.slots.lock().unwrap_or_else(|e| e.into_inner());
            let idle = if lost { std::mem::take(&mut slots.idle) } else { Vec::new() };
            slots.open -= usize::from(conn.is_some()) + idle.len();
            idle
        };
        // Closed outside the lock.
        drop(conn);
        drop(idle);
        self.pool.returned.notify_all();
    }
}

impl<C> Drop for Lease<'_, C> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.discard(false);
        } else if let Some(conn) = self.conn.take() {
            self.pool.slots.lock().unwrap_or_else(|e| e.into_inner()).idle.push(conn);
            self.pool.returned.notify_one();
        }
    }
}

impl<C: Db> ReadPool<C> {
    /// A pool of `conns` (its size), replaced through `connect` as they fail.
    pub fn new(conns: Vec<C>, connect: Connect<C>) -> Self {
        let size = conns.len().max(1);
        ReadPool {
            slots: Mutex::new(Slots { open: conns.len(), idle: conns, size }),
            returned: Condvar::new(),
            connect,
        }
    }

    /// An idle connection, a new one if fewer than the pool's size are
    /// open, or the next one returned.
    fn take(&self) -> Result<C, StoreError> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(conn) = slots.idle.pop() {
                return Ok(conn);
            }
            if slots.open < slots.size {
                slots.open += 1;
                drop(slots);
                return (self.connect)().inspect_err(|_| {
                    self.slots.lock().unwrap_or_else(|e| e.into_inner()).open -= 1;
                    self.returned.notify_one();
                });
            }
            slots = self.returned.wait(slots).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Runs `f` on a connection, waiting for one if all are busy.
    /// Blocking: call it from `spawn_blocking`.
    pub fn with<T>(&self, f: impl FnOnce(&C) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut lease = Lease { pool: self, conn: Some(self.take()?) };
        let Some(conn) = &lease.conn else { return Err(StoreError::Internal("no read connection".into())) };
        let result = f(conn);
        let keep = match &result {
            Ok(_) | Err(StoreError::Refused(_)) => conn.reusable(),
            Err(_) => false,
        };
        if !keep {
            if let Err(e) = &result {
                tracing::warn!(error = %e, "a read connection is closed after a failed read");
            }
            lease.discard(matches!(result, Err(StoreError::Unavailable(_))));
        }
        result
    }

    /// [`ReadPool::with`], once more on a new connection if the first
    /// was lost (`Unavailable`): a read changes nothing, so running it
    /// again is safe, and the first read after a database restart or a
    /// terminated server process then succeeds rather than answering 503.
    pub fn with_retry<T>(&self, f: impl Fn(&C) -> Result<T, StoreError>) -> Result<T, StoreError> {
        match self.with(&f) {
            Err(StoreError::Unavailable(why)) => {
                tracing::warn!(error = %why, "a read lost its connection; reading again on a new one");
                self.with(&f)
            }
            other => other,
        }
    }
}

/// Runs a read on a blocking thread (see [`ReadPool::with_retry`]).
pub async fn read<C, T>(
    readers: &Arc<ReadPool<C>>,
    f: impl Fn(&C) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError>
where
    C: Db + Send + 'static,
    T: Send + 'static,
{
    let readers = readers.clone();
    tokio::task::spawn_blocking(move || readers.with_retry(f))
        .await
        .map_err(|e| StoreError::Internal(format!("a read failed: {e}")))?
}

/// Writer counters: how many transactions and commands were committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub batches_committed: u64,
    pub commands_committed: u64,
    pub batches_failed: u64,
    /// Accounts the idle sweeper has brought up to date.
    pub background_sweeps: u64,
}

/// A database behind the batching writer. Cheap to clone: every clone shares
/// the writer and the readers; the writer stops when the last one is dropped.
pub struct SqlStore<C> {
    inner: Arc<Inner<C>>,
}

impl<C> Clone for SqlStore<C> {
    fn clone(&self) -> Self {
        SqlStore { inner: self.inner.clone() }
    }
}

struct Inner<C> {
    /// Emptied by `Drop` to close the queues before joining the writers.
    senders: Vec<mpsc::Sender<Job>>,
    writers: Vec<JoinHandle<()>>,
    /// `Option` so that `Drop` can close the readers first.
    readers: Option<Arc<ReadPool<C>>>,
    clock: Arc<dyn Clock>,
    stats: Arc<Stats>,
    /// What reads apply to bring an account to the clock.
    config: EngineConfig,
}

impl<C> Drop for Inner<C> {
    fn drop(&mut self) {
        // Readers close first so that the writer's connection is the last
        // one: SQLite then checkpoints the WAL into the database and removes it.
        self.readers.take();
        // Closing the queue lets the writer finish what is queued and stop;
        // joining it means its connection is closed when drop returns.
        self.senders.clear();
        for writer in self.writers.drain(..) {
            if writer.join().is_err() {
                tracing::error!("a writer thread panicked");
            }
        }
    }
}

impl<C> std::fmt::Debug for SqlStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl<C> SqlStore<C> {
    /// What the writer has done so far.
    pub fn stats(&self) -> WriterStats {
        let s = &self.inner.stats;
        WriterStats {
            batches_committed: s.batches_committed.load(Ordering::Relaxed),
            commands_committed: s.commands_committed.load(Ordering::Relaxed),
            batches_failed: s.batches_failed.load(Ordering::Relaxed),
            background_sweeps: s.background_sweeps.load(Ordering::Relaxed),
        }
    }

    /// Transactions committed by the writer: fewer than commands under load.
    pub fn batches_committed(&self) -> u64 {
        self.stats().batches_committed
    }
}

impl<C: Db + Send + 'static> SqlStore<C> {
    /// Starts a writer thread on each of `writers` (connections to a
    /// migrated database; at least one) with `readers` for reads.
    pub fn start<W: WriterDb + Send + 'static>(
        writers: Vec<W>,
        readers: ReadPool<C>,
        config: EngineConfig,
        limits: WriterLimits,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let first = writers.first().ok_or_else(|| StoreError::Internal("a store needs a writer".into()))?;
        let book = rows::load_book(first)?;
        let plans = rows::load_plans(first)?;
        let stats = Arc::new(Stats::default());
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for (number, conn) in writers.into_iter().enumerate() {
            let (sender, receiver) = mpsc::channel(limits.queue_depth.max(1));
            let mut writer =
                Writer::new(conn, config.clone(), limits, clock.clone(), book.clone(), plans.clone(), stats.clone());
            // One idle sweeper is enough: it reaches every account.
            writer.sweeps = number == 0;
            let handle = std::thread::Builder::new()
                .name(format!("creditd-writer-{number}"))
                .spawn(move || writer.run(receiver))
                .map_err(|e| StoreError::Internal(format!("cannot start a writer thread: {e}")))?;
            senders.push(sender);
            handles.push(handle);
        }
        Ok(SqlStore {
            inner: Arc::new(Inner {
                senders,
                writers: handles,
                readers: Some(Arc::new(readers)),
                clock,
                stats,
                config,
            }),
        })
    }

    fn readers(&self) -> Result<&Arc<ReadPool<C>>, StoreError> {
        self.inner.readers.as_ref().ok_or_else(|| StoreError::Internal("the store is closed".into()))
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl Fn(&C) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        read(self.readers()?, f).await
    }
}

/// Read-only access to a database that a `creditd serve` may have open at
/// the same time (`creditd export`): it starts no writer and never migrates.
pub struct SqlReader<C> {
    readers: Arc<ReadPool<C>>,
}

impl<C> Clone for SqlReader<C> {
    fn clone(&self) -> Self {
        SqlReader { readers: self.readers.clone() }
    }
}

impl<C> std::fmt::Debug for SqlReader<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlReader").finish_non_exhaustive()
    }
}

impl<C: Db + Send + 'static> SqlReader<C> {
    pub fn new(readers: ReadPool<C>) -> Self {
        SqlReader { readers: Arc::new(readers) }
    }

    /// The account, if there is one.
    pub async fn account(&self, id: &str) -> Result<Option<AccountRow>, StoreError> {
        let id = id.to_string();
        read(&self.readers, move |conn| rows::account_row(conn, &id)).await
    }

    /// See [`Store::usage_count`].
    pub async fn usage_count(&self, account_id: Option<&str>, filter: UsageFilter) -> Result<u64, StoreError> {
        let account_id = account_id.map(str::to_string);
        read(&self.readers, move |conn| usage::count(conn, account_id.as_deref(), &filter)).await
    }

    /// See [`Store::export`].
    pub async fn export(
        &self,
        account_id: Option<&str>,
        filter: UsageFilter,
        encode: ExportEncoder,
        sink: ExportSink,
    ) -> Result<u64, StoreError> {
        usage::export(self.readers.clone(), account_id.map(str::to_string), filter, encode, sink).await
    }
}

#[async_trait]
impl<C: Db + Send + 'static> Store for SqlStore<C> {
    async fn execute(&self, command: Command, idempotent: Option<Idempotent>) -> Result<Reply, StoreError> {
        let senders = &self.inner.senders;
        // Each account always to the same writer; the rest to the first.
        let account = match &command {
            Command::CreateAccount { id, .. } => Some(id.as_str()),
            other => other.account_id(),
        };
        let shard = match account {
            Some(id) if senders.len() > 1 => {
                let mut hasher = std::hash::DefaultHasher::new();
                std::hash::Hash::hash(id, &mut hasher);
                (std::hash::Hasher::finish(&hasher) % senders.len() as u64) as usize
            }
            _ => 0,
        };
        let sender = senders.get(shard).ok_or_else(|| StoreError::Internal("the store is closed".into()))?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(Job { command, idempotent, reply: Some(reply) })
            .await
            .map_err(|_| StoreError::Internal("the writer has stopped".into()))?;
        answer.await.map_err(|_| StoreError::Internal("the writer stopped before answering".into()))?
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_one("SELECT 1", &[], |row| row.get::<i64>(0)).map(drop)).await
    }

    async fn health(&self) -> StoreHealth {
        let timed_out = |part: &str| StoreError::Unavailable(format!("the {part} did not answer in {HEALTH_WAIT:?}"));
        let writers = futures_util::future::join_all(self.inner.senders.iter().map(|sender| async move {
            let (reply, answer) = oneshot::channel();
            let job = Job { command: Command::Ping, idempotent: None, reply: Some(reply) };
            sender.send(job).await.map_err(|_| StoreError::Internal("the writer has stopped".into()))?;
            match answer.await {
                Ok(result) => result.map(drop),
                Err(_) => Err(StoreError::Internal("the writer stopped before answering".into())),
            }
        }));
        let writer = match tokio::time::timeout(HEALTH_WAIT, writers).await {
            Ok(results) => results.into_iter().find(Result::is_err).unwrap_or(Ok(())),
            Err(_) => Err(timed_out("writer")),
        };
        let reader = tokio::time::timeout(HEALTH_WAIT, self.ping()).await.unwrap_or_else(|_| Err(timed_out("reader")));
        StoreHealth { writer, reader }
    }

    async fn account(&self, id: &str) -> Result<Option<AccountRow>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| rows::account_row(conn, &id)).await
    }

    async fn accounts(&self, page: Page) -> Result<Paged<AccountRow>, StoreError> {
        self.read(move |conn| reader::accounts(conn, &page)).await
    }

    async fn account_state(&self, id: &str) -> Result<Option<AccountState>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| snapshot(conn, || rows::load_state(conn, &id))).await
    }

    async fn stored_account(&self, id: &str) -> Result<Option<StoredAccount>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| snapshot(conn, || reader::stored_account(conn, &id))).await
    }

    async fn grants(&self, account_id: &str, include_spent: bool, page: Page) -> Result<Paged<Grant>, StoreError> {
        let account_id = account_id.to_string();
        let now = self.inner.clock.now();
        let config = self.inner.config.clone();
        self.read(move |conn| snapshot(conn, || reader::grants(conn, &account_id, include_spent, &page, now, &config)))
            .await
    }

    async fn plans(&self) -> Result<PlanBook, StoreError> {
        self.read(|conn| rows::load_plans(conn)).await
    }

    async fn subscription(&self, account_id: &str) -> Result<Option<Subscription>, StoreError> {
        let account_id = account_id.to_string();
        self.read(move |conn| rows::latest_subscription(conn, &account_id)).await
    }

    async fn ledger(
        &self,
        account_id: &str,
        filter: LedgerFilter,
        page: Page,
    ) -> Result<Paged<LedgerEntry>, StoreError> {
        // Entries that time alone makes (an expiry, a hold's release, a
        // period's pools) exist only once the writer writes them: an
        // account behind the clock is brought up to it first, so that the
        // ledger agrees with the balance read at the same instant (§3).
        let now = self.inner.clock.now();
        let config = self.inner.config.clone();
        let id = account_id.to_string();
        let behind =
            self.read(move |conn| snapshot(conn, || reader::behind_the_clock(conn, &id, now, &config))).await?;
        if behind {
            self.execute(Command::Sweep { account_id: account_id.to_string() }, None).await?;
        }
        let account_id = account_id.to_string();
        self.read(move |conn| reader::ledger(conn, &account_id, &filter, &page)).await
    }

    async fn usage_record(&self, account_id: &str, request_id: &str) -> Result<Option<UsageRecord>, StoreError> {
        let (account_id, request_id) = (account_id.to_string(), request_id.to_string());
        self.read(move |conn| rows::usage_by_request(conn, &account_id, &request_id)).await
    }

    async fn usage(&self, account_id: &str, filter: UsageFilter, page: Page) -> Result<Paged<UsageRecord>, StoreError> {
        let account_id = account_id.to_string();
        self.read(move |conn| usage::list(conn, &account_id, &filter, &page)).await
    }

    async fn usage_summary(
        &self,
        account_id: &str,
        filter: UsageFilter,
        group_by: GroupBy,
    ) -> Result<UsageSummary, StoreError> {
        let account_id = account_id.to_string();
        self.read(move |conn| snapshot(conn, || usage::summary(conn, &account_id, &filter, &group_by))).await
    }

    async fn usage_count(&self, account_id: Option<&str>, filter: UsageFilter) -> Result<u64, StoreError> {
        let account_id = account_id.map(str::to_string);
        self.read(move |conn| usage::count(conn, account_id.as_deref(), &filter)).await
    }

    async fn export(
        &self,
        account_id: Option<&str>,
        filter: UsageFilter,
        encode: ExportEncoder,
        sink: ExportSink,
    ) -> Result<u64, StoreError> {
        usage::export(self.readers()?.clone(), account_id.map(str::to_string), filter, encode, sink).await
    }

    async fn model(&self, id: &str) -> Result<Option<ModelVersion>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| reader::model(conn, &id)).await
    }

    async fn models(&self) -> Result<Vec<ModelVersion>, StoreError> {
        self.read(|conn| reader::models(conn)).await
    }

    async fn key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| reader::key(conn, &id)).await
    }

    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.read(|conn| reader::keys(conn)).await
    }

    async fn account_token(&self, id: &str) -> Result<Option<AccountToken>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| reader::account_token(conn, &id)).await
    }

    async fn account_tokens(&self, account_id: &str) -> Result<Vec<AccountToken>, StoreError> {
        let account_id = account_id.to_string();
        self.read(move |conn| reader::account_tokens(conn, &account_id)).await
    }

    async fn proxy_key(&self, id: &str) -> Result<Option<crate::ProxyKey>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| reader::proxy_key(conn, &id)).await
    }

    async fn proxy_keys(&self, account_id: &str) -> Result<Vec<crate::ProxyKey>, StoreError> {
        let account_id = account_id.to_string();
        self.read(move |conn| reader::proxy_keys(conn, &account_id)).await
    }

    async fn dashboard_session(&self, id: &str) -> Result<Option<crate::DashboardSession>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| super::sessions::session(conn, &id)).await
    }

    async fn webhook_events(
        &self,
        filter: crate::WebhookEventFilter,
        page: Page,
    ) -> Result<Paged<crate::WebhookEvent>, StoreError> {
        self.read(move |conn| payments::events(conn, &filter, &page)).await
    }

    async fn payment(&self, provider: &str, external_id: &str) -> Result<Option<crate::Payment>, StoreError> {
        let (provider, external_id) = (provider.to_string(), external_id.to_string());
        self.read(move |conn| payments::payment_by_id(conn, &provider, &external_id)).await
    }

    async fn endpoints(&self) -> Result<Vec<crate::Endpoint>, StoreError> {
        self.read(|conn| outbox::endpoints(conn)).await
    }

    async fn endpoint(&self, id: &str) -> Result<Option<crate::Endpoint>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| outbox::endpoint_by_id(conn, &id)).await
    }

    async fn deliveries(
        &self,
        filter: crate::DeliveryFilter,
        page: Page,
    ) -> Result<Paged<crate::Delivery>, StoreError> {
        self.read(move |conn| outbox::deliveries(conn, &filter, &page)).await
    }

    async fn delivery(&self, id: &str) -> Result<Option<crate::Delivery>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| outbox::delivery_by_id(conn, &id)).await
    }

    async fn provider_calls(
        &self,
        filter: crate::ProviderCallFilter,
        page: Page,
    ) -> Result<Paged<crate::ProviderCall>, StoreError> {
        self.read(move |conn| provider_calls::calls(conn, &filter, &page)).await
    }

    async fn provider_call(&self, id: &str) -> Result<Option<crate::ProviderCall>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| provider_calls::call_by_id(conn, &id)).await
    }

    async fn provider_call_counts(&self) -> Result<Vec<(crate::DeliveryStatus, u64)>, StoreError> {
        self.read(|conn| provider_calls::counts(conn)).await
    }

    async fn audit(&self) -> Result<AuditReport, StoreError> {
        let now = self.inner.clock.now();
        self.read(move |conn| reader::audit(conn, now)).await
    }
}
