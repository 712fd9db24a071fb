//! Importing a public price map into the price book: the exact conversion
//! of a JSON number's text into a price, and what an import does to each
//! model (`docs/import.md`).
//!
//! The file formats (LiteLLM, models.dev) are read by the server; here are
//! only the rules, as pure functions.

use crate::pricing::{ModelPrice, Tier, TokenRates};
use crate::units::{Factor, MAX_PRICE, Usd};

/// Why a number could not be taken as a price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NumberError {
    /// Not a JSON number (`"abc"`, `null`, `1.`, `.5`…).
    NotANumber,
    Negative,
    /// More than 6 decimals per million tokens: not representable exactly.
    TooPrecise,
    /// Above 10^6 USD per million tokens.
    TooLarge,
}

impl std::fmt::Display for NumberError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NumberError::NotANumber => "is not a number",
            NumberError::Negative => "is negative",
            NumberError::TooPrecise => "has more than 6 decimals per million tokens",
            NumberError::TooLarge => "is above 1000000 USD per million tokens",
        })
    }
}

/// The price per million tokens given by the text of a JSON number that is
/// `10^-shift` USD per million tokens each: `shift = 6` for a price per
/// token (LiteLLM), `0` for a price per million tokens (models.dev).
/// Exact: the digits are shifted, never put through a float, so
/// `price_per_mtok("3e-06", 6)` is exactly 3 USD.
pub fn price_per_mtok(text: &str, shift: i32) -> Result<Usd, NumberError> {
    let text = text.trim();
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let digits_ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_ok(int_part) || (int_part.len() > 1 && int_part.starts_with('0')) {
        return Err(NumberError::NotANumber);
    }
    if frac_part.is_some_and(|f| !digits_ok(f)) {
        return Err(NumberError::NotANumber);
    }
    let mut exp: i64 = match exponent {
        None => 0,
        Some(e) => {
            let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
            if !digits_ok(unsigned) || unsigned.len() > 6 {
                return Err(NumberError::NotANumber);
            }
            e.parse::<i64>().map_err(|_| NumberError::NotANumber)?
        }
    };
    // value = digits × 10^exp, digits the significant digits without the point.
    let frac = frac_part.unwrap_or("");
    let mut digits: String = format!("{int_part}{frac}");
    exp -= frac.len() as i64;
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return Ok(Usd::ZERO);
    }
    digits = trimmed.to_string();
    while digits.ends_with('0') {
        digits.pop();
        exp += 1;
    }
    if negative {
        return Err(NumberError::Negative);
    }
    // In micro-dollars per million tokens (6 decimals): digits × 10^(exp + shift + 6).
    let scale = exp + i64::from(shift) + 6;
    if scale < 0 {
        return Err(NumberError::TooPrecise);
    }
    // 10^6 USD is 10^12 micro-dollars: more than 13 digits is too large.
    if digits.len() as i64 + scale > 13 {
        return Err(NumberError::TooLarge);
    }
    let micro: i64 = digits.parse::<i64>().map_err(|_| NumberError::TooLarge)? * 10i64.pow(scale as u32);
    let usd = Usd::from_units(micro * 1_000);
    if usd > MAX_PRICE {
        return Err(NumberError::TooLarge);
    }
    Ok(usd)
}

/// What a price map says of one model: the parts of a price an import owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportedPrice {
    pub cost_usd_per_mtok: TokenRates<Usd>,
    /// Input-size tiers: `above_input_tokens` and their cost rates.
    pub tiers: Vec<(u64, TokenRates<Usd>)>,
    pub max_output_tokens: Option<u64>,
}

/// How an import treats the models it finds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Sets every imported model's multiplier; `None` keeps the current one
    /// (1 for a new model).
    pub multiplier: Option<Factor>,
    /// Allows a rate to move more than 10× (up or down).
    pub force: bool,
    /// Replaces models whose current version was not written by an import
    /// (an operator's edit through the API or the configuration).
    pub overwrite_edits: bool,
}

/// What an import does to one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportAction {
    /// Not in the price book: created at version 1.
    New(ModelPrice),
    /// A new price version.
    Changed(ModelPrice),
    /// The price book already says this.
    Unchanged,
    /// The current version is an operator's edit: kept.
    KeptEdit(ModelPrice),
    /// A rate moves more than 10× and `force` was not given: the whole
    /// import is refused.
    NeedsForce { price: ModelPrice, moves: Vec<RateMove> },
}

/// One rate that moved more than 10×.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateMove {
    /// `input`, `output`, `cache_read`, `cache_write`, or `tier>N input`…
    pub rate: String,
    pub old: Usd,
    pub new: Usd,
}

