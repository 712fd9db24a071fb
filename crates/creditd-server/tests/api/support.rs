//! The test harness: the real router over the store of the backend
//! `CREDITD_TEST_BACKEND` selects (`Backend::from_env`): a `SqliteStore` in a
//! temp dir (the default) or, with `postgres`, a `PgStore` on a fresh
//! database of the test's own. Driven by a `ManualClock`, called with
//! `tower::ServiceExt::oneshot`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use creditd_core::Usd;
use creditd_server::{App, ServerConfig};
use creditd_store::postgres::PgStore;
use creditd_store::sqlite::SqliteStore;
use creditd_store::{EngineConfig, ManualClock, Store, WriterLimits};
use creditd_testing::{Backend, PgDatabase};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

pub const START: &str = "2026-03-01T00:00:00Z";
pub const SONNET: &str = "claude-sonnet-4-5";

pub struct Api {
    pub router: Router,
    pub clock: Arc<ManualClock>,
    pub store: Arc<dyn Store>,
    /// A stored admin key (made by `ensure_admin_key`).
    pub admin: String,
    config: ServerConfig,
    /// Declared last, so dropped last: after the router and the store.
    _home: StoreHome,
}

/// What a test's store lives in, kept alive as long as the store: its
/// SQLite temp dir, or its PostgreSQL database (dropped with it).
pub enum StoreHome {
    Sqlite(tempfile::TempDir),
    Postgres(#[allow(dead_code)] PgDatabase),
}

/// A new, empty store on the backend `Backend::from_env()` selects. Keep
/// the `StoreHome` alive (and drop it after the store).
pub fn open_store(engine: EngineConfig, clock: Arc<ManualClock>) -> (Arc<dyn Store>, StoreHome) {
    match Backend::from_env() {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(&dir.path().join("creditd.db"), engine, WriterLimits::default(), clock)
                .expect("opening the SQLite store");
            (Arc::new(store), StoreHome::Sqlite(dir))
        }
        Backend::Postgres => {
            let db = PgDatabase::create();
            let store = PgStore::connect(db.url(), engine, WriterLimits::default(), clock)
                .expect("connecting the PostgreSQL store");
            (Arc::new(store), StoreHome::Postgres(db))
        }
    }
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub raw: Bytes,
    pub body: Value,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, String::from_utf8_lossy(&self.raw))
    }
}

impl Resp {
    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<no error code>")
    }

    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "unexpected answer: {self:?}");
        &self.body
    }

    /// Asserts an error status and code, and the error body's shape.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status.as_u16(), status, "unexpected answer: {self:?}");
        assert_eq!(self.code(), code, "unexpected answer: {self:?}");
        let error = &self.body["error"];
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{self:?}");
        assert!(error["details"].is_object(), "{self:?}");
        assert_eq!(self.headers.get("content-type").unwrap(), "application/json");
        &self.body["error"]["details"]
    }
}

pub fn config() -> ServerConfig {
    let mut min_topup_usd = HashMap::new();
    min_topup_usd.insert("creem".to_string(), Usd::whole(5));
    min_topup_usd.insert("nowpayments".to_string(), Usd::whole(10));
    ServerConfig {
        engine: EngineConfig::default(),
        min_topup_usd,
        admin_key: Some("configured-admin-secret".into()),
        ..ServerConfig::default()
    }
}

impl Api {
    pub async fn new() -> Api {
        Api::build(true, config()).await
    }

    pub async fn build(test_clock: bool, config: ServerConfig) -> Api {
        Api::build_at(START, test_clock, config).await
    }

    /// An API whose clock starts at `start`.
    pub async fn build_at(start: &str, test_clock: bool, config: ServerConfig) -> Api {
        let clock = Arc::new(ManualClock::new(start.parse().unwrap()));
        let (store, home) = open_store(config.engine.clone(), clock.clone());
        let admin = creditd_server::ensure_admin_key(store.as_ref(), None).await.unwrap().expect("a new admin key");
        let app = App::new(store.clone(), clock.clone(), test_clock.then(|| clock.clone()), config.clone());
        Api { router: app.router(), clock, store, admin, config, _home: home }
    }

