//! The proxy over HTTP, on real sockets, against the stand-in provider, on
//! SQLite and PostgreSQL: the bytes a client gets, the usage each request is
//! charged, and what happens when the provider or the client fails.

mod support;

use std::time::Duration;

use creditd_core::pricing::RequestStatus;
use creditd_proxy::standin::{self, OUTPUT_TOKENS};
use creditd_testing::Backend;
use serde_json::{Value, json};
use support::*;

/// Each test runs on both backends.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(Backend::Postgres).await
            }
        }
    )*};
}

on_both_backends!(
    whole_answers_pass_through_and_are_charged_their_usage,
    streams_pass_through_byte_for_byte_and_are_charged_once,
    a_stream_without_usage_is_charged_its_counted_output,
    a_stream_broken_mid_way_is_charged_what_was_delivered,
    a_client_that_disconnects_is_charged_what_was_delivered,
    an_upstream_refusal_releases_the_hold,
    refusals_come_in_the_providers_shape_and_nothing_goes_upstream,
    proxy_keys_are_created_listed_used_and_revoked,
);

fn chat_body(model: &str, text: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 100, "stream": stream})
}

fn responses_body(model: &str, text: &str, stream: bool) -> Value {
    json!({"model": model, "input": text, "max_output_tokens": 100, "stream": stream})
}

fn messages_body(model: &str, text: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": text}], "stream": stream})
}

/// (path on creditd, body, uses the Anthropic key header)
fn endpoints(text: &str, stream: bool) -> Vec<(&'static str, Value, bool)> {
    vec![
        ("/openai/v1/chat/completions", chat_body(GPT, text, stream), false),
        ("/openai/v1/responses", responses_body(GPT, text, stream), false),
        ("/anthropic/v1/messages", messages_body(CLAUDE, text, stream), true),
    ]
}

async fn post(h: &Harness, path: &str, body: &Value, anthropic: bool) -> reqwest::Response {
    let request = h.http.post(h.proxy_url(path)).json(body);
    let request = if anthropic {
        request.header("x-api-key", &h.token).header("anthropic-version", "2023-06-01")
    } else {
        request.bearer_auth(&h.token)
    };
    request.header("x-creditd-project", "proj_a").header("x-creditd-conversation", "conv_1").send().await.expect("send")
}

fn request_id(response: &reqwest::Response) -> String {
    response.headers()["x-creditd-request-id"].to_str().expect("text").to_string()
}

/// What the stand-in charges, by the provider.
fn expected_usage(anthropic: bool) -> (u64, u64, u64, u64, &'static str) {
    if anthropic {
        (
            standin::ANTHROPIC_INPUT_TOKENS,
            standin::ANTHROPIC_CACHE_READ_TOKENS,
            standin::ANTHROPIC_CACHE_WRITE_TOKENS,
            OUTPUT_TOKENS,
            // 32 × 3 + 4 × 0.3 + 6 × 3.75 + 9 × 15 = 254.7 µ$ → 0.02547 credits
            "0.02547",
        )
    } else {
        (
            standin::OPENAI_PROMPT_TOKENS - standin::OPENAI_CACHED_TOKENS,
            standin::OPENAI_CACHED_TOKENS,
            0,
            OUTPUT_TOKENS,
            // 32 × 2.5 + 10 × 1.25 + 9 × 10 = 182.5 µ$ → 0.01825 credits
            "0.01825",
        )
    }
}

