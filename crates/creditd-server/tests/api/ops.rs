//! Operations: health, metrics, OpenAPI, test clock, unknown routes, body size.

use std::collections::BTreeSet;

use creditd_server::App;
use serde_json::{Value, json};

use crate::support::{Api, SONNET, config};

#[tokio::test]
async fn healthz_needs_no_key() {
    let api = Api::new().await;
    let r = api.call("GET", "/healthz", None, None).await;
    assert_eq!(r.expect(200), &json!({"status": "ok"}));
}

#[tokio::test]
async fn metrics_count_routes_without_account_ids() {
    let api = Api::new().await;
    api.sonnet().await;
    api.account("acct_secret_7").await;
    api.grant("acct_secret_7", "10").await;
    api.get("/v1/accounts/acct_secret_7/balance").await.expect(200);
    api.authorize("acct_secret_7", "r1", 1, 1).await.expect(201);
    api.authorize("acct_secret_7", "r2", 1_000_000, 1_000_000).await.expect_error(402, "insufficient_credits");
    let r = api.call("GET", "/metrics", None, None).await;
    assert_eq!(r.status.as_u16(), 200);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = String::from_utf8(r.raw.to_vec()).unwrap();
    assert!(text.contains("creditd_http_requests_total{"), "{text}");
    assert!(text.contains(r#"route="/v1/accounts/{id}/balance""#), "{text}");
    assert!(text.contains(r#"status="200""#), "{text}");
    assert!(text.contains("creditd_http_request_duration_seconds_bucket{"), "latency is a histogram: {text}");
    assert!(text.contains(r#"creditd_metering_total{call="authorize",result="ok"}"#), "{text}");
    assert!(text.contains(r#"creditd_metering_total{call="authorize",result="insufficient_credits"}"#), "{text}");
    assert!(!text.contains("acct_secret_7"), "no account id in metrics");
}

#[tokio::test]
async fn unknown_routes_are_json_404s() {
    let api = Api::new().await;
    api.call("GET", "/nope", None, None).await.expect_error(404, "not_found");
    api.get("/v1/accounts/u_1/nothing").await.expect_error(404, "not_found");
    // A known path with another method is a 405 (`a_wrong_method_is_405_with_allow`).
    api.call("GET", "/v1/authorize", Some(&api.admin), None).await.expect_error(405, "method_not_allowed");
    api.call("DELETE", "/v1/accounts", Some(&api.admin), None).await.expect_error(405, "method_not_allowed");
}

#[tokio::test]
async fn bodies_over_64_kib_are_refused() {
    let api = Api::new().await;
    let admin = api.admin.clone();
    let big = serde_json::to_vec(&json!({"id": "u_1", "metadata": {"x": "y".repeat(70 * 1024)}})).unwrap();
    // Read until the limit (no Content-Length: the harness sends none)…
    let r = api.raw("POST", "/v1/accounts", Some(&admin), big.clone(), &[]).await;
    r.expect_error(413, "payload_too_large");
    // …or refused on its declared length.
    let length = big.len().to_string();
    let r = api.raw("POST", "/v1/accounts", Some(&admin), big, &[("content-length", &length)]).await;
    r.expect_error(413, "payload_too_large");
    // Metering calls too.
    let big = serde_json::to_vec(
        &json!({"account_id": "u_1", "request_id": "r", "model": "m", "pad": "y".repeat(65 * 1024)}),
    )
    .unwrap();
    api.raw("POST", "/v1/authorize", Some(&admin), big, &[]).await.expect_error(413, "payload_too_large");
    // Just under the limit is parsed (and refused for its metadata size, not its body size).
    let near = json!({"id": "u_1", "metadata": {"x": "y".repeat(60 * 1024)}});
    api.post("/v1/accounts", near).await.expect_error(400, "invalid_request");
    assert_eq!(api.get("/v1/accounts").await.body["data"], json!([]));
}

#[tokio::test]
async fn the_test_clock_moves_forward_only() {
    let api = Api::new().await;
    let now = api.call("GET", "/v1/test/clock", None, None).await;
    assert_eq!(now.expect(200), &json!({"now": "2026-03-01T00:00:00Z"}));
    let advanced = api.post("/v1/test/clock", json!({"advance_seconds": 90})).await;
    assert_eq!(advanced.expect(200), &json!({"now": "2026-03-01T00:01:30Z"}));
    let set = api.post("/v1/test/clock", json!({"now": "2026-04-01T12:00:00Z"})).await;
    assert_eq!(set.expect(200), &json!({"now": "2026-04-01T12:00:00Z"}));
    for bad in [
        json!({"now": "2026-03-01T00:00:00Z"}),
        json!({"advance_seconds": -1}),
        json!({}),
        json!({"now": "2026-05-01T00:00:00Z", "advance_seconds": 1}),
        json!({"now": "tomorrow"}),
        json!({"advance_seconds": "10"}),
    ] {
        api.post("/v1/test/clock", bad).await.expect_error(400, "invalid_request");
    }
    assert_eq!(api.call("GET", "/v1/test/clock", None, None).await.body["now"], "2026-04-01T12:00:00Z");
}

/// Issue 18: the fuzz suite moved the test clock centuries ahead, and the
/// first write to each account then caught up on every weekly period in
/// between while all callers waited. The test clock now moves at most five
/// years (1,826 days) past where it started, by either form.
#[tokio::test]
async fn the_test_clock_moves_at_most_five_years_past_its_start() {
    let api = Api::new().await;
    // Started at 2026-03-01T00:00:00Z: the last moment allowed is 1,826 days on.
    let refused = api.post("/v1/test/clock", json!({"now": "2031-03-01T00:00:01Z"})).await;
    refused.expect_error(400, "invalid_request");
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("1826 days"), "{refused:?}");
    api.post("/v1/test/clock", json!({"advance_seconds": 1826 * 86_400 + 1}))
        .await
        .expect_error(400, "invalid_request");
    api.post("/v1/test/clock", json!({"advance_seconds": i64::MAX})).await.expect_error(400, "invalid_request");
    assert_eq!(api.call("GET", "/v1/test/clock", None, None).await.body["now"], "2026-03-01T00:00:00Z");
    let last = api.post("/v1/test/clock", json!({"advance_seconds": 1826 * 86_400})).await;
    assert_eq!(last.expect(200), &json!({"now": "2031-03-01T00:00:00Z"}));
    api.post("/v1/test/clock", json!({"advance_seconds": 1})).await.expect_error(400, "invalid_request");
}

#[tokio::test]
async fn the_test_clock_drives_expiry() {
    let api = Api::new().await;
    api.account("u_1").await;
    api.post("/v1/accounts/u_1/grants", json!({"amount": "5", "expires_after": "PT1H"})).await.expect(201);
    assert_eq!(api.available("u_1").await, "5");
    api.post("/v1/test/clock", json!({"advance_seconds": 3600})).await.expect(200);
    assert_eq!(api.available("u_1").await, "0");
    assert_eq!(api.balance("u_1").await["grants"], json!([]));
}

/// Issue 18.5: with `--test-clock`, anyone could move time (expiring every
/// hold and grant). Moving it now takes an admin key; reading it does not.
#[tokio::test]
async fn the_test_clock_needs_admin_auth_even_when_enabled() {
    let api = Api::new().await;
    let gateway = api.key("gateway").await;
    let body = json!({"advance_seconds": 3600});
    api.call("POST", "/v1/test/clock", None, Some(body.clone())).await.expect_error(401, "unauthorized");
    api.call("POST", "/v1/test/clock", Some("ck_nope"), Some(body.clone())).await.expect_error(401, "unauthorized");
    api.call("POST", "/v1/test/clock", Some(&gateway), Some(body.clone())).await.expect_error(403, "forbidden");
    assert_eq!(api.call("GET", "/v1/test/clock", None, None).await.expect(200)["now"], "2026-03-01T00:00:00Z");
    api.post("/v1/test/clock", body).await.expect(200);
}

/// Issue 18.4: the HTTP method was a label as sent, so 1,000 requests with
/// 4,000-character methods grew `/metrics` to 78 MB. Unknown methods and
/// routes are labelled `other`; no label takes request data.
#[tokio::test]
async fn unbounded_metric_labels_from_request_methods_and_paths() {
    let api = Api::new().await;
    let long_method = "X".repeat(4000);
    for i in 0..20 {
        let method = format!("{long_method}{i}");
        api.call(&method, "/healthz", None, None).await;
        api.call(&method, &format!("/unknown/path-{i}"), None, None).await;
        api.call("GET", &format!("/v1/accounts/u_{i}/nothing-{i}"), Some(&api.admin.clone()), None).await;
    }
    let text = String::from_utf8(api.call("GET", "/metrics", None, None).await.raw.to_vec()).unwrap();
    assert!(!text.contains("XXXX"), "a method sent became a label");
    assert!(!text.contains("unknown/path") && !text.contains("nothing-"), "a path sent became a label");
    assert!(text.contains(r#"method="other""#), "{text}");
    assert!(text.contains(r#"route="other""#), "{text}");
    for line in text.lines().filter(|l| l.starts_with("creditd_http_requests_total{")) {
        let labels = &line[line.find('{').unwrap()..line.rfind('}').unwrap()];
        for value in labels.split('"').skip(1).step_by(2) {
            let known = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "other"]
                .contains(&value)
                || creditd_server::App::routes().iter().any(|(_, p)| *p == value)
                || creditd_server::dashboard::PATHS.contains(&value)
                || value.parse::<u16>().is_ok();
            assert!(known, "label value {value:?} is not from a closed set: {line}");
        }
    }
}

#[tokio::test]
async fn the_test_clock_is_off_by_default() {
    let api = Api::build(false, config()).await;
    api.call("GET", "/v1/test/clock", None, None).await.expect_error(404, "not_found");
    api.call("POST", "/v1/test/clock", None, Some(json!({"advance_seconds": 1}))).await.expect_error(404, "not_found");
}

/// Issue 13.6: a known path with a wrong method was `404 not_found`, as if
/// the path did not exist; it is `405 method_not_allowed` with `Allow`.
#[tokio::test]
async fn a_wrong_method_is_405_with_allow() {
    let api = Api::new().await;
    let cases = [
        ("DELETE", "/v1/accounts/u_1", "GET,HEAD"),
        ("POST", "/v1/models/gpt-4o", "PUT,PATCH,GET,HEAD"),
        ("GET", "/v1/authorize", "POST"),
        ("PUT", "/v1/keys", "POST,GET,HEAD"),
    ];
    for (method, path, allow) in cases {
        let r = api.call(method, path, None, None).await;
        r.expect_error(405, "method_not_allowed");
        let mut got: Vec<&str> = r.headers["allow"].to_str().unwrap().split(',').map(str::trim).collect();
        let mut want: Vec<&str> = allow.split(',').collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{method} {path}: {r:?}");
        assert!(r.body["error"]["message"].as_str().unwrap().contains(path), "{r:?}");
    }
    // An unknown path is still 404.
    api.call("DELETE", "/v1/nothing-here", None, None).await.expect_error(404, "not_found");
}

fn openapi_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

#[tokio::test]
async fn openapi_describes_every_route() {
    let api = Api::new().await;
    let r = api.call("GET", "/openapi.json", None, None).await;
    let doc = r.expect(200).clone();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented = openapi_operations(&doc);
    let served: BTreeSet<(String, String)> =
        App::routes().into_iter().map(|(m, p)| (m.to_string(), p.replace("{*", "{"))).collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    assert!(missing.is_empty(), "routes missing from openapi.json: {missing:?}");
    // The metering proxy's routes (tag `proxy`) are served by creditd-proxy,
    // whose own test checks them against the document.
    let proxy = |(method, path): &&(String, String)| doc["paths"][path][method.to_lowercase()]["tags"][0] == "proxy";
    let extra: Vec<_> = documented.difference(&served).filter(|op| !proxy(op)).collect();
    assert!(extra.is_empty(), "openapi.json documents routes that are not served: {extra:?}");
    // Every operation has responses, and every body-taking operation a request body.
    for (method, path) in &documented {
        let op = &doc["paths"][path][method.to_lowercase()];
        assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path}");
        // api.md gives these POSTs no body.
        let bodiless = ["/suspend", "/resume", "/subscription/renew", "/subscription/cancel", "/retry"];
        if method == "PUT" || (method == "POST" && !bodiless.iter().any(|b| path.ends_with(b))) {
            assert!(op["requestBody"].is_object(), "{method} {path} has no requestBody");
        }
        let params: Vec<&str> = path.split('/').filter(|s| s.starts_with('{')).collect();
        if !params.is_empty() {
            assert!(op["parameters"].is_array(), "{method} {path} has no parameters");
        }
    }
    // A PATCH takes any fields of its PUT body: the same properties (so the
    // fuzz suite generates only what a PUT would take), none required.
    let schemas = &doc["components"]["schemas"];
    for (patch, put) in [("ModelPatch", "ModelIn"), ("PlanPatch", "PlanIn")] {
        assert_eq!(schemas[patch]["properties"], schemas[put]["properties"], "{patch} drifted from {put}");
        assert!(schemas[patch].get("required").is_none(), "{patch} requires nothing");
    }
    // Every $ref resolves.
    let text = serde_json::to_string(&doc).unwrap();
    for part in text.split("\"$ref\":\"#/components/").skip(1) {
        let reference = &part[..part.find('"').unwrap()];
        let (kind, name) = reference.split_once('/').unwrap();
        assert!(doc["components"][kind][name].is_object(), "unresolved $ref {reference}");
    }
    // Every served route answers something other than the fallback's 404.
    for (method, path) in App::routes() {
        let concrete = path.replace("{*model}", SONNET).replace("{id}", "u_1").replace("{grant}", "g1");
        let r = api.call(method, &concrete, None, None).await;
        let unknown =
            r.status.as_u16() == 404 && r.body["error"]["message"].as_str().unwrap_or("").starts_with("no route");
        assert!(!unknown, "{method} {path} is not routed");
    }
}

/// Issue 18.5: a clock near the end of time (jiff's `Timestamp::MAX` is in
/// 9999-12-30) made time arithmetic overflow: the writer panicked on
/// `POST /v1/accounts` (500) and reads dropped the connection with no
/// answer. Every call now answers, and none with a 5xx.
#[tokio::test]
async fn timestamp_overflow_near_year_9999_panics_nothing() {
    let api = Api::build_at("9999-12-30T21:58:00Z", true, config()).await;
    api.sonnet().await;
    api.put(
        "/v1/plans/pro",
        json!({"name": "Pro", "price_usd": "50", "monthly_credits": "5000", "rate_per_minute": 60,
               "daily_requests": 500, "weekly_requests": 1500, "model_access": "all"}),
    )
    .await
    .expect(200);
    let mut answered = 0;
    let mut check = |r: &crate::support::Resp, what: &str| {
        assert!(r.status.as_u16() < 500, "{what}: {r:?}");
        answered += 1;
    };
    let r = api.post("/v1/accounts", json!({"id": "u_end"})).await;
    check(&r, "create account");
    r.expect(201);
    for body in [
        json!({"amount": "10"}),
        json!({"amount": "10", "expires_after": "P7D"}),
        json!({"amount": "10", "expires_after": "PT30M"}),
        json!({"amount": "10", "expires_at": "9999-12-30T21:59:00Z"}),
    ] {
        check(&api.post("/v1/accounts/u_end/grants", body.clone()).await, &body.to_string());
    }
    let topup = json!({"amount_usd": "100", "provider": "manual"});
    check(&api.post("/v1/accounts/u_end/wallet/topups", topup).await, "topup");
    check(&api.post("/v1/accounts/u_end/tokens", json!({"ttl_seconds": 31_536_000})).await, "token");
    check(&api.authorize("u_end", "r1", 10, 10).await, "authorize");
    check(&api.settle("u_end", "r1", 10, 10).await, "settle");
    let usage = json!({"account_id": "u_end", "request_id": "r2", "model": SONNET, "status": "success",
                       "usage": {"input_tokens": 5}, "enforce": false});
    check(&api.post("/v1/usage", usage).await, "usage");
    check(&api.post("/v1/accounts/u_end/subscription", json!({"plan": "pro", "kind": "monthly"})).await, "monthly");
    check(&api.post("/v1/accounts/u_end/subscription/renew", json!({})).await, "renew");
    for seconds in [60, 3600, 86_400] {
        check(&api.post("/v1/test/clock", json!({"advance_seconds": seconds})).await, "advance");
        for path in [
            "/v1/accounts/u_end",
            "/v1/accounts/u_end/balance",
            "/v1/accounts/u_end/grants?include_spent=true",
            "/v1/accounts/u_end/ledger",
            "/v1/accounts/u_end/usage",
            "/v1/accounts/u_end/usage/summary",
            "/v1/accounts/u_end/usage/export",
            "/v1/accounts/u_end/subscription",
            "/v1/accounts",
        ] {
            check(&api.get(path).await, path);
        }
        check(&api.authorize("u_end", &format!("r{seconds}"), 10, 10).await, "authorize later");
        check(&api.post("/v1/accounts", json!({"id": format!("u_{seconds}")})).await, "create later");
    }
    let now = api.call("GET", "/v1/test/clock", None, None).await;
    check(&now, "clock");
    assert!(now.body["now"].as_str().unwrap().starts_with("9999-12-30T2"), "{now:?}");
    assert!(answered > 40);
    let report = api.store.audit().await.unwrap();
    assert!(report.breaches.is_empty(), "{:?}", report.breaches);
}
