//! The one-shot commands: `init`, `migrate`, `audit`, `keys create`, and the
//! database helpers `serve` shares with them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use creditd_core::invariants::INVARIANTS;
use creditd_store::sqlite::{SqliteStore, sqlite_path};
use creditd_store::{AuditReport, Clock, EngineConfig, Role, Store, SystemClock, WriterLimits};

use crate::Failure;
use crate::cli::{DbArgs, InitArgs, KeysCreateArgs, RoleArg};
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
    Sqlite(PathBuf),
}

/// Reads a database URL: `sqlite://…` is the embedded backend;
/// `postgres://…` is recognised but not built yet (exit code 2).
pub fn database(url: &str) -> Result<Database, Failure> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Err(Failure::usage(
            "PostgreSQL support is not built yet; use a SQLite URL such as sqlite://creditd.db",
        ));
    }
    match sqlite_path(url) {
        Some(path) => Ok(Database::Sqlite(path)),
        None => Err(Failure::usage(format!(
            "{url:?} is not a database URL; use sqlite://creditd.db (relative) or sqlite:///var/lib/creditd/creditd.db"
        ))),
    }
}

/// Opens the store (creating and migrating the database as needed) and
/// starts its writer; dropping the store drains and joins the writer.
pub fn open_sqlite(path: &Path, engine: EngineConfig, clock: Arc<dyn Clock>) -> Result<SqliteStore, Failure> {
    SqliteStore::open(path, engine, WriterLimits::default(), clock)
        .map_err(|e| Failure::runtime(format!("cannot open the database {}: {e}", path.display())))
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
    let Database::Sqlite(path) = database(&url)?;
    SqliteStore::migrate(&path).map_err(|e| Failure::runtime(format!("cannot migrate {url}: {e}")))?;
    println!("migrated {url} ({})", path.display());
    Ok(())
}

/// `creditd audit`: checks every invariant of `semantics.md` §10.
pub async fn audit(args: &DbArgs) -> Result<(), Failure> {
    let (config, url) = resolve(args)?;
    let Database::Sqlite(path) = database(&url)?;
    if !path.is_file() {
        return Err(Failure::runtime(format!("there is no database at {} ({url})", path.display())));
    }
    let report = {
        let store = SqliteStore::open(&path, config.engine(), WriterLimits::default(), Arc::new(SystemClock))
            .map_err(|e| Failure::runtime(format!("cannot open {url}: {e}")))?;
        store.audit().await.map_err(|e| Failure::runtime(format!("the audit of {url} failed: {e}")))?
    };
    let text = render_audit(&url, &report);
    print!("{text}");
    let _ = std::io::stdout().flush();
    if report.breaches.is_empty() { Ok(()) } else { Err(Failure::Breaches(report.breaches.len())) }
}

/// The audit's report: what was checked, over how much, and every breach.
pub fn render_audit(url: &str, report: &AuditReport) -> String {
    let mut out = format!(
        "audit of {url}: {} accounts, {} ledger entries, {} usage records\n",
        report.accounts, report.entries, report.usage_records
    );
    out.push_str(&format!("checked {} invariants (semantics.md §10):\n", INVARIANTS.len()));
    for (i, name) in INVARIANTS.iter().enumerate() {
        let number = i + 1;
        let broken = report.breaches.iter().filter(|b| usize::from(b.invariant) == number).count();
        if broken == 0 {
            out.push_str(&format!("  ok      {name}\n"));
        } else {
            out.push_str(&format!("  BROKEN  {name} ({broken} breaches)\n"));
        }
    }
    if report.breaches.is_empty() {
        out.push_str("no breaches\n");
    } else {
        out.push_str(&format!("{} breaches:\n", report.breaches.len()));
        for breach in &report.breaches {
            out.push_str(&format!("  {breach}\n"));
        }
    }
    out
}

/// `creditd keys create`: creates a key and prints its secret once.
pub async fn create_key(args: &KeysCreateArgs) -> Result<(), Failure> {
    let (config, url) = resolve(&args.db)?;
    let Database::Sqlite(path) = database(&url)?;
    let role = match args.role {
        RoleArg::Gateway => Role::Gateway,
        RoleArg::Admin => Role::Admin,
    };
    let name = args.name.clone().unwrap_or_else(|| role.as_str().to_string());
    let (key, secret) = {
        let store = open_sqlite(&path, config.engine(), Arc::new(SystemClock))?;
        creditd_server::create_key(&store, role, &name)
            .await
            .map_err(|e| Failure::runtime(format!("cannot create the key: {e}")))?
    };
    println!("created {} key {} named {:?}", key.role.as_str(), key.id, key.name);
    println!("secret: {secret}");
    let _ = std::io::stdout().flush();
    eprintln!("The secret is shown only this once: store it now. Send it as `Authorization: Bearer <secret>`.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use creditd_core::invariants::Breach;

    #[test]
    fn postgres_is_recognised_but_not_built() {
        for url in ["postgres://localhost/creditd", "postgresql://u@h/db"] {
            let Err(Failure::Usage(m)) = database(url) else { panic!("{url} should be a usage error") };
            assert!(m.contains("PostgreSQL support is not built yet"), "{m}");
        }
        assert!(matches!(database("mysql://x"), Err(Failure::Usage(_))));
    }

    #[test]
    fn the_audit_report_names_every_invariant_and_each_breach() {
        let clean = AuditReport { accounts: 2, entries: 5, usage_records: 1, breaches: vec![] };
        let text = render_audit("sqlite://x.db", &clean);
        assert!(text.contains("2 accounts, 5 ledger entries, 1 usage records"), "{text}");
        assert_eq!(text.matches("  ok  ").count(), INVARIANTS.len(), "{text}");
        assert!(text.ends_with("no breaches\n"), "{text}");

        let breach = Breach { invariant: 2, account_id: "u_1".into(), message: "wallet off by 1".into() };
        let dirty = AuditReport { breaches: vec![breach], ..clean };
        let text = render_audit("sqlite://x.db", &dirty);
        assert!(text.contains("BROKEN  2 the wallet"), "{text}");
        assert!(text.contains("1 breaches:\n  invariant 2 broken for account u_1: wallet off by 1"), "{text}");
    }
}