async fn whole_answers_pass_through_and_are_charged_their_usage(backend: Backend) {
    let h = Harness::start(backend, "10").await;
    for (i, (path, mut body, anthropic)) in endpoints("hello", false).into_iter().enumerate() {
        let tag = format!("whole{i}");
        body["metadata_tag"] = json!(format!("tag:{tag}"));
        let response = post(&h, path, &body, anthropic).await;
        assert_eq!(response.status(), 200, "{path}");
        let id = request_id(&response);
        assert!(id.starts_with("px_"), "{id}");
        let credits = response.headers()["x-creditd-credits"].to_str().unwrap().to_string();
        let available = response.headers()["x-creditd-available"].to_str().unwrap().to_string();
        let got = response.bytes().await.expect("body");
        let seen = h.standin.tagged(&tag).expect("the stand-in saw it");
        assert_eq!(got.to_vec(), seen.sent(), "{path}: the client gets the provider's bytes");
        // The operator's key went upstream, never the client's.
        if anthropic {
            assert_eq!(seen.headers["x-api-key"], UPSTREAM_ANTHROPIC_KEY);
        } else {
            assert_eq!(seen.headers["authorization"], format!("Bearer {UPSTREAM_OPENAI_KEY}"));
        }
        assert!(seen.headers.get("x-creditd-project").is_none());

        let record = h.record(&id).await.expect("settled before the answer");
        let (input, cache_read, cache_write, output, price) = expected_usage(anthropic);
        assert_eq!(record.status, RequestStatus::Success);
        assert_eq!(record.usage.input_tokens, input, "{path}");
        assert_eq!(record.usage.cache_read_tokens, cache_read, "{path}");
        assert_eq!(record.usage.cache_write_tokens, cache_write, "{path}");
        assert_eq!(record.usage.output_tokens, output, "{path}");
        assert_eq!(record.credits.to_string(), price, "{path}");
        assert_eq!(credits, price);
        assert_eq!(record.details.project.as_deref(), Some("proj_a"));
        assert_eq!(record.details.conversation.as_deref(), Some("conv_1"));
        assert_eq!(proxy_meta(&record)["estimated"], false);
        assert_eq!(h.balance().await["available"], available, "{path}: x-creditd-available is the balance after");
    }
    assert_eq!(h.records().await.len(), 3, "each request charged once");
    assert_eq!(h.held().await, "0");
}

async fn streams_pass_through_byte_for_byte_and_are_charged_once(backend: Backend) {
    let h = Harness::start(backend, "10").await;
    let mut expected_records = 0;
    for client_wants_usage in [false, true] {
        for (i, (path, mut body, anthropic)) in endpoints("hello", true).into_iter().enumerate() {
            if client_wants_usage && path != "/openai/v1/chat/completions" {
                continue;
            }
            let tag = format!("stream{i}{client_wants_usage}");
            body["metadata_tag"] = json!(format!("tag:{tag}"));
            if client_wants_usage {
                body["stream_options"] = json!({"include_usage": true});
            }
            let response = post(&h, path, &body, anthropic).await;
            assert_eq!(response.status(), 200, "{path}");
            assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
            assert!(response.headers().get("x-creditd-held").is_some());
            let id = request_id(&response);
            let got = response.bytes().await.expect("body").to_vec();
            let seen = h.standin.tagged(&tag).expect("seen");
            let sent = seen.sent();
            if path == "/openai/v1/chat/completions" {
                // The proxy always asks for the usage chunk.
                assert_eq!(seen.body["stream_options"]["include_usage"], true);
            }
            if path == "/openai/v1/chat/completions" && !client_wants_usage {
                assert_ne!(got, sent);
                assert_eq!(got, without_event(&sent, "\"choices\":[]"), "only the usage chunk is left out");
            } else {
                assert_eq!(got, sent, "{path}: byte for byte");
            }
            let record = h.wait_record(&id).await;
            expected_records += 1;
            let (input, cache_read, cache_write, output, price) = expected_usage(anthropic);
            assert_eq!(record.status, RequestStatus::Success, "{path}");
            assert_eq!(
                (record.usage.input_tokens, record.usage.cache_read_tokens, record.usage.cache_write_tokens),
                (input, cache_read, cache_write),
                "{path}"
            );
            assert_eq!(record.usage.output_tokens, output, "{path}: cumulative counts replace, never add");
            assert_eq!(record.credits.to_string(), price, "{path}");
            assert_eq!(proxy_meta(&record)["estimated"], false);
            assert_eq!(proxy_meta(&record)["stream"], true);
        }
    }
    assert_eq!(h.records().await.len(), expected_records);
    assert_eq!(h.held().await, "0");
}

/// The reply's 9 words are 10 tokens in `o200k_base`.
const REPLY_TOKENS_O200K: u64 = 10;

