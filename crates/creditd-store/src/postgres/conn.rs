//! [`Db`] and [`WriterDb`] over a tokio-postgres connection, driven from a
//! plain thread (the writer's, or a blocking reader's) by a private
//! single-threaded runtime.
//!
//! Writes whose row count nobody reads, and transaction control, are not
//! sent one by one: they wait in order and go out in one pipeline together
//! with the next read or the commit, so a metering command costs about one
//! round trip per read it needs instead of one per statement; and the rows
//! of each statement go as one statement over arrays, the statements of a
//! stretch as one (`merge_rows`). An error in that pipeline fails the whole
//! batch; the writer then runs each command again alone, where the error is
//! its own.
//!
//! Other instances may write the same database, so a batch locks the rows
//! of its accounts (`FOR NO KEY UPDATE`, in id order, so that two batches
//! never wait for each other in a circle) and bumps their `version` in the
//! same statement: a version other than one more than this writer's last
//! bump means another instance changed the account, and the cached state is
//! dropped.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::runtime::Runtime;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Statement};

use crate::sql::{Begun, Db, Param, Row, WriterDb};
use crate::{OUTCOME_UNKNOWN, StoreError};

/// Versions remembered at most; past that they are forgotten, and the next
/// touch of each account reloads it once.
const VERSIONS_MAX: usize = 200_000;

/// How long a writer keeps asking, after a lost answer to COMMIT, whether
/// its transaction committed, before it calls the outcome unknown.
const FIND_OUT_FOR: Duration = Duration::from_secs(10);

/// What kind of failure an error of PostgreSQL is, for what may follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Nothing failed since the batch began.
    None,
    /// The database refused a statement of the batch for its own reasons.
    Statement,
    /// Another transaction got in the way: a unique key it took first, a
    /// deadlock, a serialization failure. Running again may succeed.
    Conflict,
    /// The database cannot be reached: down, restarting, the connection
    /// terminated or lost.
    Connection,
}

impl Failure {
    fn of(e: &tokio_postgres::Error) -> Failure {
        match e.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                match code {
                    // unique_violation, exclusion_violation, serialization_failure, deadlock_detected
                    "23505" | "23P01" | "40001" | "40P01" => Failure::Conflict,
                    // admin_shutdown (pg_terminate_backend, a fast shutdown), crash_shutdown,
                    // cannot_connect_now (starting up), too_many_connections, connection_exception…
                    "57P01" | "57P02" | "57P03" | "53300" => Failure::Connection,
                    _ if code.starts_with("08") => Failure::Connection,
                    _ => Failure::Statement,
                }
            }
            None => {
                let text = e.to_string();
                let lost = ["error connecting", "error communicating", "connection closed", "timeout waiting"];
                if e.is_closed() || lost.iter().any(|l| text.starts_with(l)) {
                    Failure::Connection
                } else {
                    Failure::Statement
                }
            }
        }
    }
}

