//! Accounts: create, read, list, suspend, resume, tokens, balance.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use creditd_core::account::AccountStatus;
use creditd_core::engine::view;
use creditd_core::plan::FREE_PLAN;
use creditd_core::subscription::Subscription;
use creditd_store::{AccountRow, Command, Reply, StoredAccount};

use super::load_account;
use super::subscriptions::account_now;
use crate::auth::{Access, Caller, new_account_token};
use crate::dto::{AccountIn, AccountOut, BalanceOut, List, ReasonIn, TokenIn, TokenInfoOut, TokenOut};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, MaybeIdempotencyKey, PathParams, QueryParams};
use crate::idempotency::{execute, execute_secret, unexpected};
use crate::respond::{Rendered, ok};
use crate::state::AppState;
use crate::validate;

/// Renders an account on `plan` with `subscription` (as of just before the
/// command: neither creating nor suspending an account changes them).
fn render_account(
    status: StatusCode,
    plan: String,
    subscription: Option<Subscription>,
) -> impl Fn(&Reply) -> ApiResult<Rendered> + Clone + Send + Sync + 'static {
    move |reply: &Reply| match reply {
        Reply::Account(a) => Rendered::json(status, &AccountOut::from(a).with_plan(&plan, subscription.as_ref())),
        other => Err(unexpected(other)),
    }
}

/// `POST /v1/accounts` → `201`; an existing id is `409 conflict`.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    MaybeIdempotencyKey(idem): MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let parsed = body.parse::<AccountIn>()?;
    let new = parsed.value.validate()?;
    let command = Command::CreateAccount { id: new.id, email: new.email, metadata: new.metadata };
    let render = render_account(StatusCode::CREATED, FREE_PLAN.to_string(), None);
    execute(&state, command, idem, &parsed.fingerprint, render).await
}

/// The account with its plan and live subscription as of the engine's clock.
async fn account_out(state: &AppState, account: &AccountRow) -> ApiResult<AccountOut> {
    let now = account_now(state, &account.id).await?;
    Ok(AccountOut::from(account).with_plan(now.plan_id(), now.state.subscription.as_ref()))
}

pub async fn get(State(state): State<AppState>, caller: Caller, path: PathParams) -> ApiResult<Response> {
    let id = path.get(0)?;
    caller.require(Access::GatewayOrAccount(id))?;
    let account = load_account(&state, id).await?;
    ok(&account_out(&state, &account).await?)
}

pub async fn list(State(state): State<AppState>, caller: Caller, query: QueryParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let page = query.page()?;
    // The cursor is the last account id of the page before (issue 18.6:
    // `?cursor=%FF%FE` answered an empty page).
    if let Some(cursor) = &page.cursor {
        validate::account_id("cursor", cursor)
            .map_err(|_| ApiError::invalid_field("cursor", "is not a cursor of this list"))?;
    }
    let accounts = state.store.accounts(page).await?;
    let mut data = Vec::with_capacity(accounts.data.len());
    for account in &accounts.data {
        data.push(account_out(&state, account).await?);
    }
    ok(&List { data, next_cursor: accounts.next_cursor })
}

async fn set_status(
    state: AppState,
    caller: Caller,
    path: PathParams,
    idem: MaybeIdempotencyKey,
    body: Body,
    status: AccountStatus,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?.to_string();
    validate::account_id("account id", &id)?;
    let parsed = body.parse_or_empty::<ReasonIn>()?;
    validate::text("reason", parsed.value.reason, validate::MAX_REASON_CHARS)?;
    let now = account_now(&state, &id).await?;
    let render = render_account(StatusCode::OK, now.plan_id().to_string(), now.state.subscription.clone());
    let command = Command::SetAccountStatus { account_id: id, status };
    execute(&state, command, idem.0, &parsed.fingerprint, render).await
}

pub async fn suspend(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    idem: MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    set_status(state, caller, path, idem, body, AccountStatus::Suspended).await
}

pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    idem: MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    set_status(state, caller, path, idem, body, AccountStatus::Active).await
}

/// `POST /v1/accounts/{id}/tokens {"ttl_seconds"}` → `201 {"token", "expires_at"}`.
pub async fn token(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    MaybeIdempotencyKey(idem): MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?.to_string();
    let parsed = body.parse_or_empty::<TokenIn>()?;
    let ttl = parsed.value.ttl_seconds()?;
    load_account(&state, &id).await?;
    let (token, secret) = new_account_token(&id, state.clock.now(), ttl)?;
    let render = move |reply: &Reply| match reply {
        Reply::Token(t) => Rendered::json(
            StatusCode::CREATED,
            &TokenOut {
                id: t.id.clone(),
                token: secret.clone(),
                account_id: t.account_id.clone(),
                expires_at: t.expires_at.to_string(),
            },
        ),
        other => Err(unexpected(other)),
    };
    execute_secret(&state, Command::CreateAccountToken { token }, idem, &parsed.fingerprint, render, "token").await
}

/// `GET /v1/accounts/{id}/tokens`: the account's tokens, expired ones
/// included, without secrets (one page: an account has few).
pub async fn tokens(State(state): State<AppState>, caller: Caller, path: PathParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?.to_string();
    load_account(&state, &id).await?;
    let tokens = state.store.account_tokens(&id).await?;
    ok(&List { data: tokens.iter().map(TokenInfoOut::from).collect(), next_cursor: None })
}

/// `DELETE /v1/accounts/{id}/tokens/{token}` → `204`: the token signs
/// nothing in any more, and the dashboard sessions made with it end.
pub async fn revoke_token(State(state): State<AppState>, caller: Caller, path: PathParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?.to_string();
    let token_id = path.get(1)?.to_string();
    load_account(&state, &id).await?;
    match state.store.execute(Command::RevokeAccountToken { account_id: id, token_id }, None).await? {
        Reply::Deleted => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(unexpected(&other)),
    }
}

/// `DELETE /v1/accounts/{id}/sessions` → `204`: every dashboard session of
/// the account ends (its tokens stay valid).
pub async fn revoke_sessions(State(state): State<AppState>, caller: Caller, path: PathParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?.to_string();
    load_account(&state, &id).await?;
    match state.store.execute(Command::RevokeSessions { account_id: id, session_id: None }, None).await? {
        Reply::Deleted => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(unexpected(&other)),
    }
}

/// `GET /v1/accounts/{id}/balance`: the account as of the engine's clock.
pub async fn balance(State(state): State<AppState>, caller: Caller, path: PathParams) -> ApiResult<Response> {
    let id = path.get(0)?;
    caller.require(Access::GatewayOrAccount(id))?;
    validate::account_id("account id", id)?;
    let StoredAccount { state: stored, plans } = state
        .store
        .stored_account(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("account {id:?} not found")))?;
    let ctx = state.config.engine.context(&plans);
    let now = state.clock.now();
    let current = view(&stored, now, ctx);
    ok(&BalanceOut::new(&current, now, ctx))
}
