//! Every case of `spec/vectors/pricing.json` must price exactly.

mod vectors;

use creditd_core::pricing::{self, FlatRates, ModelPrice, PricingPolicy, RequestStatus, Tier, TokenRates, Usage};
use creditd_core::units::{Credits, Factor, Usd};
use serde_json::Value;

fn token_rates<T>(v: Option<&Value>, parse: fn(&str) -> T) -> TokenRates<T> {
    let get = |k: &str| v.and_then(|v| v.get(k)).and_then(Value::as_str).map(parse);
    TokenRates {
        input: get("input"),
        cache_read: get("cache_read"),
        cache_write: get("cache_write"),
        output: get("output"),
    }
}

fn flat_rates<T>(v: Option<&Value>, parse: fn(&str) -> T) -> FlatRates<T> {
    let get = |k: &str| v.and_then(|v| v.get(k)).and_then(Value::as_str).map(parse);
    FlatRates { request: get("request"), image: get("image"), tool_call: get("tool_call") }
}

fn usd(s: &str) -> Usd {
    Usd::parse(s).expect("vector dollars")
}

fn credits(s: &str) -> Credits {
    Credits::parse(s).expect("vector credits")
}

fn model(v: &Value) -> ModelPrice {
    let tiers = v["tiers"]
        .as_array()
        .map(|tiers| {
            tiers
                .iter()
                .map(|t| Tier {
                    above_input_tokens: t["above_input_tokens"].as_u64().expect("threshold"),
                    cost_usd_per_mtok: token_rates(t.get("cost_usd_per_mtok"), usd),
                    credits_per_mtok: token_rates(t.get("credits_per_mtok"), credits),
                })
                .collect()
        })
        .unwrap_or_default();
    ModelPrice {
        cost_usd_per_mtok: token_rates(v.get("cost_usd_per_mtok"), usd),
        cost_usd: flat_rates(v.get("cost_usd"), usd),
        credits_per_mtok: token_rates(v.get("credits_per_mtok"), credits),
        credits: flat_rates(v.get("credits"), credits),
        multiplier: v["multiplier"].as_str().map(|m| Factor::parse(m).expect("multiplier")).unwrap_or(Factor::whole(1)),
        tiers,
        ..ModelPrice::default()
    }
}

#[test]
fn every_pricing_vector_prices_exactly() {
    let doc = vectors::load("pricing.json");
    let cpu = Factor::parse(doc["credits_per_usd"].as_str().unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 13, "the vectors file shrank");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let m = model(&doc["models"][case["model"].as_str().unwrap()]);
        m.validate().unwrap_or_else(|e| panic!("{name}: model invalid: {e}"));
        let u = &case["usage"];
        let n = |k: &str| u[k].as_u64().unwrap_or(0);
        let usage = Usage {
            input_tokens: n("input_tokens"),
            cache_read_tokens: n("cache_read_tokens"),
            cache_write_tokens: n("cache_write_tokens"),
            output_tokens: n("output_tokens"),
            reasoning_tokens: n("reasoning_tokens"),
            images: n("images"),
            tool_calls: n("tool_calls"),
            ..Usage::default()
        };
        let policy = PricingPolicy {
            credits_per_usd: cpu,
            min_charge: case["min_charge"].as_str().map(credits).unwrap_or(Credits::ZERO),
            ..PricingPolicy::default()
        };
        let status = RequestStatus::parse(case["status"].as_str().unwrap_or("success")).unwrap();
        let request_type = case["request_type"].as_str().unwrap_or("chat");
        let got = pricing::price(&m, &usage, request_type, status, &policy).unwrap();
        assert_eq!(got.cost_usd.to_string(), case["expect"]["cost_usd"].as_str().unwrap(), "{name}: cost_usd");
        assert_eq!(got.credits.to_string(), case["expect"]["credits"].as_str().unwrap(), "{name}: credits");
    }
}