async fn a_stream_without_usage_is_charged_its_counted_output(backend: Backend) {
    let h = Harness::start(backend, "10").await;
    for (path, body, anthropic) in endpoints("scenario:omit_usage", true) {
        let response = post(&h, path, &body, anthropic).await;
        assert_eq!(response.status(), 200);
        let id = request_id(&response);
        let _ = response.bytes().await.expect("body");
        let record = h.wait_record(&id).await;
        assert_eq!(record.status, RequestStatus::Success);
        assert_eq!(proxy_meta(&record)["estimated"], true, "{path}");
        assert_eq!(proxy_meta(&record)["ending"], "no_usage");
        let output = if anthropic { (REPLY_TOKENS_O200K * 120).div_ceil(100) } else { REPLY_TOKENS_O200K };
        assert_eq!(record.usage.output_tokens, output, "{path}");
        assert!(record.usage.input_tokens > 0, "{path}: the input estimate");
        assert!(record.credits.is_positive(), "{path}: never a zero charge for delivered tokens");
    }
    assert_eq!(h.held().await, "0");
}

async fn a_stream_broken_mid_way_is_charged_what_was_delivered(backend: Backend) {
    let h = Harness::start(backend, "10").await;
    for scenario in ["fail_mid", "error_event"] {
        for (path, body, anthropic) in endpoints(&format!("scenario:{scenario}"), true) {
            let response = post(&h, path, &body, anthropic).await;
            assert_eq!(response.status(), 200, "{path} {scenario}");
            let id = request_id(&response);
            let got = response.bytes().await;
            if scenario == "fail_mid" {
                assert!(got.is_err(), "{path}: a broken stream is cut short for the client too");
            }
            let record = h.wait_record(&id).await;
            assert_eq!(record.status, RequestStatus::Cancelled, "{path} {scenario}");
            assert_eq!(proxy_meta(&record)["ending"], "upstream_error");
            // "The quick brown" is 3 tokens.
            let delivered = if anthropic { (3u64 * 120).div_ceil(100) } else { 3 };
            assert_eq!(record.usage.output_tokens, delivered, "{path} {scenario}");
            if anthropic {
                // message_start said what the input was.
                assert_eq!(record.usage.input_tokens, standin::ANTHROPIC_INPUT_TOKENS);
                assert_eq!(record.usage.cache_write_tokens, standin::ANTHROPIC_CACHE_WRITE_TOKENS);
            }
            assert!(record.credits.is_positive());
            assert_eq!(proxy_meta(&record)["estimated"], true);
        }
    }
    assert_eq!(h.held().await, "0");
}

async fn a_client_that_disconnects_is_charged_what_was_delivered(backend: Backend) {
    let h = Harness::start(backend, "10").await;
    for (path, body, anthropic) in endpoints("scenario:stall", true) {
        let mut response = post(&h, path, &body, anthropic).await;
        assert_eq!(response.status(), 200);
        let id = request_id(&response);
        // Read until the third word, then hang up.
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("brown") {
            let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk()).await.expect("in time");
            got.extend_from_slice(&chunk.expect("chunk").expect("more"));
        }
        drop(response);
        let record = h.wait_record(&id).await;
        assert_eq!(record.status, RequestStatus::Cancelled, "{path}");
        assert_eq!(proxy_meta(&record)["ending"], "client_disconnected");
        assert_eq!(proxy_meta(&record)["estimated"], true);
        let delivered = if anthropic { (3u64 * 120).div_ceil(100) } else { 3 };
        assert_eq!(record.usage.output_tokens, delivered, "{path}");
        assert!(record.usage.input_tokens > 0);
        assert!(record.credits.is_positive());
    }
    assert_eq!(h.held().await, "0");
}

async fn an_upstream_refusal_releases_the_hold(backend: Backend) {
    let h = Harness::start(backend, "10").await;
    let before = h.balance().await["available"].clone();
    for stream in [false, true] {
        for (path, body, anthropic) in endpoints("scenario:upstream_429", stream) {
            let response = post(&h, path, &body, anthropic).await;
            assert_eq!(response.status(), 429, "{path}");
            assert_eq!(response.headers()["retry-after"], "7");
            assert!(response.headers().get("x-creditd-request-id").is_some());
            let body: Value = response.json().await.expect("json");
            if anthropic {
                assert_eq!(body["error"]["type"], "rate_limit_error", "the provider's own body");
            } else {
                assert_eq!(body["error"]["message"], "Rate limit reached for requests");
            }
        }
    }
    assert!(h.records().await.is_empty(), "nothing charged");
    assert_eq!(h.held().await, "0");
    assert_eq!(h.balance().await["available"], before);
}

