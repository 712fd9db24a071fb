//! Shapes shared by every endpoint.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `{"error": {"code", "message", "details"}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    pub details: Value,
}

impl ErrorBody {
    pub fn new(code: &str, message: &str, details: Value) -> Self {
        ErrorBody { error: ErrorDetail { code: code.to_string(), message: message.to_string(), details } }
    }
}

/// A page of a list: `{"data": […], "next_cursor": "…" | null}`.
#[derive(Debug, Serialize)]
pub struct List<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> List<T> {
    pub fn from_paged<U>(paged: creditd_store::Paged<U>, f: impl FnMut(U) -> T) -> Self {
        List { data: paged.data.into_iter().map(f).collect(), next_cursor: paged.next_cursor }
    }
}

#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
}

/// `POST /v1/test/clock`: one of the two.
#[derive(Debug, Deserialize)]
pub struct ClockIn {
    pub now: Option<String>,
    pub advance_seconds: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct ClockOut {
    pub now: String,
}

/// A body whose fields are all optional, for `suspend`, `resume`, `void`.
#[derive(Debug, Default, Deserialize)]
pub struct ReasonIn {
    pub reason: Option<String>,
}
