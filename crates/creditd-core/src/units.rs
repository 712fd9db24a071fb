//! Fixed-point money units over integers.
//!
//! Every amount in creditd is an integer count of a small unit: credits in
//! micro-credits (6 decimals), dollars in nano-dollars (9 decimals), factors
//! such as a multiplier in millionths. Parsing and printing use the canonical
//! decimal form of `semantics.md` §1: no exponent, no `+`, no trailing
//! fractional zeros, `-` only for negatives, `0` for zero.

use std::fmt;

/// Why a decimal string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitError {
    /// Not a canonical decimal (empty, `+`, exponent, a trailing `.`, stray characters…).
    Malformed,
    /// More fractional digits than the unit allows.
    TooPrecise { max_fraction_digits: u32 },
    /// Outside the unit's range.
    OutOfRange,
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitError::Malformed => f.write_str("not a decimal number such as \"12\" or \"0.5\""),
            UnitError::TooPrecise { max_fraction_digits } => {
                write!(f, "at most {max_fraction_digits} fractional digits are allowed")
            }
            UnitError::OutOfRange => f.write_str("number out of range"),
        }
    }
}

impl std::error::Error for UnitError {}

/// Parses a decimal string into an integer count of `10^-scale` units,
/// accepting at most `max_fraction_digits` fractional digits.
///
/// Accepted: an optional `-`, digits, optionally `.` and at least one digit.
/// Input need not be canonical in its zeros (`"1.50"` is accepted as 1.5),
/// but everything else of the canonical form is required.
pub fn parse_fixed(text: &str, scale: u32, max_fraction_digits: u32) -> Result<i64, UnitError> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac_part) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int_part) || frac_part.is_some_and(|f| !all_digits(f)) {
        return Err(UnitError::Malformed);
    }
    let frac = frac_part.unwrap_or("").trim_end_matches('0');
    if frac.len() as u32 > max_fraction_digits.min(scale) {
        return Err(UnitError::TooPrecise { max_fraction_digits: max_fraction_digits.min(scale) });
    }
    let int_digits = int_part.trim_start_matches('0');
    // 19 digits already exceed i64 for any scale ≥ 1; refuse before parsing.
    if int_digits.len() > 19 {
        return Err(UnitError::OutOfRange);
    }
    let int_value: i128 =
        if int_digits.is_empty() { 0 } else { int_digits.parse().map_err(|_| UnitError::OutOfRange)? };
    let mut frac_value: i128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| UnitError::OutOfRange)? };
    frac_value *= 10i128.pow(scale - frac.len() as u32);
    let magnitude = int_value * 10i128.pow(scale) + frac_value;
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value).map_err(|_| UnitError::OutOfRange)
}

/// Prints an integer count of `10^-scale` units in canonical decimal form
/// (`i128`: sums of many amounts are printed too; see `Total`).
pub fn format_fixed(value: impl Into<i128>, scale: u32) -> String {
    let value: i128 = value.into();
    let divisor = 10u128.pow(scale);
    let magnitude = value.unsigned_abs();
    let int_part = magnitude / divisor;
    let frac_part = magnitude % divisor;
    let sign = if value < 0 { "-" } else { "" };
    if frac_part == 0 {
        return format!("{sign}{int_part}");
    }
    let frac = format!("{frac_part:0width$}", width = scale as usize);
    format!("{sign}{int_part}.{}", frac.trim_end_matches('0'))
}

/// An exact sum of amounts of `10^-SCALE` units (µcr: [`CreditsTotal`];
/// nano-dollars: [`UsdTotal`]): wider than one amount, so that summing any
/// number of stored amounts can neither overflow nor round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Total<const SCALE: u32>(i128);

/// A sum of credits.
pub type CreditsTotal = Total<{ Credits::SCALE }>;
/// A sum of US dollars.
pub type UsdTotal = Total<{ Usd::SCALE }>;

impl<const SCALE: u32> Total<SCALE> {
    pub const ZERO: Self = Total(0);

    pub const fn from_units(units: i128) -> Self {
        Total(units)
    }

    pub const fn units(self) -> i128 {
        self.0
    }

    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0.checked_add(other.0).map(Total)
    }

    pub fn checked_sub(self, other: Self) -> Option<Self> {
        self.0.checked_sub(other.0).map(Total)
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl<const SCALE: u32> fmt::Display for Total<SCALE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_fixed(self.0, SCALE))
    }
}

