//! `creditd-bench`: measures creditd on this machine. See BENCHMARKS.md.
//!
//! `inprocess`: one-shot charges per second through the `Store` API with
//! durable commits, N accounts, C concurrent callers: on the embedded SQLite
//! store, or with `--postgres` on a PostgreSQL database through one or more
//! store instances (each its own writer, as separate `creditd serve`s would be).
//!
//! `bare-http`: the HTTP ceiling creditd is measured against; `tables`: the
//! table-writing experiment of issue #16 (see their modules).

mod bare_http;
mod chaos;
mod export;
mod history;
mod tables;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use creditd_core::account::{GrantKind, RequestDetails};
use creditd_core::engine::{NewGrant, Outcome};
use creditd_core::ledger::Reference;
use creditd_core::pricing::{ModelPrice, RequestStatus, TokenRates, Usage};
use creditd_core::units::{Credits, Usd};
use creditd_store::postgres::PgStore;
use creditd_store::sqlite::SqliteStore;
use creditd_store::{Command, EngineConfig, Store, SystemClock, WriterLimits};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// One-shot charges through the store API.
    Inprocess {
        #[arg(long, default_value_t = 10_000)]
        accounts: u32,
        #[arg(long, default_value_t = 64)]
        callers: u32,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Charge one account from every caller instead of spreading.
        #[arg(long)]
        hot: bool,
        /// A PostgreSQL database to run on (its creditd tables are emptied
        /// first), e.g. postgres://postgres@127.0.0.1:5432/creditd_bench.
        #[arg(long)]
        postgres: Option<String>,
        /// Store instances on the PostgreSQL database, callers spread over them.
        #[arg(long, default_value_t = 1)]
        instances: u32,
        /// Writers per PostgreSQL store instance (`WriterLimits::writers`).
        #[arg(long, default_value_t = WriterLimits::default().writers)]
        writers: usize,
    },
    /// Creates (or fills) a database with the bench model and N funded
    /// accounts `acct-0…`, for an HTTP benchmark of `creditd serve` on it.
    Seed {
        #[arg(long)]
        db: std::path::PathBuf,
        #[arg(long, default_value_t = 10_000)]
        accounts: u32,
        /// Usage records (each with its ledger entry) of past requests to
        /// store as well, spread over the accounts (see `history`).
        #[arg(long, default_value_t = 0)]
        history: u64,
    },
    /// Streaming usage export of 1,000,000 records: HTTP, `creditd export`
    /// and `sqlite3 -csv` as the baseline (rows/s, peak RSS).
    Export(export::ExportArgs),
    /// Several `creditd serve` on one PostgreSQL database under mixed load
    /// while instances are killed, connections terminated and COMMIT
    /// answers cut; then: every acknowledged operation exactly once, and
    /// `creditd audit` (scripts/chaos-postgres).
    Chaos(chaos::ChaosArgs),
    /// The bare HTTP ceiling: `creditd serve`'s listener answering
    /// `POST /v1/usage` after parsing its body, without metering
    /// (scripts/bench-http's baseline).
    BareHttp(bare_http::BareHttpArgs),
    /// How fast the table-writing side goes in large transactions on random
    /// accounts, for today's layout and cheaper ones (issue #16).
    Tables(tables::TablesArgs),
}

fn model() -> ModelPrice {
    ModelPrice {
        cost_usd_per_mtok: TokenRates {
            input: Some(Usd::whole(3)),
            output: Some(Usd::whole(15)),
            cache_read: Some(Usd::parse("0.3").expect("literal")),
            cache_write: Some(Usd::parse("3.75").expect("literal")),
        },
        ..ModelPrice::default()
    }
}

async fn seed(store: &Arc<dyn Store>, accounts: u32) -> Result<()> {
    store.execute(Command::PutModel { id: "bench-model".into(), price: model() }, None).await?;
    // Many commands in flight at once, so the writer can batch them.
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..accounts {
        let store = store.clone();
        pending.spawn(async move {
            let id = format!("acct-{i}");
            store.execute(Command::CreateAccount { id: id.clone(), email: None, metadata: None }, None).await?;
            let grant = NewGrant {
                kind: GrantKind::Purchased,
                source: "bench".into(),
                reason: None,
                amount: Credits::whole(100_000_000),
                priority: None,
                starts_at: None,
                expires_at: None,
                reference: Reference::None,
            };
            store.execute(Command::Grant { account_id: id, grant }, None).await
        });
        if pending.len() >= 1024 {
            pending.join_next().await.expect("non-empty")??;
        }
    }
    while let Some(r) = pending.join_next().await {
        r??;
    }
    Ok(())
}

struct Inprocess {
    accounts: u32,
    callers: u32,
    seconds: u64,
    hot: bool,
    postgres: Option<String>,
    instances: u32,
    writers: usize,
}