/// The model an import writes: the current price (or the defaults) with the
/// imported rates, tiers and `max_output_tokens` in place; every other field
/// (credit rates, flat costs, `free`) keeps its current value.
pub fn merged(current: Option<&ModelPrice>, imported: &ImportedPrice, options: &ImportOptions) -> ModelPrice {
    let mut price = current.cloned().unwrap_or_default();
    price.cost_usd_per_mtok = imported.cost_usd_per_mtok;
    let old_tiers = std::mem::take(&mut price.tiers);
    price.tiers = imported
        .tiers
        .iter()
        .map(|&(above, cost)| Tier {
            above_input_tokens: above,
            cost_usd_per_mtok: cost,
            // A credit rate the operator set on the same tier stays.
            credits_per_mtok: old_tiers
                .iter()
                .find(|t| t.above_input_tokens == above)
                .map(|t| t.credits_per_mtok)
                .unwrap_or_default(),
        })
        .collect();
    price.tiers.sort_by_key(|t| t.above_input_tokens);
    if let Some(max) = imported.max_output_tokens {
        price.max_output_tokens = max;
    }
    if let Some(m) = options.multiplier {
        price.multiplier = m;
    }
    price
}

/// The rates of `old` and `new` that differ more than 10× (either way, or
/// between zero and non-zero). Rates absent on one side are not compared.
pub fn large_moves(old: &ModelPrice, new: &ModelPrice) -> Vec<RateMove> {
    let mut moves = Vec::new();
    let mut compare = |label: String, a: &TokenRates<Usd>, b: &TokenRates<Usd>| {
        for (class, x, y) in [
            ("input", a.input, b.input),
            ("cache_read", a.cache_read, b.cache_read),
            ("cache_write", a.cache_write, b.cache_write),
            ("output", a.output, b.output),
        ] {
            let (Some(x), Some(y)) = (x, y) else { continue };
            let (xu, yu) = (i128::from(x.units()), i128::from(y.units()));
            if xu > yu * 10 || yu > xu * 10 {
                moves.push(RateMove { rate: format!("{label}{class}"), old: x, new: y });
            }
        }
    };
    compare(String::new(), &old.cost_usd_per_mtok, &new.cost_usd_per_mtok);
    for t in &new.tiers {
        if let Some(o) = old.tiers.iter().find(|o| o.above_input_tokens == t.above_input_tokens) {
            compare(format!("tier>{} ", t.above_input_tokens), &o.cost_usd_per_mtok, &t.cost_usd_per_mtok);
        }
    }
    moves
}

