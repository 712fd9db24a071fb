//! Metering: estimate, authorize, settle, release, one-shot usage, and the
//! usage record.

use creditd_core::account::{Hold, Portion, RequestDetails, Source, UsageRecord};
use creditd_core::engine::Outcome;
use creditd_core::pricing::{EstimateInput, RequestStatus, Usage};
use creditd_store::AuthorizeRequest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::validate;

/// Token and count fields of an estimate or authorize; absent = 0.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstimateFields {
    pub input_tokens: Option<u64>,
    pub cache_read_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub images: Option<u64>,
    pub tool_calls: Option<u64>,
}

impl EstimateFields {
    pub fn validate(&self) -> ApiResult<EstimateInput> {
        Ok(EstimateInput {
            input_tokens: validate::count("input_tokens", self.input_tokens)?,
            cache_read_tokens: validate::count("cache_read_tokens", self.cache_read_tokens)?,
            cache_write_tokens: validate::count("cache_write_tokens", self.cache_write_tokens)?,
            max_output_tokens: validate::opt_count("max_output_tokens", self.max_output_tokens)?,
            images: validate::count("images", self.images)?,
            tool_calls: validate::count("tool_calls", self.tool_calls)?,
        })
    }
}

/// `POST /v1/estimate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstimateIn {
    pub model: String,
    pub account_id: Option<String>,
    pub request_type: Option<String>,
    pub input_tokens: Option<u64>,
    pub cache_read_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub images: Option<u64>,
    pub tool_calls: Option<u64>,
}

