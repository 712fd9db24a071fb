//! `creditd-bench export`: streaming usage export, three ways, on one
//! database of N usage records (default 1,000,000), in one run:
//!
//! - HTTP: `GET /v1/usage/export` from a server started in this process on
//!   127.0.0.1:0, read with a plain HTTP client (ureq) on another thread;
//! - CLI: the release `creditd export` under `/usr/bin/time -v`;
//! - baseline: `sqlite3 -csv` selecting the same columns in the same order.
//!
//! Every output is read from its socket or pipe and its records counted
//! here, so the three pay the same consumer. Rows/s is records over wall
//! time (request or process start to the last byte). Peak RSS: this
//! process's `VmHWM` (reset through `/proc/self/clear_refs` before each HTTP
//! run; it holds the server *and* the client), and GNU time's maximum
//! resident set size for the two child processes.
//!
//! The database is made through the store's writer (records in flight at
//! once, so it commits in large batches) by a child process of this binary
//! (`--seed-only`), so that the seeding's memory never counts.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use creditd_core::account::{GrantKind, RequestDetails};
use creditd_core::engine::{NewGrant, Outcome};
use creditd_core::ledger::Reference;
use creditd_core::pricing::{ModelPrice, RequestStatus, TokenRates, Usage};
use creditd_core::units::{Credits, Usd};
use creditd_server::export::Format;
use creditd_server::{App, ServerConfig};
use creditd_store::sqlite::{SqliteReader, SqliteStore};
use creditd_store::{
    Command, EngineConfig, ExportEncoder, ExportFields, Store, SystemClock, UsageBatch, UsageFilter, WriterLimits,
};

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Usage records in the database.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Accounts the records are spread over.
    #[arg(long, default_value_t = 1_000)]
    accounts: u32,
    /// The database: reused if it holds at least `rows` records, made otherwise.
    #[arg(long, default_value = "target/bench-export.db")]
    db: PathBuf,
    /// The `creditd` binary whose `export` is measured (a release build).
    #[arg(long, default_value = "target/release/creditd")]
    creditd: PathBuf,
    /// Measured runs of each way; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Only the ways whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Only make the database (the measuring run starts this as a child).
    #[arg(long, hide = true)]
    seed_only: bool,
}

const ADMIN_KEY: &str = "creditd-bench-export-admin-key";
const MODELS: [&str; 2] = ["bench-large", "bench-small"];
const PROJECTS: [&str; 8] = [
    "web-app",
    "mobile",
    "Acme, Inc.",
    "say \"hello\"",
    "two\nlines",
    "Проект «Ёж»",
    "日本語のプロジェクト",
    "internal-tools",
];
/// Records in flight at once while seeding.
const IN_FLIGHT: usize = 2048;

/// The columns of the CSV export, as stored: what `sqlite3 -csv` selects.
const BASELINE_SQL: &str = "SELECT request_id, account_id, project, conversation, request_type, model, \
     price_version, status, started_at, finished_at, latency_ms, input_tokens, cache_read_tokens, \
     cache_write_tokens, output_tokens, reasoning_tokens, system_tokens, context_tokens, images, tool_calls, \
     tools, region, retries, iterations, external_calls, context_bytes, cost_usd, credits, charged_from, \
     debt_incurred, recorded_at FROM usage_records ORDER BY recorded_at, seq";

