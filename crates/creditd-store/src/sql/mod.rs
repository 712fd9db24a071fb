//! The SQL both backends speak, and everything written in it once.
//!
//! SQLite and PostgreSQL run the same statements through the small [`Db`]
//! trait: parameters are [`Param`]s (`?N` placeholders; the PostgreSQL
//! connection renumbers them `$N`), rows are read through [`Row`] without
//! copying. What differs between the backends stays in their own modules:
//! connecting, the schema, and how a batch's transaction begins, locks its
//! accounts and commits ([`WriterDb`]).
//!
//! The portable subset used here: every integer is a 64-bit integer (money
//! units, microseconds, counts; booleans are 0 and 1), text is text, bytes are
//! bytes; a parameter that appears only in `IS NULL` is cast
//! (`CAST(?2 AS BIGINT) IS NULL`) so that PostgreSQL knows its type; sums are
//! cast back to `BIGINT`.

pub mod codec;
pub mod outbox;
pub mod payments;
pub mod provider_calls;
pub mod reader;
pub mod rows;
pub mod sessions;
pub mod store;
pub mod usage;
pub mod writer;

use std::collections::HashSet;

use crate::StoreError;
use codec::Corrupt;

/// A statement parameter, borrowed from the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// What can be bound as a [`Param`].
pub trait ToParam {
    fn to_param(&self) -> Param<'_>;
}

impl ToParam for Param<'_> {
    fn to_param(&self) -> Param<'_> {
        *self
    }
}

impl ToParam for i64 {
    fn to_param(&self) -> Param<'_> {
        Param::Int(*self)
    }
}

macro_rules! small_ints {
    ($($t:ty),*) => {$(
        impl ToParam for $t {
            fn to_param(&self) -> Param<'_> {
                Param::Int(i64::from(*self))
            }
        }
    )*};
}
small_ints!(i32, u8, u16, u32);

impl ToParam for bool {
    fn to_param(&self) -> Param<'_> {
        Param::Int(i64::from(*self))
    }
}

impl ToParam for str {
    fn to_param(&self) -> Param<'_> {
        Param::Text(self)
    }
}

impl ToParam for String {
    fn to_param(&self) -> Param<'_> {
        Param::Text(self)
    }
}

impl ToParam for [u8] {
    fn to_param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}

impl ToParam for Vec<u8> {
    fn to_param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}

impl<T: ToParam + ?Sized> ToParam for &T {
    fn to_param(&self) -> Param<'_> {
        (**self).to_param()
    }
}

impl<T: ToParam> ToParam for Option<T> {
    fn to_param(&self) -> Param<'_> {
        self.as_ref().map_or(Param::Null, ToParam::to_param)
    }
}

