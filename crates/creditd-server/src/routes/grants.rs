//! Grants (admin; account tokens may list their own).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use creditd_store::{Command, Reply};

use super::load_account;
use crate::auth::{Access, Caller};
use crate::dto::{GrantIn, GrantOut, List, ReasonIn};
use crate::error::ApiResult;
use crate::extract::{Body, MaybeIdempotencyKey, PathParams, QueryParams};
use crate::idempotency::{execute, unexpected};
use crate::respond::{Rendered, ok};
use crate::state::AppState;
use crate::validate;

pub(super) fn render_grant(
    status: StatusCode,
) -> impl Fn(&Reply) -> ApiResult<Rendered> + Clone + Send + Sync + 'static {
    move |reply: &Reply| match reply {
        Reply::Grant(g) => Rendered::json(status, &GrantOut::from(g)),
        other => Err(unexpected(other)),
    }
}

/// `POST /v1/accounts/{id}/grants` → `201` grant (`promo` or `purchased`).
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    MaybeIdempotencyKey(idem): MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let account_id = path.get(0)?.to_string();
    validate::account_id("account id", &account_id)?;
    let parsed = body.parse::<GrantIn>()?;
    let grant = parsed.value.into_new_grant(state.clock.now())?;
    let command = Command::Grant { account_id, grant };
    execute(&state, command, idem, &parsed.fingerprint, render_grant(StatusCode::CREATED)).await
}

/// `GET /v1/accounts/{id}/grants?include_spent=true`: newest first.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    query: QueryParams,
) -> ApiResult<Response> {
    let account_id = path.get(0)?;
    caller.require(Access::AdminOrAccount(account_id))?;
    let include_spent = query.bool("include_spent")?;
    let page = query.page()?;
    load_account(&state, account_id).await?;
    let grants = state.store.grants(account_id, include_spent, page).await?;
    ok(&List::from_paged(grants, |g| GrantOut::from(&g)))
}

/// `POST /v1/accounts/{id}/grants/{grant}/void {"reason"}` → `200` the grant.
pub async fn void(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    MaybeIdempotencyKey(idem): MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let account_id = path.get(0)?.to_string();
    let grant_id = path.get(1)?.to_string();
    validate::account_id("account id", &account_id)?;
    validate::opaque_id("grant id", &grant_id)?;
    let parsed = body.parse_or_empty::<ReasonIn>()?;
    let reason = validate::text("reason", parsed.value.reason, validate::MAX_REASON_CHARS)?;
    let command = Command::VoidGrant { account_id, grant_id, reason };
    execute(&state, command, idem, &parsed.fingerprint, render_grant(StatusCode::OK)).await
}
