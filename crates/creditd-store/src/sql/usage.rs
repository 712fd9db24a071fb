//! Usage history: the paged list, summaries, and the streaming export.
//!
//! Every query here is a range of an index: `usage_by_time (account_id,
//! recorded_at, seq)` for one account, `usage_by_recorded_at (recorded_at,
//! seq)` for the admin-wide export. The other filters only drop rows of that
//! range. Filters that are absent stay in the statement as `?N IS NULL`, so
//! parameters keep their numbers and the database evaluates those terms
//! once (cast, so that PostgreSQL knows the parameter's type).

use std::collections::VecDeque;
use std::sync::Arc;

use creditd_core::account::UsageRecord;
use creditd_core::calendar;
use creditd_core::pricing::{RequestStatus, Usage};
use creditd_core::units::{Credits, CreditsTotal, Usd, UsdTotal};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::sync::oneshot;

use super::codec::{self, Corrupt};
use super::reader::{bad_cursor, limit, paged};
use super::rows::{self, USAGE_COLUMNS};
use super::store::{ReadPool, read};
use super::{Db, DbExt, Param, Row};
use crate::{
    EXPORT_BATCH_ROWS, ExportChunk, ExportEncoder, ExportFields, ExportSink, GroupBy, Page, Paged, SUMMARY_ROWS_MAX,
    StoreError, SummaryRow, UsageBatch, UsageFields, UsageFilter, UsageSummary, UsageTotals,
};

/// The parameters `?1`…`?8` of every usage query: the account, then the filter.
const FILTER_PARAMS: usize = 8;

/// `WHERE` terms for the account (`?1`) and the filter (`?2`…`?8`).
fn filter_sql(account: bool, filter: &UsageFilter) -> String {
    let terms = [
        (account, "account_id = ?1", "CAST(?1 AS TEXT) IS NULL"),
        (filter.from.is_some(), "recorded_at >= ?2", "CAST(?2 AS BIGINT) IS NULL"),
        (filter.to.is_some(), "recorded_at < ?3", "CAST(?3 AS BIGINT) IS NULL"),
        (filter.model.is_some(), "model = ?4", "CAST(?4 AS TEXT) IS NULL"),
        (filter.request_type.is_some(), "request_type = ?5", "CAST(?5 AS TEXT) IS NULL"),
        (filter.project.is_some(), "project = ?6", "CAST(?6 AS TEXT) IS NULL"),
        (filter.conversation.is_some(), "conversation = ?7", "CAST(?7 AS TEXT) IS NULL"),
        (filter.status.is_some(), "status = ?8", "CAST(?8 AS TEXT) IS NULL"),
    ];
    let mut sql = String::new();
    for (i, (given, term, absent)) in terms.into_iter().enumerate() {
        if i > 0 {
            sql.push_str(" AND ");
        }
        sql.push_str(if given { term } else { absent });
    }
    sql
}

fn text(value: &Option<String>) -> Param<'_> {
    value.as_deref().map_or(Param::Null, Param::Text)
}

fn micros(value: Option<Timestamp>) -> Param<'static> {
    value.map_or(Param::Null, |t| Param::Int(codec::micros(t)))
}

/// The values of `?1`…`?8`, then `extra`.
fn filter_params<'a>(account_id: Option<&'a str>, filter: &'a UsageFilter, extra: &[Param<'a>]) -> Vec<Param<'a>> {
    let mut values = Vec::with_capacity(FILTER_PARAMS + extra.len());
    values.push(account_id.map_or(Param::Null, Param::Text));
    values.push(micros(filter.from));
    values.push(micros(filter.to));
    values.push(text(&filter.model));
    values.push(text(&filter.request_type));
    values.push(text(&filter.project));
    values.push(text(&filter.conversation));
    values.push(filter.status.map_or(Param::Null, |s| Param::Text(s.as_str())));
    values.extend_from_slice(extra);
    values
}

/// A record's place in `(recorded_at, seq)` order: the cursor of the list
/// (`"<recorded_at µs>:<seq>"`) and the export's resume point.
type Position = (i64, i64);