async fn refusals_come_in_the_providers_shape_and_nothing_goes_upstream(backend: Backend) {
    let h = Harness::start(backend, "0").await;
    // No credits: 402.
    for (path, body, anthropic) in endpoints("hello", false) {
        let response = post(&h, path, &body, anthropic).await;
        assert_eq!(response.status(), 402, "{path}");
        let body: Value = response.json().await.expect("json");
        if anthropic {
            assert_eq!(body["type"], "error");
            assert_eq!(body["error"]["type"], "billing_error");
        } else {
            assert_eq!(body["error"]["type"], "insufficient_quota");
            assert_eq!(body["error"]["code"], "insufficient_credits");
        }
    }
    // Unknown model: 400, never a free call.
    let response = post(&h, "/openai/v1/chat/completions", &chat_body("gpt-unknown", "hi", false), false).await;
    assert_eq!(response.status(), 400);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "unknown_model");
    // A bad key: 401.
    let response = h
        .http
        .post(h.proxy_url("/anthropic/v1/messages"))
        .header("x-api-key", "ct_nope_nope")
        .json(&messages_body(CLAUDE, "hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["type"], "authentication_error");
    assert!(h.standin.seen().is_empty(), "no byte went upstream");
    assert!(h.records().await.is_empty());
}

async fn proxy_keys_are_created_listed_used_and_revoked(backend: Backend) {
    let h = Harness::start(backend, "10").await;
    let path = format!("/v1/accounts/{ACCOUNT}/proxy-keys");
    let (status, created) = h.admin("POST", &path, Some(json!({"name": "laptop"}))).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with(&format!("cp_{id}_")), "{secret}");
    assert_eq!(created["account_id"], ACCOUNT);
    assert_eq!(created["last_used_at"], Value::Null);
    let (status, _) = h.admin("POST", "/v1/accounts/nobody/proxy-keys", Some(json!({}))).await;
    assert_eq!(status, 404);

    // The key works as an SDK's API key, both ways of sending it.
    for anthropic in [false, true] {
        let (path, body) = if anthropic {
            ("/anthropic/v1/messages", messages_body(CLAUDE, "hi", false))
        } else {
            ("/openai/v1/chat/completions", chat_body(GPT, "hi", false))
        };
        let request = h.http.post(h.proxy_url(path)).json(&body);
        let request = if anthropic { request.header("x-api-key", &secret) } else { request.bearer_auth(&secret) };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        h.wait_record(&request_id(&response)).await;
    }
    // Its use is recorded (in the background, at most once a minute).
    let mut listed = Value::Null;
    for _ in 0..100 {
        let (status, list) = h.admin("GET", &path, None).await;
        assert_eq!(status, 200);
        listed = list["data"][0].clone();
        if listed["last_used_at"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed["id"], id.as_str());
    assert!(listed["last_used_at"].is_string(), "{listed}");
    assert!(listed.get("secret").is_none(), "no secret in lists");

    // Revoked: refused at once, still listed.
    let (status, _) = h.admin("DELETE", &format!("{path}/{id}"), None).await;
    assert_eq!(status, 204);
    let response =
        h.http.post(h.proxy_url("/openai/v1/chat/completions")).bearer_auth(&secret).json(&chat_body(GPT, "hi", false));
    let response = response.send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["type"], "authentication_error");
    let (_, list) = h.admin("GET", &path, None).await;
    assert!(list["data"][0]["revoked_at"].is_string());
    let (status, _) = h.admin("DELETE", &format!("{path}/nope"), None).await;
    assert_eq!(status, 404);
    assert_eq!(h.records().await.len(), 2);
}

