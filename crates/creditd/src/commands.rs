//! The one-shot commands: `init`, `migrate`, `audit`, `keys create`, and the
//! database helpers `serve` shares with them.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use creditd_core::invariants::INVARIANTS;
use creditd_store::postgres::{PgStore, is_postgres_url};
use creditd_store::sqlite::{SqliteStore, sqlite_path};
use creditd_store::{AuditReport, Clock, Command, EngineConfig, Reply, Role, Store, SystemClock, WriterLimits};

use crate::Failure;
use crate::cli::{DbArgs, InitArgs, KeysCreateArgs, KeysRevokeArgs, RoleArg};
use crate::config::{self, Config, DEFAULT_TOML};

/// `creditd init`: writes the commented default configuration.
pub fn init(args: &InitArgs) -> Result<(), Failure> {
    let path = &args.path;
    if path.exists() && !args.force {
        return Err(Failure::runtime(format!("{} already exists; pass --force to overwrite it", path.display())));
    }
    std::fs::write(path, DEFAULT_TOML)
        .map_err(|e| Failure::runtime(format!("cannot write {}: {e}", path.display())))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Where a database URL points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Database {
    /// The embedded store, a file.
    Sqlite(PathBuf),
    /// A PostgreSQL server (the URL as given, for the driver).
    Postgres(String),
}

/// Reads a database URL: `sqlite://…` is the embedded backend,
/// `postgres://…` (or `postgresql://…`) a PostgreSQL server.
pub fn database(url: &str) -> Result<Database, Failure> {
    if is_postgres_url(url) {
        return Ok(Database::Postgres(url.to_string()));
    }
    match sqlite_path(url) {
        Some(path) => Ok(Database::Sqlite(path)),
        None => Err(Failure::usage(format!(
            "{url:?} is not a database URL; use sqlite://creditd.db (relative), \
             sqlite:///var/lib/creditd/creditd.db or postgres://user@host/database"
        ))),
    }
}

/// Opens the store (creating and migrating the database as needed) and
/// starts its writer; dropping the store drains and joins the writer.
pub fn open_store(database: &Database, engine: EngineConfig, clock: Arc<dyn Clock>) -> Result<Arc<dyn Store>, Failure> {
    let opened: Result<Arc<dyn Store>, _> = match database {
        Database::Sqlite(path) => {
            SqliteStore::open(path, engine, WriterLimits::default(), clock).map(|s| Arc::new(s) as _)
        }
        Database::Postgres(url) => {
            PgStore::connect(url, engine, WriterLimits::default(), clock).map(|s| Arc::new(s) as _)
        }
    };
    opened.map_err(|e| Failure::runtime(format!("cannot open the database {database}: {e}")))
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            // The URL may carry a password: show only where it points.
            Database::Postgres(url) => {
                let shown = url.rsplit_once('@').map_or(url.as_str(), |(_, host)| host);
                write!(f, "postgres://{}", shown.trim_start_matches("postgres://").trim_start_matches("postgresql://"))
            }
        }
    }
}

/// The configuration and database URL of a one-shot command: `--db` (or
/// `CREDITD_DATABASE_URL`) over the configuration's `database.url`.
pub(crate) fn resolve(args: &DbArgs) -> Result<(Config, String), Failure> {
    let file = config::locate(args.config.as_deref());
    let config = Config::load(file.as_deref())?;
    let url = args.db.clone().unwrap_or_else(|| config.database.url.clone());
    Ok((config, url))
}

/// `creditd migrate`: creates or upgrades the schema.
pub async fn migrate(args: &DbArgs) -> Result<(), Failure> {
    let (_, url) = resolve(args)?;
    let database = database(&url)?;
    let migrated = match &database {
        Database::Sqlite(path) => SqliteStore::migrate(path),
        Database::Postgres(url) => PgStore::migrate(url),
    };
    migrated.map_err(|e| Failure::runtime(format!("cannot migrate {database}: {e}")))?;
    println!("migrated {database}");
    Ok(())
}

/// `creditd audit`: checks every ledger invariant (docs/concepts.md).
pub async fn audit(args: &DbArgs) -> Result<(), Failure> {
    let (config, url) = resolve(args)?;
    let database = database(&url)?;
    if let Database::Sqlite(path) = &database
        && !path.is_file()
    {
        return Err(Failure::runtime(format!("there is no database at {}", path.display())));
    }
    let report = {
        let store = open_store(&database, config.engine(), Arc::new(SystemClock))?;
        store.audit().await.map_err(|e| Failure::runtime(format!("the audit of {database} failed: {e}")))?
    };
    let url = database.to_string();
    let text = render_audit(&url, &report);
    print!("{text}");
    let _ = std::io::stdout().flush();
    if report.breaches.is_empty() { Ok(()) } else { Err(Failure::Breaches(report.breaches.len())) }
}

/// The audit's report: what was checked, over how much, and every breach.
pub fn render_audit(url: &str, report: &AuditReport) -> String {
    let mut out = format!(
        "audit of {url}: {}, {}, {}\n",
        counted(report.accounts, "account", "accounts"),
        counted(report.entries, "ledger entry", "ledger entries"),
        counted(report.usage_records, "usage record", "usage records"),
    );
    out.push_str(&format!("checked {} invariants (see docs/audit.md):\n", INVARIANTS.len()));
    for (i, name) in INVARIANTS.iter().enumerate() {
        let number = i + 1;
        let broken = report.breaches.iter().filter(|b| usize::from(b.invariant) == number).count();
        if broken == 0 {
            out.push_str(&format!("  ok      {name}\n"));
        } else {
            out.push_str(&format!("  BROKEN  {name} ({})\n", counted(broken, "breach", "breaches")));
        }
    }
    if report.breaches.is_empty() {
        out.push_str("no breaches\n");
    } else {
        out.push_str(&format!("{}:\n", counted(report.breaches.len(), "breach", "breaches")));
        for breach in &report.breaches {
            out.push_str(&format!("  {breach}\n"));
        }
    }
    out
}

