//! The official `openai` and `anthropic` Python SDKs, unchanged, against the
//! proxy on a real socket (the real API router with the proxy mounted) in
//! front of the stand-in provider, on SQLite and PostgreSQL
//! (`tests/sdk/drive.py` makes the calls). Checks: the SDK receives exactly
//! the stand-in's bytes; every request is charged exactly once with the
//! right usage; a mid-stream disconnect charges the delivered part;
//! refusals raise the SDKs' usual exception types.
//!
//! The interpreter is `CREDITD_TEST_PYTHON` (scripts/test sets it to
//! target/test-venv, made by scripts/test-deps). Without it the test is
//! skipped with a message, except under `CI=true`, where it fails.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;

use base64::Engine as _;
use creditd_core::pricing::RequestStatus;
use creditd_proxy::standin;
use creditd_testing::Backend;
use serde_json::{Value, json};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_on_sqlite() {
    sdks(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_on_postgres() {
    sdks(Backend::Postgres).await;
}

/// The interpreter with the SDKs, or `None` (outside CI) to skip.
pub fn python() -> Option<String> {
    match std::env::var("CREDITD_TEST_PYTHON") {
        Ok(path) if !path.is_empty() => {
            assert!(
                std::path::Path::new(&path).exists(),
                "CREDITD_TEST_PYTHON={path} does not exist (scripts/test-deps)"
            );
            Some(path)
        }
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CREDITD_TEST_PYTHON is not set: under CI the SDK tests must run (scripts/test sets it)")
        }
        _ => {
            eprintln!("skipped: CREDITD_TEST_PYTHON is not set (run scripts/test-deps, then scripts/test)");
            None
        }
    }
}

async fn token(h: &Harness, account: &str) -> String {
    let (status, body) = h.admin("POST", &format!("/v1/accounts/{account}/tokens"), Some(json!({}))).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().expect("token").to_string()
}

async fn account(h: &Harness, id: &str, promo: Option<&str>) {
    let (status, body) = h.admin("POST", "/v1/accounts", Some(json!({"id": id}))).await;
    assert_eq!(status, 201, "{body}");
    if let Some(amount) = promo {
        let (status, body) = h
            .admin("POST", &format!("/v1/accounts/{id}/grants"), Some(json!({"amount": amount, "kind": "promo"})))
            .await;
        assert_eq!(status, 201, "{body}");
    }
}

async fn sdks(backend: Backend) {
    let Some(python) = python() else { return };
    let h = Harness::start(backend, "10").await;
    // The free plan allows one request a minute (a positive wallet skips
    // that check, so the main account is not limited).
    let (status, body) = h
        .admin(
            "PUT",
            "/v1/plans/free",
            Some(json!({"name": "Free", "price_usd": "0", "monthly_credits": "0", "rate_per_minute": 1,
                "model_access": "all"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    account(&h, "u_empty", None).await;
    account(&h, "u_limited", Some("10")).await;
    account(&h, "u_suspended", Some("10")).await;
    let (status, _) = h.admin("POST", "/v1/accounts/u_suspended/suspend", Some(json!({}))).await;
    assert_eq!(status, 200);
    let (empty, limited, suspended) =
        (token(&h, "u_empty").await, token(&h, "u_limited").await, token(&h, "u_suspended").await);

    // The main account's SDKs use a proxy key; the others account tokens.
    let (status, key) =
        h.admin("POST", &format!("/v1/accounts/{ACCOUNT}/proxy-keys"), Some(json!({"name": "sdk"}))).await;
    assert_eq!(status, 201, "{key}");
    let proxy_key = key["secret"].as_str().expect("secret").to_string();
    let script = format!("{}/tests/sdk/drive.py", env!("CARGO_MANIFEST_DIR"));
    let args = [script, h.base.clone(), proxy_key, empty, limited, suspended];
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python).args(&args).stdin(Stdio::null()).output()
    })
    .await
    .expect("join")
    .expect("running the SDK driver");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut cases: BTreeMap<String, Value> = BTreeMap::new();
    for line in stdout.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}\nstderr: {stderr}"));
        cases.insert(v["case"].as_str().expect("case").to_string(), v);
    }
    let failures: Vec<&Value> = cases.values().filter(|v| v.get("failure").is_some()).collect();
    for f in &failures {
        eprintln!("{}: {}", f["case"], f["failure"].as_str().unwrap_or(""));
    }
    assert!(output.status.success() && failures.is_empty(), "the SDK driver failed\nstderr: {stderr}");
    assert_eq!(cases["done"]["failed"], 0);
    eprintln!("SDK versions: {}", cases["done"]["versions"]);

    // The SDKs received exactly the stand-in's bytes.
    for case in [
        "chat_whole",
        "chat_stream_raw",
        "responses_whole",
        "responses_stream_raw",
        "messages_whole",
        "messages_stream_raw",
    ] {
        let got =
            base64::engine::general_purpose::STANDARD.decode(cases[case]["raw"].as_str().expect("raw")).expect("b64");
        let sent = h.standin.tagged(case).unwrap_or_else(|| panic!("{case}: the stand-in saw it")).sent();
        let expected = if case == "chat_stream_raw" { without_event(&sent, "\"choices\":[]") } else { sent };
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&expected), "{case}: the stand-in's bytes");
    }

    // Every request charged exactly once, with the provider's usage.
    let success = [
        ("chat_whole", false),
        ("chat_stream_raw", false),
        ("chat_stream_sdk", false),
        ("chat_stream_usage", false),
        ("responses_whole", false),
        ("responses_stream_raw", false),
        ("responses_stream_sdk", false),
        ("messages_whole", true),
        ("messages_stream_raw", true),
        ("messages_stream_sdk", true),
    ];
    let mut expected_ids = BTreeSet::new();
    for (case, anthropic) in success {
        let id = cases[case]["request_id"].as_str().unwrap_or_else(|| panic!("{case}: a request id")).to_string();
        let record = h.wait_record(&id).await;
        assert_eq!(record.status, RequestStatus::Success, "{case}");
        let usage = &record.usage;
        let got = (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens, usage.output_tokens);
        let want = if anthropic {
            (
                standin::ANTHROPIC_INPUT_TOKENS,
                standin::ANTHROPIC_CACHE_READ_TOKENS,
                standin::ANTHROPIC_CACHE_WRITE_TOKENS,
                9,
            )
        } else {
            (standin::OPENAI_PROMPT_TOKENS - standin::OPENAI_CACHED_TOKENS, standin::OPENAI_CACHED_TOKENS, 0, 9)
        };
        assert_eq!(got, want, "{case}");
        assert_eq!(record.credits.to_string(), if anthropic { "0.02547" } else { "0.01825" }, "{case}");
        assert_eq!(record.details.project.as_deref(), Some("sdk"));
        assert_eq!(record.details.conversation.as_deref(), Some("conv-sdk"));
        if let Some(credits) = cases[case]["credits"].as_str() {
            assert_eq!(credits, record.credits.to_string(), "{case}: x-creditd-credits");
        }
        expected_ids.insert(id);
    }

    // A disconnect mid-stream charges the delivered part.
    for (case, anthropic) in [("disconnect_chat", false), ("disconnect_messages", true)] {
        let id = cases[case]["request_id"].as_str().expect("request id").to_string();
        let record = h.wait_record(&id).await;
        assert_eq!(record.status, RequestStatus::Cancelled, "{case}");
        let meta = proxy_meta(&record);
        assert_eq!(meta["ending"], "client_disconnected", "{case}");
        let words = cases[case]["words"].as_u64().expect("words");
        assert_eq!(words, 3);
        // Each word is a token; Claude's counts are ×1.2, rounded up.
        let at_least = if anthropic { (words * 120).div_ceil(100) } else { words };
        assert!(
            (at_least..standin::OUTPUT_TOKENS).contains(&record.usage.output_tokens),
            "{case}: {} output tokens charged for {words} words read",
            record.usage.output_tokens
        );
        if anthropic {
            // message_start gave the input: the provider's count, not an estimate.
            assert_eq!(record.usage.input_tokens, standin::ANTHROPIC_INPUT_TOKENS);
        }
        assert!(record.credits.is_positive(), "{case}");
        expected_ids.insert(id);
    }
    let charged: BTreeSet<String> = h.records().await.into_iter().map(|r| r.request_id).collect();
    assert_eq!(charged, expected_ids, "exactly the requests made, each once");

    // Refusals raise the SDKs' usual exceptions.
    let refusals = [
        ("openai_402", "APIStatusError", 402),
        ("anthropic_402", "PaymentRequiredError", 402),
        ("openai_401", "AuthenticationError", 401),
        ("anthropic_401", "AuthenticationError", 401),
        ("openai_400_unknown_model", "BadRequestError", 400),
        ("openai_403", "PermissionDeniedError", 403),
        ("anthropic_403", "PermissionDeniedError", 403),
        ("openai_429", "RateLimitError", 429),
        ("anthropic_429", "RateLimitError", 429),
        ("upstream_429", "RateLimitError", 429),
        ("upstream_500", "InternalServerError", 500),
    ];
    for (case, error, status) in refusals {
        assert_eq!(cases[case]["error"], error, "{case}");
        assert_eq!(cases[case]["status"], status, "{case}");
    }
    assert!(cases["openai_429"]["retry_after"].as_str().is_some_and(|s| s.parse::<u64>().is_ok()));
    assert_eq!(cases["upstream_429"]["retry_after"], "7", "the provider's Retry-After passes through");
    assert!(cases["upstream_429"]["request_id"].is_string());
    // Refused requests cost nothing and leave no hold.
    for id in ["u_empty", "u_suspended"] {
        let page = creditd_store::Page { limit: 10, cursor: None };
        assert!(h.store.usage(id, Default::default(), page).await.unwrap().data.is_empty(), "{id}");
    }
    let page = creditd_store::Page { limit: 10, cursor: None };
    assert_eq!(h.store.usage("u_limited", Default::default(), page).await.unwrap().data.len(), 1);
    for id in [ACCOUNT, "u_empty", "u_limited", "u_suspended"] {
        let (_, balance) = h.admin("GET", &format!("/v1/accounts/{id}/balance"), None).await;
        assert_eq!(balance["held"], "0", "{id}: no hold left open");
    }
}
