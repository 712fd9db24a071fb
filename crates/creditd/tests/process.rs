//! The `creditd` binary as an operator runs it: real processes, a real
//! socket, a real database file, SIGTERM to stop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_creditd");
const ADMIN_KEY: &str = "admin-key-for-the-process-test-0123456789";
/// Debug builds start slowly on a busy 2-core machine; this is an upper bound.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// No signup bonus, no gifts: balances below are exactly what the test grants.
/// No campaigns, and a free plan without limits that allows every model.
const QUIET_CONFIG: &str = "[campaigns]\nrecurring = []\n[campaigns.signup_bonus]\namount = \"0\"\n\
                            [plans.free]\nprice_usd = \"0\"\nmodel_access = \"all\"\n";

/// The creditd command, with none of the caller's CREDITD_* settings.
fn creditd(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(dir).env("CREDITD_LOG", "warn");
    for (name, _) in std::env::vars() {
        if name.starts_with("CREDITD_") && name != "CREDITD_LOG" {
            command.env_remove(name);
        }
    }
    command
}

fn run(dir: &Path, args: &[&str]) -> Output {
    creditd(dir).args(args).stdin(Stdio::null()).output().expect("run creditd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

static SERVERS_STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A running `creditd serve`.
struct Server {
    child: Child,
    base: String,
    /// Every line printed on stdout up to "listening on".
    printed: Vec<String>,
    log: PathBuf,
}

impl Server {
    fn start(dir: &Path, args: &[&str]) -> Server {
        let n = SERVERS_STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("serve-{n}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut child = creditd(dir)
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn creditd serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut printed = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let listening = line.strip_prefix("listening on ").map(str::to_string);
                    printed.push(line);
                    if let Some(base) = listening {
                        return Server { child, base, printed, log };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "creditd serve did not print `listening on` (stdout: {printed:?}); its log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for creditd") {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                assert!(status.success(), "creditd serve exited with {status} after SIGTERM; its log:\n{log}");
                return;
            }
            assert!(Instant::now() < deadline, "creditd serve did not stop within {STOP_TIMEOUT:?} of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A small HTTP client: every status is an answer, not an error.
struct Http {
    agent: ureq::Agent,
}

impl Http {
    fn new() -> Http {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Http { agent }
    }

    fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
        let mut response = response.expect("HTTP call");
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().expect("read body");
        let value = if body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("status {status}: not JSON ({e}): {body}"))
        };
        (status, value)
    }

    fn get(&self, url: &str, key: Option<&str>) -> (u16, Value) {
        let mut request = self.agent.get(url);
        if let Some(key) = key {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        Self::answer(request.call())
    }

    fn send(&self, method: &str, url: &str, key: &str, body: &Value, idempotency_key: Option<&str>) -> (u16, Value) {
        let mut request = match method {
            "POST" => self.agent.post(url),
            "PUT" => self.agent.put(url),
            "PATCH" => self.agent.patch(url),
            other => panic!("unsupported method {other}"),
        };
        request = request.header("Authorization", &format!("Bearer {key}"));
        if let Some(k) = idempotency_key {
            request = request.header("Idempotency-Key", k);
        }
        Self::answer(request.send_json(body))
    }

    fn post(&self, url: &str, key: &str, body: &Value) -> (u16, Value) {
        self.send("POST", url, key, body, None)
    }
}

fn sonnet() -> Value {
    json!({
        "cost_usd_per_mtok": {"input": "3", "output": "15", "cache_read": "0.3", "cache_write": "3.75"},
        "cost_usd": {"request": "0"},
        "credits_per_mtok": null,
        "credits": {"request": "0"},
        "multiplier": "1",
        "free": false,
        "max_output_tokens": 8192,
        "tiers": []
    })
}

/// The line `prefix…` printed on stdout, without the prefix.
fn printed_after<'a>(stdout: &'a str, prefix: &str) -> Option<&'a str> {
    stdout.lines().find_map(|line| line.strip_prefix(prefix)).map(str::trim)
}

#[test]
fn serve_meters_a_request_then_stops_cleanly_and_the_audit_passes() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir.path().join("creditd.db"));
    let config = dir.path().join("creditd.toml");
    std::fs::write(&config, QUIET_CONFIG).unwrap();
    let config = config.to_str().unwrap();

    // A gateway key made by the CLI before the server starts.
    let out =
        run(dir.path(), &["keys", "create", "--db", &db, "--config", config, "--role", "gateway", "--name", "gw"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "keys create failed: {stdout}{}", text(&out.stderr));
    assert!(stdout.contains("created gateway key") && stdout.contains("\"gw\""), "{stdout}");
    let gateway = printed_after(&stdout, "secret:").expect("the secret is printed").to_string();

    let server = Server::start(
        dir.path(),
        &["--config", config, "--db", &db, "--listen", "127.0.0.1:0", "--admin-key", ADMIN_KEY],
    );
    assert!(
        !server.printed.iter().any(|l| l.starts_with("admin key")),
        "with --admin-key no key is generated: {:?}",
        server.printed
    );
    let http = Http::new();

    let (status, health) = http.get(&server.url("/healthz"), None);
    assert_eq!((status, health), (200, json!({"status": "ok"})));

    // Price book.
    let (status, model) = http.send("PUT", &server.url("/v1/models/claude-sonnet-4-5"), ADMIN_KEY, &sonnet(), None);
    assert_eq!(status, 200, "{model}");
    assert_eq!(model["id"], "claude-sonnet-4-5");
    let price_version = model["price_version"].as_i64().expect("an integer price_version");

    // Roles: the gateway key may not change prices; a bad key is refused.
    let (status, body) = http.send("PUT", &server.url("/v1/models/x"), &gateway, &sonnet(), None);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, body) = http.get(&server.url("/v1/models"), Some("ck_nope_nope"));
    assert_eq!(status, 401, "{body}");

    // An account and a promo grant of 100 credits.
    let account = json!({"id": "u_42", "email": "ada@example.com"});
    let (status, body) = http.post(&server.url("/v1/accounts"), ADMIN_KEY, &account);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"], "u_42");
    assert_eq!(body["status"], "active");
    let grant = json!({"amount": "100", "kind": "promo", "source": "welcome", "reason": "launch promo"});
    let grants_url = server.url("/v1/accounts/u_42/grants");
    let (status, grant) = http.send("POST", &grants_url, ADMIN_KEY, &grant, Some("welcome-u_42"));
    assert_eq!(status, 201, "{grant}");
    assert_eq!((grant["amount"].as_str(), grant["remaining"].as_str()), (Some("100"), Some("100")));
    assert_eq!(grant["kind"], "promo");
    let grant_id = grant["id"].as_str().expect("grant id").to_string();

    // Authorize 2,000 input tokens and at most 1,000 output tokens:
    // 2000 × $3/M + 1000 × $15/M = $0.021 = 2.1 credits held.
    let authorize = json!({
        "account_id": "u_42", "request_id": "req_1", "model": "claude-sonnet-4-5",
        "request_type": "chat", "input_tokens": 2000, "max_output_tokens": 1000
    });
    let (status, hold) = http.post(&server.url("/v1/authorize"), &gateway, &authorize);
    assert_eq!(status, 201, "{hold}");
    assert_eq!(hold["request_id"], "req_1");
    assert_eq!(hold["estimate"], "2.1");
    assert_eq!(hold["available"], "97.9");
    assert_eq!(hold["held_from"], json!([{"source": "grant", "grant_id": grant_id, "kind": "promo", "amount": "2.1"}]));
    let (status, again) = http.post(&server.url("/v1/authorize"), &gateway, &authorize);
    assert_eq!(status, 200, "the same authorize again is a replay: {again}");
    assert_eq!(again["hold_id"], hold["hold_id"]);

    // Settle what was used: 2000 × $3/M + 500 × $15/M = $0.0135 = 1.35 credits.
    let settle = json!({
        "account_id": "u_42", "request_id": "req_1", "status": "success",
        "usage": {"input_tokens": 2000, "output_tokens": 500}
    });
    let (status, record) = http.post(&server.url("/v1/settle"), &gateway, &settle);
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["cost_usd"], "0.0135");
    assert_eq!(record["credits"], "1.35");
    assert_eq!(record["price_version"].as_i64(), Some(price_version));
    assert_eq!(record["debt_incurred"], "0");
    assert_eq!(record["hold_expired"], false);
    assert_eq!(
        record["charged_from"],
        json!([{"source": "grant", "grant_id": grant_id, "kind": "promo", "amount": "1.35"}])
    );

    // Balance: 100 − 1.35, nothing held, no debt, an empty wallet.
    let (status, balance) = http.get(&server.url("/v1/accounts/u_42/balance"), Some(&gateway));
    assert_eq!(status, 200, "{balance}");
    assert_eq!(balance["account_id"], "u_42");
    assert_eq!((balance["available"].as_str(), balance["held"].as_str()), (Some("98.65"), Some("0")));
    assert_eq!(balance["debt"], "0");
    assert_eq!(balance["wallet"]["balance"], "0");
    assert_eq!(balance["grants"][0]["id"], grant_id.as_str());
    assert_eq!(balance["grants"][0]["remaining"], "98.65");

    // Ledger, newest first: the charge, then the grant.
    let (status, ledger) = http.get(&server.url("/v1/accounts/u_42/ledger"), Some(ADMIN_KEY));
    assert_eq!(status, 200, "{ledger}");
    let entries = ledger["data"].as_array().expect("a list");
    assert_eq!(entries.len(), 2, "{ledger}");
    assert_eq!((entries[0]["type"].as_str(), entries[0]["amount"].as_str()), (Some("charge"), Some("-1.35")));
    assert_eq!(entries[0]["balance_after"], "98.65");
    assert_eq!(entries[0]["reference"]["request_id"], "req_1");
    assert_eq!((entries[1]["type"].as_str(), entries[1]["amount"].as_str()), (Some("grant"), Some("100")));
    assert_eq!(entries[1]["balance_after"], "100");

    server.stop();

    // Everything acknowledged is on disk and consistent.
    let out = run(dir.path(), &["audit", "--db", &db, "--config", config]);
    let report = text(&out.stdout);
    assert!(out.status.success(), "audit failed: {report}{}", text(&out.stderr));
    assert!(report.contains("1 account, 2 ledger entries, 1 usage record\n"), "{report}");
    assert!(report.contains("checked 12 invariants"), "{report}");
    assert_eq!(report.matches("  ok  ").count(), 12, "{report}");
    assert!(report.contains("no breaches"), "{report}");

    // A tampered wallet is a breach: exit code 1, and the report says which.
    let conn = rusqlite::Connection::open(dir.path().join("creditd.db")).unwrap();
    conn.execute("UPDATE accounts SET wallet_balance = wallet_balance + 1000000 WHERE id = 'u_42'", []).unwrap();
    drop(conn);
    let out = run(dir.path(), &["audit", "--db", &db, "--config", config]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("BROKEN  2 the wallet"), "{report}");
    assert!(report.contains("invariant 2 broken for account u_42"), "{report}");
}