fn pg_error(e: tokio_postgres::Error) -> StoreError {
    let why = match e.as_db_error() {
        Some(db) => format!("postgres: {}: {}", db.code().code(), db.message()),
        None => format!("postgres: {e}"),
    };
    match Failure::of(&e) {
        Failure::Connection => StoreError::Unavailable(why),
        _ => StoreError::Internal(why),
    }
}

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match *self {
            Param::Null => Ok(IsNull::Yes),
            Param::Int(n) => match *ty {
                Type::INT8 => n.to_sql(ty, out),
                Type::INT4 => i32::try_from(n)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(n)?.to_sql(ty, out),
                Type::BOOL => (n != 0).to_sql(ty, out),
                _ => Err(format!("an integer given for a {ty} parameter").into()),
            },
            Param::Text(s) if <&str as ToSql>::accepts(ty) => s.to_sql(ty, out),
            Param::Blob(b) if *ty == Type::BYTEA => b.to_sql(ty, out),
            other => Err(format!("{other:?} given for a {ty} parameter").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A [`Param`] kept until a deferred write is sent.
#[derive(Debug)]
enum Owned {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl Owned {
    fn of(p: &Param<'_>) -> Owned {
        match *p {
            Param::Null => Owned::Null,
            Param::Int(n) => Owned::Int(n),
            Param::Text(s) => Owned::Text(s.to_string()),
            Param::Blob(b) => Owned::Blob(b.to_vec()),
        }
    }

    fn param(&self) -> Param<'_> {
        match self {
            Owned::Null => Param::Null,
            Owned::Int(n) => Param::Int(*n),
            Owned::Text(s) => Param::Text(s),
            Owned::Blob(b) => Param::Blob(b),
        }
    }
}

/// How a deferred write may be combined with others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    /// [`Db::write_keyed`]: only the last per statement and key is sent.
    Keyed,
    /// [`Db::append`].
    Append,
}

/// A statement waiting to be sent.
enum Deferred {
    Control(String),
    /// An open savepoint not sent yet ([`Savepoint::Pending`]): it goes out
    /// as `SAVEPOINT name` only if statements after it are sent while it is
    /// open.
    Mark(&'static str),
    Write {
        stmt: Statement,
        /// The statement's number (`PgConn::prepared`).
        number: usize,
        params: Vec<Owned>,
        kind: Kind,
    },
    /// The rows of one or more statements, each over arrays, as one
    /// statement.
    Rows {
        stmt: Statement,
        columns: Vec<Column>,
    },
}

/// The values of one column of merged rows, bound as an array.
#[derive(Debug)]
enum Column {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
}

impl ToSql for Column {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Column::Int(values) => values.to_sql(ty, out),
            Column::Text(values) => values.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// `INSERT INTO t (a, b) VALUES (?1, ?2) <rest>` as the same insert of
/// every row of arrays: `INSERT INTO t (a, b) SELECT unnest($1::int8[]),
/// unnest($2::text[]) <rest>`. `None` for any other shape.
///
/// Set-returning functions in a select list run in step and hand their rows
/// on one by one, in the arrays' order, which is the rows' order. In `FROM`,
/// each call would first be stored whole (a tuplestore: an allocation and
/// fresh pages of the server's memory per statement, ~5% of its CPU here).
fn unnest_sql(sql: &str, types: &[Type]) -> Option<String> {
    let values = sql.find("VALUES (")?;
    let open = values + "VALUES ".len();
    let close = open + sql[open..].find(')')?;
    let placeholders: Vec<&str> = sql[open + 1..close].split(',').map(str::trim).collect();
    let in_order = placeholders.iter().enumerate().all(|(i, p)| *p == format!("?{}", i + 1));
    if !in_order || placeholders.len() != types.len() || !sql.trim_start().starts_with("INSERT") {
        return None;
    }
    let arrays: Vec<String> =
        types.iter().enumerate().map(|(i, ty)| format!("unnest(${}::{}[])", i + 1, ty.name())).collect();
    Some(format!("{}SELECT {}{}", &sql[..values], arrays.join(", "), &sql[close + 1..]))
}

/// `UPDATE t SET a = ?2, b = ?3 WHERE id = ?1` as the same update of every
/// row of arrays: `UPDATE t SET a = u.c2, b = u.c3 FROM (SELECT
/// unnest($1::text[]) AS c1, unnest($2::int8[]) AS c2, unnest($3::text[]) AS
/// c3) AS u WHERE t.id = u.c1` (arrays in a select list: see [`unnest_sql`]).
/// Only for keyed writes, whose keys are unique in a batch. `None` for any
/// other shape.
fn update_sql(sql: &str, types: &[Type]) -> Option<String> {
    let words: Vec<&str> = sql.split_whitespace().collect();
    let text = words.join(" ");
    let rest = text.strip_prefix("UPDATE ")?;
    let (table, rest) = rest.split_once(" SET ")?;
    let (sets, key) = rest.rsplit_once(" WHERE ")?;
    let key = key.strip_suffix(" = ?1")?;
    let mut assignments = Vec::new();
    for set in sets.split(", ") {
        let (column, value) = set.split_once(" = ")?;
        let number: usize = value.strip_prefix('?')?.parse().ok()?;
        if number < 2 || number > types.len() || !column.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        assignments.push(format!("{column} = u.c{number}"));
    }
    if assignments.len() + 1 != types.len() {
        return None;
    }
    let arrays: Vec<String> =
        types.iter().enumerate().map(|(i, ty)| format!("unnest(${}::{}[]) AS c{}", i + 1, ty.name(), i + 1)).collect();
    Some(format!(
        "UPDATE {table} SET {} FROM (SELECT {}) AS u WHERE {table}.{key} = u.c1",
        assignments.join(", "),
        arrays.join(", ")
    ))
}

/// The rows' values by column, if every value fits its column's type.
fn columns(types: &[Type], rows: Vec<Vec<Owned>>) -> Option<Vec<Column>> {
    let mut columns: Vec<Column> = types
        .iter()
        .map(|ty| match *ty {
            Type::INT8 => Some(Column::Int(Vec::with_capacity(rows.len()))),
            Type::TEXT => Some(Column::Text(Vec::with_capacity(rows.len()))),
            _ => None,
        })
        .collect::<Option<_>>()?;
    for row in rows {
        for (column, value) in columns.iter_mut().zip(row) {
            match (column, value) {
                (Column::Int(values), Owned::Int(n)) => values.push(Some(n)),
                (Column::Int(values), Owned::Null) => values.push(None),
                (Column::Text(values), Owned::Text(s)) => values.push(Some(s)),
                (Column::Text(values), Owned::Null) => values.push(None),
                _ => return None,
            }
        }
    }
    Some(columns)
}

/// A statement's form over arrays, and the table it writes.
#[derive(Debug)]
struct Merged {
    table: String,
    sql: String,
}

/// The rows of one statement in a stretch of deferred writes.
struct Group {
    number: usize,
    stmt: Statement,
    merged: Arc<Merged>,
    rows: Vec<Vec<Owned>>,
}

/// The table an `INSERT INTO t` or `UPDATE t` writes.
fn table_of(sql: &str) -> Option<&str> {
    let mut words = sql.split_whitespace();
    let table = match (words.next()?, words.next()?) {
        ("INSERT", "INTO") => words.next()?,
        ("UPDATE", table) => table,
        _ => return None,
    };
    table.split('(').next()
}

/// `$N` placeholders as `$(N + by)`, so that several statements'
/// parameters follow each other in one.
fn shift_parameters(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// Where an open savepoint is.
#[derive(Clone, Copy, Debug)]
enum Savepoint {
    /// Not sent: its [`Deferred::Mark`] is the deferred statement of this
    /// index. Undoing it drops what follows; releasing it costs nothing.
    Pending(usize),
    /// Sent to the server (a read flushed the statements around it).
    Sent,
}

/// Drops each keyed write that a later keyed write of the same statement
/// and key supersedes. Not across an open savepoint: what follows it may yet
/// be undone, and what precedes it must then stand.
fn drop_superseded(deferred: &mut Vec<Deferred>) {
    let mut seen = HashSet::new();
    let mut keep = vec![true; deferred.len()];
    for (i, d) in deferred.iter().enumerate().rev() {
        match d {
            Deferred::Mark(_) => seen.clear(),
            Deferred::Write { number, params, kind: Kind::Keyed, .. } => {
                if let Some(Owned::Text(key)) = params.first()
                    && !seen.insert((*number, key.as_str()))
                {
                    keep[i] = false;
                }
            }
            _ => {}
        }
    }
    let mut keep = keep.into_iter();
    deferred.retain(|_| keep.next().unwrap_or(true));
}

fn wrong_type(i: usize, wanted: &str, ty: &Type) -> StoreError {
    StoreError::Internal(format!("column {i}: expected {wanted}, found {ty}"))
}

impl Row for tokio_postgres::Row {
    fn int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        let ty =
            self.columns().get(i).map(|c| c.type_().clone()).ok_or_else(|| wrong_type(i, "a column", &Type::VOID))?;
        let value = match ty {
            Type::INT8 => self.try_get::<_, Option<i64>>(i),
            Type::INT4 => self.try_get::<_, Option<i32>>(i).map(|v| v.map(i64::from)),
            Type::INT2 => self.try_get::<_, Option<i16>>(i).map(|v| v.map(i64::from)),
            Type::BOOL => self.try_get::<_, Option<bool>>(i).map(|v| v.map(i64::from)),
            other => return Err(wrong_type(i, "an integer", &other)),
        };
        value.map_err(pg_error)
    }

    fn text(&self, i: usize) -> Result<Option<&str>, StoreError> {
        self.try_get::<_, Option<&str>>(i).map_err(pg_error)
    }

    fn blob(&self, i: usize) -> Result<Option<&[u8]>, StoreError> {
        self.try_get::<_, Option<&[u8]>>(i).map_err(pg_error)
    }
}

/// `?N` placeholders as PostgreSQL's `$N` (outside quoted text).
pub fn renumber(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

/// Uses of a prepared statement after which it is prepared again, and how
/// long it is kept at most (see `PgConn::prepared`).
const REPLAN_FROM: u64 = 16;
const REPLAN_EVERY: Duration = Duration::from_secs(60);

/// A statement prepared on the connection.
struct Prepared {
    stmt: Statement,
    /// Its number, for as long as the connection lives.
    number: usize,
    /// How often it was asked for.
    uses: u64,
    /// When it was prepared.
    at: Instant,
}

/// One connection to PostgreSQL.
pub struct PgConn {
    url: String,
    /// Run first on every connection (see [`WRITER_SETUP`]).
    setup: &'static str,
    /// `Option` only so that `Drop` can shut it down without blocking.
    runtime: Option<Runtime>,
    client: RefCell<Client>,
    /// Prepared statements by SQL text, each with a number of its own.
    statements: RefCell<HashMap<String, Prepared>>,
    /// The SQL of each prepared statement, by number.
    texts: RefCell<Vec<String>>,
    /// By statement number: its form over arrays, if it has one.
    merged: RefCell<HashMap<usize, Option<Arc<Merged>>>>,
    deferred: RefCell<Vec<Deferred>>,
    /// Open savepoints, innermost last.
    savepoints: RefCell<Vec<(&'static str, Savepoint)>>,
    /// A statement of the open transaction failed: it can only roll back.
    failed: Cell<bool>,
    /// What the last failure was (reset when a batch begins).
    failure: Cell<Failure>,
    /// The connection must be made again before the next batch (it failed
    /// in a way that may have left it unusable).
    reconnect: Cell<bool>,
    /// The open batch's transaction id and the server process of the
    /// connection, from the start of the batch: after a lost answer to
    /// COMMIT, a new connection asks what became of it.
    xact: Cell<Option<(i64, i32)>>,
    /// Accounts locked by the open batch.
    locked: RefCell<HashSet<String>>,
    /// Each account's `version` as of this writer's last lock or commit.
    versions: RefCell<HashMap<String, i64>>,
    /// The price book's version as of the last batch.
    book_version: Cell<Option<i64>>,
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // A runtime may not be dropped (which waits) inside another's task,
        // and the last store handle may well go there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn").finish_non_exhaustive()
    }
}

/// What a writer's connection sets first. Its statements are prepared once
/// and run for every batch, and PostgreSQL would plan one again at every run
/// where the arrays it is given are shorter than the ten elements a generic
/// plan assumes (a batch of a hot account, the lock of one account): a third
/// of the server's CPU with two instances on one hot account. The generic
/// plans are made for arrays of any length (and made anew as the tables
/// grow: see `PgConn::prepared`).
const WRITER_SETUP: &str = "SET plan_cache_mode = force_generic_plan";

fn connect_client(runtime: &Runtime, url: &str, setup: &str) -> Result<Client, StoreError> {
    let (client, connection) = runtime.block_on(tokio_postgres::connect(url, NoTls)).map_err(pg_error)?;
    runtime.spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "a PostgreSQL connection ended");
        }
    });
    if !setup.is_empty() {
        runtime.block_on(client.batch_execute(setup)).map_err(pg_error)?;
    }
    Ok(client)
}

