//! The SQLite backend: the embedded default.
//!
//! One writer thread owns the only writing connection (WAL,
//! `synchronous=FULL`: an answered write is on disk) and applies commands in
//! batched transactions against its in-memory account states; see
//! [`writer`]. Reads go to a small pool of read-only connections on
//! blocking threads and never wait for the writer.
//!
//! **Invariant:** no other code writes the database while a [`SqliteStore`]
//! has it open: the writer's cache is only right if it sees every write.

mod codec;
mod payments;
mod reader;
mod rows;
mod schema;
mod usage;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use creditd_core::account::{AccountState, Grant, UsageRecord};
use creditd_core::ledger::LedgerEntry;
use creditd_core::plan::PlanBook;
use creditd_core::subscription::Subscription;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use crate::{
    AccountRow, AccountToken, ApiKey, AuditReport, Clock, Command, EngineConfig, ExportSink, GroupBy, Idempotent,
    LedgerFilter, ModelVersion, Page, Paged, Reply, Store, StoreError, UsageFilter, UsageSummary, WriterLimits,
};
use reader::ReadPool;
use writer::{Job, Stats, Writer};

/// Read-only connections: reads are short point and range queries.
const READERS: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Internal(format!("sqlite: {e}"))
    }
}

/// The path of a SQLite database URL: `sqlite://creditd.db` and
/// `sqlite:creditd.db` (relative), `sqlite:///var/lib/creditd.db`
/// (absolute). A query string (`?mode=rwc`) is ignored. `None` for anything
/// else, including an in-memory database, which several connections could
/// not share.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split_once('?').map_or(rest, |(path, _)| path);
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(PathBuf::from(path))
}

/// The writer's connection: WAL so that readers never block it, `FULL`
/// sync so that a commit is durable before anyone is answered.
pub(crate) fn open_writer_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Internal(format!("the database refused WAL mode (it is in {mode} mode)")));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // 64 MiB of page cache: the writer's working set is the hot indexes.
    conn.pragma_update(None, "cache_size", -65_536)?;
    // Checkpoint every ~64 MiB of WAL instead of 4 MiB: spread traffic
    // rewrites the same index pages over and over, and a longer interval
    // copies each back to the database once instead of many times.
    // Measured in BENCHMARKS.md: +50% charges/s spread over 10,000 accounts.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// WAL pages between automatic checkpoints (64 MiB at 4 KiB pages).
const WAL_CHECKPOINT_PAGES: i64 = 16_384;

/// Writer counters: how many transactions and commands were committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub batches_committed: u64,
    pub commands_committed: u64,
    pub batches_failed: u64,
    /// Accounts the idle sweeper has brought up to date.
    pub background_sweeps: u64,
}

/// A SQLite database behind the batching writer. Cheap to clone: every clone
/// shares the writer and the readers; the writer stops when the last one is
/// dropped.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `Option` so that `Drop` can close the queue before joining the writer.
    sender: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    /// `Option` so that `Drop` can close the readers first.
    readers: Option<Arc<ReadPool>>,
    clock: Arc<dyn Clock>,
    stats: Arc<Stats>,
    /// What reads apply to bring an account to the clock.
    config: EngineConfig,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Readers close first so that the writer's connection is the last
        // one: SQLite then checkpoints the WAL into the database and removes it.
        self.readers.take();
        // Closing the queue lets the writer finish what is queued and stop;
        // joining it means its connection is closed when drop returns.
        self.sender.take();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the writer thread panicked");
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `path`, and
    /// starts the writer thread.
    pub fn open(
        path: &Path,
        config: EngineConfig,
        limits: WriterLimits,
        clock: Arc<dyn Clock>,
    ) -> Result<SqliteStore, StoreError> {
        let conn = open_writer_connection(path)?;
        schema::migrate(&conn)?;
        let book = writer::load_book(&conn)?;
        let plans = rows::load_plans(&conn)?;
        let readers = Arc::new(ReadPool::open(path, READERS)?);
        let stats = Arc::new(Stats::default());
        let (sender, receiver) = mpsc::channel(limits.queue_depth.max(1));
        let writer = Writer::new(conn, config.clone(), limits, clock.clone(), book, plans, stats.clone());
        let handle = std::thread::Builder::new()
            .name("creditd-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| StoreError::Internal(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                sender: Some(sender),
                writer: Some(handle),
                readers: Some(readers),
                clock,
                stats,
                config,
            }),
        })
    }

    /// Only creates or upgrades the schema (`creditd migrate`).
    pub fn migrate(path: &Path) -> Result<(), StoreError> {
        let conn = open_writer_connection(path)?;
        schema::migrate(&conn)?;
        Ok(())
    }

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

    fn readers(&self) -> Result<Arc<ReadPool>, StoreError> {
        self.inner.readers.clone().ok_or_else(|| StoreError::Internal("the store is closed".into()))
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.inner.readers.clone().ok_or_else(|| StoreError::Internal("the store is closed".into()))?;
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| StoreError::Internal(format!("a read failed: {e}")))?
    }
}