pub async fn run(args: ExportArgs) -> Result<()> {
    if args.seed_only {
        return seed(&args.db, args.rows, args.accounts).await;
    }
    let have = if args.db.is_file() { count(&args.db).await.unwrap_or(0) } else { 0 };
    if have < args.rows {
        if args.db.exists() {
            std::fs::remove_file(&args.db).with_context(|| format!("remove {}", args.db.display()))?;
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", args.db.display()));
            }
        }
        let me = std::env::current_exe()?;
        let status = Process::new(me)
            .args(["export", "--seed-only", "--db"])
            .arg(&args.db)
            .args(["--rows", &args.rows.to_string(), "--accounts", &args.accounts.to_string()])
            .status()?;
        if !status.success() {
            bail!("seeding failed: {status}");
        }
    }
    let rows = count(&args.db).await?;
    if !args.creditd.is_file() {
        bail!("no creditd binary at {} (cargo build --release -p creditd)", args.creditd.display());
    }
    let db_mb = std::fs::metadata(&args.db)?.len() / (1024 * 1024);
    println!("machine: {}", machine());
    println!("database: {} usage records over {} accounts, {db_mb} MB", rows, args.accounts);

    // Warm the page cache, so that no way pays for the first read from disk.
    let mut file = std::fs::File::open(&args.db)?;
    let mut sink = vec![0u8; 1 << 20];
    while file.read(&mut sink)? > 0 {}

    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&args.db, EngineConfig::default(), WriterLimits::default(), Arc::new(SystemClock))
            .context("open the store")?,
    );
    let config = ServerConfig { admin_key: Some(ADMIN_KEY.into()), ..ServerConfig::default() };
    let app = App::new(store.clone(), Arc::new(SystemClock), None, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let router = app.router();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let ways: Vec<(&str, Way)> = vec![
        ("in-process: store export only (read + decode, no formatting)", Way::Store(None)),
        ("in-process: store export + CSV formatting on the reading threads (no I/O)", Way::Store(Some(Format::Csv))),
        ("HTTP `GET /v1/usage/export?format=csv`", Way::Http("csv")),
        ("HTTP `GET /v1/usage/export?format=jsonl`", Way::Http("jsonl")),
        ("CLI `creditd export --format csv`", Way::Cli("csv")),
        ("CLI `creditd export --format jsonl`", Way::Cli("jsonl")),
        ("baseline `sqlite3 -csv` (same columns, raw values)", Way::Sqlite3),
    ];
    let ways: Vec<(&str, Way)> = ways
        .into_iter()
        .filter(|(name, _)| args.only.as_ref().is_none_or(|only| name.contains(only.as_str())))
        .collect();
    // Round by round, every way once, so that a neighbour's load on this
    // shared machine falls on all of them alike; each way's ratio to the
    // baseline is taken within its round.
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); ways.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    for round in 1..=args.rounds.max(1) {
        let mut this_round = Vec::new();
        for (name, way) in &ways {
            let run = match way {
                Way::Http(format) => http(address, format).await?,
                Way::Store(format) => in_process(&store, *format).await?,
                Way::Cli(format) => child(
                    Process::new(&args.creditd).args([
                        "export",
                        "--db",
                        &format!("sqlite://{}", args.db.display()),
                        "--format",
                        format,
                    ]),
                    *format == "csv",
                )?,
                Way::Sqlite3 => {
                    child(Process::new("sqlite3").args(["-csv", "-header"]).arg(&args.db).arg(BASELINE_SQL), true)?
                }
            };
            if run.records != rows {
                bail!("{name}: {} records, the database holds {rows}", run.records);
            }
            eprintln!(
                "  round {round}: {name}: {:.2}s, {:.0} rows/s, {} MB out, peak RSS {} MB",
                run.seconds,
                run.rows_per_second(),
                run.bytes / (1024 * 1024),
                run.peak_rss_mb
            );
            this_round.push(run);
        }
        let baseline = ways.iter().position(|(name, _)| name.starts_with("baseline")).map(|i| this_round[i]);
        for (i, run) in this_round.into_iter().enumerate() {
            if let Some(b) = baseline {
                ratios[i].push(run.rows_per_second() / b.rows_per_second());
            }
            runs[i].push(run);
        }
    }
    server.abort();
    drop(app);
    drop(store);

    let median = |mut xs: Vec<f64>| -> f64 {
        xs.sort_by(f64::total_cmp);
        xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!();
    println!(
        "| way | seconds (median) | rows/s (median) | × sqlite3 (median of rounds) | output MB | peak RSS MB (max) |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, (name, _)) in ways.iter().enumerate() {
        let seconds = median(runs[i].iter().map(|r| r.seconds).collect());
        let peak = runs[i].iter().map(|r| r.peak_rss_mb).max().unwrap_or(0);
        let bytes = runs[i].first().map_or(0, |r| r.bytes);
        println!(
            "| {name} | {seconds:.2} | {:.0} | {:.2}× | {} | {peak} |",
            rows as f64 / seconds,
            median(ratios[i].clone()),
            bytes / (1024 * 1024)
        );
    }
    Ok(())
}

