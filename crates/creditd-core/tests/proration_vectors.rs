//! Every case of `spec/vectors/proration.json` must prorate exactly.

mod vectors;

use creditd_core::proration::{PoolUse, SwitchInput, prorate};
use creditd_core::units::{Credits, Usd};
use jiff::Timestamp;
use serde_json::Value;

fn pool(v: &Value) -> PoolUse {
    PoolUse {
        amount: Credits::parse(v["amount"].as_str().unwrap()).unwrap(),
        remaining: Credits::parse(v["remaining"].as_str().unwrap()).unwrap(),
    }
}

#[test]
fn every_proration_vector_prorates_exactly() {
    let doc = vectors::load("proration.json");
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 6, "the vectors file shrank");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let t = |k: &str| case[k].as_str().unwrap().parse::<Timestamp>().unwrap();
        let usd = |k: &str| Usd::parse(case[k].as_str().unwrap()).unwrap();
        let got = prorate(SwitchInput {
            old_price: usd("old_price_usd"),
            new_price: usd("new_price_usd"),
            period_start: t("period_start"),
            period_end: t("period_end"),
            now: t("now"),
            main: pool(&case["main"]),
            backup: pool(&case["backup"]),
        });
        let expect = &case["expect"];
        assert_eq!(got.time_used.to_string(), expect["time_used"].as_str().unwrap(), "{name}: time_used");
        assert_eq!(got.usage_used.to_string(), expect["usage_used"].as_str().unwrap(), "{name}: usage_used");
        assert_eq!(got.consumed.to_string(), expect["consumed"].as_str().unwrap(), "{name}: consumed");
        assert_eq!(got.credit_usd.to_string(), expect["credit_usd"].as_str().unwrap(), "{name}: credit_usd");
    }
}
