//! The command line (`api.md` §CLI), as clap types and nothing else.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "creditd",
    version,
    about = "A credits engine for AI products: price book, holds, grants, wallet, ledger.",
    after_help = "Logging: CREDITD_LOG (e.g. info, debug, creditd_store=debug); logs go to stderr."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the HTTP API.
    Serve(ServeArgs),
    /// Writes a commented creditd.toml with the defaults (plans, example models, campaigns).
    Init(InitArgs),
    /// Creates or upgrades the database schema.
    Migrate(DbArgs),
    /// Checks every ledger invariant over the whole database; exits 1 on any breach.
    Audit(DbArgs),
    /// Writes usage records as CSV or JSONL, in recorded_at order (read-only: safe while `serve` runs).
    Export(ExportArgs),
    /// Manages API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manages the price book.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Manages an account's metering-proxy keys (docs/proxy.md).
    ProxyKeys {
        #[command(subcommand)]
        command: ProxyKeysCommand,
    },
    /// Lists and revokes an account's tokens (made by POST /v1/accounts/{id}/tokens).
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Lists the account's tokens (expired ones too), without secrets.
    List {
        #[command(flatten)]
        args: TokensArgs,
    },
    /// Revokes one of the account's tokens at once, and the dashboard sessions signed in with it.
    Revoke {
        #[command(flatten)]
        args: TokensArgs,
        /// The token's id (the `id` that creating it answered, or `tokens list` shows).
        #[arg(value_name = "TOKEN_ID")]
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct TokensArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The account.
    #[arg(long)]
    pub account: String,
}

#[derive(Debug, Subcommand)]
pub enum ProxyKeysCommand {
    /// Creates a proxy key of the account and prints its secret, once.
    Create {
        #[command(flatten)]
        args: ProxyKeysArgs,
        /// A name to recognise the key by.
        #[arg(long)]
        name: Option<String>,
    },
    /// Lists the account's proxy keys (revoked ones too), without secrets.
    List {
        #[command(flatten)]
        args: ProxyKeysArgs,
    },
    /// Revokes one of the account's proxy keys, at once.
    Revoke {
        #[command(flatten)]
        args: ProxyKeysArgs,
        /// The key's id.
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct ProxyKeysArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The account.
    #[arg(long)]
    pub account: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file [default: ./creditd.toml if present, else built-in defaults]
    #[arg(long, value_name = "FILE", env = "CREDITD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Database URL, e.g. sqlite://creditd.db [default: database.url of the configuration]
    #[arg(long, value_name = "URL", env = "CREDITD_DATABASE_URL")]
    pub db: Option<String>,
    /// Address to listen on; port 0 picks a free one [default: server.listen, 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR", env = "CREDITD_LISTEN")]
    pub listen: Option<String>,
    /// The admin API key [default: server.admin_key, else one created and printed at first start]
    #[arg(long, value_name = "KEY", env = "CREDITD_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Drive the engine clock over HTTP (GET/POST /v1/test/clock); it starts at the current time.
    #[arg(long)]
    pub test_clock: bool,
    /// Which side wins where both the configuration and the API changed a model or plan since the
    /// configuration was last applied [default: neither: the start stops and says what differs]
    #[arg(long, value_enum, value_name = "SIDE")]
    pub on_config_conflict: Option<ConfigSide>,
}

/// The side of `--on-config-conflict`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConfigSide {
    /// The configuration's entry replaces the one changed through the API.
    Config,
    /// The one changed through the API stays; the configuration's entry counts as applied.
    Api,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write the configuration.
    #[arg(long, value_name = "FILE", default_value = "creditd.toml")]
    pub path: PathBuf,
    /// Overwrite the file if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct DbArgs {
    /// Database URL, e.g. sqlite://creditd.db [default: database.url of the configuration]
    #[arg(long, value_name = "URL", env = "CREDITD_DATABASE_URL")]
    pub db: Option<String>,
    /// Configuration file [default: ./creditd.toml if present, else built-in defaults]
    #[arg(long, value_name = "FILE", env = "CREDITD_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Only this account's records [default: every account]
    #[arg(long, value_name = "ID")]
    pub account: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
    pub format: ExportFormat,
    /// Records recorded at or after this time (RFC 3339, e.g. 2026-03-01T00:00:00Z)
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// Records recorded before this time (RFC 3339)
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// Only this model
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// Only this request type
    #[arg(long, value_name = "TYPE")]
    pub request_type: Option<String>,
    /// Only this project
    #[arg(long, value_name = "PROJECT")]
    pub project: Option<String>,
    /// Only this conversation
    #[arg(long, value_name = "CONVERSATION")]
    pub conversation: Option<String>,
    /// Only this status: success, error or cancelled
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    /// Write to FILE [default: standard output]
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// RFC 4180 CSV with a header row, the columns of api.md.
    Csv,
    /// One usage record (JSON) a line.
    Jsonl,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Creates an API key and prints its secret, once.
    Create(KeysCreateArgs),
    /// Lists the API keys with when each was last used, without secrets.
    List(DbArgs),
    /// Revokes (deletes) an API key; a running creditd refuses it within 30 seconds.
    Revoke(KeysRevokeArgs),
}

