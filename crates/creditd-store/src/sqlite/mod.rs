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

mod checkpoint;
mod conn;
pub(crate) mod schema;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::sql::store::{ReadPool, SqlReader, SqlStore};
use crate::{Clock, EngineConfig, StoreError, WriterLimits};

/// Read-only connections: reads are short point and range queries.
const READERS: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A SQLite database behind the batching writer.
pub type SqliteStore = SqlStore<Connection>;

/// Read-only access to a SQLite database (see [`SqlReader`]).
pub type SqliteReader = SqlReader<Connection>;

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
    // Checkpoint every ~64 MiB of WAL instead of 4 MiB (see `checkpoint`).
    // The store's writer moves this off its thread (`open`); `migrate`
    // and the tools checkpoint in their commits.
    conn.pragma_update(None, "wal_autocheckpoint", checkpoint::CHECKPOINT_FRAMES)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// `n` read connections, and how to open more as they fail.
fn open_readers(path: &Path, n: usize) -> Result<ReadPool<Connection>, StoreError> {
    let conns = (0..n).map(|_| open_reader(path)).collect::<Result<_, _>>()?;
    let path = path.to_path_buf();
    Ok(ReadPool::new(conns, Box::new(move || open_reader(&path))))
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
        let mut conn = open_writer_connection(path)?;
        schema::migrate(&conn)?;
        checkpoint::checkpoint_off_thread(&mut conn, open_writer_connection(path)?, checkpoint::CHECKPOINT_FRAMES)?;
        SqlStore::start(vec![conn], open_readers(path, READERS)?, config, limits, clock)
    }

    /// Only creates or upgrades the schema (`creditd migrate`).
    pub fn migrate(path: &Path) -> Result<(), StoreError> {
        let conn = open_writer_connection(path)?;
        schema::migrate(&conn)?;
        Ok(())
    }
}

impl SqliteReader {
    /// Opens an existing database read-only. It starts no writer and never
    /// migrates, so a `creditd serve` may have the database open meanwhile.
    pub fn open(path: &Path) -> Result<SqliteReader, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Internal(format!("there is no database at {}", path.display())));
        }
        Ok(SqlReader::new(open_readers(path, 3)?))
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
