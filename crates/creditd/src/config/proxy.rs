//! `[proxy]`: the metering proxy's upstreams, model aliases and limits
//! (`docs/proxy.md`). An upstream is served once its `api_key` is set.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Scalar, Secret, Validator};

/// OpenAI's API, when `[proxy.upstreams.openai]` names no `base_url`.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// Anthropic's API, when `[proxy.upstreams.anthropic]` names no `base_url`.
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";

#[derive(Clone, Debug, Default)]
pub struct ProxySection {
    pub openai: Option<UpstreamSection>,
    pub anthropic: Option<UpstreamSection>,
    /// Client model name → price-book model id.
    pub aliases: BTreeMap<String, String>,
    pub max_body_bytes: usize,
    pub first_byte_timeout_seconds: u64,
    pub idle_timeout_seconds: u64,
}

#[derive(Clone, Debug)]
pub struct UpstreamSection {
    pub base_url: String,
    pub api_key: Secret,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawProxy {
    upstreams: RawUpstreams,
    aliases: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_body_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_byte_timeout_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout_seconds: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawUpstreams {
    #[serde(skip_serializing_if = "Option::is_none")]
    openai: Option<RawUpstream>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anthropic: Option<RawUpstream>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    #[serde(skip_serializing_if = "Option::is_none")]
    base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<Scalar>,
}

impl Validator<'_> {
    pub(super) fn proxy(&self, raw: RawProxy) -> Result<ProxySection, ConfigError> {
        let upstream = |name: &str, raw: Option<RawUpstream>, default_url: &str| {
            let Some(raw) = raw else { return Ok(None) };
            let base_url = raw.base_url.unwrap_or_else(|| default_url.to_string());
            if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                return Err(self.error(
                    &format!("proxy.upstreams.{name}.base_url"),
                    format!("{base_url:?} must be an http:// or https:// URL"),
                ));
            }
            Ok(self.secret(raw.api_key).map(|api_key| UpstreamSection { base_url, api_key }))
        };
        let positive = |key: &str, value: Option<u64>, default: u64| match value {
            None => Ok(default),
            Some(0) => Err(self.error(key, "must be at least 1")),
            Some(v) => Ok(v),
        };
        let max_body_bytes = positive("proxy.max_body_bytes", raw.max_body_bytes, 16 << 20)?;
        for (alias, model) in &raw.aliases {
            if model.is_empty() || model.len() > 128 {
                return Err(self.error(&format!("proxy.aliases.{alias}"), "must name a model of the price book"));
            }
        }
        Ok(ProxySection {
            openai: upstream("openai", raw.upstreams.openai, OPENAI_BASE_URL)?,
            anthropic: upstream("anthropic", raw.upstreams.anthropic, ANTHROPIC_BASE_URL)?,
            aliases: raw.aliases,
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            first_byte_timeout_seconds: positive(
                "proxy.first_byte_timeout_seconds",
                raw.first_byte_timeout_seconds,
                600,
            )?,
            idle_timeout_seconds: positive("proxy.idle_timeout_seconds", raw.idle_timeout_seconds, 300)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn upstreams_are_served_once_their_key_is_set() {
        let builtin = Config::builtin();
        assert!(builtin.proxy.openai.is_none() && builtin.proxy.anthropic.is_none());
        let c = Config::from_toml(
            "[proxy.upstreams.openai]\napi_key = \"sk-x\"\n[proxy.upstreams.anthropic]\nbase_url = \"http://127.0.0.1:9\"\napi_key = \"k\"\n[proxy.aliases]\n\"gpt-4o-2024-08-06\" = \"gpt-4o\"\n",
        )
        .expect("valid");
        let openai = c.proxy.openai.expect("openai");
        assert_eq!(openai.base_url, super::OPENAI_BASE_URL);
        assert_eq!(openai.api_key.expose(), "sk-x");
        assert_eq!(c.proxy.anthropic.expect("anthropic").base_url, "http://127.0.0.1:9");
        assert_eq!(c.proxy.aliases["gpt-4o-2024-08-06"], "gpt-4o");
        assert_eq!(c.proxy.idle_timeout_seconds, 300);
        let bad = Config::from_toml("[proxy.upstreams.openai]\nbase_url = \"ftp://x\"\napi_key = \"k\"\n");
        assert!(bad.unwrap_err().0.contains("proxy.upstreams.openai.base_url"));
        assert!(Config::from_toml("[proxy]\nidle_timeout_seconds = 0\n").is_err());
        assert!(Config::from_toml("[proxy]\nnope = 1\n").is_err());
    }
}
