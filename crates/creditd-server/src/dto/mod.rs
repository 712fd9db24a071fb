//! The JSON shapes of the API (the only serde types of the project) and
//! their conversions to and from core and store types.
//!
//! Amounts travel as canonical decimal strings and are parsed here;
//! timestamps as RFC 3339 strings.

mod account;
mod common;
mod endpoint;
mod grant;
mod import;
mod metering;
mod model;
mod plan;
mod provider_call;
mod proxy_key;
mod usage;
mod webhook;

pub use account::*;
pub use common::*;
pub use endpoint::*;
pub use grant::*;
pub use import::*;
pub use metering::*;
pub use model::*;
pub use plan::*;
pub use provider_call::*;
pub use proxy_key::*;
pub use usage::*;
pub use webhook::*;

#[cfg(test)]
mod tests {
    use creditd_core::units::{Credits, Factor};

    use super::credits_in_usd;

    /// Issue 18.6: `wallet.usd` read "0" for wallets past ~9.2e11 credits.
    #[test]
    fn wallet_usd_reads_0_for_huge_wallets() {
        let hundred = Factor::whole(100);
        for (credits, usd) in [
            ("0", "0"),
            ("1", "0.01"),
            ("-2.5", "-0.025"),
            ("0.000001", "0.00000001"),
            ("920000000000", "9200000000"),
            ("1000000000000", "10000000000"),
            ("-1000000000000", "-10000000000"),
            ("999999999999.999999", "9999999999.99999999"),
        ] {
            assert_eq!(credits_in_usd(Credits::parse(credits).unwrap(), hundred), usd, "{credits}");
        }
        assert_eq!(credits_in_usd(Credits::whole(10), Factor::parse("3").unwrap()), "3.333333333");
        // Where the old conversion fits, both agree.
        let c = Credits::parse("12345.678901").unwrap();
        assert_eq!(credits_in_usd(c, hundred), c.to_usd(hundred).unwrap().to_string());
    }
}