fn parse_cursor(cursor: &str) -> Result<Position, StoreError> {
    let (at, seq) = cursor.split_once(':').ok_or_else(bad_cursor)?;
    Ok((at.parse().map_err(|_| bad_cursor())?, seq.parse().map_err(|_| bad_cursor())?))
}

/// A usage row (`USAGE_COLUMNS, seq`) and its position: `recorded_at` is
/// the record's last column, `seq` follows it.
fn positioned(row: &dyn Row) -> Result<(UsageRecord, Position), StoreError> {
    let record = rows::usage(row)?;
    Ok((record, (row.get(35)?, row.get(36)?)))
}

/// One account's records newest first by `(recorded_at, seq)`. Keyset paging
/// on that unique order: a record written between two pages sorts before
/// the first page (its time is the writer's now) or, if the clock stepped
/// back, is simply met later; no existing record moves, so none repeats or
/// goes missing.
pub fn list(
    conn: &dyn Db,
    account_id: &str,
    filter: &UsageFilter,
    page: &Page,
) -> Result<Paged<UsageRecord>, StoreError> {
    let n = limit(page);
    let before = page.cursor.as_deref().map(parse_cursor).transpose()?;
    let mut filter = filter.clone();
    // A cursor before `to` implies it: one upper bound keeps the page an
    // index range from the cursor, whatever SQLite would pick of two.
    if let (Some((at, _)), Some(to)) = (before, filter.to)
        && at < codec::micros(to)
    {
        filter.to = None;
    }
    let filter = &filter;
    let mut sql = format!("SELECT {USAGE_COLUMNS}, seq FROM usage_records WHERE {}", filter_sql(true, filter));
    sql.push_str(if before.is_some() {
        " AND (recorded_at, seq) < (?9, ?10)"
    } else {
        " AND CAST(?9 AS BIGINT) IS NULL AND CAST(?10 AS BIGINT) IS NULL"
    });
    sql.push_str(" ORDER BY recorded_at DESC, seq DESC LIMIT ?11");
    let [at, seq] = position_values(before);
    let values = filter_params(Some(account_id), filter, &[at, seq, Param::Int(i64::from(n) + 1)]);
    let data = conn.query_vec(&sql, &values, positioned)?;
    let page = paged(data, n, |(_, (at, seq))| format!("{at}:{seq}"));
    Ok(Paged { data: page.data.into_iter().map(|(r, _)| r).collect(), next_cursor: page.next_cursor })
}

/// How many records match (for a progress bar).
pub fn count(conn: &dyn Db, account_id: Option<&str>, filter: &UsageFilter) -> Result<u64, StoreError> {
    let sql = format!("SELECT COUNT(*) FROM usage_records WHERE {}", filter_sql(account_id.is_some(), filter));
    let n = conn.query_one(&sql, &filter_params(account_id, filter, &[]), |row| row.get::<i64>(0))?;
    Ok(codec::to_u64(n)?)
}

/// The newest record's `seq`: an export sends nothing written after it starts.
fn max_seq(conn: &dyn Db) -> Result<i64, StoreError> {
    conn.query_one("SELECT COALESCE(MAX(seq), 0) FROM usage_records", &[], |row| row.get::<i64>(0))
}

/// `USAGE_COLUMNS, seq` without the fingerprint, an idempotency detail that
/// no export shows (a record exported has an empty one): a column fewer to
/// read a row.
const EXPORT_COLUMNS: &str = "account_id, request_id, hold_id, request_type, model, price_version, status, \
     input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, images, tool_calls, reasoning_tokens, \
     system_tokens, context_tokens, project, conversation, region, started_at, finished_at, latency_ms, retries, \
     iterations, external_calls, context_bytes, tools, metadata, cost_usd, credits, charged_from, debt_incurred, \
     hold_expired, refunded, recorded_at, seq";

