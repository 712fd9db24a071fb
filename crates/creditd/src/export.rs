//! `creditd export`: usage records as CSV or JSONL from the database, in
//! `recorded_at` order, with the HTTP export's formatting
//! (`creditd_server::export`).
//!
//! It opens the database for reads only ([`SqlReader`]: no writer, no
//! migration), so it is safe while `creditd serve` has the database open.
//! Rows arrive in batches over a bounded channel, so memory stays flat
//! whatever their number. A progress bar is drawn on standard error when it
//! is a terminal and the records do not go to that terminal too.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use creditd_core::pricing::RequestStatus;
use creditd_server::export::Format;
use creditd_store::UsageFilter;
use creditd_store::postgres::PgReader;
use creditd_store::sql::Db;
use creditd_store::sql::store::SqlReader;
use creditd_store::sqlite::SqliteReader;
use jiff::Timestamp;
use tokio::sync::mpsc;

use crate::Failure;
use crate::cli::{ExportArgs, ExportFormat};
use crate::commands::{Database, database, resolve};

/// Encoded chunks between the reads and the writes: what the export holds
/// at most.
const CHUNKS_IN_FLIGHT: usize = 4;
/// Output buffer: few large writes.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// The progress bar is redrawn at most this often.
const REDRAW: Duration = Duration::from_millis(100);

fn timestamp(flag: &str, text: Option<&str>) -> Result<Option<Timestamp>, Failure> {
    text.map(|t| {
        t.parse::<Timestamp>()
            .map_err(|_| Failure::usage(format!("{flag} {t:?} is not an RFC 3339 time such as 2026-03-01T00:00:00Z")))
    })
    .transpose()
}

fn filter(args: &ExportArgs) -> Result<UsageFilter, Failure> {
    let from = timestamp("--from", args.from.as_deref())?;
    let to = timestamp("--to", args.to.as_deref())?;
    if let (Some(from), Some(to)) = (from, to)
        && to < from
    {
        return Err(Failure::usage("--to must not be before --from"));
    }
    let status = match args.status.as_deref() {
        None => None,
        Some(s) => Some(
            RequestStatus::parse(s)
                .ok_or_else(|| Failure::usage(format!("--status {s:?}: use success, error or cancelled")))?,
        ),
    };
    Ok(UsageFilter {
        from,
        to,
        model: args.model.clone(),
        request_type: args.request_type.clone(),
        project: args.project.clone(),
        conversation: args.conversation.clone(),
        status,
    })
}

/// `creditd export`.
pub async fn export(args: &ExportArgs) -> Result<(), Failure> {
    let (_, url) = resolve(&args.db)?;
    let database = database(&url)?;
    let filter = filter(args)?;
    let format = match args.format {
        ExportFormat::Csv => Format::Csv,
        ExportFormat::Jsonl => Format::Jsonl,
    };
    let cannot_open = |e| Failure::runtime(format!("cannot open {database}: {e}"));
    match &database {
        Database::Sqlite(path) => {
            export_from(args, &database, SqliteReader::open(path).map_err(cannot_open)?, filter, format).await
        }
        Database::Postgres(url) => {
            export_from(args, &database, PgReader::connect(url).map_err(cannot_open)?, filter, format).await
        }
    }
}

