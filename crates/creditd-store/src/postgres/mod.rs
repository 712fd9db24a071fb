//! The PostgreSQL backend: several creditd instances on one database.
//!
//! The same writer and SQL as SQLite (see [`crate::sql`]); what differs is
//! here: connecting, the schema, and how a batch locks the accounts it
//! changes so that instances sharing the database never act on an outdated
//! copy of an account ([`conn`]). Correctness comes from the database: row
//! locks serialise the writes of one account across instances, and unique
//! keys (request ids, idempotency keys, webhook events, payments) turn a
//! duplicate that raced past a check into a failed batch, whose commands then
//! run again alone and find the first one.

mod conn;
mod schema;

use std::sync::Arc;

pub use conn::PgConn;

use crate::sql::store::{ReadPool, SqlReader, SqlStore};
use crate::{Clock, EngineConfig, StoreError, WriterLimits};

/// Read connections per instance.
const READERS: usize = 4;

/// A PostgreSQL database behind the batching writer.
pub type PgStore = SqlStore<PgConn>;

/// Read-only access to a PostgreSQL database (see [`SqlReader`]).
pub type PgReader = SqlReader<PgConn>;

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Runs `f` on a thread of its own: a connection drives its own small
/// runtime, which may not be entered from inside another runtime's task.
fn off_runtime<T: Send>(f: impl FnOnce() -> Result<T, StoreError> + Send) -> Result<T, StoreError> {
    std::thread::scope(|scope| scope.spawn(f).join())
        .unwrap_or_else(|_| Err(StoreError::Internal("connecting to PostgreSQL panicked".into())))
}

/// `n` read connections, and how to connect more as they fail (from the
/// blocking thread of a read, outside any runtime).
fn connect_readers(url: &str, n: usize) -> Result<ReadPool<PgConn>, StoreError> {
    let conns = (0..n).map(|_| PgConn::connect(url)).collect::<Result<_, _>>()?;
    let url = url.to_string();
    Ok(ReadPool::new(conns, Box::new(move || PgConn::connect(&url))))
}

impl PgStore {
    /// Connects, migrates, and starts the writer thread. Blocking (briefly)
    /// but callable from an async task.
    pub fn connect(
        url: &str,
        config: EngineConfig,
        limits: WriterLimits,
        clock: Arc<dyn Clock>,
    ) -> Result<PgStore, StoreError> {
        off_runtime(|| {
            let conn = PgConn::connect_writer(url)?;
            schema::migrate(&conn)?;
            let mut writers = vec![conn];
            for _ in 1..limits.writers.max(1) {
                writers.push(PgConn::connect_writer(url)?);
            }
            SqlStore::start(writers, connect_readers(url, READERS)?, config, limits, clock)
        })
    }

    /// Only creates or upgrades the schema (`creditd migrate`).
    pub fn migrate(url: &str) -> Result<(), StoreError> {
        off_runtime(|| schema::migrate(&PgConn::connect(url)?).map(drop))
    }
}

impl PgReader {
    /// Connects for reads only: no writer, no migration.
    pub fn connect(url: &str) -> Result<PgReader, StoreError> {
        off_runtime(|| Ok(SqlReader::new(connect_readers(url, 3)?)))
    }
}

#[cfg(test)]
mod faults;