/// `EXPORT_COLUMNS` for `ExportFields::Csv`: constants in place of the
/// columns that CSV does not show, so that every column keeps its place.
const CSV_EXPORT_COLUMNS: &str = "account_id, request_id, CAST(NULL AS TEXT), request_type, model, price_version, \
     status, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, images, tool_calls, \
     reasoning_tokens, system_tokens, context_tokens, project, conversation, region, started_at, finished_at, \
     latency_ms, retries, iterations, external_calls, context_bytes, tools, CAST(NULL AS TEXT), cost_usd, credits, \
     charged_from, debt_incurred, CAST(0 AS BIGINT), CAST(0 AS BIGINT), recorded_at, seq";

fn export_columns(fields: ExportFields) -> &'static str {
    match fields {
        ExportFields::All => EXPORT_COLUMNS,
        ExportFields::Csv => CSV_EXPORT_COLUMNS,
    }
}

/// Appends a row (`EXPORT_COLUMNS`) to `batch`, checked as
/// `rows::usage` checks it but without an owned record; returns its position.
fn push_row(batch: &mut UsageBatch, row: &dyn Row) -> Result<Position, StoreError> {
    let status_text = row.str(6)?;
    let status = RequestStatus::parse(status_text).ok_or_else(|| Corrupt(format!("status {status_text:?}")))?;
    let recorded_at: i64 = row.get(34)?;
    let fields = UsageFields {
        account_id: row.str(0)?,
        request_id: row.str(1)?,
        fingerprint: "",
        hold_id: row.text(2)?,
        request_type: row.str(3)?,
        model: row.str(4)?,
        price_version: row.get(5)?,
        status,
        usage: Usage {
            input_tokens: rows::count(row, 7)?,
            cache_read_tokens: rows::count(row, 8)?,
            cache_write_tokens: rows::count(row, 9)?,
            output_tokens: rows::count(row, 10)?,
            images: rows::count(row, 11)?,
            tool_calls: rows::count(row, 12)?,
            reasoning_tokens: rows::count(row, 13)?,
            system_tokens: rows::count(row, 14)?,
            context_tokens: rows::count(row, 15)?,
        },
        project: row.text(16)?,
        conversation: row.text(17)?,
        region: row.text(18)?,
        started_at: rows::ts_opt(row, 19)?,
        finished_at: rows::ts_opt(row, 20)?,
        latency_ms: rows::count_opt(row, 21)?,
        retries: rows::count_opt(row, 22)?,
        iterations: rows::count_opt(row, 23)?,
        external_calls: rows::count_opt(row, 24)?,
        context_bytes: rows::count_opt(row, 25)?,
        metadata: row.text(27)?,
        cost_usd: Usd::from_units(row.get(28)?),
        credits: Credits::from_units(row.get(29)?),
        debt_incurred: Credits::from_units(row.get(31)?),
        hold_expired: row.get(32)?,
        refunded: row.get(33)?,
        recorded_at: codec::timestamp(recorded_at)?,
    };
    batch.try_push(&fields, codec::tool_names(row.str(26)?), codec::portion_refs(row.str(30)?))?;
    Ok((recorded_at, row.get(35)?))
}

/// About how much text a row holds, to size a batch's buffer once.
const ROW_TEXT_BYTES: usize = 384;

/// One chunk of an export: the rows after `after` in `(recorded_at, seq)`
/// order, none newer than `max_seq` (taken when the export starts).
struct Chunk {
    /// What it reads of each row: `export_columns`.
    columns: &'static str,
    account_id: Option<Arc<str>>,
    filter: Arc<UsageFilter>,
    max_seq: i64,
    after: Option<Position>,
}