impl PgConn {
    /// Connects. Blocking, and like every method here, not to be called
    /// from an async task (see `super::off_runtime`).
    pub fn connect(url: &str) -> Result<PgConn, StoreError> {
        PgConn::connect_with(url, "")
    }

    /// Connects for a writer (see [`WRITER_SETUP`]).
    pub fn connect_writer(url: &str) -> Result<PgConn, StoreError> {
        PgConn::connect_with(url, WRITER_SETUP)
    }

    fn connect_with(url: &str, setup: &'static str) -> Result<PgConn, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Internal(format!("no runtime for a PostgreSQL connection: {e}")))?;
        let client = connect_client(&runtime, url, setup)?;
        Ok(PgConn {
            url: url.to_string(),
            setup,
            runtime: Some(runtime),
            client: RefCell::new(client),
            statements: RefCell::new(HashMap::new()),
            texts: RefCell::new(Vec::new()),
            merged: RefCell::new(HashMap::new()),
            deferred: RefCell::new(Vec::new()),
            savepoints: RefCell::new(Vec::new()),
            failed: Cell::new(false),
            failure: Cell::new(Failure::None),
            reconnect: Cell::new(false),
            xact: Cell::new(None),
            locked: RefCell::new(HashSet::new()),
            versions: RefCell::new(HashMap::new()),
            book_version: Cell::new(None),
        })
    }

    fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("the runtime lives as long as the connection")
    }

    /// Connects again if the server closed the connection (a restart).
    fn ensure_connected(&self) -> Result<(), StoreError> {
        if !self.client.borrow().is_closed() && !self.reconnect.get() {
            return Ok(());
        }
        tracing::warn!("reconnecting to PostgreSQL");
        *self.client.borrow_mut() = connect_client(self.runtime(), &self.url, self.setup)?;
        self.reconnect.set(false);
        self.statements.borrow_mut().clear();
        self.texts.borrow_mut().clear();
        self.merged.borrow_mut().clear();
        self.versions.borrow_mut().clear();
        self.book_version.set(None);
        Ok(())
    }

    /// Runs statements without parameters now (the simple protocol:
    /// several may be given, separated by `;`).
    pub fn simple(&self, sql: &str) -> Result<(), StoreError> {
        self.flush()?;
        let client = self.client.borrow();
        self.runtime().block_on(client.batch_execute(sql)).map_err(|e| self.fail(e))
    }

    fn fail(&self, e: tokio_postgres::Error) -> StoreError {
        self.failed.set(true);
        let failure = Failure::of(&e);
        // The first failure of a batch says why it failed; what follows it
        // (the rest of a pipeline) only echoes it.
        if self.failure.get() == Failure::None {
            self.failure.set(failure);
        }
        if failure == Failure::Connection {
            self.reconnect.set(true);
        }
        pg_error(e)
    }

    /// The error of a statement after an earlier one failed: of the kind
    /// of that failure (a lost connection stays `Unavailable`, a 503).
    fn already_failed(&self) -> StoreError {
        match self.failure.get() {
            Failure::Connection => StoreError::Unavailable("the connection to PostgreSQL was lost".into()),
            _ => StoreError::Internal("the transaction already failed".into()),
        }
    }

    /// Begins the transaction, locks the accounts, and notes the
    /// transaction's id (see [`WriterDb::begin_batch`]).
    fn try_begin(&self, accounts: &[&str], requests: &[(&str, &str)]) -> Result<Begun, StoreError> {
        self.failure.set(Failure::None);
        self.ensure_connected()?;
        self.failed.set(false);
        self.xact.set(None);
        self.locked.borrow_mut().clear();
        self.savepoints.borrow_mut().clear();
        self.deferred.borrow_mut().clear();
        if self.versions.borrow().len() > VERSIONS_MAX {
            self.versions.borrow_mut().clear();
        }
        self.control("BEGIN")?;
        // Lock the accounts in id order and bump their versions (every batch
        // that may change an account does, before it reads it), and read the
        // book's version (the row without an id).
        let lock = self.statement(
            "WITH locked AS (SELECT id FROM accounts WHERE id = ANY(?1) ORDER BY id FOR NO KEY UPDATE),
                  bumped AS (
                      UPDATE accounts SET version = accounts.version + 1 FROM locked
                       WHERE accounts.id = ANY(?1) AND accounts.id = locked.id
                      RETURNING accounts.id, accounts.version
                  )
             SELECT id, version FROM bumped UNION ALL SELECT NULL, version FROM book_version",
        )?;
        // Which of the requests have a hold or a record: one probe of a
        // unique index per pair. Joins rather than `EXISTS`: the planner costs
        // an `EXISTS` as if a match came early, and so takes any index on the
        // account for it, which then reads every record of the account when
        // (as nearly always) there is none.
        let seen = self.statement(
            "SELECT r.account_id, r.request_id
               FROM (SELECT unnest(CAST(?1 AS TEXT[])) AS account_id, unnest(CAST(?2 AS TEXT[])) AS request_id) AS r
               LEFT JOIN usage_records u ON u.account_id = r.account_id AND u.request_id = r.request_id
               LEFT JOIN holds h ON h.account_id = r.account_id AND h.request_id = r.request_id
              WHERE u.account_id IS NOT NULL OR h.account_id IS NOT NULL",
        )?;
        // The transaction's id, for finding out after a lost answer to COMMIT
        // whether it committed (`find_out`).
        let xact = self.statement("SELECT CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT), pg_backend_pid()")?;
        let (asked_accounts, asked_requests): (Vec<&str>, Vec<&str>) = requests.iter().copied().unzip();
        let (locked, seen, xact) = self.flush_then(async |client| {
            let looked = async {
                if requests.is_empty() {
                    return Ok(Vec::new());
                }
                client.query(&seen, &[&asked_accounts, &asked_requests]).await
            };
            let (locked, looked, xact) =
                futures_util::future::join3(client.query(&lock, &[&accounts]), looked, client.query_one(&xact, &[]))
                    .await;
            Ok((locked?, looked?, xact?))
        })?;
        self.xact.set(Some((xact.try_get(0).map_err(pg_error)?, xact.try_get(1).map_err(pg_error)?)));
        let mut book = None;
        let mut stale = Vec::new();
        for row in &locked {
            let version: i64 = row.try_get(1).map_err(pg_error)?;
            match row.try_get::<_, Option<String>>(0).map_err(pg_error)? {
                Some(id) => {
                    if self.note_version(&id, version) {
                        stale.push(id);
                    }
                }
                None => book = Some(version),
            }
        }
        let book_changed = self.book_version.replace(book) != book;
        let seen = seen
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<HashSet<(String, String)>, tokio_postgres::Error>>()
            .map_err(pg_error)?;
        Ok(Begun { stale, book_changed, seen: Some(seen) })
    }

    /// After the answer to COMMIT was lost (the connection failed with the
    /// commit in flight): connects again and asks the database what became
    /// of the transaction. Committed: `Ok`. Still running on the old
    /// connection's server process (the commit never reached it, and it has
    /// not noticed the connection is gone): that process is ended, which
    /// rolls it back, and the answer is asked again. Until the database
    /// answers, for at most [`FIND_OUT_FOR`]: then the outcome is unknown,
    /// `Err(StoreError::Unavailable)`.
    fn find_out(&self, lost: StoreError) -> Result<(), StoreError> {
        let Some((xid, pid)) = self.xact.take() else {
            return Err(StoreError::Unavailable(format!("{OUTCOME_UNKNOWN}: {lost}")));
        };
        let deadline = Instant::now() + FIND_OUT_FOR;
        let mut terminated = false;
        loop {
            self.reconnect.set(true);
            let status = self.ensure_connected().and_then(|()| {
                let client = self.client.borrow();
                let asked = self.runtime().block_on(async {
                    let status = client
                        .query_one("SELECT pg_xact_status(CAST(CAST($1 AS TEXT) AS xid8))", &[&xid.to_string()])
                        .await?
                        .try_get::<_, Option<String>>(0)?;
                    if status.as_deref() == Some("in progress") && !terminated {
                        client.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await?;
                    }
                    Ok::<_, tokio_postgres::Error>(status)
                });
                asked.map_err(pg_error)
            });
            match status.as_ref().map(Option::as_deref) {
                Ok(Some("committed")) => {
                    tracing::warn!(xid, "the answer to a COMMIT was lost; the transaction had committed");
                    return Ok(());
                }
                Ok(Some("aborted")) => {
                    tracing::warn!(xid, "the answer to a COMMIT was lost; the transaction was rolled back");
                    self.failure.set(Failure::Conflict);
                    return Err(StoreError::Internal(format!("the connection was lost before the commit: {lost}")));
                }
                Ok(Some("in progress")) => terminated = true,
                Ok(other) => {
                    return Err(StoreError::Unavailable(format!(
                        "{OUTCOME_UNKNOWN} (transaction status {other:?}): {lost}"
                    )));
                }
                Err(e) => tracing::warn!(error = %e, "cannot yet ask PostgreSQL what became of a commit"),
            }
            if Instant::now() >= deadline {
                self.reconnect.set(true);
                return Err(StoreError::Unavailable(format!(
                    "{OUTCOME_UNKNOWN} (the database could not be asked what became of it): {lost}"
                )));
            }
            std::thread::sleep(Duration::from_millis(if terminated { 20 } else { 200 }));
        }
    }

    fn statement(&self, sql: &str) -> Result<Statement, StoreError> {
        self.prepared(sql).map(|(stmt, _)| stmt)
    }

    /// The statement for `sql`, prepared on this connection, and its number.
    ///
    /// PostgreSQL keeps a prepared statement's plan until its tables are
    /// analysed again (by autovacuum, which may be late, or off): a plan made
    /// while they were small, as in a fresh database, can be a scan of what
    /// has grown since. So a statement is prepared anew after
    /// [`REPLAN_FROM`] uses and at every doubling of its uses (its tables
    /// grow with them), and at least every [`REPLAN_EVERY`]: a plan follows
    /// the tables' growth, for a round trip now and then.
    fn prepared(&self, sql: &str) -> Result<(Statement, usize), StoreError> {
        let again = match self.statements.borrow_mut().get_mut(sql) {
            Some(found) => {
                found.uses += 1;
                let doubled = found.uses >= REPLAN_FROM && found.uses.is_power_of_two();
                if !doubled && found.at.elapsed() < REPLAN_EVERY {
                    return Ok((found.stmt.clone(), found.number));
                }
                Some(found.number)
            }
            None => None,
        };
        let client = self.client.borrow();
        let stmt = self.runtime().block_on(client.prepare(&renumber(sql))).map_err(|e| self.fail(e))?;
        let mut statements = self.statements.borrow_mut();
        if let Some(number) = again
            && let Some(found) = statements.get_mut(sql)
        {
            found.stmt = stmt.clone();
            found.at = Instant::now();
            return Ok((stmt, number));
        }
        let number = statements.len();
        statements.insert(sql.to_string(), Prepared { stmt: stmt.clone(), number, uses: 1, at: Instant::now() });
        self.texts.borrow_mut().push(sql.to_string());
        Ok((stmt, number))
    }

    /// Sends the deferred statements, and then `then` on the same pipeline.
    fn flush_then<T>(
        &self,
        then: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        if self.failed.get() {
            return Err(self.already_failed());
        }
        let mut deferred = std::mem::take(&mut *self.deferred.borrow_mut());
        // Open savepoints that nothing follows yet stay unsent (a command
        // that reads before it writes costs no savepoint); the others go out
        // where they stand, since a rollback to one may still follow.
        let unsent = deferred.iter().rev().take_while(|d| matches!(d, Deferred::Mark(_))).count();
        let marks = deferred.split_off(deferred.len() - unsent);
        let mut left = unsent;
        for (_, place) in self.savepoints.borrow_mut().iter_mut().rev() {
            if let Savepoint::Pending(_) = place {
                *place = match left.checked_sub(1) {
                    Some(at) => {
                        left = at;
                        Savepoint::Pending(at)
                    }
                    None => Savepoint::Sent,
                };
            }
        }
        *self.deferred.borrow_mut() = marks;
        drop_superseded(&mut deferred);
        let deferred = self.merge_rows(deferred)?;
        let client = self.client.borrow();
        let client = &*client;
        let (sent, result) = self.runtime().block_on(async {
            let params: Vec<Vec<Param<'_>>> = deferred
                .iter()
                .map(|d| match d {
                    Deferred::Write { params, .. } => params.iter().map(Owned::param).collect(),
                    Deferred::Control(_) | Deferred::Mark(_) | Deferred::Rows { .. } => Vec::new(),
                })
                .collect();
            let refs: Vec<Vec<&(dyn ToSql + Sync)>> =
                params.iter().map(|ps| ps.iter().map(|p| p as &(dyn ToSql + Sync)).collect()).collect();
            let sends = deferred.iter().zip(&refs).map(|(d, refs)| async move {
                match d {
                    Deferred::Write { stmt, .. } => client.execute(stmt, refs).await.map(drop),
                    Deferred::Rows { stmt, columns } => {
                        let arrays: Vec<&(dyn ToSql + Sync)> =
                            columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
                        client.execute(stmt, &arrays).await.map(drop)
                    }
                    Deferred::Control(sql) => client.batch_execute(sql).await,
                    Deferred::Mark(name) => client.batch_execute(&format!("SAVEPOINT {name}")).await,
                }
            });
            // Joined futures are polled in order, and tokio-postgres sends a
            // request when it is first polled: one pipeline, in order.
            futures_util::future::join(join_all(sends), then(client)).await
        });
        for outcome in sent {
            outcome.map_err(|e| self.fail(e))?;
        }
        result.map_err(|e| self.fail(e))
    }

    fn flush(&self) -> Result<(), StoreError> {
        if self.deferred.borrow().is_empty() {
            return if self.failed.get() { Err(self.already_failed()) } else { Ok(()) };
        }
        self.flush_then(async |_| Ok(()))
    }

    /// Sends the appended or keyed rows of each statement as one statement
    /// over arrays, and the statements of a stretch together as one (each a
    /// `WITH` part of it). Only within a stretch of such writes: a plain
    /// write or a savepoint may depend on what came before it (a new
    /// account's row, a record it marks refunded), so rows never move past
    /// one. Inside a stretch, the rows of different tables do not depend on
    /// each other, and each table's rows keep their order: a stretch is cut
    /// where a table's rows change statement (a wallet update after a whole
    /// account update), since one statement may not change a row twice and
    /// its parts have no order.
    fn merge_rows(&self, deferred: Vec<Deferred>) -> Result<Vec<Deferred>, StoreError> {
        let mut out = Vec::with_capacity(deferred.len());
        let mut stretch: Vec<Group> = Vec::new();
        for d in deferred {
            let Deferred::Write { stmt, number, params, kind: Kind::Append | Kind::Keyed } = d else {
                self.close_stretch(&mut stretch, &mut out)?;
                out.push(d);
                continue;
            };
            let Some(merged) = self.merged(number, &stmt) else {
                self.close_stretch(&mut stretch, &mut out)?;
                out.push(Deferred::Write { stmt, number, params, kind: Kind::Append });
                continue;
            };
            if stretch.iter().any(|g| g.merged.table == merged.table && g.number != number) {
                self.close_stretch(&mut stretch, &mut out)?;
            }
            match stretch.iter_mut().find(|g| g.number == number) {
                Some(group) => group.rows.push(params),
                None => stretch.push(Group { number, stmt, merged, rows: vec![params] }),
            }
        }
        self.close_stretch(&mut stretch, &mut out)?;
        Ok(out)
    }

    /// The statement over arrays for rows of statement `number`, if it is a
    /// one-row `INSERT` or keyed `UPDATE` of integers and text (worked out
    /// once).
    fn merged(&self, number: usize, stmt: &Statement) -> Option<Arc<Merged>> {
        if let Some(known) = self.merged.borrow().get(&number) {
            return known.clone();
        }
        let types = stmt.params();
        let supported = types.iter().all(|ty| *ty == Type::INT8 || *ty == Type::TEXT);
        let merged = self.texts.borrow().get(number).filter(|_| supported).and_then(|text| {
            let sql = unnest_sql(text, types).or_else(|| update_sql(text, types))?;
            Some(Arc::new(Merged { table: table_of(text)?.to_string(), sql }))
        });
        self.merged.borrow_mut().insert(number, merged.clone());
        merged
    }

    /// Sends a stretch's statements as one: a statement of one row as it
    /// is, otherwise each over arrays, as the parts of one `WITH`.
    fn close_stretch(&self, stretch: &mut Vec<Group>, out: &mut Vec<Deferred>) -> Result<(), StoreError> {
        if let [group] = stretch.as_slice()
            && group.rows.len() == 1
            && let Some(Group { stmt, number, mut rows, .. }) = stretch.pop()
        {
            let params = rows.pop().unwrap_or_default();
            out.push(Deferred::Write { stmt, number, params, kind: Kind::Append });
            return Ok(());
        }
        let mut parts = Vec::with_capacity(stretch.len());
        let mut columns = Vec::new();
        for group in stretch.drain(..) {
            let types = group.stmt.params().to_vec();
            parts.push(shift_parameters(&group.merged.sql, columns.len()));
            let Some(rows) = self::columns(&types, group.rows) else {
                return Err(StoreError::Internal(format!("rows of statement {} do not fit its columns", group.number)));
            };
            columns.extend(rows);
        }
        let Some(last) = parts.pop() else { return Ok(()) };
        let sql = if parts.is_empty() {
            last
        } else {
            let with: Vec<String> = parts.iter().enumerate().map(|(i, part)| format!("w{i} AS ({part})")).collect();
            format!("WITH {} {last}", with.join(", "))
        };
        out.push(Deferred::Rows { stmt: self.statement(&sql)?, columns });
        Ok(())
    }

    fn defer(&self, sql: &str, params: &[Param<'_>], kind: Kind) -> Result<(), StoreError> {
        let (stmt, number) = self.prepared(sql)?;
        self.deferred.borrow_mut().push(Deferred::Write {
            stmt,
            number,
            params: params.iter().map(Owned::of).collect(),
            kind,
        });
        Ok(())
    }

    /// Rows of a query with native parameters (arrays), after the deferred statements.
    fn query_native(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let stmt = self.statement(sql)?;
        self.flush_then(async |client| client.query(&stmt, params).await)
    }

    /// Notes the version of an account just locked and bumped; true if
    /// another writer may have changed it since this one last bumped it,
    /// that is, unless the version is one more than then. An account is
    /// created at version 0: at version 1, this is the first batch to lock it
    /// since, and its state is as created, even if this writer remembers no
    /// version (it created the account, or forgot).
    fn note_version(&self, id: &str, version: i64) -> bool {
        self.locked.borrow_mut().insert(id.to_string());
        let last = self.versions.borrow_mut().insert(id.to_string(), version);
        last.map_or(version != 1, |last| last != version - 1)
    }
}