/// Decides what an import does to one model. `current` is the model's
/// current price and whether an import wrote it.
pub fn decide(current: Option<(&ModelPrice, bool)>, imported: &ImportedPrice, options: &ImportOptions) -> ImportAction {
    let Some((current, by_import)) = current else {
        return ImportAction::New(merged(None, imported, options));
    };
    let price = merged(Some(current), imported, options);
    if price == *current {
        return ImportAction::Unchanged;
    }
    if !by_import && !options.overwrite_edits {
        return ImportAction::KeptEdit(price);
    }
    let moves = large_moves(current, &price);
    if !moves.is_empty() && !options.force {
        return ImportAction::NeedsForce { price, moves };
    }
    ImportAction::Changed(price)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(s: &str) -> Usd {
        Usd::parse(s).unwrap()
    }

    #[test]
    fn per_token_prices_convert_exactly() {
        assert_eq!(price_per_mtok("3e-06", 6), Ok(usd("3")));
        assert_eq!(price_per_mtok("3E-6", 6), Ok(usd("3")));
        assert_eq!(price_per_mtok("0.000003", 6), Ok(usd("3")));
        assert_eq!(price_per_mtok("1.25e-07", 6), Ok(usd("0.125")));
        assert_eq!(price_per_mtok("3.75e-6", 6), Ok(usd("3.75")));
        assert_eq!(price_per_mtok("0", 6), Ok(Usd::ZERO));
        assert_eq!(price_per_mtok("0.0", 6), Ok(Usd::ZERO));
        assert_eq!(price_per_mtok("1e-12", 6), Ok(usd("0.000001")));
        // Through f64, 0.1 + 0.2 noise: 2.0000000000000002e-7 is not 0.2.
        assert_eq!(price_per_mtok("2.0000000000000002E-7", 6), Err(NumberError::TooPrecise));
        assert_eq!(price_per_mtok("1e-13", 6), Err(NumberError::TooPrecise));
        assert_eq!(price_per_mtok("1", 6), Ok(Usd::whole(1_000_000)));
        assert_eq!(price_per_mtok("1.000001", 6), Err(NumberError::TooLarge));
        assert_eq!(price_per_mtok("-1e-6", 6), Err(NumberError::Negative));
        assert_eq!(price_per_mtok("-0", 6), Ok(Usd::ZERO));
        for bad in ["", "abc", "1.", ".5", "01", "1e", "1e+", "\"1\"", "null", "1e9999999", "0x10"] {
            assert_eq!(price_per_mtok(bad, 6), Err(NumberError::NotANumber), "{bad}");
        }
    }

    #[test]
    fn per_million_prices_convert_exactly() {
        assert_eq!(price_per_mtok("2.5", 0), Ok(usd("2.5")));
        assert_eq!(price_per_mtok("15", 0), Ok(usd("15")));
        assert_eq!(price_per_mtok("0.075", 0), Ok(usd("0.075")));
        assert_eq!(price_per_mtok("1e2", 0), Ok(usd("100")));
        assert_eq!(price_per_mtok("0.0000001", 0), Err(NumberError::TooPrecise));
        assert_eq!(price_per_mtok("1000000.5", 0), Err(NumberError::TooLarge));
        assert_eq!(price_per_mtok("99999999999999999999", 0), Err(NumberError::TooLarge));
    }

    fn imported(input: &str, output: &str) -> ImportedPrice {
        ImportedPrice {
            cost_usd_per_mtok: TokenRates {
                input: Some(usd(input)),
                output: Some(usd(output)),
                ..TokenRates::default()
            },
            tiers: vec![],
            max_output_tokens: Some(8192),
        }
    }

    #[test]
    fn an_import_changes_only_what_moved_and_keeps_edits() {
        let options = ImportOptions::default();
        let ImportAction::New(first) = decide(None, &imported("3", "15"), &options) else { panic!() };
        assert_eq!(first.max_output_tokens, 8192);
        assert_eq!(decide(Some((&first, true)), &imported("3", "15"), &options), ImportAction::Unchanged);
        assert!(matches!(decide(Some((&first, true)), &imported("3.3", "15"), &options), ImportAction::Changed(_)));
        // An operator's edit is kept unless asked.
        assert!(matches!(decide(Some((&first, false)), &imported("3.3", "15"), &options), ImportAction::KeptEdit(_)));
        let overwrite = ImportOptions { overwrite_edits: true, ..options };
        assert!(matches!(decide(Some((&first, false)), &imported("3.3", "15"), &overwrite), ImportAction::Changed(_)));
        // An edit the map agrees with is simply unchanged.
        assert_eq!(decide(Some((&first, false)), &imported("3", "15"), &options), ImportAction::Unchanged);
    }

    #[test]
    fn a_move_beyond_ten_times_needs_force() {
        let options = ImportOptions::default();
        let ImportAction::New(first) = decide(None, &imported("3", "15"), &options) else { panic!() };
        // Exactly 10× is allowed; beyond is not, either way.
        assert!(matches!(decide(Some((&first, true)), &imported("30", "15"), &options), ImportAction::Changed(_)));
        let ImportAction::NeedsForce { moves, .. } =
            decide(Some((&first, true)), &imported("30.000001", "15"), &options)
        else {
            panic!()
        };
        assert_eq!(moves, vec![RateMove { rate: "input".into(), old: usd("3"), new: usd("30.000001") }]);
        assert!(matches!(
            decide(Some((&first, true)), &imported("3", "1.4"), &options),
            ImportAction::NeedsForce { .. }
        ));
        assert!(matches!(
            decide(Some((&first, true)), &imported("0", "15"), &options),
            ImportAction::NeedsForce { .. }
        ));
        let force = ImportOptions { force: true, ..options };
        assert!(matches!(decide(Some((&first, true)), &imported("300", "15"), &force), ImportAction::Changed(_)));
    }

    #[test]
    fn the_multiplier_and_operator_fields_survive_unless_set() {
        let mut current = ModelPrice { free: true, multiplier: Factor::parse("1.5").unwrap(), ..Default::default() };
        current.credits.request = Some(crate::Credits::whole(1));
        let price = merged(Some(&current), &imported("3", "15"), &ImportOptions::default());
        assert!(price.free);
        assert_eq!(price.multiplier, Factor::parse("1.5").unwrap());
        assert_eq!(price.credits.request, Some(crate::Credits::whole(1)));
        let options = ImportOptions { multiplier: Some(Factor::parse("2").unwrap()), ..Default::default() };
        assert_eq!(merged(Some(&current), &imported("3", "15"), &options).multiplier, Factor::parse("2").unwrap());
    }
}
