//! Pricing one request from the price book (`semantics.md` §2).
//!
//! All arithmetic is exact in `i128`; each result is rounded once, half up.

use crate::units::{Credits, Factor, MAX_PRICE, MAX_TOKENS, Usd, div_round_half_up};

/// A rate for each token class, per million tokens. `None` means "not given".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenRates<T> {
    pub input: Option<T>,
    pub cache_read: Option<T>,
    pub cache_write: Option<T>,
    pub output: Option<T>,
}

/// Flat rates: per request, per image, per tool call. `None` means "not given".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlatRates<T> {
    pub request: Option<T>,
    pub image: Option<T>,
    pub tool_call: Option<T>,
}

/// Rates that apply when a request's input is larger than `above_input_tokens`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tier {
    pub above_input_tokens: u64,
    pub cost_usd_per_mtok: TokenRates<Usd>,
    pub credits_per_mtok: TokenRates<Credits>,
}

/// One model of the price book, as it was at one price version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPrice {
    pub cost_usd_per_mtok: TokenRates<Usd>,
    pub cost_usd: FlatRates<Usd>,
    pub credits_per_mtok: TokenRates<Credits>,
    pub credits: FlatRates<Credits>,
    pub multiplier: Factor,
    pub tiers: Vec<Tier>,
    pub free: bool,
    pub max_output_tokens: u64,
}

impl Default for ModelPrice {
    fn default() -> Self {
        ModelPrice {
            cost_usd_per_mtok: TokenRates::default(),
            cost_usd: FlatRates::default(),
            credits_per_mtok: TokenRates::default(),
            credits: FlatRates::default(),
            multiplier: Factor::whole(1),
            tiers: Vec::new(),
            free: false,
            max_output_tokens: 4096,
        }
    }
}

/// Largest multiplier accepted: 1,000×.
pub const MAX_MULTIPLIER: Factor = Factor::whole(1_000);

impl ModelPrice {
    /// Checks the bounds of `semantics.md` §1. A model that passes can price
    /// any in-bounds usage without overflow.
    pub fn validate(&self) -> Result<(), PricingError> {
        let check_usd = |v: Option<Usd>| v.is_none_or(|v| !v.is_negative() && v <= MAX_PRICE);
        let max_credit_rate = Credits::from_units(MAX_PRICE.units()); // 10^9 credits; generous
        let check_credits = |v: Option<Credits>| v.is_none_or(|v| !v.is_negative() && v <= max_credit_rate);
        let token_usd =
            |r: &TokenRates<Usd>| [r.input, r.cache_read, r.cache_write, r.output].into_iter().all(check_usd);
        let token_credits =
            |r: &TokenRates<Credits>| [r.input, r.cache_read, r.cache_write, r.output].into_iter().all(check_credits);
        let ok = token_usd(&self.cost_usd_per_mtok)
            && [self.cost_usd.request, self.cost_usd.image, self.cost_usd.tool_call].into_iter().all(check_usd)
            && token_credits(&self.credits_per_mtok)
            && [self.credits.request, self.credits.image, self.credits.tool_call].into_iter().all(check_credits)
            && self.tiers.iter().all(|t| token_usd(&t.cost_usd_per_mtok) && token_credits(&t.credits_per_mtok))
            && !self.multiplier.is_negative()
            && self.multiplier <= MAX_MULTIPLIER
            && self.max_output_tokens <= MAX_TOKENS;
        if ok { Ok(()) } else { Err(PricingError::OutOfBounds) }
    }
}

/// What one request consumed. Only the first six fields are priced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    pub images: u64,
    pub tool_calls: u64,
    /// Informational: part of `output_tokens`.
    pub reasoning_tokens: u64,
    /// Informational: already inside the input classes.
    pub system_tokens: u64,
    /// Informational: already inside the input classes.
    pub context_tokens: u64,
}

impl Usage {
    pub fn validate(&self) -> Result<(), PricingError> {
        let counts = [
            self.input_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.output_tokens,
            self.images,
            self.tool_calls,
            self.reasoning_tokens,
            self.system_tokens,
            self.context_tokens,
        ];
        if counts.iter().any(|&n| n > MAX_TOKENS) {
            return Err(PricingError::OutOfBounds);
        }
        if self.reasoning_tokens > self.output_tokens {
            return Err(PricingError::ReasoningExceedsOutput);
        }
        Ok(())
    }

