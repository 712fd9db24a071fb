//! Extractors whose failures are API errors, never axum's default rejections.
//!
//! Bodies are read as bytes (at most [`MAX_BODY_BYTES`]) and parsed inside
//! the handler, after authorisation, so that a caller without the right role
//! learns nothing about the shape of a body it may not send.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::validate::{self, MAX_BODY_BYTES, MAX_IDEMPOTENCY_KEY_CHARS};

/// How long a request body may take to arrive, when the router was given none.
pub const DEFAULT_BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The body read timeout, as a request extension the router adds.
#[derive(Clone, Copy, Debug)]
pub struct BodyReadTimeout(pub std::time::Duration);

/// The raw request body, at most 64 KiB, read within the body read timeout.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        collect(req, MAX_BODY_BYTES).await.map(Body)
    }
}

/// The body of `POST /v1/model-imports`: a whole price map, at most 32 MiB.
pub struct ImportBody(pub Bytes);

/// LiteLLM's map is about 3.5 MB and grows.
pub const MAX_IMPORT_BYTES: usize = 32 << 20;

impl<S: Send + Sync> FromRequest<S> for ImportBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        collect(req, MAX_IMPORT_BYTES).await.map(ImportBody)
    }
}

async fn collect(req: Request, max: usize) -> ApiResult<Bytes> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ApiError::payload_too_large(max));
    }
    let timeout = req.extensions().get::<BodyReadTimeout>().map_or(DEFAULT_BODY_READ_TIMEOUT, |t| t.0);
    let body = req.into_body();
    let limited = http_body_util::Limited::new(body, max);
    // The whole body within the timeout, however it trickles in (a byte
    // a second would otherwise hold the connection for hours).
    match tokio::time::timeout(timeout, http_body_util::BodyExt::collect(limited)).await {
        Err(_) => Err(ApiError::request_timeout(timeout)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::payload_too_large(max)),
        Ok(Err(_)) => Err(ApiError::invalid("the request body could not be read")),
    }
}

/// A parsed JSON body and the fingerprint of its canonical form.
pub struct Parsed<T> {
    pub value: T,
    pub fingerprint: String,
}

impl Body {
    /// Parses a JSON object body. An empty body is `{}` when `empty_ok`.
    fn json_value(&self, empty_ok: bool) -> ApiResult<Value> {
        if self.0.iter().all(u8::is_ascii_whitespace) {
            return if empty_ok {
                Ok(Value::Object(Default::default()))
            } else {
                Err(ApiError::invalid("a JSON object body is required"))
            };
        }
        let value: Value = serde_json::from_slice(&self.0)
            .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
        let Value::Object(mut map) = value else {
            return Err(ApiError::invalid("the body must be a JSON object"));
        };
        for (key, item) in map.iter_mut() {
            if key != "metadata" {
                integral_numbers(item);
            }
        }
        Ok(Value::Object(map))
    }

    /// Parses the body into `T` (a DTO).
    pub fn parse<T: DeserializeOwned>(&self) -> ApiResult<Parsed<T>> {
        self.parse_inner(false)
    }

    /// Like [`Body::parse`], but an empty body counts as `{}`.
    pub fn parse_or_empty<T: DeserializeOwned>(&self) -> ApiResult<Parsed<T>> {
        self.parse_inner(true)
    }

    /// A `PATCH`: the body (a JSON object) merged into `current` (the
    /// resource as a `PUT` body), then parsed into `T` as a whole, so the
    /// result is validated like a `PUT` and an unknown field is refused
    /// by name. The fingerprint is the patch's.
    pub fn patch<T: DeserializeOwned>(&self, current: Value) -> ApiResult<Parsed<T>> {
        let patch = self.json_value(false)?;
        let fingerprint = fingerprint(&patch);
        let mut merged = current;
        merge(&mut merged, patch);
        let parsed = serde_path_to_error::deserialize(&merged).map_err(body_error)?;
        Ok(Parsed { value: parsed, fingerprint })
    }

    fn parse_inner<T: DeserializeOwned>(&self, empty_ok: bool) -> ApiResult<Parsed<T>> {
        let value = self.json_value(empty_ok)?;
        let fingerprint = fingerprint(&value);
        let parsed = serde_path_to_error::deserialize(&value).map_err(body_error)?;
        Ok(Parsed { value: parsed, fingerprint })
    }
}

/// Merges `patch` into `target`: an object's fields merge key by key, at
/// every level; anything else (a string, a list, `null`) replaces what was
/// there. Unlike RFC 7396, `null` is kept as `null` rather than removing
/// the field, because a `PUT` body reads `null` as "none" (no limit, no
/// rate, no budget), which is what a caller sending `null` means; a
/// removed field would read as the default instead.
pub fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                match target.get_mut(&key) {
                    Some(existing) if existing.is_object() && value.is_object() => merge(existing, value),
                    _ => {
                        target.insert(key, value);
                    }
                }
            }
        }
        (target, patch) => *target = patch,
    }
}