impl EstimateIn {
    pub fn fields(&self) -> EstimateFields {
        EstimateFields {
            input_tokens: self.input_tokens,
            cache_read_tokens: self.cache_read_tokens,
            cache_write_tokens: self.cache_write_tokens,
            max_output_tokens: self.max_output_tokens,
            images: self.images,
            tool_calls: self.tool_calls,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct EstimateOut {
    pub model: String,
    pub price_version: i64,
    pub estimate: String,
    pub cost_usd: String,
    #[serde(flatten)]
    pub account: Option<EstimateAccountOut>,
}

/// What an estimate adds when an account is given.
#[derive(Debug, Serialize)]
pub struct EstimateAccountOut {
    pub account_id: String,
    pub available: String,
    pub allowed: bool,
    pub reason: Option<&'static str>,
}

/// `POST /v1/authorize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeIn {
    pub account_id: String,
    pub request_id: String,
    pub model: String,
    pub request_type: Option<String>,
    pub input_tokens: Option<u64>,
    pub cache_read_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub images: Option<u64>,
    pub tool_calls: Option<u64>,
    pub hold_ttl_seconds: Option<u64>,
    pub project: Option<String>,
    pub conversation: Option<String>,
}

impl AuthorizeIn {
    /// The account and the store's request; `fingerprint` is the body's.
    pub fn validate(self, fingerprint: String) -> ApiResult<(String, AuthorizeRequest)> {
        validate::account_id("account_id", &self.account_id)?;
        validate::request_id("request_id", &self.request_id)?;
        validate::model_id("model", &self.model)?;
        let request_type = validate::request_type("request_type", self.request_type)?;
        let estimate = EstimateFields {
            input_tokens: self.input_tokens,
            cache_read_tokens: self.cache_read_tokens,
            cache_write_tokens: self.cache_write_tokens,
            max_output_tokens: self.max_output_tokens,
            images: self.images,
            tool_calls: self.tool_calls,
        }
        .validate()?;
        let max_ttl = u64::from(creditd_core::engine::MAX_HOLD_TTL_SECONDS);
        let hold_ttl_seconds = match self.hold_ttl_seconds {
            None => None,
            Some(n) if (1..=max_ttl).contains(&n) => Some(n as u32),
            Some(_) => return Err(ApiError::invalid_field("hold_ttl_seconds", format!("must be from 1 to {max_ttl}"))),
        };
        let request = AuthorizeRequest {
            request_id: self.request_id,
            fingerprint,
            model: self.model,
            request_type,
            estimate,
            hold_ttl_seconds,
            project: validate::text("project", self.project, validate::MAX_TEXT_CHARS)?,
            conversation: validate::text("conversation", self.conversation, validate::MAX_TEXT_CHARS)?,
        };
        Ok((self.account_id, request))
    }
}

/// Where credits were held or charged from.
#[derive(Debug, Serialize)]
pub struct PortionOut {
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub amount: String,
}

impl From<&Portion> for PortionOut {
    fn from(p: &Portion) -> Self {
        match &p.source {
            Source::Grant { grant_id, kind } => PortionOut {
                source: "grant",
                grant_id: Some(grant_id.clone()),
                kind: Some(kind.as_str()),
                amount: p.amount.to_string(),
            },
            Source::Wallet => PortionOut { source: "wallet", grant_id: None, kind: None, amount: p.amount.to_string() },
        }
    }
}

/// The answer of an authorize.
#[derive(Debug, Serialize)]
pub struct AuthorizeOut {
    pub hold_id: String,
    pub request_id: String,
    pub account_id: String,
    pub model: String,
    pub price_version: i64,
    pub estimate: String,
    pub estimate_cost_usd: String,
    pub held_from: Vec<PortionOut>,
    pub expires_at: String,
    pub available: String,
}

impl From<&Hold> for AuthorizeOut {
    fn from(h: &Hold) -> Self {
        AuthorizeOut {
            hold_id: h.id.clone(),
            request_id: h.request_id.clone(),
            account_id: h.account_id.clone(),
            model: h.model.clone(),
            price_version: h.price_version,
            estimate: h.estimate.to_string(),
            estimate_cost_usd: h.estimate_cost_usd.to_string(),
            held_from: h.held_from.iter().map(PortionOut::from).collect(),
            expires_at: h.expires_at.to_string(),
            available: h.available_after.to_string(),
        }
    }
}

/// `usage`: all integers, absent = 0.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageIn {
    pub input_tokens: Option<u64>,
    pub cache_read_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    pub system_tokens: Option<u64>,
    pub context_tokens: Option<u64>,
    pub images: Option<u64>,
    pub tool_calls: Option<u64>,
}

impl UsageIn {
    pub fn validate(&self) -> ApiResult<Usage> {
        let usage = Usage {
            input_tokens: validate::count("usage.input_tokens", self.input_tokens)?,
            cache_read_tokens: validate::count("usage.cache_read_tokens", self.cache_read_tokens)?,
            cache_write_tokens: validate::count("usage.cache_write_tokens", self.cache_write_tokens)?,
            output_tokens: validate::count("usage.output_tokens", self.output_tokens)?,
            images: validate::count("usage.images", self.images)?,
            tool_calls: validate::count("usage.tool_calls", self.tool_calls)?,
            reasoning_tokens: validate::count("usage.reasoning_tokens", self.reasoning_tokens)?,
            system_tokens: validate::count("usage.system_tokens", self.system_tokens)?,
            context_tokens: validate::count("usage.context_tokens", self.context_tokens)?,
        };
        if usage.reasoning_tokens > usage.output_tokens {
            return Err(ApiError::invalid_field("usage.reasoning_tokens", "must not exceed usage.output_tokens"));
        }
        Ok(usage)
    }
}

#[derive(Debug, Serialize)]
pub struct UsageOut {
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub system_tokens: u64,
    pub context_tokens: u64,
    pub images: u64,
    pub tool_calls: u64,
}

impl From<&Usage> for UsageOut {
    fn from(u: &Usage) -> Self {
        UsageOut {
            input_tokens: u.input_tokens,
            cache_read_tokens: u.cache_read_tokens,
            cache_write_tokens: u.cache_write_tokens,
            output_tokens: u.output_tokens,
            reasoning_tokens: u.reasoning_tokens,
            system_tokens: u.system_tokens,
            context_tokens: u.context_tokens,
            images: u.images,
            tool_calls: u.tool_calls,
        }
    }
}

/// The fields of a finished request shared by settle and one-shot usage.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeFields {
    pub status: Option<String>,
    pub usage: Option<UsageIn>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub latency_ms: Option<u64>,
    pub project: Option<String>,
    pub conversation: Option<String>,
    pub region: Option<String>,
    pub retries: Option<u64>,
    pub iterations: Option<u64>,
    pub external_calls: Option<u64>,
    pub context_bytes: Option<u64>,
    pub tools: Option<Vec<String>>,
    pub metadata: Option<Value>,
}

/// Informational counters at most this (they are stored as signed integers).
const MAX_INFO_COUNT: u64 = i64::MAX as u64;

