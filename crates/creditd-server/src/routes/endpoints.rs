//! Outgoing webhooks (admin, `docs/webhooks.md`): the operator's endpoints
//! and the deliveries to them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use creditd_store::{Command, DeliveryFilter, DeliveryStatus, Endpoint, Reply};

use crate::auth::{Access, Caller};
use crate::delivery::{new_secret, secret_key};
use crate::dto::{DeliveryOut, EndpointIn, EndpointOut, EndpointPatch, List, endpoint_url, event_kinds};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, MaybeIdempotencyKey, PathParams, QueryParams};
use crate::idempotency::{execute, execute_secret, unexpected};
use crate::respond::{Rendered, ok};
use crate::state::AppState;
use crate::validate;

fn endpoint_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("webhook endpoint {id:?} not found"))
}

/// `POST /v1/webhook-endpoints` → `201` with the signing secret, shown once
/// (an `Idempotency-Key` replay answers `"secret": null, "redacted": ["secret"]`).
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    MaybeIdempotencyKey(idem): MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let parsed = body.parse::<EndpointIn>()?;
    let input = parsed.value;
    let url = endpoint_url("url", &input.url)?;
    let events = event_kinds("events", input.events)?;
    let secret = match input.secret {
        Some(secret) => {
            secret_key(&secret).map_err(|why| ApiError::invalid_field("secret", why))?;
            secret
        }
        None => new_secret(),
    };
    let now = state.clock.now();
    let endpoint = Endpoint {
        id: uuid::Uuid::now_v7().to_string(),
        url,
        secret: Some(secret.clone()),
        events,
        enabled: input.enabled.unwrap_or(true),
        from_config: false,
        created_at: now,
        updated_at: now,
    };
    let render = move |reply: &Reply| match reply {
        Reply::Endpoint(e) => Rendered::json(StatusCode::CREATED, &EndpointOut::new(e, Some(secret.clone()))),
        other => Err(unexpected(other)),
    };
    execute_secret(&state, Command::CreateEndpoint { endpoint }, idem, &parsed.fingerprint, render, "secret").await
}

/// `GET /v1/webhook-endpoints`: every endpoint, oldest first, without secrets.
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let endpoints = state.store.endpoints().await?;
    ok(&List { data: endpoints.iter().map(|e| EndpointOut::new(e, None)).collect(), next_cursor: None })
}

/// `GET /v1/webhook-endpoints/{id}`.
pub async fn get(State(state): State<AppState>, caller: Caller, path: PathParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?;
    validate::opaque_id("endpoint id", id)?;
    let endpoint = state.store.endpoint(id).await?.ok_or_else(|| endpoint_not_found(id))?;
    ok(&EndpointOut::new(&endpoint, None))
}

/// `PATCH /v1/webhook-endpoints/{id}`: `url`, `events`, `enabled`; an
/// endpoint of the configuration is `409 conflict`.
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    MaybeIdempotencyKey(idem): MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?.to_string();
    validate::opaque_id("endpoint id", &id)?;
    let parsed = body.parse::<EndpointPatch>()?;
    let update = parsed.value.validate()?;
    let render = |reply: &Reply| match reply {
        Reply::Endpoint(e) => Rendered::json(StatusCode::OK, &EndpointOut::new(e, None)),
        other => Err(unexpected(other)),
    };
    execute(&state, Command::UpdateEndpoint { id, update }, idem, &parsed.fingerprint, render).await
}

/// `GET /v1/webhook-deliveries?endpoint_id&event_id&status`: newest first.
pub async fn deliveries(State(state): State<AppState>, caller: Caller, query: QueryParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id_filter = |field: &str| -> ApiResult<Option<String>> {
        match query.get(field) {
            None | Some("") => Ok(None),
            Some(id) => {
                validate::opaque_id(field, id)?;
                Ok(Some(id.to_string()))
            }
        }
    };
    let status = match query.get("status") {
        None | Some("") => None,
        Some(s) => Some(
            DeliveryStatus::parse(s)
                .ok_or_else(|| ApiError::invalid_field("status", "must be one of pending, delivered, failed"))?,
        ),
    };
    let filter = DeliveryFilter { endpoint_id: id_filter("endpoint_id")?, event_id: id_filter("event_id")?, status };
    let page = query.page()?;
    let deliveries = state.store.deliveries(filter, page).await?;
    ok(&List::from_paged(deliveries, |d| DeliveryOut::from(&d)))
}

/// `GET /v1/webhook-deliveries/{id}`.
pub async fn delivery(State(state): State<AppState>, caller: Caller, path: PathParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?;
    validate::opaque_id("delivery id", id)?;
    let found = state.store.delivery(id).await?;
    let d = found.ok_or_else(|| ApiError::not_found(format!("webhook delivery {id:?} not found")))?;
    ok(&DeliveryOut::from(&d))
}

/// `POST /v1/webhook-deliveries/{id}/retry`: due now, whatever its status
/// (a delivered one is sent again); its three days start again.
pub async fn retry(State(state): State<AppState>, caller: Caller, path: PathParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?.to_string();
    validate::opaque_id("delivery id", &id)?;
    match state.store.execute(Command::RetryDelivery { id }, None).await? {
        Reply::Delivery(d) => ok(&DeliveryOut::from(&d)),
        other => Err(unexpected(&other)),
    }
}