async fn export_from<C: Db + Send + 'static>(
    args: &ExportArgs,
    database: &Database,
    reader: SqlReader<C>,
    filter: UsageFilter,
    format: Format,
) -> Result<(), Failure> {
    let url = database.to_string();
    let account = args.account.clone();
    if let Some(id) = &account {
        let found = reader.account(id).await.map_err(|e| Failure::runtime(format!("cannot read {url}: {e}")))?;
        if found.is_none() {
            return Err(Failure::runtime(format!("there is no account {id:?} in {url}")));
        }
    }

    let to_terminal = args.output.is_none() && io::stdout().is_terminal();
    let mut progress = if io::stderr().is_terminal() && !to_terminal {
        let total = reader
            .usage_count(account.as_deref(), filter.clone())
            .await
            .map_err(|e| Failure::runtime(format!("cannot count the records: {e}")))?;
        Some(Progress::new(total))
    } else {
        None
    };

    let sink: Box<dyn Write> = match &args.output {
        Some(file) => Box::new(
            File::create(file).map_err(|e| Failure::runtime(format!("cannot create {}: {e}", file.display())))?,
        ),
        None => Box::new(io::stdout()),
    };
    let mut out = io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, sink);
    let where_to = args.output.as_ref().map_or("standard output".to_string(), |f| f.display().to_string());
    let write_failed = |e: io::Error| Failure::runtime(format!("cannot write to {where_to}: {e}"));

    let (chunks_tx, mut chunks) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let task = {
        let reader = reader.clone();
        let account = account.clone();
        let filter = filter.clone();
        tokio::spawn(async move { reader.export(account.as_deref(), filter, format.encoder(), chunks_tx).await })
    };

    // `Ok(false)`: the reader went away (`creditd export | head`), stop quietly.
    let mut write = |bytes: &[u8]| match out.write_all(bytes) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(write_failed(e)),
    };
    let mut header = Vec::new();
    format.write_header(&mut header);
    let mut open = write(&header)?;
    let mut rows: u64 = 0;
    while open && let Some(chunk) = chunks.recv().await {
        let chunk = chunk.map_err(|e| Failure::runtime(format!("the export failed after {rows} records: {e}")))?;
        open = write(&chunk.bytes)?;
        rows += chunk.records as u64;
        if let Some(p) = progress.as_mut() {
            p.update(rows);
        }
    }
    drop(chunks);
    if open {
        match out.flush() {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(write_failed(e)),
            _ => {}
        }
    }
    let sent = task.await.map_err(|e| Failure::runtime(format!("the export stopped: {e}")))?;
    sent.map_err(|e| Failure::runtime(format!("the export failed after {rows} records: {e}")))?;
    if let Some(p) = progress.as_mut() {
        p.finish(rows, &where_to);
    }
    Ok(())
}

/// A progress bar on standard error: `[#####.....]  50%  500000/1000000 records  812345/s`.
struct Progress {
    total: u64,
    started: Instant,
    drawn: Option<Instant>,
}

const BAR_WIDTH: u64 = 30;

impl Progress {
    fn new(total: u64) -> Self {
        let p = Progress { total, started: Instant::now(), drawn: None };
        p.draw(0);
        p
    }

    fn update(&mut self, done: u64) {
        if self.drawn.is_some_and(|at| at.elapsed() < REDRAW) {
            return;
        }
        self.drawn = Some(Instant::now());
        self.draw(done);
    }

    fn draw(&self, done: u64) {
        let line = bar(done, self.total, self.started.elapsed());
        let mut err = io::stderr().lock();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
    }

    fn finish(&mut self, done: u64, where_to: &str) {
        self.draw(done);
        let seconds = self.started.elapsed().as_secs_f64();
        eprintln!("\nexported {done} records to {where_to} in {seconds:.1}s");
    }
}

/// One line of the progress bar. More records than counted (recorded since
/// the count) show as 100%.
fn bar(done: u64, total: u64, elapsed: Duration) -> String {
    let total = total.max(done);
    let filled = (done * BAR_WIDTH).checked_div(total).unwrap_or(BAR_WIDTH);
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    let rate = if elapsed.as_secs_f64() > 0.0 { done as f64 / elapsed.as_secs_f64() } else { 0.0 };
    let filled = usize::try_from(filled).unwrap_or(0);
    let empty = usize::try_from(BAR_WIDTH).unwrap_or(0).saturating_sub(filled);
    format!("[{}{}] {percent:>3}%  {done}/{total} records  {rate:.0}/s", "#".repeat(filled), ".".repeat(empty))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_records() {
        let second = Duration::from_secs(1);
        assert_eq!(bar(0, 10, second), format!("[{}]   0%  0/10 records  0/s", ".".repeat(30)));
        assert_eq!(bar(5, 10, second), format!("[{}{}]  50%  5/10 records  5/s", "#".repeat(15), ".".repeat(15)));
        assert_eq!(bar(10, 10, second), format!("[{}] 100%  10/10 records  10/s", "#".repeat(30)));
        assert_eq!(bar(12, 10, second), format!("[{}] 100%  12/12 records  12/s", "#".repeat(30)));
        assert_eq!(bar(0, 0, Duration::ZERO), format!("[{}] 100%  0/0 records  0/s", "#".repeat(30)));
    }
}
