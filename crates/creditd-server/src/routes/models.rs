//! The price book (admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use creditd_core::price_import::ImportOptions;
use creditd_core::pricing::MAX_MULTIPLIER;
use creditd_core::units::Factor;
use creditd_store::{Command, Reply};

use crate::auth::{Access, Caller};
use crate::dto::{List, ModelIn, ModelOut};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, ImportBody, PathParams, QueryParams};
use crate::idempotency::{execute, unexpected};
use crate::import::{Filter, Format};
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

/// `PATCH /v1/models/{model}`: the fields given, merged into the current
/// price (objects field by field; `null` sets "not given"), validated as a
/// whole like a `PUT`; a changed price is the next version. `404` for a
/// model that does not exist (`PUT` creates).
pub async fn patch(State(state): State<AppState>, caller: Caller, path: PathParams, body: Body) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?.to_string();
    validate::model_id("model", &id)?;
    let current =
        state.store.model(&id).await?.ok_or_else(|| ApiError::not_found(format!("model {id:?} not found")))?;
    let mut base = serde_json::to_value(ModelOut::from(&current)).map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(fields) = base.as_object_mut() {
        // What a GET shows but a price does not hold.
        for read_only in ["id", "price_version", "created_at"] {
            fields.remove(read_only);
        }
    }
    let parsed = body.patch::<ModelIn>(base)?;
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

/// `POST /v1/model-imports?format=litellm|modelsdev&provider=a,b&only=m1,m2&multiplier=X&dry_run&force&overwrite_edits`:
/// the body is the price map itself (`docs/import.md`). `200` with the
/// report; `409 conflict` with the report in `details` when a rate moves
/// more than 10× without `force` (nothing is written).
pub async fn import(
    State(state): State<AppState>,
    caller: Caller,
    query: QueryParams,
    body: ImportBody,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let format = query
        .get("format")
        .and_then(Format::parse)
        .ok_or_else(|| ApiError::invalid_field("format", "must be litellm or modelsdev"))?;
    let list = |key: &str| -> Vec<String> {
        query.get(key).map(|v| v.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()).unwrap_or_default()
    };
    let filter = Filter { providers: list("provider"), only: list("only") };
    let multiplier = match query.get("multiplier") {
        None => None,
        Some(text) => Some(
            Factor::parse(text)
                .ok()
                .filter(|m| !m.is_negative() && *m <= MAX_MULTIPLIER)
                .ok_or_else(|| ApiError::invalid_field("multiplier", "must be a decimal from 0 to 1000"))?,
        ),
    };
    let options =
        ImportOptions { multiplier, force: query.bool("force")?, overwrite_edits: query.bool("overwrite_edits")? };
    let dry_run = query.bool("dry_run")?;
    let report = crate::import::run(state.store.as_ref(), format, &body.0, &filter, options, dry_run).await?;
    if report.counts.needs_force > 0 {
        let details = serde_json::to_value(&report).map_err(|e| ApiError::internal(e.to_string()))?;
        return Err(ApiError::conflict(format!(
            "{} models would move more than 10x; nothing was written (pass force=true to import anyway)",
            report.counts.needs_force
        ))
        .with_detail("report", details));
    }
    ok(&report)
}
