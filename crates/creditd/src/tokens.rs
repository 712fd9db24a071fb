//! `creditd tokens list|revoke`: an account's tokens (the secrets a
//! customer portal or the dashboard reads one account with), straight on
//! the database. Tokens are made over HTTP (`POST /v1/accounts/{id}/tokens`).

use std::sync::Arc;

use creditd_store::{Command, Reply, SystemClock};

use crate::Failure;
use crate::cli::{TokensArgs, TokensCommand};
use crate::commands::{database, open_store, resolve};

pub async fn run(command: &TokensCommand) -> Result<(), Failure> {
    let args: &TokensArgs = match command {
        TokensCommand::List { args } | TokensCommand::Revoke { args, .. } => args,
    };
    let (config, url) = resolve(&args.db)?;
    let database = database(&url)?;
    let store = open_store(&database, config.engine(), Arc::new(SystemClock))?;
    let account = &args.account;
    let read = |e| Failure::runtime(format!("cannot read account {account:?}: {e}"));
    if store.account(account).await.map_err(read)?.is_none() {
        return Err(Failure::runtime(format!("account {account:?} not found")));
    }
    match command {
        TokensCommand::List { .. } => {
            let tokens = store.account_tokens(account).await.map_err(read)?;
            println!("id\tcreated_at\texpires_at");
            for t in tokens {
                println!("{}\t{}\t{}", t.id, t.created_at, t.expires_at);
            }
        }
        TokensCommand::Revoke { id, .. } => {
            let command = Command::RevokeAccountToken { account_id: account.clone(), token_id: id.clone() };
            match store.execute(command, None).await {
                Ok(Reply::Deleted) => {
                    println!("revoked token {id} of account {account} and the dashboard sessions signed in with it")
                }
                Ok(_) => return Err(Failure::runtime("unexpected reply from the store")),
                Err(e) => return Err(Failure::runtime(format!("cannot revoke token {id:?}: {e}"))),
            }
        }
    }
    Ok(())
}
