//! [`Db`] and [`WriterDb`] over a tokio-postgres connection, driven from a
//! plain thread (the writer's, or a blocking reader's) by a private
//! single-threaded runtime.
//!
//! Writes whose row count nobody reads, and transaction control, are not
//! sent one by one: they wait in order and go out in one pipeline together
//! with the next read or the commit, so a metering command costs about one
//! round trip per read it needs instead of one per statement. An error in
//! that pipeline fails the whole batch; the writer then runs each command
//! again alone, where the error is its own.
//!
//! Other instances may write the same database, so a batch locks the rows
//! of the accounts it changes (`FOR NO KEY UPDATE`, in id order, so that two
//! batches never wait for each other in a circle) and compares each
//! account's `version` with the one this writer last saw: a difference means
//! another instance changed it, and the cached state is dropped.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::error::Error;

use futures_util::future::join_all;
use tokio::runtime::Runtime;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Statement};

use crate::StoreError;
use crate::sql::{Begun, Db, Param, Row, WriterDb};

/// Versions remembered at most; past that they are forgotten, and the next
/// touch of each account reloads it once.
const VERSIONS_MAX: usize = 200_000;

fn pg_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Internal(format!("postgres: {}: {}", db.code().code(), db.message())),
        None => StoreError::Internal(format!("postgres: {e}")),
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
    Write {
        stmt: Statement,
        /// The statement's number (`PgConn::prepared`).
        number: usize,
        params: Vec<Owned>,
        kind: Kind,
    },
    /// Several rows of one `INSERT`, as one statement over arrays.
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
/// every row of arrays: `INSERT INTO t (a, b) SELECT c1, c2 FROM
/// unnest($1::int8[], $2::text[]) WITH ORDINALITY AS u(c1, c2, n) ORDER BY n
/// <rest>`. `None` for any other shape.
fn unnest_sql(sql: &str, types: &[Type]) -> Option<String> {
    let values = sql.find("VALUES (")?;
    let open = values + "VALUES ".len();
    let close = open + sql[open..].find(')')?;
    let placeholders: Vec<&str> = sql[open + 1..close].split(',').map(str::trim).collect();
    let in_order = placeholders.iter().enumerate().all(|(i, p)| *p == format!("?{}", i + 1));
    if !in_order || placeholders.len() != types.len() || !sql.trim_start().starts_with("INSERT") {
        return None;
    }
    let names: Vec<String> = (1..=types.len()).map(|i| format!("c{i}")).collect();
    let arrays: Vec<String> = types.iter().enumerate().map(|(i, ty)| format!("${}::{}[]", i + 1, ty.name())).collect();
    Some(format!(
        "{}SELECT {} FROM unnest({}) WITH ORDINALITY AS u({}, n) ORDER BY n{}",
        &sql[..values],
        names.join(", "),
        arrays.join(", "),
        names.join(", "),
        &sql[close + 1..]
    ))
}

