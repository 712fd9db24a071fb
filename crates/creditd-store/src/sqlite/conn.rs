//! [`Db`] and [`WriterDb`] over a rusqlite connection.
//!
//! SQLite has one writer per database file (this process's writer thread),
//! so a batch locks the whole database with `BEGIN IMMEDIATE` and no cached
//! state is ever stale.

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ToSql};

use crate::StoreError;
use crate::sql::{Begun, Db, Param, Row, WriterDb};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Internal(format!("sqlite: {e}"))
    }
}

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Param::Null => ValueRef::Null,
            Param::Int(n) => ValueRef::Integer(n),
            Param::Text(s) => ValueRef::Text(s.as_bytes()),
            Param::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn wrong_type(i: usize, wanted: &str, found: ValueRef<'_>) -> StoreError {
    StoreError::Internal(format!("column {i}: expected {wanted}, found {:?}", found.data_type()))
}

impl Row for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.get_ref(i)? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(n) => Ok(Some(n)),
            other => Err(wrong_type(i, "an integer", other)),
        }
    }

    fn text(&self, i: usize) -> Result<Option<&str>, StoreError> {
        match self.get_ref(i)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(bytes) => std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|e| StoreError::Internal(format!("column {i}: not UTF-8: {e}"))),
            other => Err(wrong_type(i, "text", other)),
        }
    }

    fn blob(&self, i: usize) -> Result<Option<&[u8]>, StoreError> {
        match self.get_ref(i)? {
            ValueRef::Null => Ok(None),
            ValueRef::Blob(bytes) => Ok(Some(bytes)),
            other => Err(wrong_type(i, "bytes", other)),
        }
    }
}

impl Db for Connection {
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let changed = self.prepare_cached(sql)?.execute(rusqlite::params_from_iter(params))?;
        Ok(changed as u64)
    }

    fn query_each(
        &self,
        sql: &str,
        params: &[Param<'_>],
        each: &mut dyn FnMut(&dyn Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.prepare_cached(sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        while let Some(row) = rows.next()? {
            each(row)?;
        }
        Ok(())
    }

    fn control(&self, sql: &str) -> Result<(), StoreError> {
        self.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    fn reusable(&self) -> bool {
        self.is_autocommit()
    }
}

impl WriterDb for Connection {
    fn begin_batch(&self, _accounts: &[&str], _requests: &[(&str, &str)]) -> Result<Begun, StoreError> {
        self.control("BEGIN IMMEDIATE")?;
        Ok(Begun::default())
    }

    fn lock_account(&self, _id: &str) -> Result<bool, StoreError> {
        Ok(false)
    }

    fn savepoint(&self, name: &'static str) -> Result<(), StoreError> {
        self.control(&format!("SAVEPOINT {name}"))
    }

    fn release_savepoint(&self, name: &'static str) -> Result<(), StoreError> {
        self.control(&format!("RELEASE {name}"))
    }

    fn rollback_to_savepoint(&self, name: &'static str) -> Result<(), StoreError> {
        self.control(&format!("ROLLBACK TO {name}"))
    }

    fn commit_batch(&self) -> Result<(), StoreError> {
        self.control("COMMIT")
    }

    fn rollback_batch(&self) {
        if !self.is_autocommit() {
            let _ = self.control("ROLLBACK");
        }
    }

    fn transaction_lost(&self) -> bool {
        // Some errors (disk full, I/O) roll back the whole transaction, not
        // just the savepoint: then nothing of the batch survives.
        self.is_autocommit()
    }
}
