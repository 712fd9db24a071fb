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
    /// How many days (of 24 hours) before a grant's expiry `grant.expiring`
    /// is told; 0: never.
    pub grant_expiring_days: u64,
}

/// The largest `webhooks.grant_expiring_days`.
pub const MAX_GRANT_EXPIRING_DAYS: u64 = 366;

impl WebhooksSection {
    /// `grant_expiring_days` as the engine takes it.
    pub fn grant_expiring(&self) -> Option<jiff::SignedDuration> {
        let hours = i64::try_from(self.grant_expiring_days.min(MAX_GRANT_EXPIRING_DAYS)).ok()? * 24;
        (hours > 0).then(|| jiff::SignedDuration::from_hours(hours))
    }
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
    #[serde(skip_serializing_if = "Option::is_none")]
    grant_expiring_days: Option<u64>,
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
        let grant_expiring_days = match raw.grant_expiring_days {
            None => 3,
            Some(days) if days > MAX_GRANT_EXPIRING_DAYS => {
                return Err(self.error(
                    "webhooks.grant_expiring_days",
                    format!("must be at most {MAX_GRANT_EXPIRING_DAYS} (0: never tell grant.expiring)"),
                ));
            }
            Some(days) => days,
        };
        Ok(WebhooksSection {
            low_credits,
            grant_expiring_days,
            endpoints,
            poll_interval_ms: positive("webhooks.poll_interval_ms", raw.poll_interval_ms, 1000)?,
            timeout_seconds: positive("webhooks.timeout_seconds", raw.timeout_seconds, 10)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use creditd_core::events::Threshold;
    use creditd_core::units::{Credits, Factor};

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

    fn thresholds(list: &[Threshold]) -> Vec<String> {
        list.iter().map(Threshold::to_string).collect()
    }

    #[test]
    fn low_credit_thresholds_are_read_and_checked() {
        // The built-in default, and no plan or account lists.
        let builtin = Config::builtin().webhooks.low_credits;
        assert_eq!(thresholds(&builtin.default), ["20%", "5%"]);
        assert!(builtin.plans.is_empty() && builtin.accounts.is_empty());
        assert_eq!(thresholds(builtin.for_account("u_1", "pro")), ["20%", "5%"]);

        // Every valid form: shares above 0 and at most 100 (decimals too),
        // amounts of credits (decimals too); per plan and per account lists
        // replace the default, an empty list tells nothing but depleted.
        let config = Config::from_toml(
            "[webhooks.low_credits]\ndefault = [\"10%\", \"0.5%\", \"100%\"]\n\
             [webhooks.low_credits.plans]\nfree = [\"10\"]\npro = [\"25%\", \"1000\", \"0.25\"]\nquiet = []\n\
             [webhooks.low_credits.accounts]\nu_42 = [\"1000\", \"100\"]\n",
        )
        .expect("valid");
        let low = &config.webhooks.low_credits;
        assert_eq!(thresholds(&low.default), ["10%", "0.5%", "100%"]);
        assert_eq!(low.default[0], Threshold::Percent(Factor::whole(10)));
        assert_eq!(low.plans["pro"][1], Threshold::Amount(Credits::whole(1000)));
        assert_eq!(thresholds(&low.plans["pro"]), ["25%", "1000", "0.25"]);
        assert_eq!(thresholds(low.for_account("u_42", "pro")), ["1000", "100"], "the account's list first");
        assert_eq!(thresholds(low.for_account("u_7", "pro")), ["25%", "1000", "0.25"], "then its plan's");
        assert_eq!(thresholds(low.for_account("u_7", "free")), ["10"]);
        assert!(low.for_account("u_7", "quiet").is_empty());
        assert_eq!(thresholds(low.for_account("u_7", "max")), ["10%", "0.5%", "100%"], "then the default");
        // Engine-side, the same lists.
        assert_eq!(&config.core_billing().low_credits, low);
        // Only accounts named: the default stays the built-in one.
        let only = Config::from_toml("[webhooks.low_credits.accounts]\nu_1 = [\"5\"]\n").expect("valid");
        assert_eq!(thresholds(&only.webhooks.low_credits.default), ["20%", "5%"]);

        // Invalid thresholds: refused at load, naming the key, the value and
        // what a threshold is.
        let error = |toml: &str| Config::from_toml(toml).expect_err(toml).0;
        for (toml, key, bad) in [
            ("default = [\"0%\"]", "webhooks.low_credits.default", "\"0%\""),
            ("default = [\"101%\"]", "webhooks.low_credits.default", "\"101%\""),
            ("default = [\"20 %\"]", "webhooks.low_credits.default", "\"20 %\""),
            ("default = [\"020%\"]", "webhooks.low_credits.default", "\"020%\""),
            ("default = [\"%\"]", "webhooks.low_credits.default", "\"%\""),
            ("default = [\"0\"]", "webhooks.low_credits.default", "\"0\""),
            ("default = [\"-5\"]", "webhooks.low_credits.default", "\"-5\""),
            ("default = [\"1e3\"]", "webhooks.low_credits.default", "\"1e3\""),
            ("default = [\"\"]", "webhooks.low_credits.default", "\"\""),
            ("default = [\"20%\", \"lots\"]", "webhooks.low_credits.default", "\"lots\""),
            ("plans.pro = [\"5 credits\"]", "webhooks.low_credits.plans.pro", "\"5 credits\""),
            ("accounts.u_42 = [\"1.0000001\"]", "webhooks.low_credits.accounts.u_42", "\"1.0000001\""),
        ] {
            let message = error(&format!("[webhooks.low_credits]\n{toml}\n"));
            assert!(message.contains(key), "{toml}: {message}");
            assert!(message.contains(&format!("{bad} is not a threshold")), "{toml}: {message}");
            assert!(message.contains("\"20%\"") && message.contains("\"500\""), "{toml}: says what is: {message}");
        }
        // Not a list of strings, or an unknown key.
        let number = error("[webhooks.low_credits]\ndefault = [500]\n");
        assert!(number.contains("webhooks.low_credits.default") && number.contains("expected a string"), "{number}");
        let not_a_list = error("[webhooks.low_credits]\ndefault = \"20%\"\n");
        assert!(
            not_a_list.contains("webhooks.low_credits.default") && not_a_list.contains("expected a sequence"),
            "{not_a_list}"
        );
        let unknown = error("[webhooks.low_credits]\ndefaults = [\"20%\"]\n");
        assert!(unknown.contains("defaults"), "{unknown}");
    }

    #[test]
    fn grant_expiring_days_are_read_and_checked() {
        let builtin = Config::builtin();
        assert_eq!(builtin.webhooks.grant_expiring_days, 3);
        assert_eq!(builtin.core_billing().grant_expiring, Some(jiff::SignedDuration::from_hours(72)));
        let week = Config::from_toml("[webhooks]\ngrant_expiring_days = 7\n").expect("valid");
        assert_eq!(week.core_billing().grant_expiring, Some(jiff::SignedDuration::from_hours(7 * 24)));
        let off = Config::from_toml("[webhooks]\ngrant_expiring_days = 0\n").expect("valid");
        assert_eq!(off.core_billing().grant_expiring, None);
        let long = Config::from_toml("[webhooks]\ngrant_expiring_days = 367\n").expect_err("too long").0;
        assert!(long.contains("webhooks.grant_expiring_days") && long.contains("at most 366"), "{long}");
        let negative = Config::from_toml("[webhooks]\ngrant_expiring_days = -1\n").expect_err("negative").0;
        assert!(negative.contains("grant_expiring_days"), "{negative}");
    }
}