enum Way {
    /// The store's export into a channel, optionally formatted, in this process.
    Store(Option<Format>),
    Http(&'static str),
    Cli(&'static str),
    Sqlite3,
}

#[derive(Clone, Copy, Debug)]
struct Run {
    records: u64,
    bytes: u64,
    seconds: f64,
    peak_rss_mb: u64,
}

impl Run {
    fn rows_per_second(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

async fn in_process(store: &Arc<dyn Store>, format: Option<Format>) -> Result<Run> {
    reset_peak();
    let started = Instant::now();
    let (sink, mut chunks) = tokio::sync::mpsc::channel(4);
    let encode: ExportEncoder = match format {
        Some(format) => format.encoder(),
        None => ExportEncoder::new(ExportFields::All, |_: &UsageBatch, _: &mut Vec<u8>| {}),
    };
    let export = {
        let store = store.clone();
        tokio::spawn(async move { store.export(None, UsageFilter::default(), encode, sink).await })
    };
    let (mut records, mut bytes) = (0u64, 0u64);
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk?;
        records += chunk.records as u64;
        bytes += chunk.bytes.len() as u64;
    }
    export.await??;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Run { records, bytes, seconds, peak_rss_mb: vm_hwm_mb() })
}

async fn count(db: &Path) -> Result<u64> {
    let reader = SqliteReader::open(db)?;
    Ok(reader.usage_count(None, UsageFilter::default()).await?)
}

/// Counts records in a stream: line ends outside CSV quotes (JSONL has no
/// bare quotes outside strings that would matter: it counts every `\n`).
struct Counter {
    csv: bool,
    quoted: bool,
    lines: u64,
    bytes: u64,
}

impl Counter {
    fn new(csv: bool) -> Self {
        Counter { csv, quoted: false, lines: 0, bytes: 0 }
    }

    fn feed(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        if !self.csv {
            self.lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            return;
        }
        // 64 bytes at a time: bit masks of quotes and line ends; a line
        // end is inside quotes when the quotes before it are odd in number
        // (the prefix XOR of the quote mask), flipped if a block starts quoted.
        let mut blocks = chunk.chunks_exact(64);
        for block in &mut blocks {
            let (mut quotes, mut ends) = (0u64, 0u64);
            for (i, word) in block.chunks_exact(8).enumerate() {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(word);
                let word = u64::from_le_bytes(bytes);
                quotes |= byte_mask(word, b'"') << (8 * i);
                ends |= byte_mask(word, b'\n') << (8 * i);
            }
            let mut inside = quotes;
            for shift in [1, 2, 4, 8, 16, 32] {
                inside ^= inside << shift;
            }
            if self.quoted {
                inside = !inside;
            }
            self.lines += u64::from((ends & !inside).count_ones());
            self.quoted ^= quotes.count_ones() % 2 == 1;
        }
        for &b in blocks.remainder() {
            match b {
                b'"' => self.quoted = !self.quoted,
                b'\n' if !self.quoted => self.lines += 1,
                _ => {}
            }
        }
    }

    /// Records: lines, less the CSV header.
    fn records(&self) -> u64 {
        if self.csv { self.lines.saturating_sub(1) } else { self.lines }
    }

    fn drain(&mut self, mut reader: impl Read) -> std::io::Result<()> {
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buffer)?;
            if n == 0 {
                return Ok(());
            }
            self.feed(&buffer[..n]);
        }
    }
}

/// Bit `i` set where byte `i` of `word` is `byte`, eight bytes at once: the
/// counter runs beside the export it measures, on the same two cores, so
/// it must cost little (a byte at a time, it took a tenth of their time).
fn byte_mask(word: u64, byte: u8) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = word ^ (u64::from(byte) * 0x0101_0101_0101_0101);
    // The high bit of every byte of `x` that is zero.
    let zero = !(((x & LOW7) + LOW7) | x | LOW7);
    // Those eight bits (7, 15, …, 63) gathered into bits 0…7.
    (zero >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// Peak RSS of this process since the last reset, in MB.
fn vm_hwm_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb / 1024)
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0).
fn reset_peak() {
    if std::fs::write("/proc/self/clear_refs", "5").is_err() {
        eprintln!("  (cannot reset the peak RSS: it covers the whole process)");
    }
}

async fn http(address: std::net::SocketAddr, format: &'static str) -> Result<Run> {
    reset_peak();
    let url = format!("http://{address}/v1/usage/export?format={format}");
    let started = Instant::now();
    let counter = tokio::task::spawn_blocking(move || -> Result<Counter> {
        let response = ureq::get(&url).header("Authorization", format!("Bearer {ADMIN_KEY}")).call()?;
        let mut counter = Counter::new(format == "csv");
        counter.drain(response.into_body().into_reader())?;
        Ok(counter)
    })
    .await??;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Run { records: counter.records(), bytes: counter.bytes, seconds, peak_rss_mb: vm_hwm_mb() })
}

/// Runs `command` under `/usr/bin/time -v`, counting what it prints.
fn child(command: &mut Process, csv: bool) -> Result<Run> {
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
    let started = Instant::now();
    let mut child = Process::new("/usr/bin/time")
        .arg("-v")
        .arg(&program)
        .args(&args)
        .env("CREDITD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run /usr/bin/time -v {}", program.to_string_lossy()))?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut counter = Counter::new(csv);
    counter.drain(child.stdout.take().context("stdout")?)?;
    let status = child.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    let errors = errors.join().unwrap_or_default();
    if !status.success() {
        bail!("{} failed ({status}): {errors}", program.to_string_lossy());
    }
    let peak_kb = errors
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .context("no maximum resident set size from /usr/bin/time")?;
    Ok(Run { records: counter.records(), bytes: counter.bytes, seconds, peak_rss_mb: peak_kb / 1024 })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb / (1024 * 1024));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} × {cpu}, {memory} GiB RAM, Linux {}", kernel.trim())
}