    /// The process stops and starts again: the router and the store are
    /// dropped (the writer finishes and closes its connection), and a new
    /// store opens the same database. Only what was committed survives.
    pub async fn restart(self) -> Api {
        let Api { router, clock, store, admin, config, _home: home } = self;
        drop(router);
        // A task spawned off a request's path (a key's last use) may hold it a moment.
        let started = std::time::Instant::now();
        while Arc::strong_count(&store) > 1 {
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "something still holds the store");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(store);
        let store: Arc<dyn Store> = match &home {
            StoreHome::Sqlite(dir) => Arc::new(
                SqliteStore::open(
                    &dir.path().join("creditd.db"),
                    config.engine.clone(),
                    WriterLimits::default(),
                    clock.clone(),
                )
                .expect("reopening the SQLite store"),
            ),
            StoreHome::Postgres(db) => Arc::new(
                PgStore::connect(db.url(), config.engine.clone(), WriterLimits::default(), clock.clone())
                    .expect("reconnecting the PostgreSQL store"),
            ),
        };
        let app = App::new(store.clone(), clock.clone(), Some(clock.clone()), config.clone());
        Api { router: app.router(), clock, store, admin, config, _home: home }
    }

    /// The directory of the SQLite database files (None on PostgreSQL).
    pub fn sqlite_dir(&self) -> Option<&std::path::Path> {
        match &self._home {
            StoreHome::Sqlite(dir) => Some(dir.path()),
            StoreHome::Postgres(_) => None,
        }
    }

    pub async fn send(&self, request: Request<Body>) -> Resp {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let raw = response.into_body().collect().await.unwrap().to_bytes();
        let body = if raw.is_empty() { Value::Null } else { serde_json::from_slice(&raw).unwrap_or(Value::Null) };
        Resp { status, headers, raw, body }
    }

    /// A request with raw body bytes and extra headers.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut builder = Request::builder().method(Method::from_bytes(method.as_bytes()).unwrap()).uri(path);
        if let Some(key) = key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        if !body.is_empty() {
            builder = builder.header("content-type", "application/json");
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        self.send(builder.body(Body::from(body)).unwrap()).await
    }

    pub async fn call(&self, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> Resp {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
        self.raw(method, path, key, bytes, &[]).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call("GET", path, Some(&self.admin.clone()), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call("POST", path, Some(&self.admin.clone()), Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.call("PUT", path, Some(&self.admin.clone()), Some(body)).await
    }

    /// A `POST` as admin with an `Idempotency-Key`.
    pub async fn post_idem(&self, path: &str, key: &str, body: Value) -> Resp {
        let admin = self.admin.clone();
        self.raw("POST", path, Some(&admin), serde_json::to_vec(&body).unwrap(), &[("idempotency-key", key)]).await
    }

    // Set-up helpers.

    pub async fn sonnet(&self) -> Value {
        self.put(
            &format!("/v1/models/{SONNET}"),
            json!({"cost_usd_per_mtok": {"input": "3", "output": "15", "cache_read": "0.3", "cache_write": "3.75"},
                   "cost_usd": {"request": "0"}, "credits_per_mtok": null, "credits": {"request": "0"},
                   "multiplier": "1", "free": false, "max_output_tokens": 8192, "tiers": []}),
        )
        .await
        .expect(200)
        .clone()
    }

    pub async fn account(&self, id: &str) -> Value {
        self.post("/v1/accounts", json!({"id": id, "email": format!("{id}@example.com")})).await.expect(201).clone()
    }

    pub async fn grant(&self, account: &str, amount: &str) -> Value {
        self.post(
            &format!("/v1/accounts/{account}/grants"),
            json!({"amount": amount, "kind": "promo", "source": "test"}),
        )
        .await
        .expect(201)
        .clone()
    }

    pub async fn topup(&self, account: &str, usd: &str) -> Value {
        self.post(&format!("/v1/accounts/{account}/wallet/topups"), json!({"amount_usd": usd, "provider": "manual"}))
            .await
            .expect(201)
            .clone()
    }

    pub async fn key(&self, role: &str) -> String {
        let created = self.post("/v1/keys", json!({"role": role, "name": format!("{role} key")})).await;
        created.expect(201)["secret"].as_str().unwrap().to_string()
    }

    pub async fn balance(&self, account: &str) -> Value {
        self.get(&format!("/v1/accounts/{account}/balance")).await.expect(200).clone()
    }

    pub async fn available(&self, account: &str) -> String {
        self.balance(account).await["available"].as_str().unwrap().to_string()
    }

    pub async fn authorize(&self, account: &str, request_id: &str, input: u64, max_output: u64) -> Resp {
        self.post(
            "/v1/authorize",
            json!({"account_id": account, "request_id": request_id, "model": SONNET, "request_type": "chat",
                   "input_tokens": input, "max_output_tokens": max_output}),
        )
        .await
    }

    pub async fn settle(&self, account: &str, request_id: &str, input: u64, output: u64) -> Resp {
        self.post(
            "/v1/settle",
            json!({"account_id": account, "request_id": request_id, "status": "success",
                   "usage": {"input_tokens": input, "output_tokens": output}}),
        )
        .await
    }
}
