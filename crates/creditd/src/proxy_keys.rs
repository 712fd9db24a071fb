//! `creditd proxy-keys create|list|revoke`: the metering proxy's keys of an
//! account (`docs/proxy.md`), straight on the database.

use std::io::Write;
use std::sync::Arc;

use creditd_store::{Command, Reply, SystemClock};

use crate::Failure;
use crate::cli::{ProxyKeysArgs, ProxyKeysCommand};
use crate::commands::{database, open_store, resolve, time_or_dash};

pub async fn run(command: &ProxyKeysCommand) -> Result<(), Failure> {
    let args: &ProxyKeysArgs = match command {
        ProxyKeysCommand::Create { args, .. }
        | ProxyKeysCommand::List { args }
        | ProxyKeysCommand::Revoke { args, .. } => args,
    };
    let (config, url) = resolve(&args.db)?;
    let database = database(&url)?;
    let store = open_store(&database, config.engine(), Arc::new(SystemClock))?;
    let account = &args.account;
    match command {
        ProxyKeysCommand::Create { name, .. } => {
            let (key, secret) =
                creditd_server::auth::create_proxy_key(store.as_ref(), account, name.as_deref().unwrap_or(""))
                    .await
                    .map_err(|e| Failure::runtime(format!("cannot create the proxy key: {e}")))?;
            println!("created proxy key {} of account {} named {:?}", key.id, key.account_id, key.name);
            println!("secret: {secret}");
            let _ = std::io::stdout().flush();
            eprintln!("The secret is shown only this once. SDKs send it as their API key (docs/proxy.md).");
        }
        ProxyKeysCommand::List { .. } => {
            let read = |e| Failure::runtime(format!("cannot read account {account:?}: {e}"));
            if store.account(account).await.map_err(read)?.is_none() {
                return Err(Failure::runtime(format!("account {account:?} not found")));
            }
            let keys = store.proxy_keys(account).await.map_err(|e| Failure::runtime(format!("cannot list: {e}")))?;
            println!("id\tname\tcreated_at\tlast_used_at\trevoked_at");
            for k in keys {
                let (used, revoked) = (time_or_dash(k.last_used_at), time_or_dash(k.revoked_at));
                println!("{}\t{}\t{}\t{used}\t{revoked}", k.id, k.name, k.created_at);
            }
        }
        ProxyKeysCommand::Revoke { id, .. } => {
            let command = Command::RevokeProxyKey { account_id: account.clone(), id: id.clone() };
            match store.execute(command, None).await {
                Ok(Reply::ProxyKey(k)) => println!("revoked proxy key {} of account {}", k.id, k.account_id),
                Ok(_) => return Err(Failure::runtime("unexpected reply from the store")),
                Err(e) => return Err(Failure::runtime(format!("cannot revoke: {e}"))),
            }
        }
    }
    Ok(())
}
