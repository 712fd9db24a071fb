//! `[webhooks]`: outgoing webhooks (`docs/webhooks.md`). Endpoints of the
//! configuration sit beside those made over the API; their secrets come from
//! the configuration's layers (in practice the environment,
//! `CREDITD_WEBHOOKS__ENDPOINTS__<ID>__SECRET`) and are never stored.

use std::collections::BTreeMap;

use creditd_core::events::{EventKind, LowCredits, Threshold};
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
    /// When `credits.low` is told.
    pub low_credits: LowCredits,
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
    low_credits: RawLowCredits,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawLowCredits {
    default: Vec<String>,
    plans: BTreeMap<String, Vec<String>>,
    accounts: BTreeMap<String, Vec<String>>,
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
        let thresholds = |key: &str, texts: Vec<String>| -> Result<Vec<Threshold>, ConfigError> {
            texts
                .iter()
                .map(|t| {
                    Threshold::parse(t).ok_or_else(|| {
                        self.error(key, format!("{t:?} is not a threshold: a share such as \"20%\" (above 0, at most 100) or credits such as \"500\""))
                    })
                })
                .collect()
        };
        let raw_low = raw.low_credits;
        let mut low_credits = LowCredits {
            default: thresholds("webhooks.low_credits.default", raw_low.default)?,
            ..LowCredits::default()
        };
        for (plan, texts) in raw_low.plans {
            let list = thresholds(&format!("webhooks.low_credits.plans.{plan}"), texts)?;
            low_credits.plans.insert(plan, list);
        }
        for (account, texts) in raw_low.accounts {
            let list = thresholds(&format!("webhooks.low_credits.accounts.{account}"), texts)?;
            low_credits.accounts.insert(account, list);
        }
        Ok(WebhooksSection {
            low_credits,
            endpoints,
            poll_interval_ms: positive("webhooks.poll_interval_ms", raw.poll_interval_ms, 1000)?,
            timeout_seconds: positive("webhooks.timeout_seconds", raw.timeout_seconds, 10)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn endpoints_are_read_and_checked() {
        let config = Config::from_toml(&format!(
            "[webhooks.endpoints.ops]\nurl = \"https://ops.example.com/hook\"\nsecret = \"{SECRET}\"\n\
             events = [\"payment.applied\", \"credits.low\"]\n"
        ))
        .expect("valid");
        let ops = &config.webhooks.endpoints["ops"];
        assert_eq!(ops.url, "https://ops.example.com/hook");
        assert_eq!(ops.secret.expose(), SECRET);
        assert_eq!(ops.events.len(), 2);
        assert!(ops.enabled);
        assert!(!format!("{config:?}").contains(SECRET), "a secret in Debug");
        assert_eq!((config.webhooks.poll_interval_ms, config.webhooks.timeout_seconds), (1000, 10));
        assert!(Config::builtin().webhooks.endpoints.is_empty());

        let error = |toml: &str| Config::from_toml(toml).expect_err(toml).0;
        let missing = error("[webhooks.endpoints.ops]\nurl = \"https://x.example\"\n");
        assert!(missing.contains("CREDITD_WEBHOOKS__ENDPOINTS__OPS__SECRET"), "{missing}");
        let bad_secret = error("[webhooks.endpoints.ops]\nurl = \"https://x.example\"\nsecret = \"hunter2\"\n");
        assert!(bad_secret.contains("webhooks.endpoints.ops.secret"), "{bad_secret}");
        let bad_url = error(&format!("[webhooks.endpoints.ops]\nurl = \"ftp://x\"\nsecret = \"{SECRET}\"\n"));
        assert!(bad_url.contains("webhooks.endpoints.ops.url"), "{bad_url}");
        let bad_event = error(&format!(
            "[webhooks.endpoints.ops]\nurl = \"https://x.example\"\nsecret = \"{SECRET}\"\nevents = [\"nope\"]\n"
        ));
        assert!(bad_event.contains("\"nope\" is not an event type"), "{bad_event}");
        let zero = error("[webhooks]\ntimeout_seconds = 0\n");
        assert!(zero.contains("webhooks.timeout_seconds"), "{zero}");
    }
}
