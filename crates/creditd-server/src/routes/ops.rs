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

/// How far the test clock may move past where it started: five years.
pub const TEST_CLOCK_SPAN_DAYS: i64 = 1826;

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
    // The test clock moves at most `TEST_CLOCK_SPAN_DAYS` past where it
    // started. Bringing an account up to the clock applies every period it
    // crossed, one by one (a weekly gift is a grant and its expiry), and the
    // first write to each account does that work while the writer waits:
    // a jump of centuries over many accounts stalled every caller (the fuzz
    // suite found it). Five years still crosses any renewal, grace and
    // expiry a test needs.
    let limit = clock
        .started()
        .checked_add(jiff::SignedDuration::from_hours(24 * TEST_CLOCK_SPAN_DAYS))
        .unwrap_or(jiff::Timestamp::MAX);
    let too_far = || {
        ApiError::invalid(format!(
            "the test clock moves at most {TEST_CLOCK_SPAN_DAYS} days past where it started (until {limit})"
        ))
    };
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