/// `numerator / denominator` rounded half away from zero ("half up").
/// `denominator` must be positive.
pub fn div_round_half_up(numerator: i128, denominator: i128) -> i128 {
    debug_assert!(denominator > 0);
    let quotient = numerator / denominator;
    let remainder = numerator % denominator;
    if remainder.abs() * 2 >= denominator { quotient + numerator.signum() } else { quotient }
}

/// `numerator / denominator` rounded toward zero ("floor" in the spec's words:
/// every floored amount in creditd is non-negative).
pub fn div_floor(numerator: i128, denominator: i128) -> i128 {
    debug_assert!(denominator > 0);
    numerator / denominator
}

macro_rules! fixed_unit {
    ($(#[$doc:meta])* $name:ident, scale = $scale:expr, input_digits = $input:expr, unit = $unit:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(i64);

        impl $name {
            /// Decimal places of the unit.
            pub const SCALE: u32 = $scale;
            /// Units in one whole.
            pub const ONE: i64 = 10i64.pow($scale);
            pub const ZERO: $name = $name(0);

            #[doc = concat!("From a count of ", $unit, ".")]
            pub const fn from_units(units: i64) -> Self {
                $name(units)
            }

            #[doc = concat!("The count of ", $unit, ".")]
            pub const fn units(self) -> i64 {
                self.0
            }

            /// From a whole number (test and configuration convenience).
            pub const fn whole(n: i64) -> Self {
                $name(n * Self::ONE)
            }

            /// Parses the canonical decimal form (`"12"`, `"0.5"`, `"-2.25"`).
            pub fn parse(text: &str) -> Result<Self, UnitError> {
                parse_fixed(text, $scale, $input).map($name)
            }

            pub fn checked_add(self, other: Self) -> Option<Self> {
                self.0.checked_add(other.0).map($name)
            }

            pub fn checked_sub(self, other: Self) -> Option<Self> {
                self.0.checked_sub(other.0).map($name)
            }

            pub fn is_zero(self) -> bool {
                self.0 == 0
            }

            pub fn is_positive(self) -> bool {
                self.0 > 0
            }

            pub fn is_negative(self) -> bool {
                self.0 < 0
            }

            pub fn max(self, other: Self) -> Self {
                if self >= other { self } else { other }
            }

            pub fn min(self, other: Self) -> Self {
                if self <= other { self } else { other }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&format_fixed(self.0, $scale))
            }
        }

        impl std::ops::Add for $name {
            type Output = $name;
            fn add(self, other: $name) -> $name {
                $name(self.0 + other.0)
            }
        }

        impl std::ops::Sub for $name {
            type Output = $name;
            fn sub(self, other: $name) -> $name {
                $name(self.0 - other.0)
            }
        }

        impl std::ops::Neg for $name {
            type Output = $name;
            fn neg(self) -> $name {
                $name(-self.0)
            }
        }

        impl std::ops::AddAssign for $name {
            fn add_assign(&mut self, other: $name) {
                self.0 += other.0;
            }
        }

        impl std::ops::SubAssign for $name {
            fn sub_assign(&mut self, other: $name) {
                self.0 -= other.0;
            }
        }

        impl std::iter::Sum for $name {
            fn sum<I: Iterator<Item = $name>>(iter: I) -> $name {
                iter.fold($name::ZERO, |a, b| a + b)
            }
        }
    };
}

fixed_unit!(
    /// Credits, counted in micro-credits (1 credit = 1,000,000 µcr). Input
    /// takes at most 6 fractional digits.
    Credits, scale = 6, input_digits = 6, unit = "micro-credits"
);

fixed_unit!(
    /// US dollars, counted in nano-dollars (9 decimals) so that computed costs
    /// are exact. Prices and top-ups given as input take at most 6 fractional
    /// digits.
    Usd, scale = 9, input_digits = 6, unit = "nano-dollars"
);

fixed_unit!(
    /// A dimensionless factor in millionths: multipliers, percentages,
    /// `credits_per_usd`, and proration fractions.
    Factor, scale = 6, input_digits = 6, unit = "millionths"
);

/// The largest single grant, top-up or purchase: 10^9 credits (`semantics.md` §1).
pub const MAX_GRANT: Credits = Credits::whole(1_000_000_000);