/// JSON does not tell `3600` from `3600.0` (JSON Schema's `integer` takes
/// both): a number with no fractional part, in the range where `f64` is
/// exact, is read as the integer. Caller-owned `metadata` is left as sent.
fn integral_numbers(value: &mut Value) {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() <= EXACT
            {
                *value = if f < 0.0 { Value::from(f as i64) } else { Value::from(f as u64) };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        Value::Object(map) => map.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

/// A body that does not fit its DTO, as a `400 invalid_request` naming the
/// field: an unknown field (`expires_afer: unknown field`), a wrong type
/// (`amount: expected a decimal string …, got integer 100`), a missing one.
fn body_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let message = error.inner().to_string();
    let join = |name: &str| if path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
    if let Some(name) = between(&message, "unknown field `", "`") {
        // The path already ends with the unknown key.
        let field = if path.is_empty() { name.to_string() } else { path.clone() };
        let known = message.split_once(", expected ").map(|(_, k)| k.replace('`', "")).unwrap_or_default();
        let hint = if known.is_empty() { String::new() } else { format!(" (known fields: {known})") };
        return ApiError::invalid_field(&field, format!("unknown field{hint}"));
    }
    if let Some(name) = between(&message, "missing field `", "`") {
        return ApiError::invalid_field(&join(name), "is required");
    }
    let field = if path.is_empty() { "body".to_string() } else { path };
    // serde: "invalid type: integer `100`, expected a string" → "expected …, got …".
    let text = match message.strip_prefix("invalid type: ").or_else(|| message.strip_prefix("invalid value: ")) {
        Some(rest) => match rest.split_once(", expected ") {
            Some((got, expected)) => format!("expected {expected}, got {}", got.replace('`', "")),
            None => rest.to_string(),
        },
        None => message,
    };
    ApiError::invalid_field(&field, text)
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &text[text.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// SHA-256 (hex) of the canonical serialisation of a JSON value: keys sorted
/// at every level, no whitespace. Two bodies that differ only in key order or
/// spacing have the same fingerprint.
pub fn fingerprint(value: &Value) -> String {
    let mut text = Vec::new();
    write_canonical(value, &mut text);
    hex::encode(Sha256::digest(&text))
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(key.clone()).to_string().as_bytes());
                out.push(b':');
                write_canonical(&map[key], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

/// Path parameters as strings; a path that cannot be decoded is `400`.
pub struct PathParams(pub Vec<String>);

impl<S: Send + Sync> FromRequestParts<S> for PathParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(format!("invalid path: {}", e.body_text())))?;
        Ok(PathParams(params.into_iter().map(|(_, v)| v).collect()))
    }
}

impl PathParams {
    pub fn get(&self, index: usize) -> ApiResult<&str> {
        self.0.get(index).map(String::as_str).ok_or_else(|| ApiError::internal("missing path parameter"))
    }
}

/// The query string as a map; a malformed one is `400`.
pub struct QueryParams(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(map) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(format!("invalid query string: {}", e.body_text())))?;
        Ok(QueryParams(map))
    }
}

impl QueryParams {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// `?limit` (1–1000, default 100) and `?cursor`.
    pub fn page(&self) -> ApiResult<creditd_store::Page> {
        let limit = match self.get("limit") {
            None => validate::DEFAULT_PAGE_LIMIT,
            Some(text) => match text.parse::<u32>() {
                Ok(n) if (1..=validate::MAX_PAGE_LIMIT).contains(&n) => n,
                _ => return Err(ApiError::invalid_field("limit", "must be an integer from 1 to 1000")),
            },
        };
        let cursor = match self.get("cursor") {
            None | Some("") => None,
            Some(c) if c.len() <= validate::MAX_CURSOR_CHARS => Some(c.to_string()),
            Some(_) => return Err(ApiError::invalid_field("cursor", "is not a cursor of this API")),
        };
        Ok(creditd_store::Page { limit, cursor })
    }

    pub fn bool(&self, key: &str) -> ApiResult<bool> {
        match self.get(key) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(_) => Err(ApiError::invalid_field(key, "must be true or false")),
        }
    }
}

/// The `Idempotency-Key` header of a non-metering `POST`, with the scope it
/// is valid in (method and path).
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub scope: String,
    pub key: String,
}

/// `Option<IdempotencyKey>`: present only when the header was sent.
pub struct MaybeIdempotencyKey(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeIdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get("idempotency-key") else {
            return Ok(MaybeIdempotencyKey(None));
        };
        let invalid = || {
            ApiError::invalid_field(
                "Idempotency-Key",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters"),
            )
        };
        let key = value.to_str().map_err(|_| invalid())?;
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_CHARS || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(invalid());
        }
        let scope = format!("{} {}", parts.method, parts.uri.path());
        Ok(MaybeIdempotencyKey(Some(IdempotencyKey { scope, key: key.to_string() })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_patch_merges_objects_and_replaces_the_rest() {
        let mut target = json!({"a": {"x": "1", "y": "2"}, "b": [1, 2], "c": "k", "d": null, "e": 5});
        merge(&mut target, json!({"a": {"y": "3"}, "b": [3], "c": null, "d": {"z": 1}, "f": true}));
        assert_eq!(target, json!({"a": {"x": "1", "y": "3"}, "b": [3], "c": null, "d": {"z": 1}, "e": 5, "f": true}));
    }

    #[test]
    fn fingerprint_ignores_key_order_and_spacing() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": "s"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&json!({"b": 2, "a": {"x": "s", "y": [1, 2]}})));
        assert_eq!(fingerprint(&a).len(), 64);
    }
}
