//! Metering (gateway or admin): estimate, authorize, settle, release and
//! one-shot usage. These are idempotent by `(account, request_id)` inside the
//! store; an `Idempotency-Key` header is not used.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use creditd_core::account::AccountStatus;
use creditd_core::engine::{self, Refusal, view};
use creditd_core::pricing;
use creditd_store::{Command, Reply, StoredAccount};

use crate::auth::{Access, Caller};
use crate::dto::{
    AuthorizeIn, AuthorizeOut, EstimateAccountOut, EstimateIn, EstimateOut, RecordUsageIn, ReleaseIn, ReleaseOut,
    SettleIn, UsageRecordOut,
};
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;
use crate::idempotency::unexpected;
use crate::respond::{Rendered, ok};
use crate::state::AppState;
use crate::validate;

/// Counts the outcome of a metering call and passes it on.
fn observe(call: &'static str, result: ApiResult<(Response, bool)>) -> ApiResult<Response> {
    match result {
        Ok((response, replay)) => {
            crate::metrics::metering(call, if replay { "replay" } else { "ok" });
            Ok(response)
        }
        Err(error) => {
            crate::metrics::metering(call, error.code);
            Err(error)
        }
    }
}

/// `POST /v1/estimate`: the price of a request, without side effects.
pub async fn estimate(State(state): State<AppState>, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(Access::Gateway)?;
    observe("estimate", estimate_inner(&state, &body).await.map(|r| (r, false)))
}

async fn estimate_inner(state: &AppState, body: &Body) -> ApiResult<Response> {
    let input = body.parse::<EstimateIn>()?.value;
    validate::model_id("model", &input.model)?;
    let estimate_input = input.fields().validate()?;
    let request_type = validate::request_type("request_type", input.request_type)?;
    let account = match &input.account_id {
        None => None,
        Some(id) => {
            validate::account_id("account_id", id)?;
            let stored = state
                .store
                .stored_account(id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("account {id:?} not found")))?;
            Some(stored)
        }
    };
    let model = state.store.model(&input.model).await?.ok_or(Refusal::UnknownModel(input.model.clone()))?;
    let price = pricing::estimate(&model.price, &estimate_input, &request_type, &state.config.engine.policy)
        .map_err(Refusal::from)?;
    let account = account.map(|StoredAccount { state: stored, plans }| {
        let now = state.clock.now();
        let ctx = state.config.engine.context(&plans);
        let current = view(&stored, now, ctx);
        let available = current.available(now);
        // The checks an authorize of this request would meet (§6, 1 and 3–8).
        let reason = if current.status == AccountStatus::Suspended {
            Some("account_suspended")
        } else {
            engine::admit(&current, now, ctx, &model.id, &model.price, &request_type, price.credits)
                .err()
                .map(|refusal| refusal.code())
        };
        EstimateAccountOut {
            account_id: current.account_id.clone(),
            available: available.to_string(),
            allowed: reason.is_none(),
            reason,
        }
    });
    ok(&EstimateOut {
        model: model.id,
        price_version: model.price_version,
        estimate: price.credits.to_string(),
        cost_usd: price.cost_usd.to_string(),
        account,
    })
}

/// `POST /v1/authorize` → `201` a hold; the same call again → `200`, same body.
pub async fn authorize(State(state): State<AppState>, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(Access::Gateway)?;
    observe("authorize", authorize_inner(&state, &body).await)
}

async fn authorize_inner(state: &AppState, body: &Body) -> ApiResult<(Response, bool)> {
    let parsed = body.parse::<AuthorizeIn>()?;
    let (account_id, request) = parsed.value.validate(parsed.fingerprint)?;
    match state.store.execute(Command::Authorize { account_id, request }, None).await? {
        Reply::Authorized(a) => {
            let status = if a.replay { StatusCode::OK } else { StatusCode::CREATED };
            Ok((Rendered::json(status, &AuthorizeOut::from(&a.hold))?.into_response(), a.replay))
        }
        other => Err(unexpected(&other)),
    }
}

/// `POST /v1/settle` → `200` the usage record.
pub async fn settle(State(state): State<AppState>, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(Access::Gateway)?;
    observe("settle", settle_inner(&state, &body).await)
}

async fn settle_inner(state: &AppState, body: &Body) -> ApiResult<(Response, bool)> {
    let parsed = body.parse::<SettleIn>()?;
    let (account_id, outcome) = parsed.value.validate(parsed.fingerprint)?;
    match state.store.execute(Command::Settle { account_id, outcome }, None).await? {
        Reply::Recorded(r) => {
            Ok((Rendered::json(StatusCode::OK, &UsageRecordOut::from(&r.record))?.into_response(), r.replay))
        }
        other => Err(unexpected(&other)),
    }
}

/// `POST /v1/release` → `200 {"hold_id", "request_id", "status": "released"}`.
pub async fn release(State(state): State<AppState>, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(Access::Gateway)?;
    observe("release", release_inner(&state, &body).await.map(|r| (r, false)))
}

async fn release_inner(state: &AppState, body: &Body) -> ApiResult<Response> {
    let (account_id, request_id) = body.parse::<ReleaseIn>()?.value.validate()?;
    match state.store.execute(Command::Release { account_id, request_id }, None).await? {
        Reply::Released(hold) => ok(&ReleaseOut::from(&hold)),
        other => Err(unexpected(&other)),
    }
}

/// `POST /v1/usage` → `201` the usage record; again → `200`.
pub async fn usage(State(state): State<AppState>, caller: Caller, body: Body) -> ApiResult<Response> {
    caller.require(Access::Gateway)?;
    observe("usage", usage_inner(&state, &body).await)
}

async fn usage_inner(state: &AppState, body: &Body) -> ApiResult<(Response, bool)> {
    let parsed = body.parse::<RecordUsageIn>()?;
    let u = parsed.value.validate(parsed.fingerprint)?;
    let command = Command::RecordUsage {
        account_id: u.account_id,
        outcome: u.outcome,
        model: u.model,
        request_type: u.request_type,
        enforce: u.enforce,
    };
    match state.store.execute(command, None).await? {
        Reply::Recorded(r) => {
            let status = if r.replay { StatusCode::OK } else { StatusCode::CREATED };
            Ok((Rendered::json(status, &UsageRecordOut::from(&r.record))?.into_response(), r.replay))
        }
        other => Err(unexpected(&other)),
    }
}
