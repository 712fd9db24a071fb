//! The one error type of the API and its mapping to `api.md`'s codes.
//!
//! Every failure a handler can meet becomes an [`ApiError`]; its response is
//! always `{"error": {"code", "message", "details"}}` with the status the
//! code has in `api.md`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use creditd_core::engine::Refusal;
use creditd_store::StoreError;
use serde_json::{Map, Value, json};

use crate::dto::ErrorBody;
use crate::respond::json_bytes;

/// `Retry-After` of a `503 unavailable`: a writer reconnects at its next
/// batch, so a second is enough for a terminated connection; a restarting
/// database answers 503 again until it is back.
pub const UNAVAILABLE_RETRY_AFTER_SECONDS: u64 = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Map<String, Value>,
    /// Seconds, for 429s.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: Map::new(), retry_after: None }
    }

    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// An invalid field, named in the details.
    pub fn invalid_field(field: &str, message: impl std::fmt::Display) -> Self {
        ApiError::invalid(format!("{field}: {message}")).with_detail("field", field)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn payload_too_large(limit_bytes: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {limit_bytes} bytes"),
        )
        .with_detail("limit_bytes", limit_bytes)
    }

    /// The body did not arrive in time: `408 request_timeout`.
    pub fn request_timeout(limit: std::time::Duration) -> Self {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request body did not arrive within {} seconds", limit.as_secs()),
        )
        .with_detail("limit_seconds", limit.as_secs())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// `503 unavailable`: the database cannot be reached (down, restarting,
    /// a connection lost); worth retrying after `Retry-After`. `unknown`:
    /// a write's commit may or may not have happened (its answer was lost).
    pub fn unavailable(unknown: bool) -> Self {
        let message = if unknown {
            "the database became unreachable while committing; whether the operation was applied is unknown: \
             retry it with the same request id or Idempotency-Key"
        } else {
            "the database is unavailable; the operation was not applied and may be retried"
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            .with_detail("outcome_unknown", unknown)
            .retry_after(UNAVAILABLE_RETRY_AFTER_SECONDS)
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code, &self.message, Value::Object(self.details.clone()))
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let message = refusal.to_string();
        match refusal {
            Refusal::InvalidRequest(_) => ApiError::invalid(message),
            Refusal::NotFound(_) => ApiError::not_found(message),
            Refusal::Conflict(_) => ApiError::conflict(message),
            Refusal::AccountSuspended => ApiError::new(StatusCode::FORBIDDEN, "account_suspended", message),
            Refusal::UnknownModel(ref model) => {
                ApiError::new(StatusCode::BAD_REQUEST, "unknown_model", message.clone())
                    .with_detail("model", model.as_str())
            }
            Refusal::ModelNotAllowed { ref model, ref plan } => {
                ApiError::new(StatusCode::FORBIDDEN, "model_not_allowed", message.clone())
                    .with_detail("model", model.as_str())
                    .with_detail("plan", plan.as_str())
            }
            Refusal::RateLimited { limit, retry_after_seconds }
            | Refusal::DailyCapReached { limit, retry_after_seconds }
            | Refusal::WeeklyCapReached { limit, retry_after_seconds } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, refusal.code(), message)
                    .with_detail("limit", limit)
                    .with_detail("retry_after_seconds", retry_after_seconds)
                    .retry_after(retry_after_seconds)
            }
            Refusal::PlanBudgetExhausted { budget_usd, used_usd } => {
                ApiError::new(StatusCode::PAYMENT_REQUIRED, "plan_budget_exhausted", message)
                    .with_detail("budget_usd", budget_usd.to_string())
                    .with_detail("budget_used_usd", used_usd.to_string())
            }
            Refusal::SubscriptionExpired => ApiError::new(StatusCode::CONFLICT, "subscription_expired", message),
            Refusal::InsufficientCredits { available, estimate } => {
                ApiError::new(StatusCode::PAYMENT_REQUIRED, "insufficient_credits", message)
                    .with_detail("available", available.to_string())
                    .with_detail("estimate", estimate.to_string())
            }
            Refusal::IdempotencyConflict => ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", message),
            Refusal::HoldNotOpen { status } => {
                ApiError::new(StatusCode::CONFLICT, "hold_not_open", message).with_detail("status", status.as_str())
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Refused(refusal) => refusal.into(),
            StoreError::Internal(why) => {
                tracing::error!(error = %why, "store failure");
                ApiError::internal("the store failed; the operation may be retried")
            }
            StoreError::Unavailable(why) => {
                tracing::warn!(error = %why, "store unavailable");
                ApiError::unavailable(why.contains(creditd_store::OUTCOME_UNKNOWN))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json_bytes(&self.body()).unwrap_or_else(|_| {
            json!({"error": {"code": "internal", "message": "error", "details": {}}}).to_string().into_bytes()
        });
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use creditd_core::account::HoldStatus;
    use creditd_core::units::{Credits, Usd};

    use super::*;

    async fn parts(error: ApiError) -> (StatusCode, Option<String>, Value) {
        let response = error.into_response();
        let status = response.status();
        let retry = response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, retry, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn every_refusal_has_the_status_of_its_code() {
        let cases = [
            (Refusal::InvalidRequest("x".into()), 400, "invalid_request"),
            (Refusal::NotFound("x".into()), 404, "not_found"),
            (Refusal::Conflict("x".into()), 409, "conflict"),
            (Refusal::AccountSuspended, 403, "account_suspended"),
            (Refusal::UnknownModel("m".into()), 400, "unknown_model"),
            (
                Refusal::InsufficientCredits { available: Credits::whole(1), estimate: Credits::parse("1.8").unwrap() },
                402,
                "insufficient_credits",
            ),
            (Refusal::IdempotencyConflict, 409, "idempotency_conflict"),
            (Refusal::HoldNotOpen { status: HoldStatus::Released }, 409, "hold_not_open"),
            (Refusal::ModelNotAllowed { model: "m".into(), plan: "free".into() }, 403, "model_not_allowed"),
            (Refusal::RateLimited { limit: 1, retry_after_seconds: 7 }, 429, "rate_limited"),
            (Refusal::DailyCapReached { limit: 1, retry_after_seconds: 7 }, 429, "daily_cap_reached"),
            (Refusal::WeeklyCapReached { limit: 1, retry_after_seconds: 7 }, 429, "weekly_cap_reached"),
            (
                Refusal::PlanBudgetExhausted { budget_usd: Usd::whole(5), used_usd: Usd::whole(5) },
                402,
                "plan_budget_exhausted",
            ),
            (Refusal::SubscriptionExpired, 409, "subscription_expired"),
        ];
        for (refusal, status, code) in cases {
            assert_eq!(refusal.code(), code);
            let expected_retry = refusal.retry_after_seconds().map(|s| s.to_string());
            let (got, retry, body) = parts(StoreError::Refused(refusal).into()).await;
            assert_eq!(got.as_u16(), status, "{code}");
            assert_eq!(retry, expected_retry, "{code}: Retry-After");
            assert_eq!(body["error"]["code"], code);
            assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(body["error"]["details"].is_object());
        }
        let (_, _, body) = parts(
            Refusal::InsufficientCredits { available: Credits::whole(1), estimate: Credits::parse("1.8").unwrap() }
                .into(),
        )
        .await;
        assert_eq!(body["error"]["details"], json!({"available": "1", "estimate": "1.8"}));
    }

    #[tokio::test]
    async fn store_failures_are_internal_and_429s_carry_retry_after() {
        let (status, _, body) = parts(StoreError::Internal("disk on fire".into()).into()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "internal");
        assert!(!body["error"]["message"].as_str().unwrap().contains("disk"), "no internals leak");
        let limited = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down").retry_after(17);
        // issue 19, item 7: a database that is down is 503 with Retry-After, not 500.
        let (status, retry, body) = parts(StoreError::Unavailable("postgres: connection refused".into()).into()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("1"));
        assert_eq!(body["error"]["code"], "unavailable");
        assert_eq!(body["error"]["details"]["outcome_unknown"], false);
        assert!(!body["error"]["message"].as_str().unwrap().contains("refused"), "no internals leak");
        let unknown = StoreError::Unavailable(format!("{}: lost", creditd_store::OUTCOME_UNKNOWN));
        let (_, _, body) = parts(unknown.into()).await;
        assert_eq!(body["error"]["details"]["outcome_unknown"], true);
        let (status, retry, body) = parts(limited).await;
        assert_eq!(status.as_u16(), 429);
        assert_eq!(retry.as_deref(), Some("17"));
        assert_eq!(body["error"]["code"], "rate_limited");
    }
}
