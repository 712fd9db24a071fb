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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
pub struct ReasonIn {
    pub reason: Option<String>,
}

/// An amount as the API takes it: a decimal string (`"12"`, `"0.5"`). Its
/// own type so that a number or anything else is refused with the field
/// named and "expected a decimal string".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decimal(pub String);

impl std::ops::Deref for Decimal {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Decimal;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a decimal string such as \"12\" or \"0.5\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Decimal, E> {
                Ok(Decimal(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Decimal, E> {
                Ok(Decimal(v))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}