fn info_count(field: &str, value: Option<u64>) -> ApiResult<Option<u64>> {
    match value {
        Some(n) if n > MAX_INFO_COUNT => Err(ApiError::invalid_field(field, "is too large")),
        other => Ok(other),
    }
}

impl OutcomeFields {
    pub fn validate(self, request_id: String, fingerprint: String) -> ApiResult<Outcome> {
        let status = match self.status.as_deref() {
            None => RequestStatus::Success,
            Some(s) => RequestStatus::parse(s)
                .ok_or_else(|| ApiError::invalid_field("status", "must be \"success\", \"error\" or \"cancelled\""))?,
        };
        let usage = self.usage.unwrap_or_default().validate()?;
        let started_at = validate::opt_timestamp("started_at", self.started_at.as_deref())?;
        let finished_at = validate::opt_timestamp("finished_at", self.finished_at.as_deref())?;
        if let (Some(s), Some(f)) = (started_at, finished_at)
            && f < s
        {
            return Err(ApiError::invalid_field("finished_at", "must not be before started_at"));
        }
        let tools = self.tools.unwrap_or_default();
        if tools.len() > validate::MAX_TOOLS {
            return Err(ApiError::invalid_field("tools", format!("at most {} names", validate::MAX_TOOLS)));
        }
        for tool in &tools {
            validate::required_text("tools[]", Some(tool.clone()), validate::MAX_ID_CHARS)?;
        }
        let details = RequestDetails {
            project: validate::text("project", self.project, validate::MAX_TEXT_CHARS)?,
            conversation: validate::text("conversation", self.conversation, validate::MAX_TEXT_CHARS)?,
            region: validate::text("region", self.region, validate::MAX_ID_CHARS)?,
            started_at,
            finished_at,
            latency_ms: info_count("latency_ms", self.latency_ms)?,
            retries: info_count("retries", self.retries)?,
            iterations: info_count("iterations", self.iterations)?,
            external_calls: info_count("external_calls", self.external_calls)?,
            context_bytes: info_count("context_bytes", self.context_bytes)?,
            tools,
            metadata: validate::metadata("metadata", self.metadata)?,
        };
        Ok(Outcome { request_id, fingerprint, status, usage, details })
    }
}

/// `POST /v1/settle`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettleIn {
    pub account_id: String,
    pub request_id: String,
    pub status: Option<String>,
    pub usage: Option<UsageIn>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub latency_ms: Option<u64>,
    pub project: Option<String>,
    pub conversation: Option<String>,
    pub region: Option<String>,
    pub retries: Option<u64>,
    pub iterations: Option<u64>,
    pub external_calls: Option<u64>,
    pub context_bytes: Option<u64>,
    pub tools: Option<Vec<String>>,
    pub metadata: Option<Value>,
}

impl SettleIn {
    pub fn validate(self, fingerprint: String) -> ApiResult<(String, Outcome)> {
        let self_ = self;
        validate::account_id("account_id", &self_.account_id)?;
        validate::request_id("request_id", &self_.request_id)?;
        let account_id = self_.account_id;
        let request_id = self_.request_id;
        let fields = OutcomeFields {
            status: self_.status,
            usage: self_.usage,
            started_at: self_.started_at,
            finished_at: self_.finished_at,
            latency_ms: self_.latency_ms,
            project: self_.project,
            conversation: self_.conversation,
            region: self_.region,
            retries: self_.retries,
            iterations: self_.iterations,
            external_calls: self_.external_calls,
            context_bytes: self_.context_bytes,
            tools: self_.tools,
            metadata: self_.metadata,
        };
        let outcome = fields.validate(request_id, fingerprint)?;
        Ok((account_id, outcome))
    }
}

/// `POST /v1/usage`: a settle body plus the model, the request type and `enforce`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordUsageIn {
    pub account_id: String,
    pub request_id: String,
    pub model: String,
    pub request_type: Option<String>,
    pub enforce: Option<bool>,
    pub status: Option<String>,
    pub usage: Option<UsageIn>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub latency_ms: Option<u64>,
    pub project: Option<String>,
    pub conversation: Option<String>,
    pub region: Option<String>,
    pub retries: Option<u64>,
    pub iterations: Option<u64>,
    pub external_calls: Option<u64>,
    pub context_bytes: Option<u64>,
    pub tools: Option<Vec<String>>,
    pub metadata: Option<Value>,
}