#[test]
fn init_writes_a_config_that_serve_starts_with_and_the_admin_key_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("creditd.toml");
    let path_arg = path.to_str().unwrap();

    let out = run(dir.path(), &["init", "--path", path_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("wrote"), "{}", text(&out.stdout));
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(written.contains("[plans.ultra]") && written.contains("[models.\"claude-sonnet-4-5\"]"));

    let out = run(dir.path(), &["init", "--path", path_arg]);
    assert_eq!(out.status.code(), Some(1), "init must not overwrite without --force");
    assert!(text(&out.stderr).contains("--force"), "{}", text(&out.stderr));
    let out = run(dir.path(), &["init", "--path", path_arg, "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let db = sqlite_url(&dir.path().join("init.db"));
    let server = Server::start(dir.path(), &["--config", path_arg, "--db", &db, "--listen", "127.0.0.1:0"]);
    let admin = server
        .printed
        .iter()
        .find_map(|l| l.strip_prefix("admin key (shown once, store it now): "))
        .unwrap_or_else(|| panic!("no admin key printed: {:?}", server.printed))
        .to_string();
    let http = Http::new();
    let (status, models) = http.get(&server.url("/v1/models"), Some(&admin));
    assert_eq!(status, 200, "{models}");
    let mut ids: Vec<&str> =
        models["data"].as_array().expect("a list").iter().filter_map(|m| m["id"].as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["claude-sonnet-4-5", "gpt-4o", "gpt-4o-mini"]);
    let versions: Vec<Value> = models["data"].as_array().unwrap().iter().map(|m| m["price_version"].clone()).collect();
    // The six tiers of seed 004, written to the store at start.
    let (status, plans) = http.get(&server.url("/v1/plans"), Some(&admin));
    assert_eq!(status, 200, "{plans}");
    let tiers: Vec<(&str, &str, &str, &str, Value)> = plans["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or("-");
            (s("id"), s("price_usd"), s("main_pool"), s("backup_pool"), p["budget_usd"].clone())
        })
        .collect();
    assert_eq!(
        tiers,
        [
            ("free", "0", "0", "0", Value::Null),
            ("master", "100", "12000", "30000", json!("1000")),
            ("premium", "25", "3000", "7500", json!("250")),
            ("pro", "50", "6000", "15000", json!("500")),
            ("starter", "10", "1200", "3000", json!("100")),
            ("ultra", "200", "24000", "60000", json!("2000")),
        ]
    );
    // A new account is on free with the signup bonus.
    let (status, account) = http.post(&server.url("/v1/accounts"), &admin, &json!({"id": "newcomer"}));
    assert_eq!((status, account["plan"].as_str()), (201, Some("free")), "{account}");
    let (status, balance) = http.get(&server.url("/v1/accounts/newcomer/balance"), Some(&admin));
    assert_eq!(status, 200, "{balance}");
    assert_eq!(
        (balance["grants"][0]["source"].as_str(), balance["available"].as_str()),
        (Some("signup_bonus"), Some("50"))
    );
    assert_eq!(balance["limits"]["rate_per_minute"], json!({"limit": 1, "used": 0}));
    server.stop();

    // A restart with the same file: no new admin key, no new price versions.
    let server = Server::start(dir.path(), &["--config", path_arg, "--db", &db, "--listen", "127.0.0.1:0"]);
    assert!(
        !server.printed.iter().any(|l| l.starts_with("admin key")),
        "the admin key is printed only once: {:?}",
        server.printed
    );
    let (status, models) = http.get(&server.url("/v1/models"), Some(&admin));
    assert_eq!(status, 200, "{models}");
    let again: Vec<Value> = models["data"].as_array().unwrap().iter().map(|m| m["price_version"].clone()).collect();
    assert_eq!(again, versions, "restarting must not bump price versions");
    server.stop();

    // A changed price in the file gives that model a new version at start.
    let changed = std::fs::read_to_string(&path).unwrap().replace(
        "cost_usd_per_mtok = { input = \"2.5\", output = \"10\", cache_read = \"1.25\" }",
        "cost_usd_per_mtok = { input = \"2\", output = \"8\", cache_read = \"1\" }",
    );
    std::fs::write(&path, changed).unwrap();
    let server = Server::start(dir.path(), &["--config", path_arg, "--db", &db, "--listen", "127.0.0.1:0"]);
    let (status, sonnet) = http.get(&server.url("/v1/models/claude-sonnet-4-5"), Some(&admin));
    assert_eq!(status, 200, "{sonnet}");
    let (status, gpt) = http.get(&server.url("/v1/models/gpt-4o"), Some(&admin));
    assert_eq!(status, 200, "{gpt}");
    assert_eq!(gpt["cost_usd_per_mtok"]["input"], "2");
    let before = |id: &str| {
        let list = models["data"].as_array().unwrap();
        list.iter().find(|m| m["id"] == id).map(|m| m["price_version"].as_i64().unwrap()).unwrap()
    };
    assert_eq!(
        sonnet["price_version"].as_i64(),
        Some(before("claude-sonnet-4-5")),
        "unchanged model keeps its version"
    );
    assert!(gpt["price_version"].as_i64().unwrap() > before("gpt-4o"), "changed model gets a new version: {gpt}");
    server.stop();
}

/// Runs a command that must end by itself (a refused start), within a minute.
fn run_to_end(mut command: Command) -> Output {
    let child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let id = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &id.to_string()]).status();
            panic!("creditd did not stop by itself (its start should have been refused)");
        }
    }
}

