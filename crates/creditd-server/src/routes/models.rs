//! The price book (admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use creditd_store::{Command, Reply};

use crate::auth::{Access, Caller};
use crate::dto::{List, ModelIn, ModelOut};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, PathParams};
use crate::idempotency::{execute, unexpected};
use crate::respond::{Rendered, ok};
use crate::state::AppState;
use crate::validate;

/// `PUT /v1/models/{model}`: creates the model or gives it a new price version.
pub async fn put(State(state): State<AppState>, caller: Caller, path: PathParams, body: Body) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?.to_string();
    validate::model_id("model", &id)?;
    let parsed = body.parse::<ModelIn>()?;
    let price = parsed.value.into_price()?;
    let render = |reply: &Reply| match reply {
        Reply::Model(m) => Rendered::json(StatusCode::OK, &ModelOut::from(m)),
        other => Err(unexpected(other)),
    };
    execute(&state, Command::PutModel { id, price }, None, &parsed.fingerprint, render).await
}

pub async fn get(State(state): State<AppState>, caller: Caller, path: PathParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?;
    validate::model_id("model", id)?;
    let model = state.store.model(id).await?.ok_or_else(|| ApiError::not_found(format!("model {id:?} not found")))?;
    ok(&ModelOut::from(&model))
}

/// Every model at its current price version (one page: the price book is small).
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let models = state.store.models().await?;
    ok(&List { data: models.iter().map(ModelOut::from).collect(), next_cursor: None })
}
