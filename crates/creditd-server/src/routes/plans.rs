//! Plans (admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use creditd_store::{Command, Reply};

use crate::auth::{Access, Caller};
use crate::dto::{List, PlanIn, PlanOut};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, PathParams};
use crate::idempotency::{execute, unexpected};
use crate::respond::{Rendered, ok};
use crate::state::AppState;
use crate::validate;

/// `PUT /v1/plans/{plan}`: creates or replaces the plan.
pub async fn put(State(state): State<AppState>, caller: Caller, path: PathParams, body: Body) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?.to_string();
    validate::account_id("plan", &id)?;
    let parsed = body.parse::<PlanIn>()?;
    let plan = parsed.value.into_plan(&id)?;
    let render = |reply: &Reply| match reply {
        Reply::Plan(p) => Rendered::json(StatusCode::OK, &PlanOut::from(p)),
        other => Err(unexpected(other)),
    };
    execute(&state, Command::PutPlan { plan }, None, &parsed.fingerprint, render).await
}

/// `PATCH /v1/plans/{plan}`: the fields given, merged into the current
/// plan (`null` sets "no limit" / "no budget"), validated as a whole like a
/// `PUT`. `404` for a plan that does not exist (`PUT` creates); `free` always
/// exists (the built-in one until one is stored).
pub async fn patch(State(state): State<AppState>, caller: Caller, path: PathParams, body: Body) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?.to_string();
    validate::account_id("plan", &id)?;
    let plans = state.store.plans().await?;
    let current = plans.get(&id).ok_or_else(|| ApiError::not_found(format!("plan {id:?} not found")))?;
    let mut base = serde_json::to_value(PlanOut::from(current)).map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(fields) = base.as_object_mut() {
        // What a GET shows but a plan's body does not take: the id is the
        // path's, the rest is derived.
        for derived in ["id", "main_pool", "backup_pool", "budget_usd"] {
            fields.remove(derived);
        }
    }
    let parsed = body.patch::<PlanIn>(base)?;
    let plan = parsed.value.into_plan(&id)?;
    let render = |reply: &Reply| match reply {
        Reply::Plan(p) => Rendered::json(StatusCode::OK, &PlanOut::from(p)),
        other => Err(unexpected(other)),
    };
    execute(&state, Command::PutPlan { plan }, None, &parsed.fingerprint, render).await
}

pub async fn get(State(state): State<AppState>, caller: Caller, path: PathParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?;
    validate::account_id("plan", id)?;
    let plans = state.store.plans().await?;
    let plan = plans.get(id).ok_or_else(|| ApiError::not_found(format!("plan {id:?} not found")))?;
    ok(&PlanOut::from(plan))
}

/// Every plan, `free` included (one page: plans are few).
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let plans = state.store.plans().await?;
    ok(&List { data: plans.all().into_iter().map(PlanOut::from).collect(), next_cursor: None })
}