/// `params![a, b, c]`: a slice of [`Param`]s borrowing `a`, `b` and `c`.
macro_rules! params {
    () => { &[] as &[$crate::sql::Param<'_>] };
    ($($value:expr),+ $(,)?) => { &[$($crate::sql::ToParam::to_param(&$value)),+][..] };
}
pub(crate) use params;

/// One row of a result, read in place.
pub trait Row {
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn text(&self, i: usize) -> Result<Option<&str>, StoreError>;
    fn blob(&self, i: usize) -> Result<Option<&[u8]>, StoreError>;
}

fn null_column(i: usize) -> StoreError {
    StoreError::Internal(format!("unexpected NULL in column {i}"))
}

impl<'r> dyn Row + 'r {
    pub fn get<T: FromColumn>(&self, i: usize) -> Result<T, StoreError> {
        T::from_column(self, i)
    }

    /// A text column that may not be NULL.
    pub fn str(&self, i: usize) -> Result<&str, StoreError> {
        self.text(i)?.ok_or_else(|| null_column(i))
    }
}

/// A Rust value read from one column.
pub trait FromColumn: Sized {
    fn from_column(row: &dyn Row, i: usize) -> Result<Self, StoreError>;
}

impl FromColumn for i64 {
    fn from_column(row: &dyn Row, i: usize) -> Result<Self, StoreError> {
        row.int(i)?.ok_or_else(|| null_column(i))
    }
}

impl FromColumn for bool {
    fn from_column(row: &dyn Row, i: usize) -> Result<Self, StoreError> {
        Ok(i64::from_column(row, i)? != 0)
    }
}

impl FromColumn for String {
    fn from_column(row: &dyn Row, i: usize) -> Result<Self, StoreError> {
        row.str(i).map(str::to_string)
    }
}

impl FromColumn for Vec<u8> {
    fn from_column(row: &dyn Row, i: usize) -> Result<Self, StoreError> {
        row.blob(i)?.map(<[u8]>::to_vec).ok_or_else(|| null_column(i))
    }
}

impl FromColumn for Option<i64> {
    fn from_column(row: &dyn Row, i: usize) -> Result<Self, StoreError> {
        row.int(i)
    }
}

impl FromColumn for Option<String> {
    fn from_column(row: &dyn Row, i: usize) -> Result<Self, StoreError> {
        Ok(row.text(i)?.map(str::to_string))
    }
}

impl From<Corrupt> for StoreError {
    fn from(c: Corrupt) -> Self {
        StoreError::Internal(c.to_string())
    }
}

/// A connection to either backend.
pub trait Db {
    /// Runs a statement and returns how many rows it changed.
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError>;

    /// Runs a statement whose row count nobody reads. A backend may send it
    /// later, in order, together with the next read or the commit (the
    /// PostgreSQL connection pipelines them); an error then surfaces there.
    fn write(&self, sql: &str, params: &[Param<'_>]) -> Result<(), StoreError> {
        self.execute(sql, params).map(drop)
    }

    /// A write that sets the whole stored row named by its first parameter
    /// (an upsert, or an update of every column the statement names): in one
    /// transaction, a later keyed write of the same statement and first
    /// parameter supersedes it, so a backend may send only the last.
    fn write_keyed(&self, sql: &str, params: &[Param<'_>]) -> Result<(), StoreError> {
        self.write(sql, params)
    }

    /// A write that inserts one row, `INSERT INTO t (…) VALUES (?1, …, ?N)`,
    /// into a table only ever appended to: a backend may send several of the
    /// same statement as one, rows in order.
    fn append(&self, sql: &str, params: &[Param<'_>]) -> Result<(), StoreError> {
        self.write(sql, params)
    }

    /// Calls `each` for every row the query returns, in order.
    fn query_each(
        &self,
        sql: &str,
        params: &[Param<'_>],
        each: &mut dyn FnMut(&dyn Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// Runs `queries`, each of whose one parameter is `list`, written
    /// `= ANY(?1)`, and calls `each(i, row)` for every row of query `i`, the
    /// queries in order. This default, for SQLite, which has no arrays, runs
    /// each query once per value of the list, as `= ?1`; PostgreSQL binds the
    /// list as an array and sends every query in one round trip.
    fn query_any(
        &self,
        queries: &[&str],
        list: &[&str],
        each: &mut dyn FnMut(usize, &dyn Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for (i, sql) in queries.iter().enumerate() {
            let one = sql.replace("= ANY(?1)", "= ?1");
            for value in list {
                self.query_each(&one, params![value], &mut |row| each(i, row))?;
            }
        }
        Ok(())
    }

    /// The condition that a `grants` row is live (has credits left or
    /// held), as the indexes of live grants state it: a query must say it
    /// the same way for the planner to use them. PostgreSQL's schema names it
    /// as a column of its own (see `postgres::schema`, V2).
    fn live_grant(&self) -> &'static str {
        "(remaining > 0 OR held > 0)"
    }

    /// Statements without parameters or results (transaction control). Like
    /// [`Db::write`], they may be sent with the next read or commit.
    fn control(&self, sql: &str) -> Result<(), StoreError>;

    /// Begins a read-only transaction: every read until [`Db::end_read`]
    /// sees the database as of one instant (see [`snapshot`]).
    fn begin_read(&self) -> Result<(), StoreError> {
        self.control("BEGIN")
    }

    /// Ends the transaction of [`Db::begin_read`], now.
    fn end_read(&self) -> Result<(), StoreError> {
        self.control("COMMIT")
    }

    /// Whether the connection can serve another read as it is: no
    /// transaction left open, no failure noticed. A read connection that
    /// is not is closed rather than used again (`store::ReadPool`).
    fn reusable(&self) -> bool {
        true
    }
}

/// Runs the reads of `f` in one read-only transaction, so that an answer
/// assembled from several queries shows one committed state of the
/// database, never a mix of two commits (the balance read while a hold is
/// placed: its grants from before, its holds from after). SQLite: a
/// deferred transaction, one WAL snapshot from its first read on.
/// PostgreSQL: `REPEATABLE READ`, one snapshot for every statement. Only on
/// read connections: the writer's batches are transactions of their own.
pub fn snapshot<T>(conn: &dyn Db, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    conn.begin_read()?;
    let result = f();
    let ended = conn.end_read();
    // A failed read leaves the transaction to the pool, which closes the
    // connection (it is not `reusable`).
    let value = result?;
    ended?;
    Ok(value)
}

/// Conveniences over [`Db::query_each`].
pub trait DbExt: Db {
    fn query_vec<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        mut f: impl FnMut(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.query_each(sql, params, &mut |row| {
            out.push(f(row)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row, if any.
    fn query_opt<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        mut f: impl FnMut(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut out = None;
        self.query_each(sql, params, &mut |row| {
            if out.is_none() {
                out = Some(f(row)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row; an error if there is none.
    fn query_one<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        f: impl FnMut(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.query_opt(sql, params, f)?.ok_or_else(|| StoreError::Internal(format!("no row from {sql}")))
    }

    fn exists(&self, sql: &str, params: &[Param<'_>]) -> Result<bool, StoreError> {
        Ok(self.query_opt(sql, params, |_| Ok(()))?.is_some())
    }
}

impl<D: Db + ?Sized> DbExt for D {}

/// What another writer changed since this one last looked.
#[derive(Debug, Default)]
pub struct Begun {
    /// Accounts whose cached state must be dropped.
    pub stale: Vec<String>,
    /// The models or plans changed: reload them.
    pub book_changed: bool,
    /// Of the `(account, request id)` pairs asked about, those that have a
    /// hold or a usage record. `None`: the backend did not look (a lookup
    /// per command is as cheap), so every command looks for itself.
    pub seen: Option<HashSet<(String, String)>>,
}

/// How the writer's transactions begin and end on a backend, and what it
/// must lock when other processes may write the same database.
pub trait WriterDb: Db {
    /// Begins a batch's transaction and locks `accounts` (sorted, without
    /// duplicates) against other writers; may look up at once which of the
    /// batch's metering `requests` the store has seen.
    fn begin_batch(&self, accounts: &[&str], requests: &[(&str, &str)]) -> Result<Begun, StoreError>;

    /// Locks one more account inside the batch (one no command named up
    /// front, e.g. from a webhook's metadata). True if its cached state may
    /// be stale.
    fn lock_account(&self, id: &str) -> Result<bool, StoreError>;

    /// Starts a savepoint inside the batch: what follows can be undone alone.
    fn savepoint(&self, name: &'static str) -> Result<(), StoreError>;

    /// Keeps what was done since the savepoint, and forgets the savepoint.
    fn release_savepoint(&self, name: &'static str) -> Result<(), StoreError>;

    /// Undoes what was done since the savepoint (which stays, to be released).
    fn rollback_to_savepoint(&self, name: &'static str) -> Result<(), StoreError>;

    /// Commits the batch. `Err(StoreError::Unavailable)`: the outcome is
    /// unknown (the answer to COMMIT was lost, and the database could not be
    /// asked whether it committed): nothing of the batch may run again. Any
    /// other error: the batch was not committed.
    fn commit_batch(&self) -> Result<(), StoreError>;

    /// After a failure of the batch: whether running its commands again may
    /// succeed where this attempt failed for reasons not theirs: a conflict
    /// with another writer of the database (a unique key another transaction
    /// took first, a deadlock, a serialization failure), or a connection lost
    /// before COMMIT and since restored.
    fn retry_may_succeed(&self) -> bool {
        false
    }

    /// Rolls the batch back (after a failure; errors are ignored).
    fn rollback_batch(&self);

    /// The transaction ended under the batch (a disk or connection error):
    /// nothing of it will be committed.
    fn transaction_lost(&self) -> bool;

    /// Between batches: connects again if the connection was lost, and
    /// forgets a failure of a statement run outside a batch (the idle
    /// sweeper's scan), so that such a statement never depends on a dead
    /// connection until the next batch.
    fn recover(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
