//! Price-map imports (`POST /v1/model-imports`, `docs/import.md`): LiteLLM's
//! real file (the copy the `litellm` package ships, fetched by
//! `scripts/test-deps`) and a models.dev fixture.

use serde_json::{Value, json};

use crate::support::{Api, Resp};

const MODELSDEV: &[u8] = include_bytes!("../fixtures/modelsdev_api.json");

/// LiteLLM's `model_prices_and_context_window_backup.json`, from the path in
/// `CREDITD_TEST_LITELLM_JSON` (exported by `scripts/test`). Under `CI=true`
/// a missing file fails the test; elsewhere the test says so and passes.
fn litellm_file() -> Option<Vec<u8>> {
    match std::env::var_os("CREDITD_TEST_LITELLM_JSON") {
        Some(path) => Some(std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path:?}: {e}"))),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CREDITD_TEST_LITELLM_JSON is not set: run scripts/test (scripts/test-deps fetches LiteLLM's file)")
        }
        None => {
            eprintln!("CREDITD_TEST_LITELLM_JSON is not set: LiteLLM's real file not tested (run scripts/test)");
            None
        }
    }
}

async fn import(api: &Api, query: &str, body: &[u8]) -> Resp {
    let admin = api.admin.clone();
    api.raw("POST", &format!("/v1/model-imports?{query}"), Some(&admin), body.to_vec(), &[]).await
}

fn litellm(entries: Value) -> Vec<u8> {
    serde_json::to_vec(&entries).unwrap()
}

#[tokio::test]
async fn litellm_real_file_imports_exactly_and_again_changes_nothing() {
    let Some(file) = litellm_file() else { return };
    let entries = serde_json::from_slice::<serde_json::Map<String, Value>>(&file).unwrap().len();
    let api = Api::new().await;
    let first = import(&api, "format=litellm", &file).await;
    let report = first.expect(200).clone();
    let counts = &report["counts"];
    let new = counts["new"].as_u64().unwrap() as usize;
    let skipped = counts["skipped"].as_u64().unwrap() as usize;
    assert!(report["applied"].as_bool().unwrap());
    assert_eq!(new + skipped, entries, "every entry is imported or skipped: {counts}");
    assert!(new > 3000, "{counts}");
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for s in report["skipped"].as_array().unwrap() {
        let reason = s["reason"].as_str().unwrap();
        let kind = if reason.starts_with("no per-token price") {
            "no per-token price"
        } else if reason.contains("more than 6 decimals per million tokens") {
            "more than 6 decimals per million tokens"
        } else if reason.starts_with("not a model") {
            "not a model"
        } else {
            panic!("unexpected skip reason for {}: {reason}", s["id"])
        };
        *reasons.entry(kind.into()).or_default() += 1;
    }
    eprintln!("LiteLLM: {entries} entries, {new} imported, {skipped} skipped: {reasons:?}");

    // 3e-06 per token is exactly 3 per million tokens.
    let sonnet = api.get("/v1/models/claude-sonnet-4-5").await;
    let sonnet = sonnet.expect(200);
    assert_eq!(
        sonnet["cost_usd_per_mtok"],
        json!({"input": "3", "cache_read": "0.3", "cache_write": "3.75", "output": "15"})
    );
    assert_eq!(sonnet["max_output_tokens"], 64000);
    assert_eq!(sonnet["price_version"], 1);
    // `_above_200k_tokens` fields are a tier above 200,000 input tokens.
    let gemini = api.get("/v1/models/gemini-2.5-pro").await;
    let gemini = gemini.expect(200);
    assert_eq!(gemini["cost_usd_per_mtok"]["input"], "1.25");
    assert_eq!(gemini["tiers"][0]["above_input_tokens"], 200000);
    assert_eq!(gemini["tiers"][0]["cost_usd_per_mtok"]["input"], "2.5");
    assert_eq!(gemini["tiers"][0]["cost_usd_per_mtok"]["output"], "15");
    // The tier prices a large request: 300,000 × 2.5/M + 1,000 × 15/M.
    let estimate = api
        .post("/v1/estimate", json!({"model": "gemini-2.5-pro", "input_tokens": 300000, "max_output_tokens": 1000}))
        .await;
    assert_eq!(estimate.expect(200)["cost_usd"], "0.765");
    // The suffixes that are not input sizes (`_above_1hr`, `_priority`, `_batches`) are ignored.
    assert_eq!(sonnet["tiers"], json!([]));

    // The same file again: nothing moves, no version is added.
    let again = import(&api, "format=litellm", &file).await;
    let again = again.expect(200);
    assert_eq!(again["counts"]["new"], 0);
    assert_eq!(again["counts"]["changed"], 0);
    assert_eq!(again["counts"]["unchanged"].as_u64().unwrap() as usize, new);
    assert_eq!(again["models"], json!([]));
    assert_eq!(api.get("/v1/models/claude-sonnet-4-5").await.expect(200)["price_version"], 1);
}

