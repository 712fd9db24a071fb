//! Outgoing webhooks: endpoints (`/v1/webhook-endpoints`) and deliveries
//! (`/v1/webhook-deliveries`).

use creditd_core::events::EventKind;
use creditd_store::{Delivery, Endpoint, EndpointUpdate};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};

/// Longest endpoint URL accepted (in bytes: it is ASCII).
pub const MAX_URL_CHARS: usize = 2048;

/// `POST /v1/webhook-endpoints`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointIn {
    pub url: String,
    /// Kinds to receive; absent or empty: every kind.
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
    /// `whsec_` and the base64 of 24 to 64 bytes; absent: one is made.
    pub secret: Option<String>,
}

/// `PATCH /v1/webhook-endpoints/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// Characters of a URL's path and query (no fragment, no spaces).
const PATH_CHARS: &[u8] = b"._~%!$&'()*+,;=:@/?-";

/// An `http` or `https` URL: a host of letters, digits, dots and hyphens
/// (dot-separated labels), an optional port of up to 5 digits, an optional
/// path and query; no credentials, no fragment. The same rule as the
/// `pattern` of `openapi.json`, so that the document and the server agree.
pub fn endpoint_url(field: &str, url: &str) -> ApiResult<String> {
    let bad = || {
        ApiError::invalid_field(
            field,
            "must be an http or https URL with a host (letters, digits, dots, hyphens), an optional port and path, \
             at most 2048 characters",
        )
    };
    if url.len() > MAX_URL_CHARS {
        return Err(bad());
    }
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let label_ok = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let port_ok = port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    let path_ok = path.bytes().all(|b| b.is_ascii_alphanumeric() || PATH_CHARS.contains(&b));
    if !host.split('.').all(label_ok) || !port_ok || !path_ok {
        return Err(bad());
    }
    Ok(url.to_string())
}

/// Event kind names; an empty list means every kind.
pub fn event_kinds(field: &str, names: Option<Vec<String>>) -> ApiResult<Vec<EventKind>> {
    let mut kinds = Vec::new();
    for name in names.unwrap_or_default() {
        let kind = EventKind::parse(&name).ok_or_else(|| {
            let all: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
            ApiError::invalid_field(field, format!("{name:?} is not an event type (one of {})", all.join(", ")))
        })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

impl EndpointPatch {
    pub fn validate(self) -> ApiResult<EndpointUpdate> {
        let url = self.url.map(|u| endpoint_url("url", &u)).transpose()?;
        let events = match self.events {
            Some(names) => Some(event_kinds("events", Some(names))?),
            None => None,
        };
        Ok(EndpointUpdate { url, events, enabled: self.enabled })
    }
}

/// An endpoint; `secret` only in the answer that created it.
#[derive(Debug, Serialize)]
pub struct EndpointOut {
    pub id: String,
    pub url: String,
    /// Empty: every kind.
    pub events: Vec<&'static str>,
    pub enabled: bool,
    /// `config` (defined in the configuration) or `api`.
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl EndpointOut {
    pub fn new(e: &Endpoint, secret: Option<String>) -> Self {
        EndpointOut {
            id: e.id.clone(),
            url: e.url.clone(),
            events: e.events.iter().map(|k| k.as_str()).collect(),
            enabled: e.enabled,
            source: if e.from_config { "config" } else { "api" },
            secret,
            created_at: e.created_at.to_string(),
            updated_at: e.updated_at.to_string(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DeliveryOut {
    pub id: String,
    pub event_id: String,
    pub event_type: &'static str,
    pub account_id: String,
    pub endpoint_id: String,
    pub status: &'static str,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
}

impl From<&Delivery> for DeliveryOut {
    fn from(d: &Delivery) -> Self {
        DeliveryOut {
            id: d.id.clone(),
            event_id: d.event_id.clone(),
            event_type: d.event_type.as_str(),
            account_id: d.account_id.clone(),
            endpoint_id: d.endpoint_id.clone(),
            status: d.status.as_str(),
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at.map(|t| t.to_string()),
            last_attempt_at: d.last_attempt_at.map(|t| t.to_string()),
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            created_at: d.created_at.to_string(),
            delivered_at: d.delivered_at.map(|t| t.to_string()),
        }
    }
}
