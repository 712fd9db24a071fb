//! Refusals in the provider's own error JSON, so that an SDK raises the
//! exception it raises for the provider's refusal with that status
//! (`RateLimitError`, `PermissionDeniedError`, …). creditd's error code
//! travels in `error.code` (OpenAI's field; added to Anthropic's object).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use creditd_server::ApiError;
use serde_json::{Value, json};

use crate::decode::Provider;

/// The header carrying the request id the proxy minted.
pub const REQUEST_ID_HEADER: &str = "x-creditd-request-id";

/// A refusal by the proxy (never one of the provider's, which pass through).
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyError {
    pub status: StatusCode,
    /// creditd's code (`api.md`), e.g. `insufficient_credits`.
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429s.
    pub retry_after: Option<u64>,
}

impl ProxyError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ProxyError { status, code, message: message.into(), retry_after: None }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ProxyError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ProxyError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn upstream(message: impl Into<String>) -> Self {
        ProxyError::new(StatusCode::BAD_GATEWAY, "upstream_unavailable", message)
    }

    /// The provider's error `type` for this refusal.
    fn provider_type(&self, provider: Provider) -> &'static str {
        match (provider, self.status.as_u16()) {
            (_, 400 | 405 | 408 | 413) => "invalid_request_error",
            (_, 401) => "authentication_error",
            (Provider::OpenAi, 402) => "insufficient_quota",
            (Provider::Anthropic, 402) => "billing_error",
            (_, 403) => "permission_error",
            (_, 404) => "not_found_error",
            (_, 429) => "rate_limit_error",
            _ => "api_error",
        }
    }

    /// The error body in `provider`'s shape.
    pub fn body(&self, provider: Provider) -> Value {
        let kind = self.provider_type(provider);
        match provider {
            Provider::OpenAi => json!({"error": {
                "message": self.message, "type": kind, "param": null, "code": self.code,
            }}),
            Provider::Anthropic => json!({"type": "error", "error": {
                "type": kind, "message": self.message, "code": self.code,
            }}),
        }
    }

    /// The response: the body, `Retry-After` on 429s, and `x-should-retry:
    /// false` where trying again cannot help before the wait (the SDKs read it).
    pub fn response(&self, provider: Provider, request_id: Option<&str>) -> Response {
        let mut response = (self.status, self.body(provider).to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        let retry = match self.code {
            // A minute's window: the SDKs wait Retry-After and try again.
            "rate_limited" | "upstream_unavailable" | "upstream_timeout" | "internal" | "unavailable" => "true",
            _ => "false",
        };
        headers.insert("x-should-retry", HeaderValue::from_static(retry));
        set_request_id(headers, request_id);
        response
    }
}

pub(crate) fn set_request_id(headers: &mut HeaderMap, request_id: Option<&str>) {
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        headers.insert(REQUEST_ID_HEADER, id);
    }
}

impl From<ApiError> for ProxyError {
    fn from(e: ApiError) -> Self {
        ProxyError { status: e.status, code: e.code, message: e.message, retry_after: e.retry_after }
    }
}

impl From<creditd_store::StoreError> for ProxyError {
    fn from(e: creditd_store::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_take_each_providers_shape() {
        // (status, code, provider, provider type)
        let table = [
            (402, "insufficient_credits", Provider::OpenAi, "insufficient_quota"),
            (402, "insufficient_credits", Provider::Anthropic, "billing_error"),
            (403, "model_not_allowed", Provider::OpenAi, "permission_error"),
            (429, "rate_limited", Provider::Anthropic, "rate_limit_error"),
            (400, "unknown_model", Provider::Anthropic, "invalid_request_error"),
            (401, "unauthorized", Provider::OpenAi, "authentication_error"),
        ];
        for (status, code, provider, kind) in table {
            let e = ProxyError::new(StatusCode::from_u16(status).unwrap(), code, "no");
            let body = e.body(provider);
            match provider {
                Provider::OpenAi => {
                    assert_eq!(body["error"]["type"], kind);
                    assert_eq!(body["error"]["code"], code);
                }
                Provider::Anthropic => {
                    assert_eq!(body["type"], "error");
                    assert_eq!(body["error"]["type"], kind);
                }
            }
        }
    }
}