    /// All input classes together: what tiers are chosen by.
    pub fn prompt_tokens(&self) -> u64 {
        self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
    }
}

/// How a finished request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestStatus {
    Success,
    Error,
    Cancelled,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Success => "success",
            RequestStatus::Error => "error",
            RequestStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "success" => Some(RequestStatus::Success),
            "error" => Some(RequestStatus::Error),
            "cancelled" => Some(RequestStatus::Cancelled),
            _ => None,
        }
    }
}

/// The `[billing]` settings that change what a request is charged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PricingPolicy {
    pub credits_per_usd: Factor,
    pub free_request_types: Vec<String>,
    pub charge_errors: bool,
    pub min_charge: Credits,
}

impl Default for PricingPolicy {
    fn default() -> Self {
        PricingPolicy {
            credits_per_usd: Factor::whole(100),
            free_request_types: vec!["summarization".to_string()],
            charge_errors: false,
            min_charge: Credits::ZERO,
        }
    }
}

/// The price of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    /// What the operator pays the provider; always recorded.
    pub cost_usd: Usd,
    /// What the account is charged.
    pub credits: Credits,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PricingError {
    /// A count or rate outside the bounds of `semantics.md` §1, or a result
    /// too large to represent.
    OutOfBounds,
    ReasoningExceedsOutput,
}

impl std::fmt::Display for PricingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PricingError::OutOfBounds => f.write_str("a token count, rate or price is out of bounds"),
            PricingError::ReasoningExceedsOutput => f.write_str("reasoning_tokens must not exceed output_tokens"),
        }
    }
}

impl std::error::Error for PricingError {}

/// One token class of a request: its count, the model's cost and credit
/// rates, and the matching tier's.
type ClassRates = (u64, Option<Usd>, Option<Credits>, (Option<Usd>, Option<Credits>));

// Internal units: cost rates are nano-USD per Mtok. Credit rates are kept in
// femto-credits (10^-15) per Mtok so that a rate derived from a cost
// (nano-USD × credits_per_usd in millionths) is exact.
const FEMTO_PER_MICRO: i128 = 1_000_000_000;
const TOKENS_PER_MTOK: i128 = 1_000_000;