/// Read-only access to a database that a `creditd serve` may have open at
/// the same time (`creditd export`): it starts no writer and never migrates,
/// so the writer's invariant (it sees every write) holds.
#[derive(Clone)]
pub struct SqliteReader {
    readers: Arc<ReadPool>,
}

impl std::fmt::Debug for SqliteReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteReader").finish_non_exhaustive()
    }
}

impl SqliteReader {
    /// Opens an existing database read-only.
    pub fn open(path: &Path) -> Result<SqliteReader, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Internal(format!("there is no database at {}", path.display())));
        }
        Ok(SqliteReader { readers: Arc::new(ReadPool::open(path, 3)?) })
    }

    /// The account, if there is one.
    pub async fn account(&self, id: &str) -> Result<Option<AccountRow>, StoreError> {
        let readers = self.readers.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || readers.with(|conn| rows::account_row(conn, &id)))
            .await
            .map_err(|e| StoreError::Internal(format!("a read failed: {e}")))?
    }

    /// See [`Store::usage_count`].
    pub async fn usage_count(&self, account_id: Option<&str>, filter: UsageFilter) -> Result<u64, StoreError> {
        let readers = self.readers.clone();
        let account_id = account_id.map(str::to_string);
        tokio::task::spawn_blocking(move || readers.with(|conn| usage::count(conn, account_id.as_deref(), &filter)))
            .await
            .map_err(|e| StoreError::Internal(format!("a read failed: {e}")))?
    }

    /// See [`Store::export`].
    pub async fn export(
        &self,
        account_id: Option<&str>,
        filter: UsageFilter,
        sink: ExportSink,
    ) -> Result<u64, StoreError> {
        usage::export(self.readers.clone(), account_id.map(str::to_string), filter, sink).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn execute(&self, command: Command, idempotent: Option<Idempotent>) -> Result<Reply, StoreError> {
        let sender = self.inner.sender.as_ref().ok_or_else(|| StoreError::Internal("the store is closed".into()))?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(Job { command, idempotent, reply: Some(reply) })
            .await
            .map_err(|_| StoreError::Internal("the writer has stopped".into()))?;
        answer.await.map_err(|_| StoreError::Internal("the writer stopped before answering".into()))?
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))?;
            Ok(())
        })
        .await
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
        self.read(move |conn| rows::load_state(conn, &id)).await
    }

    async fn grants(&self, account_id: &str, include_spent: bool, page: Page) -> Result<Paged<Grant>, StoreError> {
        let account_id = account_id.to_string();
        let now = self.inner.clock.now();
        let config = self.inner.config.clone();
        self.read(move |conn| reader::grants(conn, &account_id, include_spent, &page, now, &config)).await
    }

    async fn plans(&self) -> Result<PlanBook, StoreError> {
        self.read(rows::load_plans).await
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
        self.read(move |conn| usage::summary(conn, &account_id, &filter, &group_by)).await
    }

    async fn usage_count(&self, account_id: Option<&str>, filter: UsageFilter) -> Result<u64, StoreError> {
        let account_id = account_id.map(str::to_string);
        self.read(move |conn| usage::count(conn, account_id.as_deref(), &filter)).await
    }

    async fn export(&self, account_id: Option<&str>, filter: UsageFilter, sink: ExportSink) -> Result<u64, StoreError> {
        usage::export(self.readers()?, account_id.map(str::to_string), filter, sink).await
    }

    async fn model(&self, id: &str) -> Result<Option<ModelVersion>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| reader::model(conn, &id)).await
    }

    async fn models(&self) -> Result<Vec<ModelVersion>, StoreError> {
        self.read(reader::models).await
    }

    async fn key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| reader::key(conn, &id)).await
    }

    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.read(reader::keys).await
    }

    async fn account_token(&self, id: &str) -> Result<Option<AccountToken>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| reader::account_token(conn, &id)).await
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

    async fn audit(&self) -> Result<AuditReport, StoreError> {
        self.read(reader::audit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        let p = |s: &str| sqlite_path(s).map(|p| p.to_string_lossy().into_owned());
        assert_eq!(p("sqlite://creditd.db").as_deref(), Some("creditd.db"));
        assert_eq!(p("sqlite:creditd.db").as_deref(), Some("creditd.db"));
        assert_eq!(p("sqlite:///var/lib/creditd/c.db").as_deref(), Some("/var/lib/creditd/c.db"));
        assert_eq!(p("sqlite://data/c.db?mode=rwc").as_deref(), Some("data/c.db"));
        for bad in ["postgres://x", "sqlite://", "sqlite:", "sqlite::memory:", "creditd.db", ""] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }
}