#[derive(Debug, Args)]
pub struct KeysRevokeArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The key's id (`keys list` shows it; in a secret `ck_<id>_…` it is the part after `ck_`).
    #[arg(value_name = "ID")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct KeysCreateArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// What the key may do.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// A name to recognise the key by [default: the role]
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Metering: estimate, authorize, settle, release, usage, and reading accounts.
    Gateway,
    /// Everything.
    Admin,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Imports a public price map (LiteLLM or models.dev) into the price book (docs/import.md).
    Import(ModelsImportArgs),
}

#[derive(Debug, Args)]
pub struct ModelsImportArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The price map's format.
    #[arg(long, value_enum)]
    pub format: ImportFormat,
    /// The price map (LiteLLM's model_prices_and_context_window.json, models.dev's api.json)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Only this provider's models (litellm_provider, or the models.dev provider key); repeatable
    #[arg(long, value_name = "P")]
    pub provider: Vec<String>,
    /// Only this model; repeatable
    #[arg(long, value_name = "MODEL")]
    pub only: Vec<String>,
    /// Set every imported model's multiplier [default: keep the current one; 1 for new models]
    #[arg(long, value_name = "X")]
    pub multiplier: Option<String>,
    /// Print what would change; write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Allow a rate to move more than 10x
    #[arg(long)]
    pub force: bool,
    /// Also replace models whose current price was set by the operator (API or configuration)
    #[arg(long)]
    pub overwrite_edits: bool,
    /// Print the report as JSON (the body of POST /v1/model-imports)
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImportFormat {
    /// LiteLLM's model_prices_and_context_window.json (USD per token).
    Litellm,
    /// models.dev's api.json (USD per million tokens).
    Modelsdev,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_takes_the_documented_flags() {
        let cli = Cli::try_parse_from([
            "creditd",
            "serve",
            "--config",
            "c.toml",
            "--db",
            "sqlite://x.db",
            "--listen",
            "127.0.0.1:0",
            "--admin-key",
            "k",
            "--test-clock",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else { panic!("not serve") };
        assert_eq!(args.config, Some(PathBuf::from("c.toml")));
        assert_eq!(args.db.as_deref(), Some("sqlite://x.db"));
        assert_eq!(args.listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(args.admin_key.as_deref(), Some("k"));
        assert!(args.test_clock);
        assert_eq!(args.on_config_conflict, None);
        let cli = Cli::try_parse_from(["creditd", "serve", "--on-config-conflict", "api"]).unwrap();
        let Command::Serve(args) = cli.command else { panic!("not serve") };
        assert_eq!(args.on_config_conflict, Some(ConfigSide::Api));
        assert!(Cli::try_parse_from(["creditd", "serve", "--on-config-conflict", "file"]).is_err());
    }

    #[test]
    fn export_takes_the_documented_flags() {
        let cli = Cli::try_parse_from([
            "creditd",
            "export",
            "--db",
            "sqlite://x.db",
            "--account",
            "u_1",
            "--format",
            "jsonl",
            "--from",
            "2026-03-01T00:00:00Z",
            "--to",
            "2026-04-01T00:00:00Z",
            "-o",
            "out.jsonl",
        ])
        .unwrap();
        let Command::Export(args) = cli.command else { panic!("not export") };
        assert_eq!(args.db.db.as_deref(), Some("sqlite://x.db"));
        assert_eq!(args.account.as_deref(), Some("u_1"));
        assert_eq!(args.format, ExportFormat::Jsonl);
        assert_eq!(args.from.as_deref(), Some("2026-03-01T00:00:00Z"));
        assert_eq!(args.to.as_deref(), Some("2026-04-01T00:00:00Z"));
        assert_eq!(args.output, Some(PathBuf::from("out.jsonl")));
        let cli = Cli::try_parse_from(["creditd", "export", "--db", "sqlite://x.db"]).unwrap();
        let Command::Export(args) = cli.command else { panic!("not export") };
        assert_eq!((args.format, args.account, args.output), (ExportFormat::Csv, None, None));
        assert!(Cli::try_parse_from(["creditd", "export", "--format", "xml"]).is_err());
    }

    #[test]
    fn keys_create_needs_a_role() {
        assert!(Cli::try_parse_from(["creditd", "keys", "create", "--db", "sqlite://x.db"]).is_err());
        let cli =
            Cli::try_parse_from(["creditd", "keys", "create", "--db", "sqlite://x.db", "--role", "gateway"]).unwrap();
        let Command::Keys { command: KeysCommand::Create(args) } = cli.command else { panic!("not keys create") };
        assert_eq!(args.role, RoleArg::Gateway);
    }

    #[test]
    fn keys_and_tokens_list_and_revoke_by_id() {
        let cli = Cli::try_parse_from(["creditd", "keys", "revoke", "--db", "sqlite://x.db", "k1"]).unwrap();
        let Command::Keys { command: KeysCommand::Revoke(args) } = cli.command else { panic!("not keys revoke") };
        assert_eq!(args.id, "k1");
        assert!(Cli::try_parse_from(["creditd", "keys", "revoke"]).is_err(), "the id is required");
        assert!(Cli::try_parse_from(["creditd", "keys", "list", "--db", "sqlite://x.db"]).is_ok());
        let cli = Cli::try_parse_from(["creditd", "tokens", "revoke", "--account", "u_1", "t1"]).unwrap();
        let Command::Tokens { command: TokensCommand::Revoke { args, id } } = cli.command else { panic!("not revoke") };
        assert_eq!((args.account.as_str(), id.as_str()), ("u_1", "t1"));
        assert!(Cli::try_parse_from(["creditd", "tokens", "list"]).is_err(), "the account is required");
    }
}