/// Prices a finished request.
pub fn price(
    model: &ModelPrice,
    usage: &Usage,
    request_type: &str,
    status: RequestStatus,
    policy: &PricingPolicy,
) -> Result<Price, PricingError> {
    usage.validate()?;
    let tier = model
        .tiers
        .iter()
        .filter(|t| usage.prompt_tokens() > t.above_input_tokens)
        .max_by_key(|t| t.above_input_tokens);
    let cost_rate = |base: Option<Usd>, tiered: Option<Usd>| tiered.or(base).unwrap_or(Usd::ZERO).units() as i128;
    let cpu = policy.credits_per_usd.units() as i128;
    // A credit rate: the tier's, else the model's, else derived from the
    // effective cost rate.
    let credit_rate = |base: Option<Credits>, tiered: Option<Credits>, cost_nano: i128| -> Option<i128> {
        match tiered.or(base) {
            Some(c) => (c.units() as i128).checked_mul(FEMTO_PER_MICRO),
            None => cost_nano.checked_mul(cpu),
        }
    };
    let t = |pick: fn(&Tier) -> (Option<Usd>, Option<Credits>)| tier.map(pick).unwrap_or((None, None));

    let classes: [ClassRates; 4] = [
        (
            usage.input_tokens,
            model.cost_usd_per_mtok.input,
            model.credits_per_mtok.input,
            t(|t| (t.cost_usd_per_mtok.input, t.credits_per_mtok.input)),
        ),
        (
            usage.cache_read_tokens,
            model.cost_usd_per_mtok.cache_read,
            model.credits_per_mtok.cache_read,
            t(|t| (t.cost_usd_per_mtok.cache_read, t.credits_per_mtok.cache_read)),
        ),
        (
            usage.cache_write_tokens,
            model.cost_usd_per_mtok.cache_write,
            model.credits_per_mtok.cache_write,
            t(|t| (t.cost_usd_per_mtok.cache_write, t.credits_per_mtok.cache_write)),
        ),
        (
            usage.output_tokens,
            model.cost_usd_per_mtok.output,
            model.credits_per_mtok.output,
            t(|t| (t.cost_usd_per_mtok.output, t.credits_per_mtok.output)),
        ),
    ];

    // Numerators: cost in 10^-15 USD; credits in two parts, the token
    // classes in 10^-21 credits (femto per Mtok × tokens) and the flat
    // items in femto-credits, kept apart so that neither overflows `i128`
    // for any in-bounds request.
    let mut cost_num: i128 = 0;
    let mut credit_num: i128 = 0;
    let mut flat_num: i128 = 0;
    let overflow = || PricingError::OutOfBounds;
    for (tokens, base_cost, base_credits, (tier_cost, tier_credits)) in classes {
        let tokens = tokens as i128;
        let cost = cost_rate(base_cost, tier_cost);
        let credits = credit_rate(base_credits, tier_credits, cost).ok_or_else(overflow)?;
        cost_num = tokens.checked_mul(cost).and_then(|x| cost_num.checked_add(x)).ok_or_else(overflow)?;
        credit_num = tokens.checked_mul(credits).and_then(|x| credit_num.checked_add(x)).ok_or_else(overflow)?;
    }
    let flats = [
        (usage.images as i128, model.cost_usd.image, model.credits.image),
        (usage.tool_calls as i128, model.cost_usd.tool_call, model.credits.tool_call),
        (1, model.cost_usd.request, model.credits.request),
    ];
    for (count, cost, credits) in flats {
        let cost = cost.unwrap_or(Usd::ZERO).units() as i128;
        let credits = credit_rate(None, credits, cost).ok_or_else(overflow)?;
        cost_num = count
            .checked_mul(cost)
            .and_then(|x| x.checked_mul(TOKENS_PER_MTOK))
            .and_then(|x| cost_num.checked_add(x))
            .ok_or_else(overflow)?;
        flat_num = count.checked_mul(credits).and_then(|x| flat_num.checked_add(x)).ok_or_else(overflow)?;
    }

    let cost_nano = div_round_half_up(cost_num, TOKENS_PER_MTOK);
    let cost_usd = Usd::from_units(i64::try_from(cost_nano).map_err(|_| overflow())?);

    let charged = !policy.free_request_types.iter().any(|t| t == request_type)
        && (status != RequestStatus::Error || policy.charge_errors);
    let credits = if charged {
        let micro = scale_credits(credit_num, flat_num, model.multiplier.units() as i128).ok_or_else(overflow)?;
        let credits = Credits::from_units(i64::try_from(micro).map_err(|_| overflow())?);
        if credits.is_positive() && credits < policy.min_charge { policy.min_charge } else { credits }
    } else {
        Credits::ZERO
    };
    Ok(Price { cost_usd, credits })
}

/// `(tokens_num × 10^-21 + flat_num × 10^-15) × multiplier × 10^-6`
/// credits in µcr, rounded half up once. Exact without ever forming the
/// whole numerator (which may exceed `i128` for an in-bounds request whose
/// result fits): the amount is split into whole µcr `q` and a remainder
/// `r` below one µcr (in 10^-21 credits), and `q × multiplier` is split
/// again at 10^6. All parts are non-negative. `None` when the result
/// itself exceeds `i128`.
fn scale_credits(tokens_num: i128, flat_num: i128, multiplier: i128) -> Option<i128> {
    // One µcr is 10^15 units of 10^-21 credits and 10^9 femto-credits.
    const UNITS_PER_MICRO: i128 = 1_000_000_000_000_000;
    let q = (tokens_num / UNITS_PER_MICRO).checked_add(flat_num / FEMTO_PER_MICRO)?;
    let r = tokens_num % UNITS_PER_MICRO + (flat_num % FEMTO_PER_MICRO) * 1_000_000; // < 2 × 10^15
    // result = (q × m × 10^15 + r × m) / 10^21, with q × m = a1 × 10^6 + a0.
    let a = q.checked_mul(multiplier)?;
    let (a1, a0) = (a / 1_000_000, a % 1_000_000);
    let tail = a0 * UNITS_PER_MICRO + r * multiplier; // < 10^21 + 2 × 10^24
    a1.checked_add(div_round_half_up(tail, UNITS_PER_MICRO * 1_000_000))
}

