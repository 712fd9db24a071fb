//! Parse-then-validate helpers for request fields. Each returns a typed
//! value or a `400 invalid_request` that names the field.

use creditd_core::units::{Credits, Factor, MAX_TOKENS, UnitError, Usd};
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// Request bodies at most 64 KiB (`api.md` conventions).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// `metadata` at most 4 KiB, as serialised JSON.
pub const MAX_METADATA_BYTES: usize = 4 * 1024;
pub const MAX_ID_CHARS: usize = 128;
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
pub const MAX_REQUEST_ID_CHARS: usize = 255;
pub const MAX_REQUEST_TYPE_CHARS: usize = 64;
pub const MAX_TEXT_CHARS: usize = 255;
pub const MAX_REASON_CHARS: usize = 1024;
pub const MAX_TOOLS: usize = 128;
pub const MAX_PAGE_LIMIT: u32 = 1000;
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
pub const MAX_CURSOR_CHARS: usize = 512;
/// Account tokens live at most a year.
pub const MAX_TOKEN_TTL_SECONDS: u64 = 365 * 24 * 3600;
pub const DEFAULT_TOKEN_TTL_SECONDS: u64 = 3600;

fn charset_ok(text: &str, max: usize, extra: &[u8]) -> bool {
    !text.is_empty() && text.len() <= max && text.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

/// Account ids: 1–128 characters of `A–Z a–z 0–9 . _ @ -`.
pub fn account_id(field: &str, text: &str) -> ApiResult<()> {
    if charset_ok(text, MAX_ID_CHARS, b"._@-") {
        Ok(())
    } else {
        Err(ApiError::invalid_field(field, "must be 1 to 128 characters of A-Z a-z 0-9 . _ @ -"))
    }
}

/// Model ids: 1–128 characters of `A–Z a–z 0–9 . _ : / @ -`.
pub fn model_id(field: &str, text: &str) -> ApiResult<()> {
    if charset_ok(text, MAX_ID_CHARS, b"._:/@-") {
        Ok(())
    } else {
        Err(ApiError::invalid_field(field, "must be 1 to 128 characters of A-Z a-z 0-9 . _ : / @ -"))
    }
}

/// Request ids: 1–255 printable ASCII characters without spaces.
pub fn request_id(field: &str, text: &str) -> ApiResult<()> {
    if !text.is_empty() && text.len() <= MAX_REQUEST_ID_CHARS && text.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(ApiError::invalid_field(field, "must be 1 to 255 printable ASCII characters without spaces"))
    }
}

/// Request types (`chat`, `summarization`…): 1–64 characters of `A–Z a–z 0–9 . _ @ -`.
pub fn request_type(field: &str, text: Option<String>) -> ApiResult<String> {
    let text = text.unwrap_or_else(|| "chat".to_string());
    if charset_ok(&text, MAX_REQUEST_TYPE_CHARS, b"._@-") {
        Ok(text)
    } else {
        Err(ApiError::invalid_field(field, "must be 1 to 64 characters of A-Z a-z 0-9 . _ @ -"))
    }
}

/// Ids in paths that the server did not choose the shape of (grant ids, key ids).
pub fn opaque_id(field: &str, text: &str) -> ApiResult<()> {
    if charset_ok(text, MAX_ID_CHARS, b"._:@-") {
        Ok(())
    } else {
        Err(ApiError::invalid_field(field, "is not a valid id"))
    }
}

/// Free text with a length bound; control characters are refused.
pub fn text(field: &str, value: Option<String>, max_chars: usize) -> ApiResult<Option<String>> {
    match value {
        None => Ok(None),
        Some(v) => {
            if v.chars().count() > max_chars {
                Err(ApiError::invalid_field(field, format!("must be at most {max_chars} characters")))
            } else if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                Err(ApiError::invalid_field(field, "must not contain control characters"))
            } else {
                Ok(Some(v))
            }
        }
    }
}

/// Like [`text`], but required and non-empty.
pub fn required_text(field: &str, value: Option<String>, max_chars: usize) -> ApiResult<String> {
    match text(field, value, max_chars)? {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ApiError::invalid_field(field, "is required")),
    }
}

fn unit_error(field: &str, error: UnitError) -> ApiError {
    ApiError::invalid_field(field, format!("{error} (amounts are decimal strings such as \"12\" or \"0.5\")"))
}

/// A decimal string in canonical form (`semantics.md` §1): exactly what the
/// value prints as. `"1.50"`, `"007"`, `"-0"` and `"1e3"` are refused.
fn canonical<T: std::fmt::Display>(field: &str, text: &str, parse: fn(&str) -> Result<T, UnitError>) -> ApiResult<T> {
    let value = parse(text).map_err(|e| unit_error(field, e))?;
    if value.to_string() != text {
        return Err(ApiError::invalid_field(
            field,
            format!("{text:?} is not in canonical decimal form (expected {:?})", value.to_string()),
        ));
    }
    Ok(value)
}

pub fn credits(field: &str, text: &str) -> ApiResult<Credits> {
    canonical(field, text, Credits::parse)
}

pub fn usd(field: &str, text: &str) -> ApiResult<Usd> {
    canonical(field, text, Usd::parse)
}

pub fn factor(field: &str, text: &str) -> ApiResult<Factor> {
    canonical(field, text, Factor::parse)
}

pub fn opt_credits(field: &str, text: Option<&str>) -> ApiResult<Option<Credits>> {
    text.map(|t| credits(field, t)).transpose()
}

pub fn opt_usd(field: &str, text: Option<&str>) -> ApiResult<Option<Usd>> {
    text.map(|t| usd(field, t)).transpose()
}