/// Issue 13.2: `PUT /v1/models/gpt-4o` made version 2, and the next start
/// wrote the configuration's price back as version 3, silently; plans the
/// same. An API edit now survives restarts; a configuration changed at the
/// same time stops the start, naming both sides, until the operator picks
/// one with `--on-config-conflict`.
#[test]
fn api_edits_survive_a_restart_and_a_conflict_with_the_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("creditd.toml");
    let path_arg = path.to_str().unwrap();
    let out = run(dir.path(), &["init", "--path", path_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let db = sqlite_url(&dir.path().join("owner.db"));
    let args = ["--config", path_arg, "--db", &db, "--listen", "127.0.0.1:0", "--admin-key", ADMIN_KEY];
    let http = Http::new();
    let version = |server: &Server| {
        let (status, gpt) = http.get(&server.url("/v1/models/gpt-4o"), Some(ADMIN_KEY));
        assert_eq!(status, 200, "{gpt}");
        (gpt["price_version"].as_i64().unwrap(), gpt["cost_usd_per_mtok"]["input"].as_str().unwrap().to_string())
    };
    let free_daily = |server: &Server| {
        let (status, free) = http.get(&server.url("/v1/plans/free"), Some(ADMIN_KEY));
        assert_eq!(status, 200, "{free}");
        free["daily_requests"].clone()
    };

    let server = Server::start(dir.path(), &args);
    let (v1, _) = version(&server);
    let edit = json!({"cost_usd_per_mtok": {"input": "3"}});
    let (status, gpt) = http.send("PATCH", &server.url("/v1/models/gpt-4o"), ADMIN_KEY, &edit, None);
    assert_eq!((status, gpt["price_version"].as_i64()), (200, Some(v1 + 1)), "{gpt}");
    let (status, free) =
        http.send("PATCH", &server.url("/v1/plans/free"), ADMIN_KEY, &json!({"daily_requests": 7}), None);
    assert_eq!((status, free["daily_requests"].as_i64()), (200, Some(7)), "{free}");
    server.stop();

    // The file did not change: the API's edits stay, and the log says the
    // file no longer describes them.
    let server = Server::start(dir.path(), &args);
    assert_eq!(version(&server), (v1 + 1, "3".to_string()));
    assert_eq!(free_daily(&server), 7);
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("model \"gpt-4o\"") && log.contains("keeping the version changed through the API"), "{log}");
    server.stop();

    // Now the file changes the same model: the start stops, naming both.
    let changed = std::fs::read_to_string(&path).unwrap().replace(
        "cost_usd_per_mtok = { input = \"2.5\", output = \"10\", cache_read = \"1.25\" }",
        "cost_usd_per_mtok = { input = \"2\", output = \"10\", cache_read = \"1.25\" }",
    );
    std::fs::write(&path, changed).unwrap();
    let mut serve = creditd(dir.path());
    serve.arg("serve").args(args);
    let out = run_to_end(serve);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("model \"gpt-4o\": changed in"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cost_usd_per_mtok.input: \"2\" in {path_arg}; \"3\" in the store, price_version {}",
            v1 + 1
        )),
        "{stderr}"
    );
    assert!(stderr.contains("--on-config-conflict config") && stderr.contains("--on-config-conflict api"), "{stderr}");
    assert!(!stderr.contains("plan \"free\""), "the file did not change free: {stderr}");

    // The operator picks the file: it is written, and the next start has
    // nothing to decide.
    let server = Server::start(dir.path(), &[&args[..], &["--on-config-conflict", "config"]].concat());
    assert_eq!(version(&server), (v1 + 2, "2".to_string()));
    assert_eq!(free_daily(&server), 7, "free had no conflict: the API's edit stays");
    server.stop();
    let server = Server::start(dir.path(), &args);
    assert_eq!(version(&server), (v1 + 2, "2".to_string()));
    server.stop();
}

