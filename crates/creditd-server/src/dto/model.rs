//! The price book: a model of `semantics.md` §2.

use creditd_core::pricing::{FlatRates, ModelPrice, Tier, TokenRates};
use creditd_core::units::{Credits, Usd};
use creditd_store::ModelVersion;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::Decimal;
use crate::error::{ApiError, ApiResult};
use crate::validate;

/// Tiers per model at most.
pub const MAX_TIERS: usize = 32;

/// Rates per million tokens for each token class; absent or `null`: not given.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRatesIn {
    pub input: Option<Decimal>,
    pub cache_read: Option<Decimal>,
    pub cache_write: Option<Decimal>,
    pub output: Option<Decimal>,
}

/// Flat rates per request, image and tool call; absent or `null`: not given.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlatRatesIn {
    pub request: Option<Decimal>,
    pub image: Option<Decimal>,
    pub tool_call: Option<Decimal>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierIn {
    pub above_input_tokens: u64,
    pub cost_usd_per_mtok: Option<TokenRatesIn>,
    pub credits_per_mtok: Option<TokenRatesIn>,
}

/// `PUT /v1/models/{model}`. The read-only fields of a `GET` (`id`,
/// `price_version`, `created_at`) are accepted and ignored, so that a model
/// read can be written back; any other unknown field is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelIn {
    #[serde(default, rename = "id")]
    pub _id: Option<Value>,
    #[serde(default, rename = "price_version")]
    pub _price_version: Option<Value>,
    #[serde(default, rename = "created_at")]
    pub _created_at: Option<Value>,
    pub cost_usd_per_mtok: Option<TokenRatesIn>,
    pub cost_usd: Option<FlatRatesIn>,
    pub credits_per_mtok: Option<TokenRatesIn>,
    pub credits: Option<FlatRatesIn>,
    pub multiplier: Option<Decimal>,
    pub free: Option<bool>,
    pub max_output_tokens: Option<u64>,
    pub tiers: Option<Vec<TierIn>>,
}

fn usd_rates(field: &str, rates: Option<TokenRatesIn>) -> ApiResult<TokenRates<Usd>> {
    let r = rates.unwrap_or_default();
    Ok(TokenRates {
        input: validate::opt_usd(&format!("{field}.input"), r.input.as_deref())?,
        cache_read: validate::opt_usd(&format!("{field}.cache_read"), r.cache_read.as_deref())?,
        cache_write: validate::opt_usd(&format!("{field}.cache_write"), r.cache_write.as_deref())?,
        output: validate::opt_usd(&format!("{field}.output"), r.output.as_deref())?,
    })
}

fn credit_rates(field: &str, rates: Option<TokenRatesIn>) -> ApiResult<TokenRates<Credits>> {
    let r = rates.unwrap_or_default();
    Ok(TokenRates {
        input: validate::opt_credits(&format!("{field}.input"), r.input.as_deref())?,
        cache_read: validate::opt_credits(&format!("{field}.cache_read"), r.cache_read.as_deref())?,
        cache_write: validate::opt_credits(&format!("{field}.cache_write"), r.cache_write.as_deref())?,
        output: validate::opt_credits(&format!("{field}.output"), r.output.as_deref())?,
    })
}

impl ModelIn {
    pub fn into_price(self) -> ApiResult<ModelPrice> {
        let defaults = ModelPrice::default();
        let cost = self.cost_usd.unwrap_or_default();
        let credits = self.credits.unwrap_or_default();
        let tiers_in = self.tiers.unwrap_or_default();
        if tiers_in.len() > MAX_TIERS {
            return Err(ApiError::invalid_field("tiers", format!("at most {MAX_TIERS} tiers")));
        }
        let mut tiers = Vec::with_capacity(tiers_in.len());
        for (i, t) in tiers_in.into_iter().enumerate() {
            let field = format!("tiers[{i}]");
            validate::count(&format!("{field}.above_input_tokens"), Some(t.above_input_tokens))?;
            tiers.push(Tier {
                above_input_tokens: t.above_input_tokens,
                cost_usd_per_mtok: usd_rates(&format!("{field}.cost_usd_per_mtok"), t.cost_usd_per_mtok)?,
                credits_per_mtok: credit_rates(&format!("{field}.credits_per_mtok"), t.credits_per_mtok)?,
            });
        }
        let mut seen = std::collections::HashSet::new();
        if !tiers.iter().all(|t| seen.insert(t.above_input_tokens)) {
            return Err(ApiError::invalid_field("tiers", "two tiers have the same above_input_tokens"));
        }
        let price = ModelPrice {
            cost_usd_per_mtok: usd_rates("cost_usd_per_mtok", self.cost_usd_per_mtok)?,
            cost_usd: FlatRates {
                request: validate::opt_usd("cost_usd.request", cost.request.as_deref())?,
                image: validate::opt_usd("cost_usd.image", cost.image.as_deref())?,
                tool_call: validate::opt_usd("cost_usd.tool_call", cost.tool_call.as_deref())?,
            },
            credits_per_mtok: credit_rates("credits_per_mtok", self.credits_per_mtok)?,
            credits: FlatRates {
                request: validate::opt_credits("credits.request", credits.request.as_deref())?,
                image: validate::opt_credits("credits.image", credits.image.as_deref())?,
                tool_call: validate::opt_credits("credits.tool_call", credits.tool_call.as_deref())?,
            },
            multiplier: match self.multiplier.as_deref() {
                Some(m) => validate::factor("multiplier", m)?,
                None => defaults.multiplier,
            },
            tiers,
            free: self.free.unwrap_or(defaults.free),
            max_output_tokens: validate::count("max_output_tokens", self.max_output_tokens)
                .map(|n| if self.max_output_tokens.is_some() { n } else { defaults.max_output_tokens })?,
        };
        let (c, f) = (&price.cost_usd_per_mtok, &price.cost_usd);
        let no_cost = [c.input, c.cache_read, c.cache_write, c.output, f.request, f.image, f.tool_call]
            .iter()
            .all(Option::is_none);
        let (c, f) = (&price.credits_per_mtok, &price.credits);
        let no_credits = [c.input, c.cache_read, c.cache_write, c.output, f.request, f.image, f.tool_call]
            .iter()
            .all(Option::is_none);
        if no_cost && no_credits {
            // Issue 18.6: every field null made a model that costs nothing.
            return Err(ApiError::invalid(
                "a model needs a price: give at least one rate in cost_usd_per_mtok, cost_usd, credits_per_mtok \
                 or credits (\"0\" for a model that is meant to cost nothing)",
            )
            .with_detail("field", "cost_usd_per_mtok"));
        }
        price.validate().map_err(|_| {
            ApiError::invalid(
                "a price is out of bounds: rates 0 to 1000000 USD (or 10^9 credits), multiplier 0 to 1000, max_output_tokens at most 10^9",
            )
        })?;
        Ok(price)
    }
}

