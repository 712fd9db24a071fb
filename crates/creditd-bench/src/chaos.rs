//! `creditd-bench chaos`: several `creditd serve` on one PostgreSQL database
//! under mixed load while things break, then a count of what every
//! acknowledged operation left behind (`scripts/chaos-postgres` runs it; see
//! docs/chaos.md).
//!
//! The instances reach PostgreSQL through a [`PgProxy`] run here, which cuts
//! COMMIT answers and whole connections. The faults, in turn: an instance
//! killed with SIGKILL and started again; every server process of the
//! database terminated (`pg_terminate_backend`); COMMIT answers cut; every
//! connection cut; and, with `--restart-postgres`, PostgreSQL itself
//! restarted. Each client retries an operation that failed (5xx or no
//! answer) on another instance, with the same request id or
//! `Idempotency-Key`, until it is acknowledged.
//!
//! Afterwards, straight from the database: every acknowledged operation must
//! be there exactly once (lost: none; doubled: none, acknowledged or not),
//! and `creditd audit` must pass. Exits non-zero otherwise, or on any 500.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use creditd_testing::proxy::PgProxy;
use rand::Rng;
use serde_json::{Value, json};

const ADMIN_KEY: &str = "chaos-admin-key-0123456789";
/// How long a client keeps retrying one operation before it gives up on it.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
#[command(args_override_self = true)]
pub struct ChaosArgs {
    /// The `creditd` binary.
    #[arg(long)]
    creditd: PathBuf,
    /// A PostgreSQL database of the run's own (created and dropped by the
    /// caller), reached directly; the instances reach it through the proxy.
    #[arg(long)]
    db: String,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    instances: usize,
    #[arg(long, default_value_t = 12)]
    clients: usize,
    #[arg(long, default_value_t = 16)]
    accounts: usize,
    /// Seconds between faults.
    #[arg(long, default_value_t = 3.0)]
    fault_every: f64,
    /// A command that restarts PostgreSQL (the long form), e.g.
    /// `pg_ctlcluster --skip-systemctl-redirect 15 main restart`; one of the faults.
    #[arg(long)]
    restart_postgres: Option<String>,
    /// Keep the instances' logs even when the run passes.
    #[arg(long)]
    keep_logs: bool,
}

/// What an operation was, to look for it afterwards.
#[derive(Clone, Debug)]
enum Op {
    Authorize {
        account: String,
        request: String,
    },
    Settle {
        account: String,
        request: String,
    },
    Release {
        account: String,
        request: String,
    },
    Usage {
        account: String,
        request: String,
    },
    Topup {
        external_id: String,
    },
    Grant {
        tag: String,
    },
    /// `tag` is the void's reason: its own entry is the `void` entry with
    /// that reason (later `void` entries of the grant are its holds'
    /// credits, voided as they are freed, or its refunded charges).
    Void {
        grant: String,
        tag: String,
    },
    Adjust {
        tag: String,
    },
    Refund {
        account: String,
        request: String,
    },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Authorize { .. } => "authorize",
            Op::Settle { .. } => "settle",
            Op::Release { .. } => "release",
            Op::Usage { .. } => "usage",
            Op::Topup { .. } => "topup",
            Op::Grant { .. } => "grant",
            Op::Void { .. } => "void",
            Op::Adjust { .. } => "adjustment",
            Op::Refund { .. } => "refund",
        }
    }
}

#[derive(Default)]
struct Tally {
    /// Every operation tried, and whether it was acknowledged.
    ops: Mutex<Vec<(Op, bool)>>,
    statuses: Mutex<BTreeMap<u16, u64>>,
    no_answer: AtomicU64,
    retries: AtomicU64,
    gave_up: AtomicU64,
}

impl Tally {
    fn status(&self, status: u16) {
        *self.statuses.lock().unwrap_or_else(|e| e.into_inner()).entry(status).or_default() += 1;
    }
}

/// One `creditd serve`.
struct Instance {
    port: u16,
    child: Option<Child>,
}

struct Cluster {
    creditd: PathBuf,
    url: String,
    instances: Mutex<Vec<Instance>>,
    /// The instances' logs: removed after a run that passed.
    dir: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(15)))
        .build()
        .into()
}