impl Chunk {
    /// `SELECT columns` of the chunk's rows, at most `limit` after skipping
    /// `offset`, up to and including `until`. (`+seq` keeps SQLite from
    /// trading the ordered index for a rowid range plus a sort.)
    fn query(
        &self,
        conn: &dyn Db,
        columns: &str,
        until: Option<Position>,
        offset: usize,
        limit: usize,
        mut each: impl FnMut(&dyn Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut filter = (*self.filter).clone();
        // Past `from`, the position is the only lower bound (see `list`).
        if let (Some((at, _)), Some(from)) = (self.after, filter.from)
            && at >= codec::micros(from)
        {
            filter.from = None;
        }
        let mut sql = format!(
            "SELECT {columns} FROM usage_records WHERE {} AND +seq <= ?9",
            filter_sql(self.account_id.is_some(), &filter)
        );
        sql.push_str(if self.after.is_some() {
            " AND (recorded_at, seq) > (?10, ?11)"
        } else {
            " AND CAST(?10 AS BIGINT) IS NULL AND CAST(?11 AS BIGINT) IS NULL"
        });
        sql.push_str(if until.is_some() {
            " AND (recorded_at, seq) <= (?12, ?13)"
        } else {
            " AND CAST(?12 AS BIGINT) IS NULL AND CAST(?13 AS BIGINT) IS NULL"
        });
        sql.push_str(" ORDER BY recorded_at, seq LIMIT ?14 OFFSET ?15");
        let number = |n: usize| Param::Int(i64::try_from(n).unwrap_or(i64::MAX));
        let [after_at, after_seq] = position_values(self.after);
        let [until_at, until_seq] = position_values(until);
        let values = filter_params(
            self.account_id.as_deref(),
            &filter,
            &[Param::Int(self.max_seq), after_at, after_seq, until_at, until_seq, number(limit), number(offset)],
        );
        conn.query_each(&sql, &values, &mut each)
    }

    /// The chunk's rows, at most `EXPORT_BATCH_ROWS`, up to `until`, and
    /// the position of the last.
    fn read(&self, conn: &dyn Db, until: Option<Position>) -> Result<(UsageBatch, Option<Position>), StoreError> {
        let mut batch = UsageBatch::with_capacity(EXPORT_BATCH_ROWS, EXPORT_BATCH_ROWS * ROW_TEXT_BYTES);
        let mut last = None;
        self.query(conn, self.columns, until, 0, EXPORT_BATCH_ROWS, |row| {
            last = Some(push_row(&mut batch, row)?);
            Ok(())
        })?;
        Ok((batch, last))
    }

    /// The position of the chunk's last row when it is full, from the
    /// index alone; `None` when fewer than `EXPORT_BATCH_ROWS` rows are left.
    fn end(&self, conn: &dyn Db) -> Result<Option<Position>, StoreError> {
        let mut end = None;
        self.query(conn, "recorded_at, seq", None, EXPORT_BATCH_ROWS - 1, 1, |row| {
            end = Some((row.get(0)?, row.get(1)?));
            Ok(())
        })?;
        Ok(end)
    }
}

fn position_values(p: Option<Position>) -> [Param<'static>; 2] {
    p.map_or([Param::Null, Param::Null], |(a, s)| [Param::Int(a), Param::Int(s)])
}

/// Whether every filter is a column of the index an export reads
/// (`account_id`, `recorded_at`, `seq`): then a chunk's end is found in the
/// index alone, before its rows are read.
fn index_only(filter: &UsageFilter) -> bool {
    filter.model.is_none()
        && filter.request_type.is_none()
        && filter.project.is_none()
        && filter.conversation.is_none()
        && filter.status.is_none()
}

/// Chunks an export reads and encodes at once: for an index range, three
/// read connections decode and encode rows side by side (one more than the
/// cores of a small machine, so that a read waiting on the disk leaves a
/// core to another); for other filters, whose chunks are found one after
/// another, the next chunk is read while this one is encoded. A chunk holds
/// its connection only while it reads, so other reads interleave.
const CHUNKS_IN_FLIGHT: usize = 3;

/// The export (see `Store::export`). Each batch is its own short read, so
/// a slow consumer holds no connection and no snapshot (the WAL can be
/// checkpointed meanwhile); the `seq` bound taken at the start keeps later
/// records out, and the keyset position keeps every batch in order. At
/// most `CHUNKS_IN_FLIGHT` chunks are read ahead of the sink.
pub async fn export<C: Db + Send + 'static>(
    readers: Arc<ReadPool<C>>,
    account_id: Option<String>,
    filter: UsageFilter,
    encode: ExportEncoder,
    sink: ExportSink,
) -> Result<u64, StoreError> {
    let result = export_batches(&readers, account_id, filter, &encode, &sink).await;
    if let Err(e) = &result {
        let _ = sink.send(Err(e.clone())).await;
    }
    result
}