#[test]
fn a_gateway_key_from_the_cli_meters_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir.path().join("keys.db"));
    let config = dir.path().join("creditd.toml");
    std::fs::write(&config, QUIET_CONFIG).unwrap();
    let config = config.to_str().unwrap();
    let out = run(dir.path(), &["keys", "create", "--db", &db, "--config", config, "--role", "admin"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("created admin key") && stdout.contains("named \"admin\""), "{stdout}");
    let admin = printed_after(&stdout, "secret:").expect("secret").to_string();

    // The stored admin key counts: no key is generated at start.
    let server = Server::start(dir.path(), &["--config", config, "--db", &db, "--listen", "127.0.0.1:0"]);
    assert!(!server.printed.iter().any(|l| l.starts_with("admin key")), "{:?}", server.printed);
    let http = Http::new();
    let (status, body) = http.get(&server.url("/v1/keys"), Some(&admin));
    assert_eq!(status, 200, "{body}");
    server.stop();
}

/// Issue 13.6: `creditd keys` could only create, and account tokens could
/// not be listed or revoked from the command line.
#[test]
fn keys_and_tokens_are_listed_and_revoked_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir.path().join("keys.db"));
    let config = dir.path().join("creditd.toml");
    std::fs::write(&config, QUIET_CONFIG).unwrap();
    let config = config.to_str().unwrap();
    let cli = |args: &[&str]| {
        let out = run(dir.path(), &[args, &["--db", &db, "--config", config]].concat());
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let created = cli(&["keys", "create", "--role", "gateway", "--name", "edge"]);
    let secret = printed_after(&created, "secret:").expect("secret").to_string();
    let id = secret.strip_prefix("ck_").and_then(|s| s.split('_').next()).unwrap().to_string();
    let row = |listing: &str| listing.lines().find(|l| l.starts_with(&id)).map(str::to_string);
    let listed = cli(&["keys", "list"]);
    assert!(listed.starts_with("id\trole\tname\tcreated_at\tlast_used_at\n"), "{listed}");
    let line = row(&listed).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.starts_with(&format!("{id}\tgateway\tedge\t")) && line.ends_with("\t-"), "not used yet: {line}");
    assert!(!listed.contains(&secret), "no secret in the list");

    // Used against a running server: the use is recorded.
    let server = Server::start(
        dir.path(),
        &["--config", config, "--db", &db, "--listen", "127.0.0.1:0", "--admin-key", ADMIN_KEY],
    );
    let http = Http::new();
    let (status, _) = http.get(&server.url("/v1/accounts/nobody"), Some(&secret));
    assert_eq!(status, 404);
    let (status, _) = http.post(&server.url("/v1/accounts"), ADMIN_KEY, &json!({"id": "u_1"}));
    assert_eq!(status, 201);
    let (status, token) = http.post(&server.url("/v1/accounts/u_1/tokens"), ADMIN_KEY, &json!({}));
    assert_eq!(status, 201, "{token}");
    // The use is written in the background: wait for it before stopping.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, keys) = http.get(&server.url("/v1/keys"), Some(ADMIN_KEY));
        let used =
            keys["data"].as_array().unwrap().iter().any(|k| k["id"] == id.as_str() && k["last_used_at"].is_string());
        if used {
            break;
        }
        assert!(Instant::now() < deadline, "the key's use was never recorded: {keys}");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();
    let line = row(&cli(&["keys", "list"])).unwrap();
    assert!(!line.ends_with("\t-"), "last_used_at is shown: {line}");

    // Revoked from the CLI: gone from the list, refused by the next server.
    assert!(cli(&["keys", "revoke", &id]).contains(&format!("revoked key {id}")));
    assert_eq!(row(&cli(&["keys", "list"])), None);
    let out = run(dir.path(), &["keys", "revoke", &id, "--db", &db, "--config", config]);
    assert_eq!(out.status.code(), Some(1), "revoking twice: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not found"), "{}", text(&out.stderr));

    // Account tokens.
    let token_id = token["id"].as_str().unwrap();
    let listed = cli(&["tokens", "list", "--account", "u_1"]);
    assert!(listed.starts_with("id\tcreated_at\texpires_at\n"), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with(&format!("{token_id}\t"))), "{listed}");
    assert!(!listed.contains(token["token"].as_str().unwrap()), "no secret in the list");
    assert!(cli(&["tokens", "revoke", "--account", "u_1", token_id]).contains(&format!("revoked token {token_id}")));
    assert_eq!(cli(&["tokens", "list", "--account", "u_1"]), "id\tcreated_at\texpires_at\n");
    let out = run(dir.path(), &["tokens", "list", "--account", "nobody", "--db", &db, "--config", config]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("account \"nobody\" not found"), "{}", text(&out.stderr));

    let server = Server::start(
        dir.path(),
        &["--config", config, "--db", &db, "--listen", "127.0.0.1:0", "--admin-key", ADMIN_KEY],
    );
    let (status, _) = http.get(&server.url("/v1/accounts/nobody"), Some(&secret));
    assert_eq!(status, 401, "the revoked key is refused");
    let (status, _) = http.get(&server.url("/v1/accounts/u_1"), token["token"].as_str());
    assert_eq!(status, 401, "the revoked token is refused");
    server.stop();
}