fn price(scale: i64) -> ModelPrice {
    ModelPrice {
        cost_usd_per_mtok: TokenRates {
            input: Some(Usd::whole(3 * scale)),
            output: Some(Usd::whole(15 * scale)),
            cache_read: Some(Usd::parse("0.3").expect("literal")),
            cache_write: Some(Usd::parse("3.75").expect("literal")),
        },
        ..ModelPrice::default()
    }
}

/// One record's outcome: every informational field set, text that needs
/// CSV quoting in some projects, a few errors and cancellations.
fn outcome(n: u64) -> Outcome {
    let request_id = format!("req-{n:08}");
    let status = match n % 50 {
        0 => RequestStatus::Error,
        1 => RequestStatus::Cancelled,
        _ => RequestStatus::Success,
    };
    let tools: Vec<String> = match n % 4 {
        0 => vec![],
        1 => vec!["web_search".into()],
        2 => vec!["bash".into(), "read_file".into()],
        _ => vec!["web_search".into(), "bash".into(), "edit".into()],
    };
    let start = jiff::Timestamp::now();
    let latency = 200 + (n * 7919) % 9000;
    Outcome {
        request_id: request_id.clone(),
        fingerprint: request_id,
        status,
        usage: Usage {
            input_tokens: 500 + (n * 31) % 20_000,
            cache_read_tokens: (n * 17) % 50_000,
            cache_write_tokens: (n * 13) % 2_000,
            output_tokens: 100 + (n * 7) % 4_000,
            reasoning_tokens: (n * 3) % 100,
            system_tokens: 1_200,
            context_tokens: 3_000 + n % 1_000,
            images: n % 10 / 9,
            tool_calls: n % 4,
        },
        details: RequestDetails {
            project: (!n.is_multiple_of(9)).then(|| PROJECTS[(n % 8) as usize].to_string()),
            conversation: Some(format!("conv-{}", n % 50_000)),
            region: Some(if n.is_multiple_of(2) { "eu-west-1" } else { "us-east-1" }.to_string()),
            started_at: Some(start),
            finished_at: Some(start + jiff::SignedDuration::from_millis(i64::try_from(latency).unwrap_or(0))),
            latency_ms: Some(latency),
            retries: Some(n % 3),
            iterations: Some(1 + n % 5),
            external_calls: Some(n % 4),
            context_bytes: Some(10_000 + (n * 101) % 90_000),
            tools,
            metadata: Some(r#"{"client":"bench","version":"1.2.3"}"#.to_string()),
        },
    }
}

/// Makes the database: models, funded accounts, then `rows` one-shot usage
/// records through the store's writer, `IN_FLIGHT` at a time.
async fn seed(db: &Path, rows: u64, accounts: u32) -> Result<()> {
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(db, EngineConfig::default(), WriterLimits::default(), Arc::new(SystemClock))
            .context("open store")?,
    );
    let started = Instant::now();
    for (i, id) in MODELS.iter().enumerate() {
        let scale = if i == 0 { 2 } else { 1 };
        store.execute(Command::PutModel { id: (*id).into(), price: price(scale) }, None).await?;
    }
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..accounts {
        let store = store.clone();
        pending.spawn(async move {
            let id = format!("acct-{i:05}");
            store.execute(Command::CreateAccount { id: id.clone(), email: None, metadata: None }, None).await?;
            let grant = NewGrant {
                kind: GrantKind::Purchased,
                source: "bench".into(),
                reason: None,
                amount: Credits::whole(1_000_000_000),
                priority: None,
                starts_at: None,
                expires_at: None,
                reference: Reference::None,
            };
            store.execute(Command::Grant { account_id: id, grant }, None).await
        });
    }
    while let Some(r) = pending.join_next().await {
        r??;
    }
    for n in 0..rows {
        let store = store.clone();
        let account_id = format!("acct-{:05}", n % u64::from(accounts.max(1)));
        pending.spawn(async move {
            let command = Command::RecordUsage {
                account_id,
                outcome: outcome(n),
                model: MODELS[usize::from(n % 3 == 0)].into(),
                request_type: if n % 5 == 0 { "agent" } else { "chat" }.into(),
                enforce: false,
            };
            store.execute(command, None).await
        });
        if pending.len() >= IN_FLIGHT {
            pending.join_next().await.expect("non-empty")??;
        }
        if (n + 1) % 100_000 == 0 {
            eprintln!("  seeded {} records, {:.0}/s", n + 1, (n + 1) as f64 / started.elapsed().as_secs_f64());
        }
    }
    while let Some(r) = pending.join_next().await {
        r??;
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "seeded {rows} usage records over {accounts} accounts through the store's writer in {seconds:.1}s ({:.0}/s)",
        rows as f64 / seconds
    );
    Ok(())
}