/// `UPDATE t SET a = ?2, b = ?3 WHERE id = ?1` as the same update of every
/// row of arrays: `UPDATE t SET a = u.c2, b = u.c3 FROM unnest($1::text[],
/// $2::int8[], $3::text[]) AS u(c1, c2, c3) WHERE t.id = u.c1`. Only for keyed
/// writes, whose keys are unique in a batch. `None` for any other shape.
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
    let names: Vec<String> = (1..=types.len()).map(|i| format!("c{i}")).collect();
    let arrays: Vec<String> = types.iter().enumerate().map(|(i, ty)| format!("${}::{}[]", i + 1, ty.name())).collect();
    Some(format!(
        "UPDATE {table} SET {} FROM unnest({}) AS u({}) WHERE {table}.{key} = u.c1",
        assignments.join(", "),
        arrays.join(", "),
        names.join(", ")
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

/// Where an open savepoint is.
#[derive(Clone, Copy, Debug)]
enum Savepoint {
    /// Not sent: it stands before the deferred statement of this index.
    /// Undoing it drops what follows; releasing it costs nothing.
    Pending(usize),
    /// Sent to the server (a read flushed the statements around it).
    Sent,
}

/// Drops each keyed write that a later keyed write of the same statement
/// and key supersedes.
fn drop_superseded(deferred: &mut Vec<Deferred>) {
    let mut seen = HashSet::new();
    let mut keep = vec![true; deferred.len()];
    for (i, d) in deferred.iter().enumerate().rev() {
        if let Deferred::Write { number, params, kind: Kind::Keyed, .. } = d
            && let Some(Owned::Text(key)) = params.first()
            && !seen.insert((*number, key.as_str()))
        {
            keep[i] = false;
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

/// One connection to PostgreSQL.
pub struct PgConn {
    url: String,
    /// `Option` only so that `Drop` can shut it down without blocking.
    runtime: Option<Runtime>,
    client: RefCell<Client>,
    /// Prepared statements by SQL text, each with a number of its own.
    statements: RefCell<HashMap<String, (Statement, usize)>>,
    /// The SQL of each prepared statement, by number.
    texts: RefCell<Vec<String>>,
    /// By statement number: its form over arrays, if it has one.
    merged: RefCell<HashMap<usize, Option<String>>>,
    deferred: RefCell<Vec<Deferred>>,
    /// Open savepoints, innermost last.
    savepoints: RefCell<Vec<(&'static str, Savepoint)>>,
    /// A statement of the open transaction failed: it can only roll back.
    failed: Cell<bool>,
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

fn connect_client(runtime: &Runtime, url: &str) -> Result<Client, StoreError> {
    let (client, connection) = runtime.block_on(tokio_postgres::connect(url, NoTls)).map_err(pg_error)?;
    runtime.spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "a PostgreSQL connection ended");
        }
    });
    Ok(client)
}

impl PgConn {
    /// Connects. Blocking, and like every method here, not to be called
    /// from an async task (see `super::off_runtime`).
    pub fn connect(url: &str) -> Result<PgConn, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Internal(format!("no runtime for a PostgreSQL connection: {e}")))?;
        let client = connect_client(&runtime, url)?;
        Ok(PgConn {
            url: url.to_string(),
            runtime: Some(runtime),
            client: RefCell::new(client),
            statements: RefCell::new(HashMap::new()),
            texts: RefCell::new(Vec::new()),
            merged: RefCell::new(HashMap::new()),
            deferred: RefCell::new(Vec::new()),
            savepoints: RefCell::new(Vec::new()),
            failed: Cell::new(false),
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
        if !self.client.borrow().is_closed() {
            return Ok(());
        }
        tracing::warn!("reconnecting to PostgreSQL");
        *self.client.borrow_mut() = connect_client(self.runtime(), &self.url)?;
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
        pg_error(e)
    }

    fn statement(&self, sql: &str) -> Result<Statement, StoreError> {
        self.prepared(sql).map(|(stmt, _)| stmt)
    }

    /// The statement for `sql`, prepared once per connection, and its number.
    fn prepared(&self, sql: &str) -> Result<(Statement, usize), StoreError> {
        if let Some(found) = self.statements.borrow().get(sql) {
            return Ok(found.clone());
        }
        let client = self.client.borrow();
        let stmt = self.runtime().block_on(client.prepare(&renumber(sql))).map_err(|e| self.fail(e))?;
        let mut statements = self.statements.borrow_mut();
        let number = statements.len();
        statements.insert(sql.to_string(), (stmt.clone(), number));
        self.texts.borrow_mut().push(sql.to_string());
        Ok((stmt, number))
    }

    /// Sends the deferred statements, and then `then` on the same pipeline.
    fn flush_then<T>(
        &self,
        then: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        if self.failed.get() {
            return Err(StoreError::Internal("the transaction already failed".into()));
        }
        let mut deferred = std::mem::take(&mut *self.deferred.borrow_mut());
        drop_superseded(&mut deferred);
        let mut deferred = self.merge_rows(deferred)?;
        // Savepoints not sent yet go out now, each where it stands: a
        // rollback to one may still follow.
        for (name, place) in self.savepoints.borrow_mut().iter_mut().rev() {
            if let Savepoint::Pending(at) = *place {
                deferred.insert(at.min(deferred.len()), Deferred::Control(format!("SAVEPOINT {name}")));
                *place = Savepoint::Sent;
            }
        }
        let client = self.client.borrow();
        let client = &*client;
        let (sent, result) = self.runtime().block_on(async {
            let params: Vec<Vec<Param<'_>>> = deferred
                .iter()
                .map(|d| match d {
                    Deferred::Write { params, .. } => params.iter().map(Owned::param).collect(),
                    Deferred::Control(_) | Deferred::Rows { .. } => Vec::new(),
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
            return if self.failed.get() {
                Err(StoreError::Internal("the transaction already failed".into()))
            } else {
                Ok(())
            };
        }
        self.flush_then(async |_| Ok(()))
    }

    /// Sends the appended or keyed rows of one `INSERT` statement as one
    /// statement over arrays. Only within a stretch of such writes: a plain
    /// write or a savepoint may depend on what came before it (a new
    /// account's row, a record it marks refunded), so rows never move past
    /// one. Inside a stretch, the rows of different tables do not depend on
    /// each other, and each table's rows keep their order.
    fn merge_rows(&self, deferred: Vec<Deferred>) -> Result<Vec<Deferred>, StoreError> {
        let candidate = |d: &Deferred| matches!(d, Deferred::Write { kind: Kind::Append | Kind::Keyed, .. });
        if deferred.iter().filter(|d| candidate(d)).count() < 2 {
            return Ok(deferred);
        }
        let mut out = Vec::with_capacity(deferred.len());
        // Per statement number in the current stretch: the index in `out`
        // of its first write, and the rows that follow it.
        let mut groups: HashMap<usize, (usize, Vec<Vec<Owned>>)> = HashMap::new();
        for d in deferred {
            match d {
                Deferred::Write { number, params, kind: kind @ (Kind::Append | Kind::Keyed), stmt } => {
                    // A statement of another shape stays as it is, where it is.
                    if self.merged_sql(number, &stmt).is_none() {
                        out.push(Deferred::Write { stmt, number, params, kind });
                        continue;
                    }
                    match groups.get_mut(&number) {
                        Some((_, rows)) => rows.push(params),
                        None => {
                            groups.insert(number, (out.len(), Vec::new()));
                            out.push(Deferred::Write { stmt, number, params, kind: Kind::Append });
                        }
                    }
                }
                other => {
                    self.close_groups(&mut out, &mut groups)?;
                    out.push(other);
                }
            }
        }
        self.close_groups(&mut out, &mut groups)?;
        Ok(out)
    }

    /// The statement over arrays for rows of statement `number`, if it is a
    /// one-row `INSERT` of integers and text (worked out once).
    fn merged_sql(&self, number: usize, stmt: &Statement) -> Option<String> {
        if let Some(known) = self.merged.borrow().get(&number) {
            return known.clone();
        }
        let types = stmt.params();
        let supported = types.iter().all(|ty| *ty == Type::INT8 || *ty == Type::TEXT);
        let sql = self
            .texts
            .borrow()
            .get(number)
            .and_then(|text| unnest_sql(text, types).or_else(|| update_sql(text, types)))
            .filter(|_| supported);
        self.merged.borrow_mut().insert(number, sql.clone());
        sql
    }

    /// Replaces each group's first write by one statement for all its rows.
    fn close_groups(
        &self,
        out: &mut [Deferred],
        groups: &mut HashMap<usize, (usize, Vec<Vec<Owned>>)>,
    ) -> Result<(), StoreError> {
        for (number, (at, more)) in groups.drain() {
            if more.is_empty() {
                continue;
            }
            let Deferred::Write { stmt, params, .. } = &mut out[at] else { continue };
            let types = stmt.params().to_vec();
            let Some(sql) = self.merged_sql(number, stmt) else {
                return Err(StoreError::Internal(format!("rows of statement {number} cannot be merged")));
            };
            let rows: Vec<Vec<Owned>> = std::iter::once(std::mem::take(params)).chain(more).collect();
            let Some(columns) = columns(&types, rows) else {
                return Err(StoreError::Internal(format!("rows of statement {number} do not fit its columns")));
            };
            out[at] = Deferred::Rows { stmt: self.statement(&sql)?, columns };
        }
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

    /// Notes the versions of locked accounts; returns those that changed.
    fn note_versions(&self, rows: &[tokio_postgres::Row]) -> Result<Vec<String>, StoreError> {
        let mut versions = self.versions.borrow_mut();
        if versions.len() > VERSIONS_MAX {
            versions.clear();
        }
        let mut locked = self.locked.borrow_mut();
        let mut stale = Vec::new();
        for row in rows {
            let id: String = row.try_get(0).map_err(pg_error)?;
            let version: i64 = row.try_get(1).map_err(pg_error)?;
            if versions.insert(id.clone(), version) != Some(version) {
                stale.push(id.clone());
            }
            locked.insert(id);
        }
        Ok(stale)
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

    fn control(&self, sql: &str) -> Result<(), StoreError> {
        self.deferred.borrow_mut().push(Deferred::Control(sql.to_string()));
        Ok(())
    }
}

impl WriterDb for PgConn {
    fn begin_batch(&self, accounts: &[&str], requests: &[(&str, &str)]) -> Result<Begun, StoreError> {
        self.ensure_connected()?;
        self.failed.set(false);
        self.locked.borrow_mut().clear();
        self.savepoints.borrow_mut().clear();
        self.control("BEGIN")?;
        // Lock the accounts in id order and read the book's version (the row
        // without an id); and which of the requests have a hold or a record.
        let lock = self.statement(
            "WITH locked AS (
                 SELECT id, version FROM accounts WHERE id = ANY(?1) ORDER BY id FOR NO KEY UPDATE
             )
             SELECT id, version FROM locked UNION ALL SELECT NULL, version FROM book_version",
        )?;
        let seen = self.statement(
            "WITH asked AS (SELECT * FROM unnest(CAST(?1 AS TEXT[]), CAST(?2 AS TEXT[])) AS r(account_id, request_id))
             SELECT account_id, request_id FROM holds WHERE (account_id, request_id) IN (SELECT * FROM asked)
             UNION
             SELECT account_id, request_id FROM usage_records WHERE (account_id, request_id) IN (SELECT * FROM asked)",
        )?;
        let (asked_accounts, asked_requests): (Vec<&str>, Vec<&str>) = requests.iter().copied().unzip();
        let (rows, seen) = self.flush_then(async |client| {
            let looked = async {
                if requests.is_empty() {
                    return Ok(Vec::new());
                }
                client.query(&seen, &[&asked_accounts, &asked_requests]).await
            };
            let (locked, looked) = futures_util::future::join(client.query(&lock, &[&accounts]), looked).await;
            Ok((locked?, looked?))
        })?;
        let (book, locked): (Vec<_>, Vec<_>) =
            rows.into_iter().partition(|row| row.get::<_, Option<&str>>(0).is_none());
        let book = book.first().map(|row| row.try_get::<_, i64>(1)).transpose().map_err(pg_error)?;
        let book_changed = self.book_version.replace(book) != book;
        let seen = seen
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<HashSet<(String, String)>, tokio_postgres::Error>>()
            .map_err(pg_error)?;
        Ok(Begun { stale: self.note_versions(&locked)?, book_changed, seen: Some(seen) })
    }

    fn lock_account(&self, id: &str) -> Result<bool, StoreError> {
        if self.locked.borrow().contains(id) {
            return Ok(false);
        }
        let rows = self.query_native("SELECT id, version FROM accounts WHERE id = ?1 FOR NO KEY UPDATE", &[&id])?;
        Ok(!self.note_versions(&rows)?.is_empty())
    }

    fn savepoint(&self, name: &'static str) -> Result<(), StoreError> {
        let at = self.deferred.borrow().len();
        self.savepoints.borrow_mut().push((name, Savepoint::Pending(at)));
        Ok(())
    }

    fn release_savepoint(&self, name: &'static str) -> Result<(), StoreError> {
        match self.savepoints.borrow_mut().pop() {
            Some((open, Savepoint::Pending(_))) if open == name => Ok(()),
            Some((open, Savepoint::Sent)) if open == name => self.control(&format!("RELEASE SAVEPOINT {name}")),
            other => Err(StoreError::Internal(format!("release of savepoint {name} with {other:?} open"))),
        }
    }

    fn rollback_to_savepoint(&self, name: &'static str) -> Result<(), StoreError> {
        match self.savepoints.borrow().last() {
            Some(&(open, Savepoint::Pending(at))) if open == name => {
                self.deferred.borrow_mut().truncate(at);
                Ok(())
            }
            Some(&(open, Savepoint::Sent)) if open == name => self.control(&format!("ROLLBACK TO SAVEPOINT {name}")),
            other => Err(StoreError::Internal(format!("rollback to savepoint {name} with {other:?} open"))),
        }
    }

    fn commit_batch(&self, touched: &[&str]) -> Result<(), StoreError> {
        let bump =
            self.statement("UPDATE accounts SET version = version + 1 WHERE id = ANY(?1) RETURNING id, version")?;
        // The deferred writes, the version bump and the commit: one round trip.
        let bumped = self.flush_then(async |client| {
            let (bumped, committed) =
                futures_util::future::join(client.query(&bump, &[&touched]), client.batch_execute("COMMIT")).await;
            committed?;
            bumped
        })?;
        let mut versions = self.versions.borrow_mut();
        for row in &bumped {
            let id: String = row.try_get(0).map_err(pg_error)?;
            versions.insert(id, row.try_get(1).map_err(pg_error)?);
        }
        self.locked.borrow_mut().clear();
        Ok(())
    }

    fn rollback_batch(&self) {
        self.deferred.borrow_mut().clear();
        self.savepoints.borrow_mut().clear();
        self.locked.borrow_mut().clear();
        self.versions.borrow_mut().clear();
        self.failed.set(false);
        if !self.client.borrow().is_closed() {
            let _ = self.simple("ROLLBACK");
        }
    }

    fn transaction_lost(&self) -> bool {
        self.failed.get() || self.client.borrow().is_closed()
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
                "INSERT INTO t (a, b, c) SELECT c1, c2, c3 FROM unnest($1::text[], $2::int8[], $3::text[]) \
                 WITH ORDINALITY AS u(c1, c2, c3, n) ORDER BY n ON CONFLICT (a) DO NOTHING"
            )
        );
        assert_eq!(super::unnest_sql("INSERT INTO t (a, b, c) VALUES (?1, ?3, ?2)", &types), None);
        assert_eq!(
            super::update_sql("UPDATE t SET b = ?2, c = ?3\n WHERE a = ?1", &types).as_deref(),
            Some(
                "UPDATE t SET b = u.c2, c = u.c3 FROM unnest($1::text[], $2::int8[], $3::text[]) AS u(c1, c2, c3) WHERE t.a = u.c1"
            )
        );
        assert_eq!(super::update_sql("UPDATE t SET b = b + ?2, c = ?3 WHERE a = ?1", &types), None);
        assert_eq!(super::update_sql("UPDATE t SET b = ?2 WHERE a = ?1", &types), None);
    }

    #[test]
    fn placeholders_are_renumbered_outside_text() {
        assert_eq!(renumber("SELECT ?1, '?2', ?12 WHERE a = ?3"), "SELECT $1, '?2', $12 WHERE a = $3");
        assert_eq!(renumber("SELECT '' || ?1"), "SELECT '' || $1");
    }
}