/// The routes `openapi.json` documents under the tag `proxy` are exactly
/// the proxy's, and a provider without an upstream answers what it says:
/// `404 not_found` in the provider's shape to a valid key, `401` without
/// one (what the fuzz suite, which configures no upstream and sends an
/// admin key, gets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_routes_answer_404_in_the_providers_shape_without_an_upstream() {
    let doc: Value = serde_json::from_str(creditd_server::openapi::SPEC).expect("openapi.json");
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op["tags"][0] == "proxy" {
                documented.insert((method.to_uppercase(), path.clone()));
                let refusal = &op["responses"]["404"]["$ref"];
                assert!(refusal.as_str().is_some_and(|r| r.ends_with("NotFound")), "{path}: {refusal}");
            }
        }
    }
    let served: std::collections::BTreeSet<_> =
        creditd_proxy::routes().into_iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, served);

    let h = Harness::start_with(Backend::Sqlite, "10", |config| {
        config.openai = None;
        config.anthropic = None;
    })
    .await;
    for (path, body, anthropic) in endpoints("hello", false) {
        for key in [None, Some(ADMIN), Some("ct_nope_nope")] {
            let mut request = h.http.post(h.proxy_url(path)).json(&body);
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.expect("send");
            assert_eq!(response.status(), 401, "{path} {key:?}");
            let body: Value = response.json().await.expect("json");
            assert_eq!(body["error"]["type"], "authentication_error", "{body}");
        }
        let request = h.http.post(h.proxy_url(path)).json(&body);
        let request = if anthropic { request.header("x-api-key", &h.token) } else { request.bearer_auth(&h.token) };
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["x-should-retry"], "false");
        let body: Value = response.json().await.expect("json");
        let error = &body["error"];
        assert_eq!(error["code"], "not_found", "{body}");
        assert_eq!(error["type"], "not_found_error", "{body}");
        let name = if anthropic { "anthropic" } else { "openai" };
        assert!(error["message"].as_str().unwrap().contains(&format!("[proxy.upstreams.{name}]")), "{body}");
        if anthropic {
            assert_eq!(body["type"], "error");
        } else {
            assert_eq!(error["param"], Value::Null);
        }
    }
    assert!(h.standin.seen().is_empty());
    assert_eq!(h.held().await, "0");
    assert!(h.records().await.is_empty());
}

/// The proxy's routes are served under the API's layers: each request is
/// counted in `/metrics` under its route's template (never the path, the
/// account or the model a client sent), and a method other than `POST` is
/// `405` with `Allow` and the provider's error JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_requests_are_counted_by_route_template_and_405s_answer_in_the_providers_shape() {
    let h = Harness::start(Backend::Sqlite, "10").await;
    let metrics = || async { h.http.get(h.proxy_url("/metrics")).send().await.unwrap().text().await.unwrap() };
    let chat = [("method", "POST"), ("route", "/openai/v1/chat/completions"), ("status", "200")];
    let messages = [("method", "POST"), ("route", "/anthropic/v1/messages"), ("status", "200")];
    let unknown = [("method", "GET"), ("route", "/openai/{*rest}"), ("status", "404")];
    let not_allowed = [("method", "GET"), ("route", "/openai/v1/responses"), ("status", "405")];
    let total = "creditd_http_requests_total";
    let before = metrics().await;

    // A whole answer, a stream (the time is to its head; the count is there
    // once the answer is), an unknown path under /openai/.
    let response = post(&h, "/openai/v1/chat/completions", &chat_body("gpt-4o-2024-08-06", "hi", false), false).await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let response = post(&h, "/anthropic/v1/messages", &messages_body(CLAUDE, "hi", true), true).await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let secret_path = format!("/openai/v1/models/attacker-{}", uuid::Uuid::now_v7().simple());
    let response = h.http.get(h.proxy_url(&secret_path)).bearer_auth(&h.token).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.json::<Value>().await.unwrap()["error"]["type"], "not_found_error");

    // 405, each provider's shape, with Allow; nothing goes upstream.
    for (method, path, anthropic) in [
        (reqwest::Method::GET, "/openai/v1/responses", false),
        (reqwest::Method::DELETE, "/openai/v1/chat/completions", false),
        (reqwest::Method::PUT, "/anthropic/v1/messages", true),
    ] {
        let response = h.http.request(method.clone(), h.proxy_url(path)).bearer_auth(&h.token).send().await.unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(response.headers()["allow"], "POST", "{method} {path}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["x-should-retry"], "false");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains(&format!("does not take {method}")), "{body}");
        if anthropic {
            assert_eq!(body["type"], "error");
        } else {
            assert_eq!(body["error"]["param"], Value::Null);
        }
    }
    // HEAD: 405 with Allow, no body.
    let response = h.http.head(h.proxy_url("/anthropic/v1/messages")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");

    // Other tests of this process count too: at least ours.
    let after = metrics().await;
    for labels in [&chat[..], &messages, &unknown, &not_allowed] {
        let added = counter(&after, total, labels) - counter(&before, total, labels);
        assert!(added >= 1.0, "{labels:?}: {added}\n{after}");
    }
    let timed = [("route", "/openai/v1/chat/completions"), ("status", "200")];
    assert!(counter(&after, "creditd_http_request_duration_seconds_count", &timed) >= 1.0, "{after}");
    for tainted in [secret_path.as_str(), "attacker-", ACCOUNT, "gpt-4o", CLAUDE, &h.token] {
        assert!(!after.contains(tainted), "{tainted} in /metrics");
    }
    assert!(h.standin.seen().len() == 2, "only the two POSTs went upstream");
}

/// A request body that does not arrive within the API's body read timeout
/// is `408 request_timeout` in the provider's shape: nothing held, nothing
/// sent upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_the_body_read_timeout_is_408_in_the_providers_shape() {
    let h = Harness::start_configured(
        Backend::Sqlite,
        "10",
        |_| {},
        |server| server.body_read_timeout = Some(Duration::from_millis(500)),
    )
    .await;
    for anthropic in [false, true] {
        let (path, body) = if anthropic {
            ("/anthropic/v1/messages", messages_body(CLAUDE, "hi", false))
        } else {
            ("/openai/v1/chat/completions", chat_body(GPT, "hi", false))
        };
        let text = body.to_string();
        let half = bytes::Bytes::copy_from_slice(&text.as_bytes()[..text.len() / 2]);
        use futures_util::StreamExt;
        let trickle =
            futures_util::stream::iter([Ok::<_, std::io::Error>(half)]).chain(futures_util::stream::pending());
        let request = h
            .http
            .post(h.proxy_url(path))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(trickle));
        let request = if anthropic { request.header("x-api-key", &h.token) } else { request.bearer_auth(&h.token) };
        let response = tokio::time::timeout(Duration::from_secs(30), request.send()).await.expect("answered").unwrap();
        assert_eq!(response.status(), 408, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "request_timeout", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(body["type"] == "error", anthropic, "{body}");
    }
    assert!(h.standin.seen().is_empty());
    assert_eq!(h.held().await, "0");
    assert!(h.records().await.is_empty());
}