pub struct RecordUsage {
    pub account_id: String,
    pub model: String,
    pub request_type: String,
    pub enforce: bool,
    pub outcome: Outcome,
}

impl RecordUsageIn {
    pub fn validate(self, fingerprint: String) -> ApiResult<RecordUsage> {
        validate::account_id("account_id", &self.account_id)?;
        validate::request_id("request_id", &self.request_id)?;
        validate::model_id("model", &self.model)?;
        let request_type = validate::request_type("request_type", self.request_type)?;
        let (account_id, model, enforce, request_id) = (self.account_id, self.model, self.enforce, self.request_id);
        let self_ = OutcomeFields {
            status: self.status,
            usage: self.usage,
            started_at: self.started_at,
            finished_at: self.finished_at,
            latency_ms: self.latency_ms,
            project: self.project,
            conversation: self.conversation,
            region: self.region,
            retries: self.retries,
            iterations: self.iterations,
            external_calls: self.external_calls,
            context_bytes: self.context_bytes,
            tools: self.tools,
            metadata: self.metadata,
        };
        let outcome = self_.validate(request_id, fingerprint)?;
        Ok(RecordUsage { account_id, model, request_type, enforce: enforce.unwrap_or(true), outcome })
    }
}

/// `POST /v1/release`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseIn {
    pub account_id: String,
    pub request_id: String,
}

impl ReleaseIn {
    pub fn validate(self) -> ApiResult<(String, String)> {
        validate::account_id("account_id", &self.account_id)?;
        validate::request_id("request_id", &self.request_id)?;
        Ok((self.account_id, self.request_id))
    }
}

#[derive(Debug, Serialize)]
pub struct ReleaseOut {
    pub hold_id: String,
    pub request_id: String,
    pub status: &'static str,
}

impl From<&Hold> for ReleaseOut {
    fn from(h: &Hold) -> Self {
        ReleaseOut { hold_id: h.id.clone(), request_id: h.request_id.clone(), status: h.status.as_str() }
    }
}

/// A usage record (`api.md`), plus `refunded` and `hold_id`.
#[derive(Debug, Serialize)]
pub struct UsageRecordOut {
    pub request_id: String,
    pub account_id: String,
    pub project: Option<String>,
    pub conversation: Option<String>,
    pub request_type: String,
    pub model: String,
    pub price_version: i64,
    pub status: &'static str,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub latency_ms: Option<u64>,
    pub usage: UsageOut,
    pub tools: Vec<String>,
    pub region: Option<String>,
    pub retries: Option<u64>,
    pub iterations: Option<u64>,
    pub external_calls: Option<u64>,
    pub context_bytes: Option<u64>,
    pub cost_usd: String,
    pub credits: String,
    pub charged_from: Vec<PortionOut>,
    pub debt_incurred: String,
    pub hold_expired: bool,
    pub metadata: Value,
    pub recorded_at: String,
    pub refunded: bool,
    pub hold_id: Option<String>,
}

impl From<&UsageRecord> for UsageRecordOut {
    fn from(r: &UsageRecord) -> Self {
        let d = &r.details;
        UsageRecordOut {
            request_id: r.request_id.clone(),
            account_id: r.account_id.clone(),
            project: d.project.clone(),
            conversation: d.conversation.clone(),
            request_type: r.request_type.clone(),
            model: r.model.clone(),
            price_version: r.price_version,
            status: r.status.as_str(),
            started_at: d.started_at.map(|t| t.to_string()),
            finished_at: d.finished_at.map(|t| t.to_string()),
            latency_ms: d.latency_ms,
            usage: (&r.usage).into(),
            tools: d.tools.clone(),
            region: d.region.clone(),
            retries: d.retries,
            iterations: d.iterations,
            external_calls: d.external_calls,
            context_bytes: d.context_bytes,
            cost_usd: r.cost_usd.to_string(),
            credits: r.credits.to_string(),
            charged_from: r.charged_from.iter().map(PortionOut::from).collect(),
            debt_incurred: r.debt_incurred.to_string(),
            hold_expired: r.hold_expired,
            metadata: validate::metadata_value(d.metadata.as_deref()),
            recorded_at: r.recorded_at.to_string(),
            refunded: r.refunded,
            hold_id: r.hold_id.clone(),
        }
    }
}
