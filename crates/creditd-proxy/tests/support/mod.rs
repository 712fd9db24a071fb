//! The proxy's test harness: the real API router with the proxy mounted, on
//! a real socket, over a store of either backend, in front of the
//! stand-in provider (`creditd_proxy::standin`), also on a real socket.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use creditd_core::account::UsageRecord;
use creditd_proxy::standin::{Running, StandIn};
use creditd_proxy::{Proxy, ProxyConfig, Upstream};
use creditd_server::{App, ServerConfig};
use creditd_store::postgres::PgStore;
use creditd_store::sqlite::SqliteStore;
use creditd_store::{EngineConfig, ManualClock, Store, WriterLimits};
use creditd_testing::{Backend, PgDatabase};
use serde_json::{Value, json};

pub const ADMIN: &str = "admin-secret-for-tests";
pub const UPSTREAM_OPENAI_KEY: &str = "sk-upstream-openai";
pub const UPSTREAM_ANTHROPIC_KEY: &str = "sk-ant-upstream";
pub const ACCOUNT: &str = "u_proxy";
pub const GPT: &str = "gpt-4o";
pub const CLAUDE: &str = "claude-sonnet-4-5";

pub enum Home {
    Sqlite(tempfile::TempDir),
    Postgres(PgDatabase),
}

pub struct Harness {
    /// `http://127.0.0.1:port`: creditd (API and proxy).
    pub base: String,
    pub store: Arc<dyn Store>,
    pub standin: Running,
    /// An account token of [`ACCOUNT`].
    pub token: String,
    pub http: reqwest::Client,
    pub backend: Backend,
    server: tokio::task::JoinHandle<()>,
    _home: Home,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn open_store(backend: Backend, clock: Arc<ManualClock>) -> (Arc<dyn Store>, Home) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = SqliteStore::open(
                &dir.path().join("creditd.db"),
                EngineConfig::default(),
                WriterLimits::default(),
                clock,
            )
            .expect("opening the SQLite store");
            (Arc::new(store), Home::Sqlite(dir))
        }
        Backend::Postgres => {
            let db = PgDatabase::create();
            let store = PgStore::connect(db.url(), EngineConfig::default(), WriterLimits::default(), clock)
                .expect("connecting the PostgreSQL store");
            (Arc::new(store), Home::Postgres(db))
        }
    }
}

impl Harness {
    /// creditd with both upstreams pointing at a fresh stand-in, two models
    /// priced, and [`ACCOUNT`] holding `wallet_usd` dollars.
    pub async fn start(backend: Backend, wallet_usd: &str) -> Harness {
        Harness::start_with(backend, wallet_usd, |_| {}).await
    }

    pub async fn start_with(backend: Backend, wallet_usd: &str, adjust: impl FnOnce(&mut ProxyConfig)) -> Harness {
        Harness::start_configured(backend, wallet_usd, adjust, |_| {}).await
    }