impl Cluster {
    fn spawn(&self, port: u16, n: usize) -> Result<Child> {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("instance-{n}.log")))?;
        Process::new(&self.creditd)
            .args(["serve", "--db", &self.url, "--listen", &format!("127.0.0.1:{port}"), "--admin-key", ADMIN_KEY])
            .env("CREDITD_LOG", "warn")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.creditd.display()))
    }

    fn ports(&self) -> Vec<u16> {
        self.instances.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|i| i.port).collect()
    }

    /// Kills instance `n` with SIGKILL.
    fn kill(&self, n: usize) {
        let mut instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = instances[n].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn start(&self, n: usize) -> Result<()> {
        let mut instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        let port = instances[n].port;
        instances[n].child = Some(self.spawn(port, n)?);
        Ok(())
    }

    fn stop_all(&self) {
        for n in 0..self.ports().len() {
            self.kill(n);
        }
    }
}

/// Waits until `GET /healthz` answers 200 on `port`; how long it took.
fn healthy(agent: &ureq::Agent, port: u16, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Ok(r) = agent.get(&format!("http://127.0.0.1:{port}/healthz")).call()
            && r.status().as_u16() == 200
        {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Waits until a write (an account created) succeeds on `port`.
fn writes(agent: &ureq::Agent, port: u16, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        let id = format!("probe-{}", uuid::Uuid::now_v7().simple());
        let sent = agent
            .post(&format!("http://127.0.0.1:{port}/v1/accounts"))
            .header("Authorization", format!("Bearer {ADMIN_KEY}"))
            .send_json(json!({"id": id}));
        if let Ok(r) = sent
            && r.status().as_u16() == 201
        {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Sends one operation until an instance acknowledges it (2xx) or refuses
/// it (4xx), starting at a random instance and moving on after a 5xx or no
/// answer. The answer's body, if any.
fn send(
    agent: &ureq::Agent,
    cluster: &Cluster,
    tally: &Tally,
    method: &str,
    path: &str,
    body: &Value,
    key: Option<&str>,
) -> Option<(u16, Value)> {
    let ports = cluster.ports();
    let mut at = rand::rng().random_range(0..ports.len());
    let started = Instant::now();
    let mut first = true;
    while started.elapsed() < GIVE_UP_AFTER {
        if !first {
            tally.retries.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let url = format!("http://127.0.0.1:{}{path}", ports[at % ports.len()]);
        at += 1;
        let request = match method {
            "PUT" => agent.put(&url),
            _ => agent.post(&url),
        }
        .header("Authorization", format!("Bearer {ADMIN_KEY}"));
        let request = match key {
            Some(key) => request.header("Idempotency-Key", key),
            None => request,
        };
        match request.send_json(body) {
            Ok(mut response) => {
                let status = response.status().as_u16();
                tally.status(status);
                if status < 500 {
                    let value = response.body_mut().read_json::<Value>().unwrap_or(Value::Null);
                    return Some((status, value));
                }
            }
            Err(_) => {
                tally.no_answer.fetch_add(1, Ordering::Relaxed);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tally.gave_up.fetch_add(1, Ordering::Relaxed);
    None
}

/// One client: random operations on random accounts until `stop`.
fn client(cluster: &Cluster, tally: &Tally, accounts: usize, stop: &AtomicBool) {
    let agent = agent();
    let mut rng = rand::rng();
    // Holds this client placed and has not resolved yet; usage records it can refund; grants it can void.
    let mut open: Vec<(String, String)> = Vec::new();
    let mut recorded: Vec<(String, String)> = Vec::new();
    let mut grants: Vec<(String, String)> = Vec::new();
    let usage = json!({"input_tokens": 200, "output_tokens": 100});
    while !stop.load(Ordering::Relaxed) {
        let account = format!("chaos-{}", rng.random_range(0..accounts));
        let id = uuid::Uuid::now_v7().simple().to_string();
        let roll = rng.random_range(0..100);
        let (op, answer) = match roll {
            0..25 => {
                let body = json!({"account_id": account, "request_id": id, "model": "m1",
                                  "input_tokens": 200, "max_output_tokens": 200});
                let answer = send(&agent, cluster, tally, "POST", "/v1/authorize", &body, None);
                (Op::Authorize { account, request: id }, answer)
            }
            25..45 if !open.is_empty() => {
                let (account, request) = open.swap_remove(rng.random_range(0..open.len()));
                let body = json!({"account_id": account, "request_id": request, "status": "success", "usage": usage});
                let answer = send(&agent, cluster, tally, "POST", "/v1/settle", &body, None);
                (Op::Settle { account, request }, answer)
            }
            45..52 if !open.is_empty() => {
                let (account, request) = open.swap_remove(rng.random_range(0..open.len()));
                let body = json!({"account_id": account, "request_id": request});
                let answer = send(&agent, cluster, tally, "POST", "/v1/release", &body, None);
                (Op::Release { account, request }, answer)
            }
            25..70 => {
                let body = json!({"account_id": account, "request_id": id, "model": "m1", "status": "success",
                                  "usage": usage});
                let answer = send(&agent, cluster, tally, "POST", "/v1/usage", &body, None);
                (Op::Usage { account, request: id }, answer)
            }
            70..77 => {
                let body = json!({"amount_usd": "5", "provider": "manual", "external_id": format!("pay-{id}")});
                let path = format!("/v1/accounts/{account}/wallet/topups");
                let answer = send(&agent, cluster, tally, "POST", &path, &body, Some(&id));
                (Op::Topup { external_id: format!("pay-{id}") }, answer)
            }
            77..85 => {
                let tag = format!("grant-{id}");
                let body = json!({"amount": "10", "kind": "promo", "source": "chaos", "reason": tag});
                let path = format!("/v1/accounts/{account}/grants");
                let answer = send(&agent, cluster, tally, "POST", &path, &body, Some(&id));
                if let Some((201, grant)) = &answer
                    && let Some(gid) = grant["id"].as_str()
                {
                    grants.push((account.clone(), gid.to_string()));
                }
                (Op::Grant { tag }, answer)
            }
            85..89 if !grants.is_empty() => {
                let (account, grant) = grants.swap_remove(rng.random_range(0..grants.len()));
                let tag = format!("void-{id}");
                let path = format!("/v1/accounts/{account}/grants/{grant}/void");
                let answer = send(&agent, cluster, tally, "POST", &path, &json!({"reason": tag}), Some(&id));
                (Op::Void { grant, tag }, answer)
            }
            85..94 => {
                let tag = format!("adjust-{id}");
                let path = format!("/v1/accounts/{account}/wallet/adjustments");
                let answer =
                    send(&agent, cluster, tally, "POST", &path, &json!({"amount": "1", "reason": tag}), Some(&id));
                (Op::Adjust { tag }, answer)
            }
            _ if !recorded.is_empty() => {
                let (account, request) = recorded.swap_remove(rng.random_range(0..recorded.len()));
                let path = format!("/v1/accounts/{account}/usage/{request}/refund");
                let answer = send(&agent, cluster, tally, "POST", &path, &json!({"reason": "chaos"}), Some(&id));
                (Op::Refund { account, request }, answer)
            }
            _ => continue,
        };
        let acknowledged = matches!(answer, Some((200..=299, _)));
        if acknowledged {
            match &op {
                Op::Authorize { account, request } => open.push((account.clone(), request.clone())),
                Op::Settle { account, request } | Op::Usage { account, request } => {
                    recorded.push((account.clone(), request.clone()));
                }
                _ => {}
            }
        }
        tally.ops.lock().unwrap_or_else(|e| e.into_inner()).push((op, acknowledged));
    }
}

/// Runs `sql` on the database, from a thread of its own.
fn query(url: &str, sql: &str) -> Result<Vec<tokio_postgres::Row>> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || -> Result<Vec<tokio_postgres::Row>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            Ok(client.query(&sql, &[]).await?)
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a query thread panicked"))?
}

/// `key → count` from a query of two columns (text, bigint).
fn counts(url: &str, sql: &str) -> Result<HashMap<String, i64>> {
    query(url, sql)?.iter().map(|row| Ok((row.try_get::<_, String>(0)?, row.try_get::<_, i64>(1)?))).collect()
}

#[derive(Default)]
struct Recovery {
    times: Vec<Duration>,
    failed: u64,
}

impl Recovery {
    fn add(&mut self, took: Option<Duration>) {
        match took {
            Some(t) => self.times.push(t),
            None => self.failed += 1,
        }
    }

    fn show(&self) -> String {
        if self.times.is_empty() && self.failed == 0 {
            return "-".into();
        }
        let mut ms: Vec<u128> = self.times.iter().map(Duration::as_millis).collect();
        ms.sort_unstable();
        let median = ms.get(ms.len() / 2).copied().unwrap_or(0);
        let max = ms.last().copied().unwrap_or(0);
        let failed = if self.failed > 0 { format!(", {} not in time", self.failed) } else { String::new() };
        format!("{} times: median {median} ms, max {max} ms{failed}", ms.len())
    }
}

pub fn run(args: ChaosArgs) -> Result<()> {
    let (server, _) = args.db.rsplit_once('/').context("--db: postgres://…/database")?;
    let upstream = server.rsplit_once('@').map_or(server, |(_, host)| host).trim_start_matches("postgres://");
    let upstream = if upstream.contains(':') { upstream.to_string() } else { format!("{upstream}:5432") };
    let proxy = PgProxy::start(&upstream).context("proxy")?;
    let database = args.db.rsplit('/').next().unwrap_or_default().to_string();
    let cluster = Arc::new(Cluster {
        creditd: std::fs::canonicalize(&args.creditd).with_context(|| format!("{}", args.creditd.display()))?,
        url: proxy.url_for(&args.db),
        instances: Mutex::new(Vec::new()),
        dir: tempfile::tempdir()?.keep(),
    });
    for n in 0..args.instances {
        let port = free_port()?;
        let child = cluster.spawn(port, n)?;
        cluster.instances.lock().unwrap_or_else(|e| e.into_inner()).push(Instance { port, child: Some(child) });
    }
    let agent = agent();
    for port in cluster.ports() {
        healthy(&agent, port, Duration::from_secs(60)).context("an instance did not become healthy")?;
    }
    // The model, and funded accounts: a positive wallet skips the free
    // plan's model and rate limits (Pay2Go).
    let tally = Arc::new(Tally::default());
    let model = json!({"cost_usd_per_mtok": {"input": "3", "output": "15"}, "max_output_tokens": 200});
    send(&agent, &cluster, &tally, "PUT", "/v1/models/m1", &model, None).context("model")?;
    for n in 0..args.accounts {
        let account = format!("chaos-{n}");
        send(&agent, &cluster, &tally, "POST", "/v1/accounts", &json!({"id": account}), Some(&account))
            .context("account")?;
        let topup = json!({"amount_usd": "100000", "provider": "manual", "external_id": format!("seed-{account}")});
        let path = format!("/v1/accounts/{account}/wallet/topups");
        send(&agent, &cluster, &tally, "POST", &path, &topup, Some(&format!("seed-{account}"))).context("top-up")?;
    }
    *tally.statuses.lock().unwrap_or_else(|e| e.into_inner()) = BTreeMap::new();

    println!(
        "chaos: {} s, {} instances, {} clients, {} accounts, a fault every {} s{}",
        args.seconds,
        args.instances,
        args.clients,
        args.accounts,
        args.fault_every,
        if args.restart_postgres.is_some() { " (PostgreSQL restarts included)" } else { "" }
    );
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..args.clients)
        .map(|_| {
            let (cluster, tally, stop) = (cluster.clone(), tally.clone(), stop.clone());
            let accounts = args.accounts;
            std::thread::spawn(move || client(&cluster, &tally, accounts, &stop))
        })
        .collect();

    // The faults, in turn.
    let started = Instant::now();
    let mut faults: BTreeMap<&str, Recovery> = BTreeMap::new();
    let mut rng = rand::rng();
    let mut turn = 0usize;
    let kinds: Vec<&str> = {
        let mut k = vec!["COMMIT answers cut", "pg_terminate_backend", "kill -9 + restart", "connections cut"];
        if args.restart_postgres.is_some() {
            k.push("PostgreSQL restart");
        }
        k
    };
    while started.elapsed() < Duration::from_secs(args.seconds) {
        std::thread::sleep(Duration::from_secs_f64(args.fault_every));
        let kind = kinds[turn % kinds.len()];
        turn += 1;
        let acknowledged = tally.ops.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|(_, a)| *a).count();
        eprintln!(
            "  {:>5.1} s: {kind} ({acknowledged} operations acknowledged so far)",
            started.elapsed().as_secs_f64()
        );
        let ports = cluster.ports();
        match kind {
            "kill -9 + restart" => {
                let n = rng.random_range(0..ports.len());
                cluster.kill(n);
                std::thread::sleep(Duration::from_millis(300));
                cluster.start(n)?;
                let took = healthy(&agent, ports[n], Duration::from_secs(15));
                faults.entry(kind).or_default().add(took);
            }
            "pg_terminate_backend" => {
                let sql = format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}' AND pid <> pg_backend_pid()"
                );
                query(&args.db, &sql)?;
                for port in &ports {
                    faults.entry(kind).or_default().add(writes(&agent, *port, Duration::from_secs(15)));
                    faults.entry("pg_terminate_backend: /healthz").or_default().add(healthy(
                        &agent,
                        *port,
                        Duration::from_secs(3),
                    ));
                }
            }
            "COMMIT answers cut" => {
                // The next COMMITs of whichever writers commit next; then a
                // write on every instance (perhaps itself cut, and found out).
                proxy.cut_next_commits(3);
                for port in &ports {
                    faults.entry(kind).or_default().add(writes(&agent, *port, Duration::from_secs(15)));
                }
            }
            "connections cut" => {
                proxy.cut_all();
                for port in &ports {
                    faults.entry(kind).or_default().add(writes(&agent, *port, Duration::from_secs(15)));
                }
            }
            _ => {
                let command = args.restart_postgres.as_deref().unwrap_or("true");
                let status = Process::new("sh").args(["-c", command]).status()?;
                if !status.success() {
                    bail!("{command} failed: {status}");
                }
                for port in &ports {
                    faults.entry(kind).or_default().add(writes(&agent, *port, Duration::from_secs(30)));
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let elapsed = started.elapsed();
    proxy.cut_next_commits(0);
    cluster.stop_all();

    // What the database holds.
    let ops = std::mem::take(&mut *tally.ops.lock().unwrap_or_else(|e| e.into_inner()));
    let holds = counts(&args.db, "SELECT account_id || '/' || request_id, COUNT(*) FROM holds GROUP BY 1")?;
    let released = counts(
        &args.db,
        "SELECT account_id || '/' || request_id, COUNT(*) FROM holds WHERE status = 'released' GROUP BY 1",
    )?;
    let records = counts(&args.db, "SELECT account_id || '/' || request_id, COUNT(*) FROM usage_records GROUP BY 1")?;
    let refunded = counts(
        &args.db,
        "SELECT account_id || '/' || request_id, COUNT(*) FROM usage_records WHERE refunded <> 0 GROUP BY 1",
    )?;
    let topups = counts(
        &args.db,
        "SELECT reference_id, COUNT(*) FROM ledger_entries WHERE kind = 'topup' AND reference_id IS NOT NULL GROUP BY 1",
    )?;
    let grant_rows = counts(&args.db, "SELECT reason, COUNT(*) FROM grants WHERE reason IS NOT NULL GROUP BY 1")?;
    let voids = counts(
        &args.db,
        "SELECT reason, COUNT(*) FROM ledger_entries WHERE kind = 'void' AND reason LIKE 'void-%' GROUP BY 1",
    )?;
    // Credits of a voided grant freed later (a hold released, a charge
    // refunded) are voided then, by entries of their own: not doubles.
    let voided_later = counts(
        &args.db,
        "SELECT 'later', COUNT(*) FROM ledger_entries WHERE kind = 'void' AND (reason IS NULL OR reason NOT LIKE 'void-%')",
    )?;
    let voided = counts(&args.db, "SELECT id, COUNT(*) FROM grants WHERE voided <> 0 GROUP BY 1")?;
    let adjustments = counts(
        &args.db,
        "SELECT reason, COUNT(*) FROM ledger_entries WHERE kind = 'adjustment' AND reason IS NOT NULL GROUP BY 1",
    )?;
    let mut by_kind: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let (mut lost, mut doubled) = (Vec::new(), Vec::new());
    for (op, acknowledged) in &ops {
        let key = |a: &str, r: &str| format!("{a}/{r}");
        let get = |map: &HashMap<String, i64>, k: &str| map.get(k).copied().unwrap_or(0);
        // (present, at most) for this operation.
        let (present, most) = match op {
            Op::Authorize { account, request } => (get(&holds, &key(account, request)), 1),
            Op::Settle { account, request } | Op::Usage { account, request } => {
                (get(&records, &key(account, request)), 1)
            }
            Op::Release { account, request } => (get(&released, &key(account, request)), 1),
            Op::Refund { account, request } => (get(&refunded, &key(account, request)), 1),
            Op::Topup { external_id } => (get(&topups, external_id), 1),
            Op::Grant { tag } => (get(&grant_rows, tag), 1),
            // A void of a grant with nothing unheld left writes no entry.
            Op::Void { grant, tag } => (get(&voided, grant).max(get(&voids, tag).min(1)), get(&voids, tag).max(1)),
            Op::Adjust { tag } => (get(&adjustments, tag), 1),
        };
        let entry = by_kind.entry(op.name()).or_default();
        entry.0 += 1;
        if *acknowledged {
            entry.1 += 1;
            if present == 0 {
                lost.push(op.clone());
            }
        }
        if present > 1 || (matches!(op, Op::Void { .. }) && most > 1) {
            doubled.push(op.clone());
        }
    }
    let audit = Process::new(&args.creditd).args(["audit", "--db", &args.db]).output()?;
    let statuses = tally.statuses.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let count = |lo: u16, hi: u16| statuses.range(lo..=hi).map(|(_, n)| n).sum::<u64>();
    let acknowledged: u64 = by_kind.values().map(|(_, a)| a).sum();

    println!("ran {:.0} s; operations: {} tried, {} acknowledged", elapsed.as_secs_f64(), ops.len(), acknowledged);
    let kinds: Vec<String> = by_kind.iter().map(|(k, (t, a))| format!("{k} {a}/{t}")).collect();
    println!("  by kind (acknowledged/tried): {}", kinds.join(", "));
    println!("lost: {}   doubled: {}", lost.len(), doubled.len());
    println!("void entries of credits freed after their grant's void: {}", voided_later.get("later").unwrap_or(&0));
    println!(
        "answers: 2xx {}, 4xx {}, 500 {}, 503 {}, other 5xx {}, no answer {}; retries {}, given up {}",
        count(200, 299),
        count(400, 499),
        count(500, 500),
        count(503, 503),
        count(501, 599) - count(503, 503),
        tally.no_answer.load(Ordering::Relaxed),
        tally.retries.load(Ordering::Relaxed),
        tally.gave_up.load(Ordering::Relaxed),
    );
    let (commits, cuts) = proxy.commits();
    println!("COMMITs through the proxy: {commits}, answers cut: {cuts}");
    println!("faults and recovery (to a write acknowledged, or /healthz 200 where named):");
    for (kind, recovery) in &faults {
        println!("  {kind}: {}", recovery.show());
    }
    let report = String::from_utf8_lossy(&audit.stdout);
    println!(
        "audit: {} ({})",
        if audit.status.success() { "passed" } else { "FAILED" },
        report.lines().last().unwrap_or("")
    );
    for op in lost.iter().take(10) {
        println!("  lost: {op:?}");
    }
    for op in doubled.iter().take(10) {
        println!("  doubled: {op:?}");
    }
    let fours: Vec<String> = statuses.range(400..500).map(|(s, n)| format!("{s}×{n}")).collect();
    if !fours.is_empty() {
        println!("  4xx: {}", fours.join(", "));
    }
    if !audit.status.success() {
        println!("{report}{}", String::from_utf8_lossy(&audit.stderr));
    }
    let failed = !lost.is_empty() || !doubled.is_empty() || !audit.status.success() || count(500, 500) > 0;
    if failed {
        bail!(
            "chaos failed: {} lost, {} doubled, {} 500s, audit {} (instance logs in {})",
            lost.len(),
            doubled.len(),
            count(500, 500),
            if audit.status.success() { "passed" } else { "failed" },
            cluster.dir.display()
        );
    }
    if args.keep_logs {
        println!("instance logs: {}", cluster.dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&cluster.dir);
    }
    Ok(())
}