/// A chunk's rows, being read and encoded on a blocking thread.
type ChunkRead = tokio::task::JoinHandle<Result<ExportChunk, StoreError>>;

/// Reads `chunk` on a blocking thread, then encodes it there, its
/// connection returned. Where the next chunk starts (`None`: this is the
/// last) goes to `next` as soon as it is known: for an index range, found
/// in the index before this chunk's rows are read, so that the next chunk
/// is read alongside this one; otherwise, the last row read.
fn start_chunk<C: Db + Send + 'static>(
    readers: &Arc<ReadPool<C>>,
    chunk: Chunk,
    index_only: bool,
    encode: &ExportEncoder,
    next: oneshot::Sender<Option<Position>>,
) -> ChunkRead {
    let readers = readers.clone();
    let encode = encode.clone();
    tokio::task::spawn_blocking(move || {
        let batch = readers.with(|conn: &C| {
            if index_only {
                let until = chunk.end(conn)?;
                let _ = next.send(until);
                Ok(chunk.read(conn, until)?.0)
            } else {
                let (batch, last) = chunk.read(conn, None)?;
                let _ = next.send(last.filter(|_| batch.len() == EXPORT_BATCH_ROWS));
                Ok(batch)
            }
        })?;
        let mut bytes = Vec::new();
        (encode.write)(&batch, &mut bytes);
        Ok(ExportChunk { records: batch.len(), bytes })
    })
}

async fn export_batches<C: Db + Send + 'static>(
    readers: &Arc<ReadPool<C>>,
    account_id: Option<String>,
    filter: UsageFilter,
    encode: &ExportEncoder,
    sink: &ExportSink,
) -> Result<u64, StoreError> {
    let max_seq = read(readers, |conn: &C| max_seq(conn)).await?;
    let index_only = index_only(&filter);
    let account_id: Option<Arc<str>> = account_id.map(Arc::from);
    let filter = Arc::new(filter);
    let mut pending: VecDeque<ChunkRead> = VecDeque::new();
    // Where the next chunk to start begins; `None` once the last has started.
    let mut next: Option<Option<Position>> = Some(None);
    let mut sent: u64 = 0;
    loop {
        if sink.is_closed() {
            break;
        }
        while pending.len() < CHUNKS_IN_FLIGHT
            && let Some(after) = next
        {
            let chunk = Chunk {
                columns: export_columns(encode.fields),
                account_id: account_id.clone(),
                filter: filter.clone(),
                max_seq,
                after,
            };
            let (tell, told) = oneshot::channel();
            pending.push_back(start_chunk(readers, chunk, index_only, encode, tell));
            // A read that fails tells nothing; its error comes with its rows.
            next = told.await.ok().flatten().map(Some);
        }
        let Some(reading) = pending.pop_front() else { break };
        let chunk = reading.await.map_err(|e| StoreError::Internal(format!("a read failed: {e}")))??;
        if chunk.records == 0 {
            continue;
        }
        let len = chunk.records as u64;
        if sink.send(Ok(chunk)).await.is_err() {
            break;
        }
        sent += len;
    }
    Ok(sent)
}

/// Adds `row` to `into`; a sum out of range is a store failure, not a wrap.
fn add(into: &mut UsageTotals, row: UsageTotals) -> Result<(), StoreError> {
    *into = into.checked_add(row).ok_or_else(|| StoreError::Internal("a usage sum is out of range".into()))?;
    Ok(())
}

/// The summed columns, in the order of [`UsageTotals`]: the four token
/// classes, credits net of refunds, the refunded records' credits, cost.
const SUMMED: [&str; 7] = [
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "CASE WHEN refunded = 0 THEN credits ELSE 0 END",
    "CASE WHEN refunded <> 0 THEN credits ELSE 0 END",
    "cost_usd",
];