/// The stores the callers charge through, and what keeps their database.
fn open_stores(args: &Inprocess, dir: &tempfile::TempDir) -> Result<Vec<Arc<dyn Store>>> {
    let open = |url: &str| -> Result<Arc<dyn Store>> {
        let limits = WriterLimits { writers: args.writers, ..WriterLimits::default() };
        let store = PgStore::connect(url, EngineConfig::default(), limits, Arc::new(SystemClock)).context("connect")?;
        Ok(Arc::new(store))
    };
    match &args.postgres {
        None => Ok(vec![Arc::new(
            SqliteStore::open(
                &dir.path().join("bench.db"),
                EngineConfig::default(),
                WriterLimits::default(),
                Arc::new(SystemClock),
            )
            .context("open store")?,
        )]),
        Some(url) => (0..args.instances.max(1)).map(|_| open(url)).collect(),
    }
}

async fn inprocess(args: Inprocess) -> Result<()> {
    let Inprocess { accounts, callers, seconds, hot, .. } = args;
    let dir = tempfile::tempdir()?;
    if let Some(url) = &args.postgres {
        empty_postgres(url)?;
    }
    let stores = open_stores(&args, &dir)?;
    let started = Instant::now();
    seed(&stores[0], accounts).await?;
    eprintln!("seeded {accounts} accounts in {:.1}s", started.elapsed().as_secs_f64());

    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let store = stores[caller as usize % stores.len()].clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n: u64 = 0;
            while Instant::now() < deadline {
                let account = if hot { 0 } else { (u64::from(caller) * 7919 + n * 104_729) % u64::from(accounts) };
                let request_id = format!("c{caller}-{n}");
                let t = Instant::now();
                let result = store
                    .execute(
                        Command::RecordUsage {
                            account_id: format!("acct-{account}"),
                            outcome: Outcome {
                                request_id: request_id.clone(),
                                fingerprint: request_id,
                                status: RequestStatus::Success,
                                usage: Usage { input_tokens: 2000, output_tokens: 500, ..Usage::default() },
                                details: RequestDetails::default(),
                            },
                            model: "bench-model".into(),
                            request_type: "chat".into(),
                            enforce: true,
                        },
                        None,
                    )
                    .await;
                latencies.push(t.elapsed());
                if let Err(e) = result {
                    return Err(anyhow::anyhow!("charge failed: {e}"));
                }
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    latencies.sort();
    let total = done.load(Ordering::Relaxed);
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)).copied();
    let backend = match &args.postgres {
        Some(_) => format!("postgres instances={} writers={}", stores.len(), args.writers),
        None => "sqlite".to_string(),
    };
    println!(
        "inprocess {backend} accounts={accounts} callers={callers} hot={hot}: {:.0} charges/s, p50 {:?}, p99 {:?}, \
         p999 {:?}, rss {} MB",
        total as f64 / seconds as f64,
        pct(0.50).unwrap_or_default(),
        pct(0.99).unwrap_or_default(),
        pct(0.999).unwrap_or_default(),
        rss_mb()
    );
    Ok(())
}

/// Empties the creditd tables of a PostgreSQL database (created by an
/// earlier run), so that every run starts from the same place.
fn empty_postgres(url: &str) -> Result<()> {
    PgStore::migrate(url).context("migrate")?;
    let tables = "accounts, grants, holds, usage_records, ledger_entries, models, api_keys, account_tokens, \
                  idempotency_keys, plans, subscriptions, payments, payment_refunds, webhook_events";
    let status = std::process::Command::new("psql")
        .args([url, "-q", "-v", "ON_ERROR_STOP=1", "-c", &format!("TRUNCATE {tables}")])
        .status()
        .context("run psql")?;
    anyhow::ensure!(status.success(), "psql could not empty the database");
    Ok(())
}

/// Resident memory of this process, from /proc.
fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().bench {
        Bench::Inprocess { accounts, callers, seconds, hot, postgres, instances, writers } => {
            inprocess(Inprocess { accounts, callers, seconds, hot, postgres, instances, writers }).await
        }
        Bench::Export(args) => export::run(args).await,
        Bench::Chaos(args) => tokio::task::spawn_blocking(move || chaos::run(args)).await?,
        Bench::BareHttp(args) => bare_http::run(args).await,
        Bench::Tables(args) => tokio::task::spawn_blocking(move || tables::run(args)).await?,
        Bench::Seed { db, accounts, history } => {
            let store: Arc<dyn Store> = Arc::new(SqliteStore::open(
                &db,
                EngineConfig::default(),
                WriterLimits::default(),
                Arc::new(SystemClock),
            )?);
            let started = Instant::now();
            seed(&store, accounts).await?;
            eprintln!("seeded {accounts} accounts in {:.1}s", started.elapsed().as_secs_f64());
            if history > 0 {
                history::record_template(&store).await?;
                // The writer stops and closes its connection on drop.
                drop(store);
                history::replicate(&db, accounts, history)?;
            }
            Ok(())
        }
    }
}