/// A panic on a provider's route is answered `500 internal` in that
/// provider's error JSON by the provider's own net (`provider_layers`, what
/// the proxy's routes are built with), under the API's layers, which count
/// it; the panic's message is never sent. No production route can be made
/// to panic: the route here exists in this test only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_on_a_provider_route_is_a_500_in_the_providers_shape() {
    use axum::routing::post as route_post;
    use creditd_proxy::decode::Provider;

    async fn boom() -> &'static str {
        panic!("secret detail of a bug")
    }
    let h = Harness::start(Backend::Sqlite, "10").await;
    let app = creditd_server::App::new(
        h.store.clone(),
        std::sync::Arc::new(creditd_store::ManualClock::new("2026-03-01T00:00:00Z".parse().unwrap())),
        None,
        creditd_server::ServerConfig::default(),
    );
    let openai: axum::Router = axum::Router::new().route("/openai/v1/boom", route_post(boom));
    let anthropic: axum::Router = axum::Router::new().route("/anthropic/v1/boom", route_post(boom));
    let router = app.router_with(creditd_server::Mounted {
        router: creditd_proxy::provider_layers(openai, Provider::OpenAi)
            .merge(creditd_proxy::provider_layers(anthropic, Provider::Anthropic)),
        patterns: &["/openai/v1/boom", "/anthropic/v1/boom"],
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let labels = [("method", "POST"), ("route", "/openai/v1/boom"), ("status", "500")];
    let metrics = || async { h.http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap() };
    let before = counter(&metrics().await, "creditd_http_requests_total", &labels);
    for anthropic in [false, true] {
        let path = if anthropic { "/anthropic/v1/boom" } else { "/openai/v1/boom" };
        let response = h.http.post(format!("{base}{path}")).send().await.expect("an answer, not a dropped connection");
        assert_eq!(response.status(), 500, "{path}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["x-should-retry"], "true");
        let body: Value = response.json().await.unwrap();
        assert!(!body.to_string().contains("secret detail"), "{body}");
        assert_eq!(body["error"]["code"], "internal", "{body}");
        assert_eq!(body["error"]["type"], "api_error", "{body}");
        assert_eq!(body["type"] == "error", anthropic, "{body}");
        assert!(body["error"].get("details").is_none(), "not creditd's shape: {body}");
    }
    let after = counter(&metrics().await, "creditd_http_requests_total", &labels);
    assert!(after - before >= 1.0, "counted: {before} → {after}");
    server.abort();
}