/// `SUM(x)` of 64-bit values overflows 64 bits (SQLite fails the query;
/// PostgreSQL sums in `NUMERIC`, and the cast back to `BIGINT` fails), so
/// each column is summed in two halves that cannot: `x / 2^32` and
/// `x % 2^32` (each at most 2^31 and 2^32 in size), joined again exactly in
/// `i128` ([`sum`]). Both databases truncate the division toward zero and
/// give the remainder the dividend's sign, so `hi * 2^32 + lo = x` for every
/// value, and the halves' sums stay within 64 bits below 2^31 rows.
fn sums() -> String {
    let mut out = String::from("COUNT(*)");
    for column in SUMMED {
        out.push_str(&format!(
            ", CAST(SUM(({column}) / 4294967296) AS BIGINT), CAST(SUM(({column}) % 4294967296) AS BIGINT)"
        ));
    }
    out
}

/// The sum whose halves are columns `i` and `i + 1` (see [`sums`]).
fn sum(row: &dyn Row, i: usize) -> Result<i128, StoreError> {
    let hi = i128::from(row.get::<Option<i64>>(i)?.unwrap_or(0));
    let lo = i128::from(row.get::<Option<i64>>(i + 1)?.unwrap_or(0));
    Ok(hi * (1 << 32) + lo)
}

fn token_count(sum: i128) -> Result<u64, StoreError> {
    u64::try_from(sum).map_err(|_| StoreError::Internal(format!("a usage count is out of range: {sum}")))
}

/// Totals from the columns of [`sums`] from `first` on.
fn totals(row: &dyn Row, first: usize) -> Result<UsageTotals, StoreError> {
    let column = |n: usize| sum(row, first + 1 + 2 * n);
    Ok(UsageTotals {
        requests: codec::to_u64(row.get::<i64>(first)?)?,
        input_tokens: token_count(column(0)?)?,
        cache_read_tokens: token_count(column(1)?)?,
        cache_write_tokens: token_count(column(2)?)?,
        output_tokens: token_count(column(3)?)?,
        credits: CreditsTotal::from_units(column(4)?),
        refunded_credits: CreditsTotal::from_units(column(5)?),
        cost_usd: UsdTotal::from_units(column(6)?),
    })
}

/// The account's usage grouped by `group_by`. Columns are grouped by
/// the database; days are summed here, row by row in time order, because a
/// day in the billing zone is 23, 24 or 25 hours long and SQLite knows no
/// zones.
pub fn summary(
    conn: &dyn Db,
    account_id: &str,
    filter: &UsageFilter,
    group_by: &GroupBy,
) -> Result<UsageSummary, StoreError> {
    let column = match group_by {
        GroupBy::Day(tz) => return summary_by_day(conn, account_id, filter, tz),
        GroupBy::Model => "model",
        GroupBy::Project => "project",
        GroupBy::Conversation => "conversation",
        GroupBy::RequestType => "request_type",
        GroupBy::Status => "status",
    };
    let sql = format!(
        "SELECT {column}, {} FROM usage_records WHERE {} GROUP BY {column} \
         ORDER BY {column} IS NULL, {column} LIMIT ?9",
        sums(),
        filter_sql(true, filter)
    );
    let cap = i64::try_from(SUMMARY_ROWS_MAX).unwrap_or(i64::MAX) + 1;
    let mut summary = UsageSummary::default();
    conn.query_each(&sql, &filter_params(Some(account_id), filter, &[Param::Int(cap)]), &mut |row| {
        // The statement returns at most one row more than is kept.
        if summary.rows.len() == SUMMARY_ROWS_MAX {
            summary.truncated = true;
            return Ok(());
        }
        let row = SummaryRow { key: row.get(0)?, totals: totals(row, 1)? };
        add(&mut summary.total, row.totals)?;
        summary.rows.push(row);
        Ok(())
    })?;
    if summary.truncated {
        let sql = format!("SELECT {} FROM usage_records WHERE {}", sums(), filter_sql(true, filter));
        if let Some(total) =
            conn.query_opt(&sql, &filter_params(Some(account_id), filter, &[]), |row| totals(row, 0))?
        {
            summary.total = total;
        }
    }
    Ok(summary)
}

