//! The credit for switching plan mid-period (`semantics.md` §7), computed
//! with exact fractions and rounded only where the spec says.

use jiff::Timestamp;

use crate::units::{Credits, Factor, Usd, div_round_half_up};

/// An exact non-negative fraction.
#[derive(Clone, Copy, Debug)]
struct Ratio {
    num: i128,
    den: i128,
}

impl Ratio {
    const ZERO: Ratio = Ratio { num: 0, den: 1 };
    const ONE: Ratio = Ratio { num: 1, den: 1 };

    /// Reduced, with the denominator kept at most 10^18 so that products
    /// with prices stay inside `i128` for any in-bounds pool (the error,
    /// below 10^-18, cannot move a result by a cent).
    fn new(num: i128, den: i128) -> Ratio {
        if den == 0 {
            return Ratio::ZERO;
        }
        let g = gcd(num.abs(), den.abs()).max(1);
        let (num, den) = (num / g, den / g);
        const MAX_DEN: i128 = 1_000_000_000_000_000_000;
        if den > MAX_DEN {
            let shrink = den / MAX_DEN + 1;
            Ratio { num: num / shrink, den: den / shrink }
        } else {
            Ratio { num, den }
        }
    }

    fn max(self, other: Ratio) -> Ratio {
        if self.num * other.den >= other.num * self.den { self } else { other }
    }

    fn min(self, other: Ratio) -> Ratio {
        if self.num * other.den <= other.num * self.den { self } else { other }
    }

    /// Rounded half up to millionths: how fractions are reported.
    fn to_factor(self) -> Factor {
        Factor::from_units(div_round_half_up(self.num * 1_000_000, self.den) as i64)
    }
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A pool of the old plan as it is at the switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolUse {
    pub amount: Credits,
    /// Credits still on hold count as not used, so this includes them.
    pub remaining: Credits,
}

impl PoolUse {
    fn used(self) -> Ratio {
        if !self.amount.is_positive() {
            return Ratio::ZERO;
        }
        let spent = (self.amount - self.remaining).max(Credits::ZERO);
        Ratio::new(spent.units() as i128, self.amount.units() as i128)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchInput {
    pub old_price: Usd,
    pub new_price: Usd,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    pub now: Timestamp,
    pub main: PoolUse,
    pub backup: PoolUse,
}

/// The proration of a switch: fractions rounded half up to 6 places for
/// display, and the exact credit floored to the cent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proration {
    pub time_used: Factor,
    pub usage_used: Factor,
    pub consumed: Factor,
    pub credit_usd: Usd,
}

/// The sunk-cost floor: a switch consumes at least 10% of the period.
const FLOOR: Ratio = Ratio { num: 1, den: 10 };

pub fn prorate(input: SwitchInput) -> Proration {
    let length = (input.period_end.as_microsecond() - input.period_start.as_microsecond()) as i128;
    let elapsed = (input.now.as_microsecond() - input.period_start.as_microsecond()).clamp(0, i64::MAX) as i128;
    let time_used = Ratio::new(elapsed.min(length), length);
    let main = input.main.used();
    let backup = input.backup.used();
    // 0.75 × main + 0.25 × backup = (3 × main + backup) / 4
    let usage_used = Ratio::new(3 * main.num * backup.den + backup.num * main.den, 4 * main.den * backup.den);
    let consumed = time_used.max(usage_used).max(FLOOR).min(Ratio::ONE);
    // old × (1 − consumed), exact, in nano-dollars × den.
    let old = input.old_price.units() as i128;
    let unused_num = old * (consumed.den - consumed.num);
    let difference = (input.new_price.units() - input.old_price.units()) as i128;
    let credit = Ratio::new(unused_num, consumed.den).min(Ratio::new(difference, 1)).max(Ratio::ZERO);
    // Floor to the cent: 10^7 nano-dollars.
    const CENT: i128 = 10_000_000;
    let cents = credit.num / (credit.den * CENT);
    Proration {
        time_used: time_used.to_factor(),
        usage_used: usage_used.to_factor(),
        consumed: consumed.to_factor(),
        credit_usd: Usd::from_units((cents * CENT) as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_pools_and_prices_do_not_overflow() {
        let max = Credits::whole(1_000_000_000);
        let p = prorate(SwitchInput {
            old_price: Usd::whole(1_000_000),
            new_price: Usd::whole(2_000_000),
            period_start: Timestamp::from_second(0).unwrap(),
            period_end: Timestamp::from_second(2_592_000).unwrap(),
            now: Timestamp::from_second(1).unwrap(),
            main: PoolUse { amount: max, remaining: max - Credits::from_units(7) },
            backup: PoolUse { amount: max - Credits::from_units(3), remaining: Credits::from_units(11) },
        });
        // Usage is 0.25 + 2.5e-15: just over a quarter, so the credit is
        // just under 75% of the price and floors to the cent below.
        assert_eq!(p.consumed.to_string(), "0.25");
        assert_eq!(p.credit_usd, Usd::parse("749999.99").unwrap());
    }
}