#[tokio::test]
async fn litellm_real_file_filters_by_provider_and_model() {
    let Some(file) = litellm_file() else { return };
    let api = Api::new().await;
    let dry = import(&api, "format=litellm&provider=anthropic&dry_run=true", &file).await;
    let dry = dry.expect(200).clone();
    assert!(!dry["applied"].as_bool().unwrap());
    assert!(dry["counts"]["new"].as_u64().unwrap() > 10, "{}", dry["counts"]);
    assert!(dry["counts"]["filtered_out"].as_u64().unwrap() > 3000);
    assert_eq!(api.get("/v1/models").await.expect(200)["data"], json!([]), "a dry run writes nothing");

    let only = import(&api, "format=litellm&only=gpt-4o,gpt-4o-mini&multiplier=1.5", &file).await;
    let only = only.expect(200);
    assert_eq!(only["counts"]["new"], 2);
    let ids: Vec<&str> = only["models"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["gpt-4o", "gpt-4o-mini"]);
    let mini = api.get("/v1/models/gpt-4o-mini").await;
    assert_eq!(mini.expect(200)["cost_usd_per_mtok"]["input"], "0.15");
    assert_eq!(mini.body["multiplier"], "1.5");
}

#[tokio::test]
async fn an_import_updates_only_what_moved_and_keeps_operator_edits() {
    let api = Api::new().await;
    let v1 = litellm(json!({
        "a": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05, "litellm_provider": "x", "mode": "chat"},
        "b": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "litellm_provider": "x", "mode": "chat"},
        "c": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "litellm_provider": "x", "mode": "chat"}
    }));
    assert_eq!(import(&api, "format=litellm", &v1).await.expect(200)["counts"]["new"], 3);
    // The operator edits `b` afterwards.
    api.put("/v1/models/b", json!({"cost_usd_per_mtok": {"input": "1.1", "output": "2"}})).await.expect(200);

    let v2 = litellm(json!({
        "a": {"input_cost_per_token": 3.3e-06, "output_cost_per_token": 1.5e-05, "litellm_provider": "x"},
        "b": {"input_cost_per_token": 1.2e-06, "output_cost_per_token": 2e-06, "litellm_provider": "x"},
        "c": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "litellm_provider": "x"}
    }));
    let dry = import(&api, "format=litellm&dry_run=true", &v2).await;
    let dry = dry.expect(200).clone();
    assert_eq!(
        dry["counts"],
        json!({"new": 0, "changed": 1, "unchanged": 1, "kept_edits": 1, "needs_force": 0,
        "skipped": 0, "filtered_out": 0})
    );
    assert_eq!(dry["models"][0]["id"], "a");
    assert_eq!(
        dry["models"][0]["changes"],
        json!([{"field": "cost_usd_per_mtok.input", "old": "3", "new": "3.3"}]),
        "the diff names the field that moved"
    );
    assert_eq!(dry["models"][0]["price_version"], Value::Null);
    assert_eq!(api.get("/v1/models/a").await.expect(200)["price_version"], 1, "a dry run writes nothing");

    let done = import(&api, "format=litellm", &v2).await;
    let done = done.expect(200);
    assert_eq!(done["models"][0]["price_version"], 2);
    assert_eq!(done["models"][1]["action"], "kept_edit");
    assert_eq!(api.get("/v1/models/a").await.expect(200)["cost_usd_per_mtok"]["input"], "3.3");
    assert_eq!(api.get("/v1/models/b").await.expect(200)["cost_usd_per_mtok"]["input"], "1.1", "the edit stays");
    assert_eq!(api.get("/v1/models/c").await.expect(200)["price_version"], 1);

    // Asked to, an import replaces the edit; then the model is the import's again.
    let overwrite = import(&api, "format=litellm&overwrite_edits=true", &v2).await;
    assert_eq!(overwrite.expect(200)["counts"]["changed"], 1);
    let b = api.get("/v1/models/b").await;
    assert_eq!(b.expect(200)["cost_usd_per_mtok"]["input"], "1.2");
    assert_eq!(b.body["price_version"], 3);
}

#[tokio::test]
async fn a_move_beyond_ten_times_refuses_the_whole_import_without_force() {
    let api = Api::new().await;
    let v1 = litellm(json!({
        "a": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05},
        "b": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}
    }));
    import(&api, "format=litellm", &v1).await.expect(200);
    // A slip of two decimal places for `a`; `b` moves honestly.
    let v2 = litellm(json!({
        "a": {"input_cost_per_token": 3e-04, "output_cost_per_token": 1.5e-05},
        "b": {"input_cost_per_token": 1.1e-06, "output_cost_per_token": 2e-06}
    }));
    let refused = import(&api, "format=litellm", &v2).await;
    let details = refused.expect_error(409, "conflict").clone();
    let report = &details["report"];
    assert_eq!(report["applied"], false);
    assert_eq!(report["counts"]["needs_force"], 1);
    let a = report["models"].as_array().unwrap().iter().find(|m| m["id"] == "a").unwrap();
    assert_eq!(a["action"], "needs_force");
    assert_eq!(a["large_moves"], json!([{"rate": "input", "old": "3", "new": "300"}]));
    // Nothing was written, not even `b`.
    assert_eq!(api.get("/v1/models/b").await.expect(200)["price_version"], 1);
    assert_eq!(api.get("/v1/models/a").await.expect(200)["price_version"], 1);

    let forced = import(&api, "format=litellm&force=true", &v2).await;
    assert_eq!(forced.expect(200)["counts"]["changed"], 2);
    assert_eq!(api.get("/v1/models/a").await.expect(200)["cost_usd_per_mtok"]["input"], "300");
}