/// What an authorize or estimate is priced on: the input it knows and at
/// most `max_output_tokens` of output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EstimateInput {
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// `None`: the model's `max_output_tokens`.
    pub max_output_tokens: Option<u64>,
    pub images: u64,
    pub tool_calls: u64,
}

/// Prices the worst case of a request before it runs.
pub fn estimate(
    model: &ModelPrice,
    input: &EstimateInput,
    request_type: &str,
    policy: &PricingPolicy,
) -> Result<Price, PricingError> {
    let usage = Usage {
        input_tokens: input.input_tokens,
        cache_read_tokens: input.cache_read_tokens,
        cache_write_tokens: input.cache_write_tokens,
        output_tokens: input.max_output_tokens.unwrap_or(model.max_output_tokens),
        images: input.images,
        tool_calls: input.tool_calls,
        ..Usage::default()
    };
    price(model, &usage, request_type, RequestStatus::Success, policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Option<Usd> {
        Some(Usd::parse(s).unwrap())
    }

    fn sonnet() -> ModelPrice {
        ModelPrice {
            cost_usd_per_mtok: TokenRates {
                input: usd("3"),
                output: usd("15"),
                cache_read: usd("0.3"),
                cache_write: usd("3.75"),
            },
            ..ModelPrice::default()
        }
    }

    #[test]
    fn free_request_type_costs_but_is_not_charged() {
        let usage = Usage { input_tokens: 1000, ..Usage::default() };
        let p = price(&sonnet(), &usage, "summarization", RequestStatus::Success, &PricingPolicy::default()).unwrap();
        assert_eq!(p.cost_usd, Usd::parse("0.003").unwrap());
        assert_eq!(p.credits, Credits::ZERO);
    }

    #[test]
    fn errors_are_charged_only_when_configured() {
        let usage = Usage { input_tokens: 1000, ..Usage::default() };
        let policy = PricingPolicy { charge_errors: true, ..PricingPolicy::default() };
        let p = price(&sonnet(), &usage, "chat", RequestStatus::Error, &policy).unwrap();
        assert_eq!(p.credits, Credits::parse("0.3").unwrap());
    }

    #[test]
    fn out_of_bounds_usage_is_refused() {
        let usage = Usage { input_tokens: MAX_TOKENS + 1, ..Usage::default() };
        assert_eq!(
            price(&sonnet(), &usage, "chat", RequestStatus::Success, &PricingPolicy::default()),
            Err(PricingError::OutOfBounds)
        );
        let usage = Usage { output_tokens: 1, reasoning_tokens: 2, ..Usage::default() };
        assert_eq!(
            price(&sonnet(), &usage, "chat", RequestStatus::Success, &PricingPolicy::default()),
            Err(PricingError::ReasoningExceedsOutput)
        );
    }

    #[test]
    fn extreme_in_bounds_prices_do_not_overflow() {
        let max = Some(MAX_PRICE);
        let model = ModelPrice {
            cost_usd_per_mtok: TokenRates { input: max, cache_read: max, cache_write: max, output: max },
            cost_usd: FlatRates { request: max, image: max, tool_call: max },
            multiplier: MAX_MULTIPLIER,
            ..ModelPrice::default()
        };
        model.validate().unwrap();
        let usage = Usage {
            input_tokens: MAX_TOKENS,
            cache_read_tokens: MAX_TOKENS,
            cache_write_tokens: MAX_TOKENS,
            output_tokens: MAX_TOKENS,
            images: MAX_TOKENS,
            tool_calls: MAX_TOKENS,
            ..Usage::default()
        };
        // Too large to charge in i64 micro-credits: an error, never a panic.
        assert_eq!(
            price(&model, &usage, "chat", RequestStatus::Success, &PricingPolicy::default()),
            Err(PricingError::OutOfBounds)
        );
    }
}
