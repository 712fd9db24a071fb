//! Operations: health, metrics, the OpenAPI description, the test clock.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::auth::{Access, Caller};
use crate::dto::{ClockIn, ClockOut, Health};
use crate::error::{ApiError, ApiResult};
use crate::extract::Body;
use crate::respond::ok;
use crate::state::AppState;
use crate::validate;

/// `200` once every part of the store answers; otherwise `503 unavailable`
/// with `Retry-After`, the details naming each part (`writer`, `reader`)
/// as `ok` or `unavailable`.
pub async fn healthz(State(state): State<AppState>) -> ApiResult<Response> {
    let health = state.store.health().await;
    if health.writer.is_ok() && health.reader.is_ok() {
        return ok(&Health { status: "ok" });
    }
    let mut down = Vec::new();
    let mut error = ApiError::unavailable(false);
    for (part, result) in [("writer", &health.writer), ("reader", &health.reader)] {
        let status = match result {
            Ok(()) => "ok",
            Err(e) => {
                tracing::warn!(part, error = %e, "health: a part of the store is down");
                down.push(part);
                "unavailable"
            }
        };
        error = error.with_detail(part, status);
    }
    error.message = format!("the store's {} cannot reach the database", down.join(" and "));
    Err(error)
}

/// The recorder's metrics, and the provider calls by status, counted in
/// the store now (left out when the store does not answer within two
/// seconds: `/metrics` answers whatever the database does).
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = crate::metrics::render();
    let counts = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.provider_call_counts()).await;
    match counts {
        Ok(Ok(counts)) => crate::metrics::provider_calls(&mut text, &counts),
        Ok(Err(e)) => tracing::debug!(error = %e, "metrics: provider calls not counted"),
        Err(_) => tracing::debug!("metrics: provider calls not counted in time"),
    }
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

pub async fn openapi() -> Response {
    let mut response = crate::openapi::SPEC.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn test_clock(state: &AppState) -> ApiResult<&creditd_store::ManualClock> {
    state
        .test_clock
        .as_deref()
        .ok_or_else(|| ApiError::not_found("the test clock is off (start creditd with --test-clock)"))
}

pub async fn get_clock(State(state): State<AppState>) -> ApiResult<Response> {
    let clock = test_clock(&state)?;
    ok(&ClockOut { now: creditd_store::Clock::now(clock).to_string() })
}

/// `{"now": "…"}` or `{"advance_seconds": N}`; time never moves backwards.
/// Admin only, even with `--test-clock`: moving time expires holds and grants.
pub async fn set_clock(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    body: Body,
) -> ApiResult<Response> {
    let clock = test_clock(&state)?;
    caller?.require(Access::Admin)?;
    let input = body.parse::<ClockIn>()?.value;
    let backwards = || ApiError::invalid("the clock never moves backwards");
    // The test clock stays below year 9000: periods, grace ends and hold
    // expiries a year or more ahead of it must still be times, and a clock
    // at the end of time would only test that they are not.
    let limit: jiff::Timestamp = "9000-01-01T00:00:00Z".parse().expect("a valid time");
    let too_far = || ApiError::invalid("the clock cannot move past 9000-01-01T00:00:00Z");
    let target = match (input.now, input.advance_seconds) {
        (Some(now), None) => validate::timestamp("now", &now)?,
        (None, Some(seconds)) if seconds < 0 => return Err(backwards()),
        (None, Some(seconds)) => creditd_store::Clock::now(clock)
            .checked_add(jiff::SignedDuration::from_secs(seconds))
            .map_err(|_| too_far())?,
        _ => return Err(ApiError::invalid("give exactly one of now and advance_seconds")),
    };
    if target > limit {
        return Err(too_far());
    }
    let now = clock.set(target).map_err(|_| backwards())?;
    ok(&ClockOut { now: now.to_string() })
}