    /// Like [`Harness::start_with`], with the API's configuration adjusted too.
    pub async fn start_configured(
        backend: Backend,
        wallet_usd: &str,
        adjust: impl FnOnce(&mut ProxyConfig),
        adjust_server: impl FnOnce(&mut ServerConfig),
    ) -> Harness {
        let standin = StandIn::start().await.expect("stand-in");
        let clock = Arc::new(ManualClock::new("2026-03-01T00:00:00Z".parse().expect("time")));
        let (store, home) = open_store(backend, clock.clone());
        let mut config = ServerConfig { admin_key: Some(ADMIN.into()), ..ServerConfig::default() };
        adjust_server(&mut config);
        let app = App::new(store.clone(), clock, None, config);
        let mut proxy_config = ProxyConfig {
            openai: Some(Upstream { base_url: standin.openai_base(), api_key: UPSTREAM_OPENAI_KEY.into() }),
            anthropic: Some(Upstream { base_url: standin.anthropic_base(), api_key: UPSTREAM_ANTHROPIC_KEY.into() }),
            idle_timeout: Duration::from_secs(5),
            ..ProxyConfig::default()
        };
        proxy_config.aliases.insert("gpt-4o-2024-08-06".into(), GPT.into());
        adjust(&mut proxy_config);
        let proxy = Proxy::new(app.state(), proxy_config).expect("proxy");
        let router = app.router_with(proxy.mount());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let http = reqwest::Client::new();
        let mut harness = Harness { base, store, standin, token: String::new(), http, backend, server, _home: home };
        harness.setup(wallet_usd).await;
        harness
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(ADMIN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("admin call");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn setup(&mut self, wallet_usd: &str) {
        for (model, rates) in [
            (GPT, json!({"input": "2.5", "output": "10", "cache_read": "1.25", "cache_write": "0"})),
            (CLAUDE, json!({"input": "3", "output": "15", "cache_read": "0.3", "cache_write": "3.75"})),
        ] {
            let (status, body) = self
                .admin(
                    "PUT",
                    &format!("/v1/models/{model}"),
                    Some(json!({"cost_usd_per_mtok": rates, "max_output_tokens": 4096})),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
        let (status, body) = self.admin("POST", "/v1/accounts", Some(json!({"id": ACCOUNT}))).await;
        assert_eq!(status, 201, "{body}");
        if wallet_usd != "0" {
            let (status, body) = self
                .admin(
                    "POST",
                    &format!("/v1/accounts/{ACCOUNT}/wallet/topups"),
                    Some(json!({"amount_usd": wallet_usd, "provider": "manual"})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
        let (status, body) =
            self.admin("POST", &format!("/v1/accounts/{ACCOUNT}/tokens"), Some(json!({"ttl_seconds": 86400}))).await;
        assert_eq!(status, 201, "{body}");
        self.token = body["token"].as_str().expect("token").to_string();
    }

    /// The account's balance (`available`, `held`).
    pub async fn balance(&self) -> Value {
        let (status, body) = self.admin("GET", &format!("/v1/accounts/{ACCOUNT}/balance"), None).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn record(&self, request_id: &str) -> Option<UsageRecord> {
        self.store.usage_record(ACCOUNT, request_id).await.expect("usage record")
    }

    /// Waits (a few seconds at most) for the usage record of `request_id`.
    pub async fn wait_record(&self, request_id: &str) -> UsageRecord {
        for _ in 0..100 {
            if let Some(record) = self.record(request_id).await {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no usage record for {request_id}");
    }

    /// Every usage record of the account.
    pub async fn records(&self) -> Vec<UsageRecord> {
        let page = creditd_store::Page { limit: 1000, cursor: None };
        self.store.usage(ACCOUNT, Default::default(), page).await.expect("usage").data
    }

    /// Open holds of the account (from its balance).
    pub async fn held(&self) -> String {
        self.balance().await["held"].as_str().expect("held").to_string()
    }

    pub fn proxy_url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// The sum of a counter's series in `/metrics` text whose labels include
/// every one of `labels` (`name="value"` pairs).
pub fn counter(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.split_once("} "))
        .filter(|(series, _)| labels.iter().all(|(k, v)| series.split(',').any(|l| l == format!("{k}=\"{v}\""))))
        .map(|(_, value)| value.trim().parse::<f64>().expect("a number"))
        .sum()
}

/// The proxy's metadata on a usage record.
pub fn proxy_meta(record: &UsageRecord) -> Value {
    let text = record.details.metadata.as_deref().expect("metadata");
    serde_json::from_str::<Value>(text).expect("json")["proxy"].clone()
}

/// Drops the one event of an SSE stream that holds `needle`.
pub fn without_event(stream: &[u8], needle: &str) -> Vec<u8> {
    let text = String::from_utf8(stream.to_vec()).expect("utf-8");
    text.split_inclusive("\n\n").filter(|e| !e.contains(needle)).collect::<String>().into_bytes()
}
