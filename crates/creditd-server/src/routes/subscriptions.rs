//! Subscriptions (admin; account tokens may read their own) and the
//! refund of disputed usage.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use creditd_core::account::AccountState;
use creditd_core::engine;
use creditd_core::ledger::Changes;
use creditd_core::plan::PlanBook;
use creditd_core::subscription::Subscription;
use creditd_store::{Command, Reply, StoredAccount};

use super::load_account;
use crate::auth::{Access, Caller};
use crate::dto::{ReasonIn, SubscriptionChangeOut, SubscriptionIn, SubscriptionOut, UsageRecordOut};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, MaybeIdempotencyKey, PathParams};
use crate::idempotency::{Render, execute, unexpected};
use crate::respond::{Rendered, ok};
use crate::state::AppState;
use crate::validate;

/// An account as of the engine's clock: its state, what bringing it there
/// would write, and the plans it was judged with.
pub(super) struct AccountNow {
    pub state: AccountState,
    pub changes: Changes,
    pub plans: PlanBook,
}

impl AccountNow {
    /// The plan whose rules apply now.
    pub fn plan_id(&self) -> &str {
        &engine::effective_plan(&self.state, &self.plans).id
    }
}

pub(super) async fn account_now(state: &AppState, id: &str) -> ApiResult<AccountNow> {
    validate::account_id("account id", id)?;
    let StoredAccount { state: stored, plans } = state
        .store
        .stored_account(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("account {id:?} not found")))?;
    let (current, changes) = engine::view_with_changes(&stored, state.clock.now(), state.config.engine.context(&plans));
    Ok(AccountNow { state: current, changes, plans })
}

fn render_change(status: StatusCode) -> impl Render {
    move |reply: &Reply| match reply {
        Reply::Subscription(change) => Rendered::json(status, &SubscriptionChangeOut::from(change)),
        other => Err(unexpected(other)),
    }
}

fn render_subscription() -> impl Render {
    move |reply: &Reply| match reply {
        Reply::Subscription(change) => Rendered::json(StatusCode::OK, &SubscriptionOut::from(&change.subscription)),
        other => Err(unexpected(other)),
    }
}

fn account_path(path: &PathParams) -> ApiResult<String> {
    let id = path.get(0)?.to_string();
    validate::account_id("account id", &id)?;
    Ok(id)
}

/// `POST /v1/accounts/{id}/subscription {"plan", "kind", "external_id"}` →
/// `201 {"subscription", "proration"}`: starts a subscription, or switches
/// the active one (`semantics.md` §7). The payment is confirmed by the caller.
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    MaybeIdempotencyKey(idem): MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let account_id = account_path(&path)?;
    let parsed = body.parse::<SubscriptionIn>()?;
    let (plan, kind, external_id) = parsed.value.validate()?;
    let command = Command::StartSubscription { account_id, plan, kind, external_id };
    execute(&state, command, idem, &parsed.fingerprint, render_change(StatusCode::CREATED)).await
}

/// `GET /v1/accounts/{id}/subscription`: the live subscription, else the
/// latest one (expired or switched); `404` without any.
pub async fn get(State(state): State<AppState>, caller: Caller, path: PathParams) -> ApiResult<Response> {
    let id = path.get(0)?;
    caller.require(Access::AdminOrAccount(id))?;
    let now = account_now(&state, id).await?;
    let latest: Option<Subscription> = match &now.state.subscription {
        Some(live) => Some(live.clone()),
        // Ended as of now, though perhaps not yet written.
        None => match now.changes.subscriptions.last() {
            Some(ended) => Some(ended.clone()),
            None => state.store.subscription(id).await?,
        },
    };
    let sub = latest.ok_or_else(|| ApiError::not_found(format!("account {id:?} has no subscription")))?;
    ok(&SubscriptionOut::from(&sub))
}

/// `POST /v1/accounts/{id}/subscription/renew`: payment for the next period
/// is confirmed.
pub async fn renew(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    MaybeIdempotencyKey(idem): MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let account_id = account_path(&path)?;
    let parsed = body.parse_or_empty::<ReasonIn>()?;
    execute(&state, Command::RenewSubscription { account_id }, idem, &parsed.fingerprint, render_subscription()).await
}

/// `POST /v1/accounts/{id}/subscription/cancel` → `cancel_at_period_end: true`.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    MaybeIdempotencyKey(idem): MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let account_id = account_path(&path)?;
    let parsed = body.parse_or_empty::<ReasonIn>()?;
    execute(&state, Command::CancelSubscription { account_id }, idem, &parsed.fingerprint, render_subscription()).await
}

/// `POST /v1/accounts/{id}/usage/{request_id}/refund {"reason"}` → `200` the
/// usage record with `"refunded": true`; again → `409 conflict`.
pub async fn refund(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    MaybeIdempotencyKey(idem): MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let account_id = account_path(&path)?;
    let request_id = path.get(1)?.to_string();
    validate::request_id("request id", &request_id)?;
    let parsed = body.parse_or_empty::<ReasonIn>()?;
    let reason = validate::text("reason", parsed.value.reason, validate::MAX_REASON_CHARS)?;
    load_account(&state, &account_id).await?;
    let render = |reply: &Reply| match reply {
        Reply::Recorded(r) => Rendered::json(StatusCode::OK, &UsageRecordOut::from(&r.record)),
        other => Err(unexpected(other)),
    };
    execute(&state, Command::RefundUsage { account_id, request_id, reason }, idem, &parsed.fingerprint, render).await
}