/// `n` and the noun in its number: "1 account", "2 accounts".
pub fn counted(n: impl TryInto<u64> + Copy + std::fmt::Display, one: &str, many: &str) -> String {
    let is_one = n.try_into().ok() == Some(1);
    format!("{n} {}", if is_one { one } else { many })
}

/// `creditd keys create`: creates a key and prints its secret once.
pub async fn create_key(args: &KeysCreateArgs) -> Result<(), Failure> {
    let (config, url) = resolve(&args.db)?;
    let database = database(&url)?;
    let role = match args.role {
        RoleArg::Gateway => Role::Gateway,
        RoleArg::Admin => Role::Admin,
    };
    let name = args.name.clone().unwrap_or_else(|| role.as_str().to_string());
    let (key, secret) = {
        let store = open_store(&database, config.engine(), Arc::new(SystemClock))?;
        creditd_server::create_key(store.as_ref(), role, &name)
            .await
            .map_err(|e| Failure::runtime(format!("cannot create the key: {e}")))?
    };
    println!("created {} key {} named {:?}", key.role.as_str(), key.id, key.name);
    println!("secret: {secret}");
    let _ = std::io::stdout().flush();
    eprintln!("The secret is shown only this once: store it now. Send it as `Authorization: Bearer <secret>`.");
    Ok(())
}

/// An optional time for a table: `-` when there is none.
pub(crate) fn time_or_dash(t: Option<jiff::Timestamp>) -> String {
    t.map_or_else(|| "-".to_string(), |t| t.to_string())
}

/// `creditd keys list`: every API key, without secrets (only hashes are stored).
pub async fn list_keys(args: &DbArgs) -> Result<(), Failure> {
    let (config, url) = resolve(args)?;
    let database = database(&url)?;
    let keys = {
        let store = open_store(&database, config.engine(), Arc::new(SystemClock))?;
        store.keys().await.map_err(|e| Failure::runtime(format!("cannot list the keys: {e}")))?
    };
    println!("id\trole\tname\tcreated_at\tlast_used_at");
    for k in keys {
        println!("{}\t{}\t{}\t{}\t{}", k.id, k.role.as_str(), k.name, k.created_at, time_or_dash(k.last_used_at));
    }
    Ok(())
}

/// `creditd keys revoke ID`: deletes the key. A running server holds a
/// verified key for up to 30 seconds (`KEY_CACHE_TTL`), so it refuses the
/// key within that; `DELETE /v1/keys/{id}` on it refuses it at once.
pub async fn revoke_key(args: &KeysRevokeArgs) -> Result<(), Failure> {
    let (config, url) = resolve(&args.db)?;
    let database = database(&url)?;
    let reply = {
        let store = open_store(&database, config.engine(), Arc::new(SystemClock))?;
        store.execute(Command::DeleteKey { id: args.id.clone() }, None).await
    };
    match reply {
        Ok(Reply::Deleted) => {
            println!("revoked key {}; a running creditd refuses it within 30 seconds", args.id);
            Ok(())
        }
        Ok(_) => Err(Failure::runtime("unexpected reply from the store")),
        Err(e) => Err(Failure::runtime(format!("cannot revoke key {:?}: {e}", args.id))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use creditd_core::invariants::Breach;

    #[test]
    fn database_urls_pick_the_backend() {
        for url in ["postgres://localhost/creditd", "postgresql://u@h/db"] {
            assert_eq!(database(url).ok(), Some(Database::Postgres(url.to_string())));
        }
        assert_eq!(database("sqlite://x.db").ok(), Some(Database::Sqlite("x.db".into())));
        assert!(matches!(database("mysql://x"), Err(Failure::Usage(_))));
    }

    #[test]
    fn a_postgres_url_is_shown_without_its_password() {
        let shown = Database::Postgres("postgres://me:secret@db.example:5432/creditd".into()).to_string();
        assert_eq!(shown, "postgres://db.example:5432/creditd");
    }

    #[test]
    fn the_audit_report_names_every_invariant_and_each_breach() {
        let clean = AuditReport { accounts: 2, entries: 5, usage_records: 1, breaches: vec![] };
        let text = render_audit("sqlite://x.db", &clean);
        assert!(text.contains("2 accounts, 5 ledger entries, 1 usage record\n"), "{text}");
        assert_eq!(text.matches("  ok  ").count(), INVARIANTS.len(), "{text}");
        assert!(text.ends_with("no breaches\n"), "{text}");

        let breach = Breach { invariant: 2, account_id: "u_1".into(), message: "wallet off by 1".into() };
        let dirty = AuditReport { breaches: vec![breach], ..clean };
        let text = render_audit("sqlite://x.db", &dirty);
        assert!(text.contains("BROKEN  2 the wallet"), "{text}");
        assert!(text.contains("BROKEN  2 the wallet's balance equals the sum of its entries (1 breach)"), "{text}");
        assert!(text.contains("1 breach:\n  invariant 2 broken for account u_1: wallet off by 1"), "{text}");
    }
}