/// A `creditd proxy-keys` command's stdout, run on the database while a
/// server has it open.
fn proxy_keys_cli(dir: &Path, db: &str, config: &str, args: &[&str]) -> String {
    let out = run(dir, &[&["proxy-keys"], args, &["--db", db, "--config", config]].concat());
    assert!(out.status.success(), "proxy-keys {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// A metering-proxy call: status, `x-creditd-request-id`, `x-creditd-credits`, body.
fn proxy_call(http: &Http, url: &str, key: &str, body: &Value) -> (u16, Option<String>, Option<String>, Value) {
    let response = http
        .agent
        .post(url)
        .header("Authorization", &format!("Bearer {key}"))
        .header("x-creditd-project", "cli-test")
        .send_json(body)
        .expect("proxy call");
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().expect("text").to_string());
    let (request_id, credits) = (header("x-creditd-request-id"), header("x-creditd-credits"));
    let (status, body) = Http::answer(Ok(response));
    (status, request_id, credits, body)
}

/// Issue 15: `creditd proxy-keys create|list|revoke` as processes on the
/// database of a running `creditd serve` whose OpenAI upstream is the
/// stand-in provider: the key the CLI prints is an SDK's API key on
/// `/openai/v1/chat/completions` (charged, its use listed) until the CLI
/// revokes it; then it is refused (at once by a server that had not
/// verified it yet, within the 30-second key cache by one that had).
#[test]
fn proxy_keys_from_the_cli_work_against_the_proxy_until_revoked() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let standin = runtime.block_on(creditd_proxy::standin::StandIn::start()).expect("stand-in");
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_url(&dir.path().join("proxy.db"));
    let config = dir.path().join("creditd.toml");
    let upstream = format!(
        "[proxy.upstreams.openai]\nbase_url = \"{}\"\napi_key = \"sk-standin-process-test\"\n",
        standin.openai_base()
    );
    std::fs::write(&config, format!("{QUIET_CONFIG}{upstream}")).unwrap();
    let config = config.to_str().unwrap();
    let cli = |args: &[&str]| proxy_keys_cli(dir.path(), &db, config, args);

    let server = Server::start(
        dir.path(),
        &["--config", config, "--db", &db, "--listen", "127.0.0.1:0", "--admin-key", ADMIN_KEY],
    );
    let http = Http::new();
    let gpt = json!({"cost_usd_per_mtok": {"input": "2.5", "output": "10", "cache_read": "1.25", "cache_write": "0"},
                     "max_output_tokens": 4096});
    let (status, body) = http.send("PUT", &server.url("/v1/models/gpt-4o"), ADMIN_KEY, &gpt, None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = http.post(&server.url("/v1/accounts"), ADMIN_KEY, &json!({"id": "u_1"}));
    assert_eq!(status, 201, "{body}");
    let topup = json!({"amount_usd": "10", "provider": "manual"});
    let (status, body) = http.post(&server.url("/v1/accounts/u_1/wallet/topups"), ADMIN_KEY, &topup);
    assert_eq!(status, 201, "{body}");

    // Created by the CLI: the secret is printed once, never listed.
    let out = run(
        dir.path(),
        &["proxy-keys", "create", "--account", "nobody", "--name", "x", "--db", &db, "--config", config],
    );
    assert_eq!(out.status.code(), Some(1), "no such account: {}", text(&out.stdout));
    assert!(text(&out.stderr).contains("not found"), "{}", text(&out.stderr));
    let created = cli(&["create", "--account", "u_1", "--name", "laptop"]);
    let secret = printed_after(&created, "secret:").expect("the secret is printed").to_string();
    let id = secret.strip_prefix("cp_").and_then(|s| s.split('_').next()).expect("cp_<id>_…").to_string();
    assert!(created.contains(&format!("created proxy key {id} of account u_1 named \"laptop\"")), "{created}");
    let row = |listing: &str| listing.lines().find(|l| l.starts_with(&format!("{id}\t"))).map(str::to_string);
    let listed = cli(&["list", "--account", "u_1"]);
    assert!(listed.starts_with("id\tname\tcreated_at\tlast_used_at\trevoked_at\n"), "{listed}");
    let line = row(&listed).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.starts_with(&format!("{id}\tlaptop\t")) && line.ends_with("\t-\t-"), "unused, live: {line}");
    assert!(!listed.contains(&secret), "no secret in the list");
    let out = run(dir.path(), &["proxy-keys", "list", "--account", "nobody", "--db", &db, "--config", config]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("account \"nobody\" not found"), "{}", text(&out.stderr));

    // The key is an SDK's API key: the stand-in's answer comes back, charged
    // with the stand-in's usage (32 uncached + 10 cached in, 9 out:
    // 32 × $2.5/M + 10 × $1.25/M + 9 × $10/M = $0.0001825).
    let chat = server.url("/openai/v1/chat/completions");
    let body = json!({"model": "gpt-4o", "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}]});
    let (status, request_id, credits, answer) = proxy_call(&http, &chat, &secret, &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    assert_eq!(credits.as_deref(), Some("0.01825"));
    let request_id = request_id.expect("x-creditd-request-id");
    let (status, usage) = http.get(&server.url("/v1/accounts/u_1/usage"), Some(ADMIN_KEY));
    assert_eq!(status, 200, "{usage}");
    let records = usage["data"].as_array().expect("records");
    assert_eq!(records.len(), 1, "{usage}");
    assert_eq!(records[0]["request_id"], request_id.as_str());
    assert_eq!(records[0]["credits"], "0.01825");
    assert_eq!(records[0]["project"], "cli-test");
    assert_eq!(standin.seen().len(), 1);
    assert_eq!(standin.seen()[0].headers["authorization"], "Bearer sk-standin-process-test", "the operator's key");
    // Its use is listed (written in the background).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = row(&cli(&["list", "--account", "u_1"])).unwrap();
        let used = line.split('\t').nth(3).unwrap();
        if used != "-" {
            assert!(line.ends_with("\t-"), "not revoked: {line}");
            break;
        }
        assert!(Instant::now() < deadline, "the key's use was never recorded: {line}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A second key, revoked by the CLI before this server ever verified it:
    // refused at once. Revoking is idempotent; another account's key is not found.
    let other = printed_after(&cli(&["create", "--account", "u_1"]), "secret:").unwrap().to_string();
    let other_id = other.strip_prefix("cp_").and_then(|s| s.split('_').next()).unwrap().to_string();
    assert!(cli(&["revoke", "--account", "u_1", "--id", &other_id]).contains(&format!("revoked proxy key {other_id}")));
    let (status, _, _, refusal) = proxy_call(&http, &chat, &other, &body);
    assert_eq!(status, 401, "{refusal}");
    assert_eq!(refusal["error"]["type"], "authentication_error", "{refusal}");
    assert!(refusal["error"]["message"].as_str().unwrap().contains("revoked"), "{refusal}");
    assert!(cli(&["revoke", "--account", "u_1", "--id", &other_id]).contains("revoked proxy key"));
    let out = run(
        dir.path(),
        &["proxy-keys", "revoke", "--account", "nobody", "--id", &other_id, "--db", &db, "--config", config],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));

    // The first key, revoked by the CLI while this server has it cached:
    // refused within the cache's 30 seconds. Probed with a model not in the
    // price book, so that nothing goes upstream while it is still accepted
    // (400 unknown_model comes after the key check).
    assert!(
        cli(&["revoke", "--account", "u_1", "--id", &id]).contains(&format!("revoked proxy key {id} of account u_1"))
    );
    let revoked_at = Instant::now();
    let probe = json!({"model": "not-in-the-book", "messages": []});
    loop {
        let (status, _, _, answer) = proxy_call(&http, &chat, &secret, &probe);
        if status == 401 {
            assert_eq!(answer["error"]["type"], "authentication_error", "{answer}");
            break;
        }
        assert_eq!((status, &answer["error"]["code"]), (400, &json!("unknown_model")), "{answer}");
        assert!(revoked_at.elapsed() < Duration::from_secs(35), "the revoked key is still accepted");
        std::thread::sleep(Duration::from_millis(250));
    }
    let line = row(&cli(&["list", "--account", "u_1"])).unwrap();
    assert!(!line.ends_with("\t-"), "revoked_at is listed: {line}");
    assert_eq!(standin.seen().len(), 1, "nothing else went upstream");
    let (_, usage) = http.get(&server.url("/v1/accounts/u_1/usage"), Some(ADMIN_KEY));
    assert_eq!(usage["data"].as_array().unwrap().len(), 1, "one charge: {usage}");
    let (_, balance) = http.get(&server.url("/v1/accounts/u_1/balance"), Some(ADMIN_KEY));
    assert_eq!(balance["held"], "0", "no hold left open: {balance}");
    server.stop();
    drop(standin);
}

#[test]
fn a_bad_configuration_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[billing]\nmin_charge = \"one cent\"\n").unwrap();
    let out = run(dir.path(), &["serve", "--config", path.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("`billing.min_charge`") && stderr.contains("one cent"), "{stderr}");

    std::fs::write(&path, "[billing]\ntimezone = \"UTC\"\nhold_ttl = 60\n").unwrap();
    let out = run(dir.path(), &["serve", "--config", path.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown key `billing.hold_ttl`"), "{}", text(&out.stderr));

    let out = run(dir.path(), &["serve", "--config", "missing.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("does not exist"), "{}", text(&out.stderr));
}

#[test]
fn the_environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("creditd.toml");
    std::fs::write(&path, "[billing]\ntimezone = \"UTC\"\n").unwrap();
    let out = creditd(dir.path())
        .args(["serve", "--config", path.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .env("CREDITD_BILLING__TIMEZONE", "Not/AZone")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("CREDITD_BILLING__TIMEZONE") && stderr.contains("Not/AZone"), "{stderr}");
}

/// One metering attempt of the two-server test and its answer.
struct Attempt {
    request_id: String,
    /// Which server answered (0 or 1).
    server: usize,
    status: u16,
    body: Value,
    /// A resend of an id already sent.
    replay: bool,
}

/// Two `creditd serve` processes on one PostgreSQL database, 64 clients
/// spending one account's limited balance through both: nothing is spent
/// twice, nothing beyond the balance, and no request is charged twice.
#[test]
fn two_servers_on_one_postgres_database_never_overspend() {
    const CLIENTS: usize = 64;
    const REQUESTS_PER_CLIENT: usize = 8;
    /// 5,000 input tokens × $3/M + 1,000 output tokens × $15/M = $0.03 = 3 credits.
    const COST: u64 = 3;
    /// Enough for exactly 150 requests, with one credit left over.
    const AFFORDABLE: usize = 150;
    const GRANTED: u64 = COST * AFFORDABLE as u64 + 1;
    const ACCOUNT: &str = "shared_account";
    const MODEL: &str = "claude-sonnet-4-5";

    let started = Instant::now();
    let pg = creditd_testing::PgDatabase::create();
    let db = pg.url().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("creditd.toml");
    std::fs::write(&config, QUIET_CONFIG).unwrap();
    let config = config.to_str().unwrap();
    let args = ["--config", config, "--db", &db, "--listen", "127.0.0.1:0", "--admin-key", ADMIN_KEY];
    let servers = [Server::start(dir.path(), &args), Server::start(dir.path(), &args)];
    assert_ne!(servers[0].base, servers[1].base);
    let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
    eprintln!("two servers up after {:?}: {bases:?}", started.elapsed());

    // Set up through the first server; the second sees it at once.
    let http = Http::new();
    let (status, model) = http.send("PUT", &servers[0].url(&format!("/v1/models/{MODEL}")), ADMIN_KEY, &sonnet(), None);
    assert_eq!(status, 200, "{model}");
    let (status, body) = http.post(&servers[0].url("/v1/accounts"), ADMIN_KEY, &json!({"id": ACCOUNT}));
    assert_eq!(status, 201, "{body}");
    let grant = json!({"amount": GRANTED.to_string(), "kind": "promo", "source": "race", "reason": "two servers"});
    let grants_url = servers[0].url(&format!("/v1/accounts/{ACCOUNT}/grants"));
    let (status, grant) = http.send("POST", &grants_url, ADMIN_KEY, &grant, Some("race-grant"));
    assert_eq!(status, 201, "{grant}");
    let (status, balance) = http.get(&servers[1].url(&format!("/v1/accounts/{ACCOUNT}/balance")), Some(ADMIN_KEY));
    assert_eq!(status, 200, "{balance}");
    assert_eq!(balance["available"], GRANTED.to_string(), "the second server sees the grant: {balance}");

    let usage = |request_id: &str| {
        json!({
            "account_id": ACCOUNT, "request_id": request_id, "model": MODEL, "request_type": "chat",
            "enforce": true, "status": "success",
            "usage": {"input_tokens": 5000, "output_tokens": 1000}
        })
    };

    // Phase 1: every client sends its requests, alternating servers, and
    // resends every other one at once to the other server. Phase 2 (after
    // every client is done and the balance is spent): every id again.
    let phase = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS));
    let metering_started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let bases = bases.clone();
            let phase = phase.clone();
            std::thread::spawn(move || {
                let http = Http::new();
                let mut attempts = Vec::new();
                let mut send = |server: usize, request_id: &str, replay: bool| {
                    let url = format!("{}/v1/usage", bases[server]);
                    let (status, body) = http.post(&url, ADMIN_KEY, &usage(request_id));
                    attempts.push(Attempt { request_id: request_id.to_string(), server, status, body, replay });
                };
                phase.wait();
                for i in 0..REQUESTS_PER_CLIENT {
                    let request_id = format!("req-{client}-{i}");
                    let server = (client + i) % 2;
                    send(server, &request_id, false);
                    if i % 2 == 1 {
                        send(1 - server, &request_id, true);
                    }
                }
                phase.wait();
                for i in 0..REQUESTS_PER_CLIENT {
                    let request_id = format!("req-{client}-{i}");
                    send((client + i + 1) % 2, &request_id, true);
                }
                attempts
            })
        })
        .collect();
    let attempts: Vec<Attempt> = clients.into_iter().flat_map(|c| c.join().expect("a client panicked")).collect();
    let metering_took = metering_started.elapsed();
    assert_eq!(attempts.len(), CLIENTS * REQUESTS_PER_CLIENT * 5 / 2);

    // No 5xx, and nothing but created, replayed or insufficient credits.
    let unexpected: Vec<String> = attempts
        .iter()
        .filter(|a| !matches!(a.status, 200 | 201 | 402))
        .map(|a| format!("{} via server {} (replay: {}): {} {}", a.request_id, a.server, a.replay, a.status, a.body))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} unexpected answers, e.g.:\n{}",
        unexpected.len(),
        unexpected[..unexpected.len().min(10)].join("\n")
    );

    // The first answer of each id decides it: 201 once (charged) or 402.
    let mut first: std::collections::BTreeMap<&str, &Attempt> = std::collections::BTreeMap::new();
    for a in attempts.iter().filter(|a| !a.replay) {
        assert!(first.insert(a.request_id.as_str(), a).is_none(), "{} sent twice as new", a.request_id);
    }
    assert_eq!(first.len(), CLIENTS * REQUESTS_PER_CLIENT);
    let created: Vec<&str> = attempts.iter().filter(|a| a.status == 201).map(|a| a.request_id.as_str()).collect();
    let acknowledged: std::collections::BTreeSet<&str> = created.iter().copied().collect();
    assert_eq!(created.len(), acknowledged.len(), "an id was created (201) twice");
    for id in &acknowledged {
        let a = first[id];
        assert!(!a.replay && a.status == 201, "{id}: a resend was created, not its first send");
        assert_eq!(a.body["request_id"], *id, "{}", a.body);
        assert_eq!(a.body["credits"], COST.to_string(), "{}", a.body);
        assert_eq!(a.body["debt_incurred"], "0", "{}", a.body);
    }
    let refused = first.values().filter(|a| a.status == 402).count();
    eprintln!(
        "{} attempts in {metering_took:?}: {} charged, {refused} refused, {} resends",
        attempts.len(),
        acknowledged.len(),
        attempts.iter().filter(|a| a.replay).count()
    );
    assert!(acknowledged.len() as u64 * COST <= GRANTED, "overspent: {} charged", acknowledged.len());
    assert_eq!(acknowledged.len(), AFFORDABLE, "every affordable request is charged, no more");
    assert_eq!(acknowledged.len() + refused, first.len());
    for server in 0..2 {
        let charged_here = acknowledged.iter().filter(|id| first[*id].server == server).count();
        assert!(charged_here > 0, "server {server} charged nothing: the test did not race the two");
    }

    // Refusals are insufficient_credits, refused only when the balance was short.
    for a in attempts.iter().filter(|a| a.status == 402) {
        assert_eq!(a.body["error"]["code"], "insufficient_credits", "{}: {}", a.request_id, a.body);
        let available = a.body["error"]["details"]["available"].as_str().unwrap_or_else(|| panic!("{}", a.body));
        let available: f64 = available.parse().unwrap();
        assert!(available < COST as f64, "{} refused with {available} available: {}", a.request_id, a.body);
        assert!(!acknowledged.contains(a.request_id.as_str()) || a.replay, "{}", a.request_id);
    }
    // Resends: the same record for a charged id (from either server), a refusal for a refused one.
    for a in attempts.iter().filter(|a| a.replay) {
        let original = first[a.request_id.as_str()];
        if original.status == 201 {
            assert_eq!(a.status, 200, "resend of charged {} via server {}: {}", a.request_id, a.server, a.body);
            assert_eq!(a.body, original.body, "resend of {} answered another record", a.request_id);
        } else {
            assert_eq!(a.status, 402, "resend of refused {} via server {}: {}", a.request_id, a.server, a.body);
        }
    }

    // The balance, from either server: granted − charged, nothing held, no debt.
    let left = (GRANTED - COST * acknowledged.len() as u64).to_string();
    for server in &servers {
        let (status, balance) = http.get(&server.url(&format!("/v1/accounts/{ACCOUNT}/balance")), Some(ADMIN_KEY));
        assert_eq!(status, 200, "{balance}");
        assert_eq!(
            (balance["available"].as_str(), balance["held"].as_str(), balance["debt"].as_str()),
            (Some(left.as_str()), Some("0"), Some("0")),
            "{balance}"
        );
    }
    // One usage record and one charge entry per acknowledged id.
    let (status, records) =
        http.get(&servers[1].url(&format!("/v1/accounts/{ACCOUNT}/usage?limit=1000")), Some(ADMIN_KEY));
    assert_eq!(status, 200, "{records}");
    let recorded: Vec<&str> =
        records["data"].as_array().expect("a list").iter().filter_map(|r| r["request_id"].as_str()).collect();
    assert_eq!(recorded.len(), acknowledged.len(), "usage records");
    assert_eq!(recorded.iter().copied().collect::<std::collections::BTreeSet<_>>(), acknowledged);
    let (status, summary) =
        http.get(&servers[0].url(&format!("/v1/accounts/{ACCOUNT}/usage/summary?group_by=model")), Some(ADMIN_KEY));
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["total"]["requests"].as_u64(), Some(acknowledged.len() as u64), "{summary}");
    assert_eq!(summary["total"]["credits"], (COST * acknowledged.len() as u64).to_string(), "{summary}");
    let (status, ledger) =
        http.get(&servers[0].url(&format!("/v1/accounts/{ACCOUNT}/ledger?type=charge&limit=1000")), Some(ADMIN_KEY));
    assert_eq!(status, 200, "{ledger}");
    let charges = ledger["data"].as_array().expect("a list");
    assert_eq!(charges.len(), acknowledged.len(), "charge entries");
    let charged: std::collections::BTreeSet<&str> =
        charges.iter().filter_map(|e| e["reference"]["request_id"].as_str()).collect();
    assert_eq!(charged, acknowledged, "each acknowledged id charged exactly once");

    let [first_server, second_server] = servers;
    first_server.stop();
    second_server.stop();

    let out = run(dir.path(), &["audit", "--db", &db, "--config", config]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "audit failed: {report}{}", text(&out.stderr));
    assert!(report.contains("no breaches"), "{report}");
    eprintln!("two-server test done in {:?}", started.elapsed());
}