/// A token, image or tool-call count: 0…10^9.
pub fn count(field: &str, value: Option<u64>) -> ApiResult<u64> {
    let value = value.unwrap_or(0);
    if value > MAX_TOKENS {
        return Err(ApiError::invalid_field(field, format!("must be at most {MAX_TOKENS}")));
    }
    Ok(value)
}

pub fn opt_count(field: &str, value: Option<u64>) -> ApiResult<Option<u64>> {
    value.map(|v| count(field, Some(v))).transpose()
}

/// An RFC 3339 timestamp: a four-digit year (0000–9999; `-009999-…` and
/// `+010000-…` are not RFC 3339), a `T`, an offset.
pub fn timestamp(field: &str, text: &str) -> ApiResult<Timestamp> {
    let bad = || ApiError::invalid_field(field, "must be an RFC 3339 timestamp such as 2026-03-01T00:00:00Z");
    let b = text.as_bytes();
    if b.len() < 20 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return Err(bad());
    }
    text.parse::<Timestamp>().map_err(|_| bad())
}

pub fn opt_timestamp(field: &str, text: Option<&str>) -> ApiResult<Option<Timestamp>> {
    text.map(|t| timestamp(field, t)).transpose()
}

/// `from + duration`, the duration in ISO 8601 (`P7D`, `PT1H`, `P1M`),
/// calendar units counted in UTC. It must be positive.
pub fn add_iso_duration(field: &str, from: Timestamp, text: &str) -> ApiResult<Timestamp> {
    let bad = || ApiError::invalid_field(field, "must be a positive ISO 8601 duration such as P7D or PT1H");
    if !text.starts_with('P') && !text.starts_with('p') {
        return Err(bad());
    }
    let span: Span = text.parse().map_err(|_| bad())?;
    if span.is_negative() || span.is_zero() {
        return Err(bad());
    }
    let zoned = from.to_zoned(TimeZone::UTC);
    zoned.checked_add(span).map(|z| z.timestamp()).map_err(|_| bad())
}

/// `metadata`: a JSON object of at most 4 KiB. Returns its JSON text.
pub fn metadata(field: &str, value: Option<Value>) -> ApiResult<Option<String>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => {
            let text = serde_json::to_string(&v).map_err(|_| ApiError::invalid_field(field, "is not valid JSON"))?;
            if text.len() > MAX_METADATA_BYTES {
                return Err(ApiError::invalid_field(field, format!("must be at most {MAX_METADATA_BYTES} bytes")));
            }
            Ok(Some(text))
        }
        Some(_) => Err(ApiError::invalid_field(field, "must be a JSON object")),
    }
}

/// Stored metadata back to JSON (`{}` when there is none).
pub fn metadata_value(text: Option<&str>) -> Value {
    text.and_then(|t| serde_json::from_str(t).ok()).unwrap_or_else(|| Value::Object(Default::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_follow_the_charset() {
        for ok in ["u_42", "a", "A.b-c@d_e", &"x".repeat(128)] {
            assert!(account_id("id", ok).is_ok(), "{ok}");
        }
        for bad in ["", "u 42", "u/42", "ü", &"x".repeat(129), "a:b"] {
            assert!(account_id("id", bad).is_err(), "{bad}");
        }
    }

    /// Issue 18.6: years outside RFC 3339 (`-009999-…`) were accepted.
    #[test]
    fn years_outside_rfc_3339_are_accepted() {
        assert!(timestamp("t", "2026-03-01T00:00:00Z").is_ok());
        assert!(timestamp("t", "2026-03-01T00:00:00.123456+02:00").is_ok());
        assert!(timestamp("t", "0000-01-01T00:00:00Z").is_ok());
        for bad in
            ["-009999-01-02T02:00:00Z", "+010000-01-01T00:00:00Z", "+002026-03-01T00:00:00Z", "26-03-01T00:00:00Z"]
        {
            assert!(timestamp("t", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn model_ids_allow_colon_and_slash() {
        assert!(model_id("model", "openai/gpt-4o:2024").is_ok());
        assert!(model_id("model", "gpt 4").is_err());
    }

    #[test]
    fn amounts_must_be_canonical() {
        assert_eq!(credits("a", "1.5").unwrap(), Credits::parse("1.5").unwrap());
        assert_eq!(credits("a", "-2.25").unwrap(), Credits::parse("-2.25").unwrap());
        for bad in ["1.50", "007", "-0", "1e3", "+1", "1.", ".5", "0.0000001", "", " 1", "1,5"] {
            assert!(credits("a", bad).is_err(), "{bad}");
        }
        assert!(usd("a", "0.000001").is_ok());
        assert!(usd("a", "0.0000001").is_err());
    }

    #[test]
    fn iso_durations_add_calendar_units_in_utc() {
        let t: Timestamp = "2026-01-31T00:00:00Z".parse().unwrap();
        assert_eq!(add_iso_duration("d", t, "P7D").unwrap().to_string(), "2026-02-07T00:00:00Z");
        assert_eq!(add_iso_duration("d", t, "PT1H").unwrap().to_string(), "2026-01-31T01:00:00Z");
        assert_eq!(add_iso_duration("d", t, "P1M").unwrap().to_string(), "2026-02-28T00:00:00Z");
        for bad in ["7 days", "P0D", "-P1D", "", "P", "PX"] {
            assert!(add_iso_duration("d", t, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_is_an_object_of_bounded_size() {
        assert!(metadata("m", Some(serde_json::json!({"a": 1}))).unwrap().is_some());
        assert!(metadata("m", Some(serde_json::json!([1]))).is_err());
        let big = "x".repeat(MAX_METADATA_BYTES);
        assert!(metadata("m", Some(serde_json::json!({"a": big}))).is_err());
    }
}
