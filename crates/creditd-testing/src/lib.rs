//! Test support shared by the crates' test suites.
//!
//! PostgreSQL tests run against the server of `CREDITD_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`), each in a
//! database of its own that is created for it and dropped after it. They
//! never skip: without a server they fail, and say how to start one.

use std::time::Duration;

pub mod proxy;

/// The server the PostgreSQL tests use (a maintenance database on it).
pub fn postgres_admin_url() -> String {
    std::env::var("CREDITD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// The `host:port` of the server the PostgreSQL tests use (for a
/// [`proxy::PgProxy`] in front of it).
pub fn postgres_server_addr() -> String {
    let url = postgres_admin_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host.contains(':') { host.to_string() } else { format!("{host}:5432") }
}

/// The backend an HTTP test suite runs on: `CREDITD_TEST_BACKEND=postgres`
/// selects PostgreSQL, anything else (or nothing) SQLite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_env() -> Backend {
        match std::env::var("CREDITD_TEST_BACKEND").as_deref() {
            Ok("postgres") => Backend::Postgres,
            _ => Backend::Sqlite,
        }
    }
}

/// Runs `sql` on the admin database, from a thread of its own (callable
/// from async tests).
fn admin(sql: String) -> Result<(), String> {
    let url = postgres_admin_url();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let connect = tokio_postgres::connect(&url, tokio_postgres::NoTls);
            let (client, connection) = tokio::time::timeout(Duration::from_secs(10), connect)
                .await
                .map_err(|_| format!("connecting to {url} timed out"))?
                .map_err(|e| format!("cannot connect to {url}: {e}"))?;
            tokio::spawn(connection);
            client.batch_execute(&sql).await.map_err(|e| format!("{sql}: {e}"))
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the admin connection panicked".into()))
}

/// A database of one test's own, dropped (connections and all) with it.
#[derive(Debug)]
pub struct PgDatabase {
    name: String,
    url: String,
}

impl PgDatabase {
    /// Creates an empty database. Panics, with how to fix it, if the server
    /// cannot be reached: PostgreSQL tests never skip.
    pub fn create() -> PgDatabase {
        let name = format!("creditd_test_{}", uuid::Uuid::now_v7().simple());
        if let Err(e) = admin(format!("CREATE DATABASE {name}")) {
            panic!(
                "PostgreSQL tests need a server: {e}. Start it (see README.md, e.g. \
                 `pg_ctlcluster --skip-systemctl-redirect 15 main start`) or set CREDITD_TEST_POSTGRES_URL"
            );
        }
        let base = postgres_admin_url();
        let server = base.rsplit_once('/').map_or(base.as_str(), |(server, _)| server);
        PgDatabase { url: format!("{server}/{name}"), name }
    }

    /// `postgres://…/<this database>`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Err(e) = admin(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)) {
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}
