//! Metering-proxy keys of an account (admin; the account's token may list its own).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use creditd_store::{Command, Reply};

use super::load_account;
use crate::auth::{Access, Caller, new_proxy_key};
use crate::dto::{List, ProxyKeyIn, ProxyKeyOut};
use crate::error::ApiResult;
use crate::extract::{Body, MaybeIdempotencyKey, PathParams};
use crate::idempotency::{execute_secret, unexpected};
use crate::respond::{Rendered, ok};
use crate::state::AppState;
use crate::validate;

/// `POST /v1/accounts/{id}/proxy-keys {"name"}` → `201` the key with its
/// `secret` (shown once).
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    MaybeIdempotencyKey(idem): MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?.to_string();
    let parsed = body.parse_or_empty::<ProxyKeyIn>()?;
    let name = parsed.value.validate()?;
    load_account(&state, &id).await?;
    let (key, secret) = new_proxy_key(&id, &name, state.clock.now());
    let render = move |reply: &Reply| match reply {
        Reply::ProxyKey(k) => Rendered::json(StatusCode::CREATED, &ProxyKeyOut::new(k, Some(secret.clone()))),
        other => Err(unexpected(other)),
    };
    execute_secret(&state, Command::CreateProxyKey { key }, idem, &parsed.fingerprint, render, "secret").await
}

/// `GET /v1/accounts/{id}/proxy-keys`: the account's keys, revoked ones
/// included, without secrets.
pub async fn list(State(state): State<AppState>, caller: Caller, path: PathParams) -> ApiResult<Response> {
    let id = path.get(0)?.to_string();
    caller.require(Access::AdminOrAccount(&id))?;
    load_account(&state, &id).await?;
    let keys = state.store.proxy_keys(&id).await?;
    ok(&List { data: keys.iter().map(|k| ProxyKeyOut::new(k, None)).collect(), next_cursor: None })
}

/// `DELETE /v1/accounts/{id}/proxy-keys/{key}` → `204`: revoked at once.
pub async fn revoke(State(state): State<AppState>, caller: Caller, path: PathParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let account_id = path.get(0)?.to_string();
    let id = path.get(1)?.to_string();
    validate::account_id("account id", &account_id)?;
    validate::opaque_id("proxy key id", &id)?;
    let reply = state.store.execute(Command::RevokeProxyKey { account_id, id: id.clone() }, None).await;
    // Evict after the store revoked it: nothing read before can be cached after.
    state.proxy_keys.evict(&id);
    match reply? {
        Reply::ProxyKey(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(unexpected(&other)),
    }
}
