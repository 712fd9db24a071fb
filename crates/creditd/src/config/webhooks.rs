//! `[webhooks]`: outgoing webhooks (`docs/webhooks.md`). Endpoints of the
//! configuration sit beside those made over the API; their secrets come from
//! the configuration's layers (in practice the environment,
//! `CREDITD_WEBHOOKS__ENDPOINTS__<ID>__SECRET`) and are never stored.

use std::collections::BTreeMap;

use creditd_core::events::EventKind;
use serde::{Deserialize, Serialize};

use super::{ConfigError, Scalar, Secret, Validator};

#[derive(Clone, Debug, Default)]
pub struct WebhooksSection {
    /// By endpoint id.
    pub endpoints: BTreeMap<String, EndpointSection>,
    /// How long the delivery worker waits when nothing is due.
    pub poll_interval_ms: u64,
    /// How long one delivery attempt may take.
    pub timeout_seconds: u64,
}

#[derive(Clone, Debug)]
pub struct EndpointSection {
    pub url: String,
    pub secret: Secret,
    /// Empty: every kind.
    pub events: Vec<EventKind>,
    pub enabled: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawWebhooks {
    endpoints: BTreeMap<String, RawEndpoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    poll_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_seconds: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawEndpoint {
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
}

impl Validator<'_> {
    pub(super) fn webhooks(&self, raw: RawWebhooks) -> Result<WebhooksSection, ConfigError> {
        let mut endpoints = BTreeMap::new();
        for (id, e) in raw.endpoints {
            let key = |field: &str| format!("webhooks.endpoints.{id}.{field}");
            let id_ok = !id.is_empty()
                && id.len() <= 128
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b));
            if !id_ok {
                return Err(self.error(&key("url"), format!("{id:?} is not an endpoint id (A-Z a-z 0-9 . _ : @ -)")));
            }
            if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
                return Err(self.error(&key("url"), format!("{:?} must be an http:// or https:// URL", e.url)));
            }
            let Some(secret) = self.secret(e.secret) else {
                return Err(self.error(
                    &key("secret"),
                    format!(
                        "is required; set it in the environment: CREDITD_WEBHOOKS__ENDPOINTS__{}__SECRET",
                        id.to_uppercase()
                    ),
                ));
            };
            if let Err(why) = creditd_server::delivery::secret_key(secret.expose()) {
                return Err(self.error(&key("secret"), why));
            }
            let mut events = Vec::new();
            for name in e.events.unwrap_or_default() {
                let kind = EventKind::parse(&name)
                    .ok_or_else(|| self.error(&key("events"), format!("{name:?} is not an event type")))?;
                events.push(kind);
            }
            let section = EndpointSection { url: e.url, secret, events, enabled: e.enabled.unwrap_or(true) };
            endpoints.insert(id, section);
        }
        let positive = |key: &str, value: Option<u64>, default: u64| match value {
            None => Ok(default),
            Some(0) => Err(self.error(key, "must be at least 1")),
            Some(v) => Ok(v),
        };
        Ok(WebhooksSection {
            endpoints,
            poll_interval_ms: positive("webhooks.poll_interval_ms", raw.poll_interval_ms, 1000)?,
            timeout_seconds: positive("webhooks.timeout_seconds", raw.timeout_seconds, 10)?,
        })
    }
}