impl Db for PgConn {
    fn execute(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let stmt = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        self.flush_then(async |client| client.execute(&stmt, &refs).await)
    }

    fn write(&self, sql: &str, params: &[Param<'_>]) -> Result<(), StoreError> {
        self.defer(sql, params, Kind::Plain)
    }

    fn write_keyed(&self, sql: &str, params: &[Param<'_>]) -> Result<(), StoreError> {
        self.defer(sql, params, Kind::Keyed)
    }

    fn append(&self, sql: &str, params: &[Param<'_>]) -> Result<(), StoreError> {
        self.defer(sql, params, Kind::Append)
    }

    fn query_each(
        &self,
        sql: &str,
        params: &[Param<'_>],
        each: &mut dyn FnMut(&dyn Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        for row in self.query_native(sql, &refs)? {
            each(&row)?;
        }
        Ok(())
    }

    fn query_any(
        &self,
        queries: &[&str],
        list: &[&str],
        each: &mut dyn FnMut(usize, &dyn Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let statements = queries.iter().map(|sql| self.statement(sql)).collect::<Result<Vec<_>, _>>()?;
        let list: [&(dyn ToSql + Sync); 1] = [&list];
        let results: Vec<Vec<tokio_postgres::Row>> = self.flush_then(async |client| {
            join_all(statements.iter().map(|stmt| client.query(stmt, &list))).await.into_iter().collect()
        })?;
        for (i, rows) in results.iter().enumerate() {
            for row in rows {
                each(i, row)?;
            }
        }
        Ok(())
    }

    fn live_grant(&self) -> &'static str {
        "live"
    }

    fn control(&self, sql: &str) -> Result<(), StoreError> {
        self.deferred.borrow_mut().push(Deferred::Control(sql.to_string()));
        Ok(())
    }

    /// One snapshot for every statement (`READ COMMITTED`, the default,
    /// takes one per statement); sent with the first read.
    fn begin_read(&self) -> Result<(), StoreError> {
        self.control("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    }

    fn end_read(&self) -> Result<(), StoreError> {
        self.simple("COMMIT")
    }

    fn reusable(&self) -> bool {
        !self.failed.get()
            && !self.reconnect.get()
            && self.deferred.borrow().is_empty()
            && !self.client.borrow().is_closed()
    }
}

impl WriterDb for PgConn {
    fn begin_batch(&self, accounts: &[&str], requests: &[(&str, &str)]) -> Result<Begun, StoreError> {
        // A connection the server ended (a terminated backend, a restart)
        // is often noticed only when the batch is sent: nothing was done
        // then, so the batch begins once more on a new connection.
        match self.try_begin(accounts, requests) {
            Err(StoreError::Unavailable(why)) => {
                tracing::warn!(error = %why, "a batch could not begin; connecting again");
                self.reconnect.set(true);
                self.try_begin(accounts, requests)
            }
            other => other,
        }
    }

    fn lock_account(&self, id: &str) -> Result<bool, StoreError> {
        if self.locked.borrow().contains(id) {
            return Ok(false);
        }
        let rows =
            self.query_native("UPDATE accounts SET version = version + 1 WHERE id = ?1 RETURNING version", &[&id])?;
        match rows.first() {
            Some(row) => Ok(self.note_version(id, row.try_get(0).map_err(pg_error)?)),
            None => Ok(false),
        }
    }

    fn savepoint(&self, name: &'static str) -> Result<(), StoreError> {
        let mut deferred = self.deferred.borrow_mut();
        self.savepoints.borrow_mut().push((name, Savepoint::Pending(deferred.len())));
        deferred.push(Deferred::Mark(name));
        Ok(())
    }

    fn release_savepoint(&self, name: &'static str) -> Result<(), StoreError> {
        match self.savepoints.borrow_mut().pop() {
            Some((open, Savepoint::Pending(at))) if open == name => {
                let mut deferred = self.deferred.borrow_mut();
                if !matches!(deferred.get(at), Some(Deferred::Mark(mark)) if *mark == name) {
                    return Err(StoreError::Internal(format!("savepoint {name} is not where it was opened")));
                }
                deferred.remove(at);
                Ok(())
            }
            Some((open, Savepoint::Sent)) if open == name => self.control(&format!("RELEASE SAVEPOINT {name}")),
            other => Err(StoreError::Internal(format!("release of savepoint {name} with {other:?} open"))),
        }
    }

    fn rollback_to_savepoint(&self, name: &'static str) -> Result<(), StoreError> {
        match self.savepoints.borrow().last() {
            Some(&(open, Savepoint::Pending(at))) if open == name => {
                self.deferred.borrow_mut().truncate(at + 1);
                Ok(())
            }
            Some(&(open, Savepoint::Sent)) if open == name => self.control(&format!("ROLLBACK TO SAVEPOINT {name}")),
            other => Err(StoreError::Internal(format!("rollback to savepoint {name} with {other:?} open"))),
        }
    }

    fn commit_batch(&self) -> Result<(), StoreError> {
        // The deferred writes and the commit: one round trip.
        let committed = self.flush_then(async |client| client.batch_execute("COMMIT").await);
        self.locked.borrow_mut().clear();
        match committed {
            Ok(()) => Ok(()),
            // The connection failed with COMMIT perhaps in flight: it may
            // have committed. Never guess: ask.
            Err(e) if self.failure.get() == Failure::Connection => {
                let found = self.find_out(e);
                self.deferred.borrow_mut().clear();
                self.savepoints.borrow_mut().clear();
                self.versions.borrow_mut().clear();
                self.failed.set(false);
                found
            }
            Err(e) => Err(e),
        }
    }

    fn rollback_batch(&self) {
        self.deferred.borrow_mut().clear();
        self.savepoints.borrow_mut().clear();
        self.locked.borrow_mut().clear();
        self.versions.borrow_mut().clear();
        self.failed.set(false);
        if !self.client.borrow().is_closed() && !self.reconnect.get() {
            let _ = self.simple("ROLLBACK");
        }
    }

    fn transaction_lost(&self) -> bool {
        if self.client.borrow().is_closed() {
            // The connection ended under the batch with no statement failed
            // yet (the last ones are deferred, or their answers came before
            // the end): nothing of the batch is committed, and it is a lost
            // connection like any other, which running again on a new one
            // may get past (before, a 500 in the chaos suite).
            if self.failure.get() == Failure::None {
                self.failure.set(Failure::Connection);
            }
            self.reconnect.set(true);
            return true;
        }
        self.failed.get()
    }

    fn retry_may_succeed(&self) -> bool {
        matches!(self.failure.get(), Failure::Conflict | Failure::Connection)
    }

    fn recover(&self) -> Result<(), StoreError> {
        self.deferred.borrow_mut().clear();
        self.failed.set(false);
        self.failure.set(Failure::None);
        self.ensure_connected()
    }
}

#[cfg(test)]
mod tests {
    use super::renumber;

    #[test]
    fn one_row_statements_become_statements_over_arrays() {
        use tokio_postgres::types::Type;
        let types = [Type::TEXT, Type::INT8, Type::TEXT];
        assert_eq!(
            super::unnest_sql("INSERT INTO t (a, b, c) VALUES (?1, ?2,\n ?3) ON CONFLICT (a) DO NOTHING", &types)
                .as_deref(),
            Some(
                "INSERT INTO t (a, b, c) SELECT unnest($1::text[]), unnest($2::int8[]), unnest($3::text[]) \
                 ON CONFLICT (a) DO NOTHING"
            )
        );
        assert_eq!(super::unnest_sql("INSERT INTO t (a, b, c) VALUES (?1, ?3, ?2)", &types), None);
        assert_eq!(
            super::update_sql("UPDATE t SET b = ?2, c = ?3\n WHERE a = ?1", &types).as_deref(),
            Some(
                "UPDATE t SET b = u.c2, c = u.c3 FROM (SELECT unnest($1::text[]) AS c1, unnest($2::int8[]) AS c2, \
                 unnest($3::text[]) AS c3) AS u WHERE t.a = u.c1"
            )
        );
        assert_eq!(super::update_sql("UPDATE t SET b = b + ?2, c = ?3 WHERE a = ?1", &types), None);
        assert_eq!(super::update_sql("UPDATE t SET b = ?2 WHERE a = ?1", &types), None);
    }

    #[test]
    fn statements_join_with_their_parameters_shifted() {
        assert_eq!(
            super::shift_parameters("unnest($1::text[], $12::int8[]) x$", 3),
            "unnest($4::text[], $15::int8[]) x$"
        );
        assert_eq!(super::table_of("INSERT INTO grants (id, a) VALUES (?1, ?2)"), Some("grants"));
        assert_eq!(super::table_of("INSERT INTO t(a) VALUES (?1)"), Some("t"));
        assert_eq!(super::table_of("UPDATE accounts SET a = ?2 WHERE id = ?1"), Some("accounts"));
        assert_eq!(super::table_of("DELETE FROM t"), None);
    }

    fn table(db: &creditd_testing::PgDatabase) -> super::PgConn {
        let conn = super::PgConn::connect(db.url()).expect("connect");
        conn.simple(
            "CREATE TABLE t (id TEXT PRIMARY KEY, a BIGINT NOT NULL, b BIGINT NOT NULL);
             CREATE TABLE log (n BIGINT NOT NULL);
             INSERT INTO t VALUES ('x', 0, 0), ('y', 0, 0);",
        )
        .expect("tables");
        conn
    }

    fn row(conn: &super::PgConn, id: &str) -> (i64, i64) {
        use crate::sql::{DbExt, params};
        conn.query_one("SELECT a, b FROM t WHERE id = ?1", params![id], |r| Ok((r.get(0)?, r.get(1)?))).expect("row")
    }

    /// Writes of one table by two statements keep their order, even where
    /// the rows of each are sent together: the last write of a row wins.
    #[test]
    fn the_writes_of_a_row_keep_their_order_across_statements() {
        use crate::sql::{Db, params};
        let db = creditd_testing::PgDatabase::create();
        let conn = table(&db);
        let whole = "UPDATE t SET a = ?2, b = ?3 WHERE id = ?1";
        let part = "UPDATE t SET a = ?2 WHERE id = ?1";
        conn.write_keyed(part, params!["y", 1]).expect("write");
        conn.append("INSERT INTO log (n) VALUES (?1)", params![1]).expect("write");
        conn.write_keyed(whole, params!["x", 2, 2]).expect("write");
        conn.append("INSERT INTO log (n) VALUES (?1)", params![2]).expect("write");
        conn.write_keyed(part, params!["x", 3]).expect("write");
        assert_eq!(row(&conn, "x"), (3, 2));
        assert_eq!(row(&conn, "y"), (1, 0));
    }

    /// A keyed write is not dropped for a later one that a rollback to a
    /// savepoint between them undoes, even once the savepoint was sent.
    #[test]
    fn a_write_undone_by_a_rollback_supersedes_nothing() {
        use crate::sql::{Db, WriterDb, params};
        let db = creditd_testing::PgDatabase::create();
        let conn = table(&db);
        let whole = "UPDATE t SET a = ?2, b = ?3 WHERE id = ?1";
        conn.control("BEGIN").expect("begin");
        conn.write_keyed(whole, params!["x", 1, 1]).expect("write");
        conn.savepoint("command").expect("savepoint");
        conn.write_keyed(whole, params!["x", 2, 2]).expect("write");
        assert_eq!(row(&conn, "x"), (2, 2));
        conn.rollback_to_savepoint("command").expect("rollback");
        conn.release_savepoint("command").expect("release");
        assert_eq!(row(&conn, "x"), (1, 1));
        // A savepoint that nothing follows when a read is sent stays unsent,
        // and still undoes what follows it.
        conn.savepoint("command").expect("savepoint");
        assert_eq!(row(&conn, "y"), (0, 0));
        conn.write_keyed(whole, params!["y", 4, 4]).expect("write");
        conn.rollback_to_savepoint("command").expect("rollback");
        conn.release_savepoint("command").expect("release");
        conn.control("COMMIT").expect("commit");
        assert_eq!(row(&conn, "y"), (0, 0));
    }

    #[test]
    fn placeholders_are_renumbered_outside_text() {
        assert_eq!(renumber("SELECT ?1, '?2', ?12 WHERE a = ?3"), "SELECT $1, '?2', $12 WHERE a = $3");
        assert_eq!(renumber("SELECT '' || ?1"), "SELECT '' || $1");
    }
}