/// The calendar day a group of the day summary covers: `[start, end)`.
struct Day {
    key: String,
    start: i64,
    end: i64,
}

impl Day {
    fn containing(at: i64, tz: &TimeZone) -> Result<Day, StoreError> {
        let t = codec::timestamp(at)?;
        let start = calendar::day_start(t, tz);
        let end = calendar::next_day_start(t, tz);
        Ok(Day { key: t.to_zoned(tz.clone()).date().to_string(), start: codec::micros(start), end: codec::micros(end) })
    }
}

fn summary_by_day(
    conn: &dyn Db,
    account_id: &str,
    filter: &UsageFilter,
    tz: &TimeZone,
) -> Result<UsageSummary, StoreError> {
    let sql = format!(
        "SELECT recorded_at, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, credits, refunded, \
         cost_usd FROM usage_records WHERE {} ORDER BY recorded_at",
        filter_sql(true, filter)
    );
    let mut summary = UsageSummary::default();
    let mut current: Option<(Day, UsageTotals)> = None;
    let close = |summary: &mut UsageSummary, day: Day, totals: UsageTotals| {
        if summary.rows.len() == SUMMARY_ROWS_MAX {
            summary.truncated = true;
        } else {
            summary.rows.push(SummaryRow { key: Some(day.key), totals });
        }
    };
    conn.query_each(&sql, &filter_params(Some(account_id), filter, &[]), &mut |row| {
        let at: i64 = row.get(0)?;
        let credits = CreditsTotal::from_units(row.get::<i64>(5)?.into());
        let (credits, refunded_credits) =
            if row.get::<bool>(6)? { (CreditsTotal::ZERO, credits) } else { (credits, CreditsTotal::ZERO) };
        let one = UsageTotals {
            requests: 1,
            input_tokens: codec::to_u64(row.get(1)?)?,
            cache_read_tokens: codec::to_u64(row.get(2)?)?,
            cache_write_tokens: codec::to_u64(row.get(3)?)?,
            output_tokens: codec::to_u64(row.get(4)?)?,
            credits,
            refunded_credits,
            cost_usd: UsdTotal::from_units(row.get::<i64>(7)?.into()),
        };
        add(&mut summary.total, one)?;
        let same_day = current.as_ref().is_some_and(|(day, _)| day.start <= at && at < day.end);
        if !same_day {
            if let Some((day, totals)) = current.take() {
                close(&mut summary, day, totals);
            }
            current = Some((Day::containing(at, tz)?, UsageTotals::default()));
        }
        if let Some((_, totals)) = current.as_mut() {
            add(totals, one)?;
        }
        Ok(())
    })?;
    if let Some((day, totals)) = current.take() {
        close(&mut summary, day, totals);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_columns_are_the_usage_columns_but_the_fingerprint() {
        assert_eq!(EXPORT_COLUMNS, format!("{USAGE_COLUMNS}, seq").replace("fingerprint, ", ""));
        let csv = EXPORT_COLUMNS
            .replace("hold_id", "CAST(NULL AS TEXT)")
            .replace("metadata", "CAST(NULL AS TEXT)")
            .replace("hold_expired", "CAST(0 AS BIGINT)")
            .replace("refunded", "CAST(0 AS BIGINT)");
        assert_eq!(CSV_EXPORT_COLUMNS, csv);
    }

    #[test]
    fn recorded_at_is_the_last_usage_column() {
        // `positioned` reads the position from columns 35 and 36.
        assert_eq!(USAGE_COLUMNS.split(',').count(), 36);
        assert!(USAGE_COLUMNS.ends_with(" recorded_at"));
    }

    /// An export of a few chunks, read side by side (an index range) or one
    /// after another (other filters), gives exactly the rows of `ORDER BY
    /// recorded_at, seq`: times tied across the ends of chunks, records
    /// whose time went back (a clock stepped back), filters.
    #[tokio::test]
    async fn exports_every_row_once_in_order_across_chunks() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let path = dir.path().join("export.db");
        crate::sqlite::SqliteStore::migrate(&path).expect("migrate");
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.pragma_update(None, "foreign_keys", "OFF").expect("pragma");
        let rows = 8 * EXPORT_BATCH_ROWS + 1_234;
        let base = 1_800_000_000_000_000_i64;
        conn.execute_batch("BEGIN").expect("begin");
        for n in 1..=rows {
            let n = i64::try_from(n).expect("small");
            // Runs of seven records a time; 600 written after a clock step back.
            let at = if (3_000..3_600).contains(&n) { base + 5 + n % 5 } else { base + n / 7 * 1_000 };
            conn.execute(
                "INSERT INTO usage_records (seq, account_id, request_id, fingerprint, request_type, model, \
                 price_version, status, input_tokens, cache_read_tokens, cache_write_tokens, output_tokens, images, \
                 tool_calls, reasoning_tokens, system_tokens, context_tokens, tools, cost_usd, credits, \
                 charged_from, debt_incurred, hold_expired, recorded_at) \
                 VALUES (?1, ?2, ?3, '', 'chat', ?4, 1, 'success', 1, 0, 0, 2, 0, 0, 0, 0, 0, '', 5, 7, '', 0, 0, ?5)",
                rusqlite::params![n, format!("a{}", n % 3), format!("r{n:05}"), format!("m{}", n % 2), at],
            )
            .expect("insert");
        }
        conn.execute_batch("COMMIT").expect("commit");

        let reader = crate::sqlite::SqliteReader::open(&path).expect("reader");
        let time = |us: i64| Timestamp::from_microsecond(us).expect("time");
        let (from, to) = (base + 7, base + i64::try_from(rows / 8).expect("small") * 1_000);
        let window = UsageFilter { from: Some(time(from)), to: Some(time(to)), ..UsageFilter::default() };
        let in_window = format!("recorded_at >= {from} AND recorded_at < {to}");
        let model = UsageFilter { model: Some("m1".into()), ..UsageFilter::default() };
        let cases = [
            (None, UsageFilter::default(), "1 = 1".to_string()),
            (Some("a1"), UsageFilter::default(), "account_id = 'a1'".to_string()),
            (None, window.clone(), in_window.clone()),
            (None, model, "model = 'm1'".to_string()),
            (
                Some("a2"),
                UsageFilter { model: Some("m0".into()), ..window },
                format!("account_id = 'a2' AND model = 'm0' AND {in_window}"),
            ),
        ];
        for (account, filter, condition) in cases {
            let mut expected = conn
                .prepare(&format!("SELECT request_id FROM usage_records WHERE {condition} ORDER BY recorded_at, seq"))
                .expect("prepare");
            let expected: Vec<String> =
                expected.query_map([], |r| r.get(0)).expect("query").collect::<Result<_, _>>().expect("rows");
            assert!(expected.len() > EXPORT_BATCH_ROWS, "{condition}: more than a chunk");
            let (sink, mut chunks): (ExportSink, _) = tokio::sync::mpsc::channel(4);
            // Request ids, one a line.
            let encode = ExportEncoder::new(ExportFields::All, |batch: &UsageBatch, out: &mut Vec<u8>| {
                for row in batch.rows() {
                    out.extend_from_slice(row.fields.request_id.as_bytes());
                    out.push(b'\n');
                }
            });
            let collect = async {
                let mut got = Vec::new();
                while let Some(chunk) = chunks.recv().await {
                    let chunk = chunk.expect("chunk");
                    assert!(chunk.records <= EXPORT_BATCH_ROWS);
                    let ids: Vec<String> =
                        String::from_utf8(chunk.bytes).expect("text").lines().map(str::to_string).collect();
                    assert_eq!(ids.len(), chunk.records, "{condition}: a chunk's count is its rows");
                    got.extend(ids);
                }
                got
            };
            let (sent, got) = tokio::join!(reader.export(account, filter, encode, sink), collect);
            assert_eq!(sent.expect("export"), expected.len() as u64, "{condition}");
            assert!(got == expected, "{condition}: {} rows in another order or set", got.len());
        }
    }
}
