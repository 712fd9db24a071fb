//! API keys (admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use creditd_store::{Command, Reply};

use crate::auth::{Access, Caller, new_key};
use crate::dto::{KeyIn, KeyOut, List};
use crate::error::ApiResult;
use crate::extract::{Body, MaybeIdempotencyKey, PathParams};
use crate::idempotency::{execute_secret, unexpected};
use crate::respond::{Rendered, ok};
use crate::state::AppState;
use crate::validate;

/// `POST /v1/keys` → `201 {"id", "role", "name", "secret"}`; the secret is shown once
/// (an `Idempotency-Key` replay answers `"secret": null, "redacted": ["secret"]`).
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    MaybeIdempotencyKey(idem): MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let parsed = body.parse::<KeyIn>()?;
    let (role, name) = parsed.value.validate()?;
    let (key, secret) = new_key(role, &name, state.clock.now());
    let render = move |reply: &Reply| match reply {
        Reply::Key(k) => Rendered::json(StatusCode::CREATED, &KeyOut::new(k, Some(secret.clone()))),
        other => Err(unexpected(other)),
    };
    execute_secret(&state, Command::CreateKey { key }, idem, &parsed.fingerprint, render, "secret").await
}

/// `GET /v1/keys`: every key, without secrets.
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let keys = state.store.keys().await?;
    ok(&List { data: keys.iter().map(|k| KeyOut::new(k, None)).collect(), next_cursor: None })
}

/// `DELETE /v1/keys/{id}` → `204`, effective at once.
pub async fn delete(State(state): State<AppState>, caller: Caller, path: PathParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?.to_string();
    validate::opaque_id("key id", &id)?;
    let reply = state.store.execute(Command::DeleteKey { id: id.clone() }, None).await;
    // Evict after the store forgot the key: nothing read before can be cached after.
    state.keys.evict(&id);
    match reply? {
        Reply::Deleted => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(unexpected(&other)),
    }
}