#[derive(Debug, Serialize)]
pub struct TokenRatesOut {
    pub input: Option<String>,
    pub cache_read: Option<String>,
    pub cache_write: Option<String>,
    pub output: Option<String>,
}

impl<T: std::fmt::Display + Copy> From<&TokenRates<T>> for TokenRatesOut {
    fn from(r: &TokenRates<T>) -> Self {
        let s = |v: Option<T>| v.map(|v| v.to_string());
        TokenRatesOut {
            input: s(r.input),
            cache_read: s(r.cache_read),
            cache_write: s(r.cache_write),
            output: s(r.output),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct FlatRatesOut {
    pub request: Option<String>,
    pub image: Option<String>,
    pub tool_call: Option<String>,
}

impl<T: std::fmt::Display + Copy> From<&FlatRates<T>> for FlatRatesOut {
    fn from(r: &FlatRates<T>) -> Self {
        let s = |v: Option<T>| v.map(|v| v.to_string());
        FlatRatesOut { request: s(r.request), image: s(r.image), tool_call: s(r.tool_call) }
    }
}

fn any_token<T>(r: &TokenRates<T>) -> bool {
    r.input.is_some() || r.cache_read.is_some() || r.cache_write.is_some() || r.output.is_some()
}

fn any_flat<T>(r: &FlatRates<T>) -> bool {
    r.request.is_some() || r.image.is_some() || r.tool_call.is_some()
}

#[derive(Debug, Serialize)]
pub struct TierOut {
    pub above_input_tokens: u64,
    pub cost_usd_per_mtok: TokenRatesOut,
    pub credits_per_mtok: Option<TokenRatesOut>,
}

/// A model as the API shows it: the body of `PUT` plus `id`, `price_version`
/// and `created_at` (when this price version was made).
#[derive(Debug, Serialize)]
pub struct ModelOut {
    pub id: String,
    pub price_version: i64,
    pub cost_usd_per_mtok: TokenRatesOut,
    pub cost_usd: FlatRatesOut,
    pub credits_per_mtok: Option<TokenRatesOut>,
    pub credits: Option<FlatRatesOut>,
    pub multiplier: String,
    pub free: bool,
    pub max_output_tokens: u64,
    pub tiers: Vec<TierOut>,
    pub created_at: String,
}

impl From<&ModelVersion> for ModelOut {
    fn from(m: &ModelVersion) -> Self {
        let p = &m.price;
        ModelOut {
            id: m.id.clone(),
            price_version: m.price_version,
            cost_usd_per_mtok: (&p.cost_usd_per_mtok).into(),
            cost_usd: (&p.cost_usd).into(),
            credits_per_mtok: any_token(&p.credits_per_mtok).then(|| (&p.credits_per_mtok).into()),
            credits: any_flat(&p.credits).then(|| (&p.credits).into()),
            multiplier: p.multiplier.to_string(),
            free: p.free,
            max_output_tokens: p.max_output_tokens,
            tiers: p
                .tiers
                .iter()
                .map(|t| TierOut {
                    above_input_tokens: t.above_input_tokens,
                    cost_usd_per_mtok: (&t.cost_usd_per_mtok).into(),
                    credits_per_mtok: any_token(&t.credits_per_mtok).then(|| (&t.credits_per_mtok).into()),
                })
                .collect(),
            created_at: m.created_at.to_string(),
        }
    }
}