#[tokio::test]
async fn malformed_entries_are_reported_and_skipped_whole() {
    let api = Api::new().await;
    let file = br#"{
        "good": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "some_future_field": {"x": [1]}},
        "half": {"input_cost_per_token": 1e-06, "output_cost_per_token": "2e-06"},
        "tier": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "input_cost_per_token_above_128k_tokens": -1},
        "noise": {"input_cost_per_token": 1.0000000000000001e-06, "output_cost_per_token": 2e-06},
        "list": [1, 2],
        "bad id": {"input_cost_per_token": 1e-06},
        "tokens": {"input_cost_per_token": 1e-06, "max_output_tokens": 1.5}
    }"#;
    let report = import(&api, "format=litellm", file).await;
    let report = report.expect(200);
    assert_eq!(report["counts"]["new"], 1);
    let skipped: Vec<(&str, &str)> = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(skipped.len(), 6, "{skipped:?}");
    for (id, reason) in &skipped {
        assert!(reason.starts_with("malformed: "), "{id}: {reason}");
    }
    let models = api.get("/v1/models").await;
    let ids: Vec<&str> =
        models.expect(200)["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["good"], "no part of a malformed entry is imported");
}

#[tokio::test]
async fn modelsdev_fixture_imports_per_million_prices_and_context_tiers() {
    let api = Api::new().await;
    let report = import(&api, "format=modelsdev", MODELSDEV).await;
    let report = report.expect(200).clone();
    let ids: Vec<&str> = report["models"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "anthropic/claude-sonnet-4.5",
            "claude-haiku-4-5",
            "claude-sonnet-4-5",
            "gemini-2.5-flash",
            "gemini-2.5-pro",
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4o-mini-tts",
            "gpt-5.5",
            "mistralai/mistral-small-3.2-24b-instruct:free"
        ]
    );
    let skipped: Vec<&str> = report["skipped"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(
        skipped,
        ["google/gemini-batch-experimental", "openai/whisper-1", "openrouter/meta-llama/llama-3.3-70b-instruct"]
    );

    let sonnet = api.get("/v1/models/claude-sonnet-4-5").await;
    let sonnet = sonnet.expect(200);
    assert_eq!(
        sonnet["cost_usd_per_mtok"],
        json!({"input": "3", "cache_read": "0.3", "cache_write": "3.75", "output": "15"})
    );
    assert_eq!(sonnet["tiers"][0]["above_input_tokens"], 200000);
    assert_eq!(
        sonnet["tiers"][0]["cost_usd_per_mtok"],
        json!({"input": "6", "cache_read": "0.6", "cache_write": "7.5", "output": "22.5"})
    );
    assert_eq!(sonnet["max_output_tokens"], 64000);
    // `context_over_200k` is a tier above 200,000 when there is no `tiers`.
    let gemini = api.get("/v1/models/gemini-2.5-pro").await;
    assert_eq!(gemini.expect(200)["tiers"][0]["cost_usd_per_mtok"]["cache_read"], "0.625");
    // `tiers` wins over `context_over_200k`.
    let gpt = api.get("/v1/models/gpt-5.5").await;
    let gpt = gpt.expect(200);
    assert_eq!(gpt["tiers"].as_array().unwrap().len(), 1);
    assert_eq!(gpt["tiers"][0]["above_input_tokens"], 272000);
    // `limit.output` 0 says nothing: the default stays.
    assert_eq!(api.get("/v1/models/gpt-4o-mini-tts").await.expect(200)["max_output_tokens"], 4096);

    // One provider only.
    let api = Api::new().await;
    let google = import(&api, "format=modelsdev&provider=google", MODELSDEV).await;
    let google = google.expect(200);
    assert_eq!(google["counts"]["new"], 2);
    assert_eq!(google["counts"]["skipped"], 1);
}

#[tokio::test]
async fn importing_needs_an_admin_and_a_format() {
    let api = Api::new().await;
    let created = api.post("/v1/keys", json!({"role": "gateway", "name": "gw"})).await.expect(201).clone();
    let gateway = created["secret"].as_str().unwrap().to_string();
    let resp = api.raw("POST", "/v1/model-imports?format=litellm", Some(&gateway), b"{}".to_vec(), &[]).await;
    resp.expect_error(403, "forbidden");
    import(&api, "format=csv", b"{}").await.expect_error(400, "invalid_request");
    import(&api, "format=litellm", b"[]").await.expect_error(400, "invalid_request");
    import(&api, "format=litellm&multiplier=-1", b"{}").await.expect_error(400, "invalid_request");
    let empty = import(&api, "format=litellm", b"{}").await;
    assert_eq!(empty.expect(200)["counts"]["new"], 0);
}