/// The widest wallet balance either way: 10^12 credits (10^18 µcr, a
/// ninth of what `i64` holds). An operation that would take a wallet
/// beyond it is refused; nothing wraps.
pub const MAX_BALANCE: Credits = Credits::whole(1_000_000_000_000);

/// The largest token count (or image or tool-call count) of one request.
pub const MAX_TOKENS: u64 = 1_000_000_000;

/// The largest price: 10^6 USD per million tokens, or per image, call or request.
pub const MAX_PRICE: Usd = Usd::whole(1_000_000);

impl Usd {
    /// Converts dollars to credits at `credits_per_usd`, rounded half up to
    /// the micro-credit. Returns `None` on overflow.
    pub fn to_credits(self, credits_per_usd: Factor) -> Option<Credits> {
        // nano-USD × millionths = 10^-15 credits; µcr = 10^-6 credits.
        let exact = (self.0 as i128).checked_mul(credits_per_usd.0 as i128)?;
        let micro = div_round_half_up(exact, 1_000_000_000);
        i64::try_from(micro).ok().map(Credits)
    }
}

impl Credits {
    /// Converts credits to dollars at `credits_per_usd`, rounded half up to
    /// the nano-dollar (display of the wallet in USD).
    pub fn to_usd(self, credits_per_usd: Factor) -> Option<Usd> {
        if credits_per_usd.0 <= 0 {
            return None;
        }
        // µcr / (credits per USD in millionths) → USD ×10^0; scale to nano.
        let numerator = (self.0 as i128).checked_mul(1_000_000_000)?;
        let nano = div_round_half_up(numerator, credits_per_usd.0 as i128);
        i64::try_from(nano).ok().map(Usd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_round_trip() {
        for (text, units) in
            [("1.5", 1_500_000), ("12", 12_000_000), ("0.0003", 300), ("-2.25", -2_250_000), ("0", 0), ("0.000001", 1)]
        {
            assert_eq!(Credits::parse(text), Ok(Credits(units)), "{text}");
            assert_eq!(Credits(units).to_string(), text);
        }
    }

    #[test]
    fn non_canonical_zeros_are_accepted_on_input() {
        assert_eq!(Credits::parse("1.50"), Ok(Credits(1_500_000)));
        assert_eq!(Credits::parse("007"), Ok(Credits(7_000_000)));
        assert_eq!(Credits::parse("-0"), Ok(Credits(0)));
    }

    #[test]
    fn malformed_input_is_refused() {
        for text in ["", "-", "+1", "1e3", "1.", ".5", "1.2.3", "1,5", " 1", "abc", "--1", "0x10"] {
            assert_eq!(Credits::parse(text), Err(UnitError::Malformed), "{text:?}");
        }
    }

    #[test]
    fn too_many_fraction_digits_are_refused() {
        assert!(matches!(Credits::parse("0.0000001"), Err(UnitError::TooPrecise { .. })));
        // Dollars are computed to 9 places but accepted to 6.
        assert!(matches!(Usd::parse("0.0000001"), Err(UnitError::TooPrecise { .. })));
        assert_eq!(Usd::parse("0.000001"), Ok(Usd(1_000)));
    }

    #[test]
    fn out_of_range_is_an_error_not_an_overflow() {
        assert_eq!(Credits::parse("99999999999999999999999"), Err(UnitError::OutOfRange));
        assert_eq!(Credits::parse("9223372036855"), Err(UnitError::OutOfRange));
        assert!(Credits::parse("9223372036854.775807").is_ok());
    }

    #[test]
    fn usd_formats_nine_places() {
        assert_eq!(Usd(525).to_string(), "0.000000525");
        assert_eq!(Usd(19_650_000).to_string(), "0.01965");
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(div_round_half_up(5, 10), 1);
        assert_eq!(div_round_half_up(4, 10), 0);
        assert_eq!(div_round_half_up(-5, 10), -1);
        assert_eq!(div_round_half_up(15, 10), 2);
        assert_eq!(div_floor(19, 10), 1);
    }

    #[test]
    fn usd_and_credits_convert_at_the_rate() {
        let hundred = Factor::whole(100);
        assert_eq!(Usd::parse("7.74").unwrap().to_credits(hundred), Some(Credits::whole(774)));
        assert_eq!(Credits::whole(500).to_usd(hundred), Some(Usd::whole(5)));
    }
}
