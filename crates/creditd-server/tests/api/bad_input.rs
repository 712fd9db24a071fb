//! No input yields a 500 or a panic: malformed bodies are `400 invalid_request`.

use serde_json::{Value, json};

use crate::support::{Api, SONNET};

/// Bodies that are wrong for every endpoint.
fn garbage() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = [
        "not json",
        "{",
        "}",
        "[]",
        "null",
        "42",
        "\"text\"",
        "true",
        "{\"a\":}",
        "{'id': 'x'}",
        "\u{0}",
        "{\"id\": \"\\ud800\"}",
        "[{\"id\": \"u\"}]",
        "{\"id\": 1e999}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    bodies.push(vec![0xff, 0xfe, 0x00]);
    bodies.push(format!("{}{}", "[".repeat(1000), "]".repeat(1000)).into_bytes());
    bodies.push(format!("{{\"x\":{}1{}}}", "[".repeat(200), "]".repeat(200)).into_bytes());
    bodies
}

/// Per endpoint, JSON bodies that are wrong in one field each.
fn wrong_fields(account: &str, grant: &str) -> Vec<(String, Vec<Value>)> {
    let counts =
        ["input_tokens", "cache_read_tokens", "cache_write_tokens", "max_output_tokens", "images", "tool_calls"];
    let mut authorize = vec![
        json!({}),
        json!({"account_id": account, "request_id": "r"}),
        json!({"account_id": account, "model": SONNET}),
        json!({"request_id": "r", "model": SONNET}),
        json!({"account_id": 5, "request_id": "r", "model": SONNET}),
        json!({"account_id": "bad id", "request_id": "r", "model": SONNET}),
        json!({"account_id": account, "request_id": "", "model": SONNET}),
        json!({"account_id": account, "request_id": "r".repeat(256), "model": SONNET}),
        json!({"account_id": account, "request_id": "r", "model": "bad model"}),
        json!({"account_id": account, "request_id": "r", "model": SONNET, "request_type": "bad type"}),
        json!({"account_id": account, "request_id": "r", "model": SONNET, "hold_ttl_seconds": -1}),
        json!({"account_id": account, "request_id": "r", "model": SONNET, "project": 7}),
        json!({"account_id": account, "request_id": "r", "model": SONNET, "project": "p".repeat(256)}),
    ];
    for field in counts {
        for value in
            [json!(-1), json!(1.5), json!("10"), json!(1_000_000_001u64), json!(u64::MAX), json!(1e30), json!(null)]
        {
            if value.is_null() {
                continue; // null is "not given"
            }
            let mut body = json!({"account_id": account, "request_id": "r", "model": SONNET});
            body[field] = value;
            authorize.push(body);
        }
    }
    let mut estimate: Vec<Value> = authorize
        .iter()
        .filter(|b| b.get("model").is_some_and(|m| m != SONNET) || counts.iter().any(|c| b.get(*c).is_some()))
        .cloned()
        .collect();
    estimate.push(json!({}));
    estimate.push(json!({"model": SONNET, "account_id": "bad id"}));
    let usage_fields = [
        "input_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
        "system_tokens",
        "context_tokens",
        "images",
        "tool_calls",
    ];
    let mut settle = vec![
        json!({}),
        json!({"account_id": account}),
        json!({"account_id": account, "request_id": "r", "status": "ok"}),
        json!({"account_id": account, "request_id": "r", "status": 1}),
        json!({"account_id": account, "request_id": "r", "usage": []}),
        json!({"account_id": account, "request_id": "r", "usage": {"tokens": 1}}),
        json!({"account_id": account, "request_id": "r", "started_at": "now"}),
        json!({"account_id": account, "request_id": "r", "finished_at": 5}),
        json!({"account_id": account, "request_id": "r", "latency_ms": -5}),
        json!({"account_id": account, "request_id": "r", "latency_ms": 18446744073709551615u64}),
        json!({"account_id": account, "request_id": "r", "retries": "1"}),
        json!({"account_id": account, "request_id": "r", "tools": [1, 2]}),
        json!({"account_id": account, "request_id": "r", "tools": vec!["t"; 129]}),
        json!({"account_id": account, "request_id": "r", "metadata": [1]}),
        json!({"account_id": account, "request_id": "r", "metadata": {"x": "y".repeat(4097)}}),
        json!({"account_id": account, "request_id": "r", "region": "r".repeat(200)}),
    ];
    for field in usage_fields {
        for value in [json!(-1), json!(2.5), json!("1"), json!(1_000_000_001u64)] {
            let mut body = json!({"account_id": account, "request_id": "r", "usage": {}});
            body["usage"][field] = value;
            settle.push(body);
        }
    }
    let mut usage: Vec<Value> = settle
        .iter()
        .filter(|b| b.get("request_id").is_some())
        .map(|b| {
            let mut b = b.clone();
            b["model"] = json!(SONNET);
            b
        })
        .collect();
    usage.push(json!({"account_id": account, "request_id": "r"}));
    usage.push(json!({"account_id": account, "request_id": "r", "model": SONNET, "enforce": "false"}));
    usage.push(json!({"account_id": account, "request_id": "r", "model": SONNET, "request_type": ""}));
    let amounts = [
        "",
        "1.",
        ".5",
        "+1",
        "1e2",
        "0x10",
        "1,5",
        " 1",
        "1 ",
        "01",
        "1.50",
        "-0",
        "NaN",
        "Infinity",
        "1.0000001",
        "99999999999999999999",
    ];
    let mut grants: Vec<Value> = amounts.iter().map(|a| json!({"amount": a})).collect();
    grants.extend([
        json!({"amount": 1}),
        json!({"amount": null}),
        json!({"amount": "1", "kind": 1}),
        json!({"amount": "1", "priority": "1"}),
        json!({"amount": "1", "priority": 1.5}),
        json!({"amount": "1", "starts_at": "2026-13-01T00:00:00Z"}),
        json!({"amount": "1", "expires_after": "P1Y2M3DT4H5M6.7S8"}),
        json!({"amount": "1", "expires_after": "P99999999Y"}),
        json!({"amount": "1", "reason": "r".repeat(1025)}),
        json!({"amount": "1", "reason": "line\u{0007}bell"}),
    ]);
    let mut topups: Vec<Value> = amounts.iter().map(|a| json!({"amount_usd": a, "provider": "manual"})).collect();
    topups.push(json!({"amount_usd": "1", "provider": "MANUAL"}));
    topups.push(json!({"amount_usd": "1", "provider": "manual", "external_id": 5}));
    let adjustments: Vec<Value> = amounts.iter().map(|a| json!({"amount": a})).collect();
    let mut purchases: Vec<Value> = amounts.iter().map(|a| json!({"credits": a, "amount_usd": "1"})).collect();
    purchases.extend(amounts.iter().map(|a| json!({"credits": "1", "amount_usd": a})));
    let models = vec![
        json!({"cost_usd_per_mtok": "3"}),
        json!({"cost_usd_per_mtok": {"input": "3.0000001"}}),
        json!({"cost_usd_per_mtok": {"input": "1e3"}}),
        json!({"credits_per_mtok": {"output": "-1"}}),
        json!({"tiers": {}}),
        json!({"tiers": [{"above_input_tokens": -1}]}),
        json!({"tiers": [{"above_input_tokens": 1000000001u64}]}),
        json!({"multiplier": "-1"}),
        json!({"multiplier": 2}),
    ];
    vec![
        ("/v1/estimate".into(), estimate),
        ("/v1/authorize".into(), authorize),
        ("/v1/settle".into(), settle),
        ("/v1/usage".into(), usage),
        (
            "/v1/release".into(),
            vec![json!({}), json!({"account_id": account}), json!({"account_id": account, "request_id": 5})],
        ),
        (
            "/v1/accounts".into(),
            vec![json!({}), json!({"id": null}), json!({"id": "é"}), json!({"id": "u", "email": 5})],
        ),
        (format!("/v1/accounts/{account}/grants"), grants),
        (
            format!("/v1/accounts/{account}/grants/{grant}/void"),
            vec![json!({"reason": 5}), json!({"reason": "x".repeat(1025)})],
        ),
        (format!("/v1/accounts/{account}/wallet/topups"), topups),
        (format!("/v1/accounts/{account}/wallet/adjustments"), adjustments),
        (format!("/v1/accounts/{account}/purchases"), purchases),
        (format!("/v1/accounts/{account}/suspend"), vec![json!({"reason": []})]),
        (format!("/v1/accounts/{account}/resume"), vec![json!({"reason": {}})]),
        (format!("/v1/accounts/{account}/tokens"), vec![json!({"ttl_seconds": "1"}), json!({"ttl_seconds": 1.5})]),
        (
            "/v1/keys".into(),
            vec![json!({"role": "Admin"}), json!({"role": null}), json!({"role": "gateway", "name": 5})],
        ),
        (
            "/v1/test/clock".into(),
            vec![
                json!({"now": 5}),
                json!({"advance_seconds": 1.5}),
                json!({"advance_seconds": 9223372036854775807i64}),
            ],
        ),
        (format!("PUT /v1/models/{SONNET}"), models),
    ]
}

#[tokio::test]
async fn malformed_bodies_are_invalid_requests_never_500s() {
    let api = Api::new().await;
    api.sonnet().await;
    api.account("u_1").await;
    let grant = api.grant("u_1", "100").await;
    let grant_id = grant["id"].as_str().unwrap().to_string();
    let admin = api.admin.clone();
    let before = api.balance("u_1").await;
    let mut checked = 0;
    for (target, bodies) in wrong_fields("u_1", &grant_id) {
        let (method, path) = match target.split_once(' ') {
            Some((m, p)) => (m.to_string(), p.to_string()),
            None => ("POST".to_string(), target.clone()),
        };
        let mut all: Vec<Vec<u8>> = bodies.iter().map(|b| serde_json::to_vec(b).unwrap()).collect();
        all.extend(garbage());
        for body in all {
            let r = api.raw(&method, &path, Some(&admin), body.clone(), &[]).await;
            assert!(r.status.as_u16() < 500, "{method} {path} {}: {r:?}", String::from_utf8_lossy(&body));
            assert_eq!(r.status.as_u16(), 400, "{method} {path} {}: {r:?}", String::from_utf8_lossy(&body));
            assert_eq!(r.code(), "invalid_request", "{method} {path} {}: {r:?}", String::from_utf8_lossy(&body));
            checked += 1;
        }
    }
    assert!(checked > 300, "{checked}");
    // Nothing refused changed anything.
    assert_eq!(api.balance("u_1").await, before);
    assert_eq!(api.get("/v1/accounts/u_1").await.body["status"], "active");
}

#[tokio::test]
async fn odd_paths_and_queries_never_500() {
    let api = Api::new().await;
    api.account("u_1").await;
    let long = format!("/v1/accounts/{}", "a".repeat(5000));
    for (path, status) in [
        ("/v1/accounts/%FF", 400),
        ("/v1/accounts/%00", 400),
        ("/v1/accounts/u_1/ledger?from=%FF", 400),
        ("/v1/accounts/u_1/ledger?limit=99999999999999999999", 400),
        ("/v1/accounts/u_1/grants?cursor=garbage", 400),
        ("/v1/accounts/u_1/ledger?cursor=%22%27;DROP%20TABLE", 400),
        ("/v1/models/%2e%2e", 404),
        (long.as_str(), 400),
    ] {
        let r = api.get(path).await;
        assert_eq!(r.status.as_u16(), status, "{path}: {r:?}");
        assert!(r.body["error"]["code"].is_string(), "{path}: {r:?}");
    }
    // An unknown account cursor is past the end, not an error.
    assert!(api.get("/v1/accounts?cursor=zzzz").await.status.as_u16() < 500);
}

/// Issue 13.4: unknown JSON fields were ignored (`expires_afer` made a grant
/// that never expires; `max_output_token` a hold at the model's maximum),
/// and type errors did not name the field. Both are `400 invalid_request`
/// naming the field, on every body, nested ones and metering ones too.
#[tokio::test]
async fn unknown_json_fields_are_silently_ignored() {
    let api = Api::new().await;
    api.sonnet().await;
    api.account("u_1").await;
    api.grant("u_1", "100").await;
    let before = api.balance("u_1").await;
    let cases = [
        ("/v1/accounts/u_1/grants", json!({"amount": "10", "expires_afer": "P7D"}), "expires_afer"),
        (
            "/v1/authorize",
            json!({"account_id": "u_1", "request_id": "r1", "model": SONNET, "input_tokens": 1, "max_output_token": 5}),
            "max_output_token",
        ),
        ("/v1/estimate", json!({"model": SONNET, "input_tokenz": 1}), "input_tokenz"),
        (
            "/v1/settle",
            json!({"account_id": "u_1", "request_id": "r1", "usage": {"input_tokens": 1}, "statuz": "success"}),
            "statuz",
        ),
        (
            "/v1/usage",
            json!({"account_id": "u_1", "request_id": "r2", "model": SONNET, "usage": {"input_tokens": 1, "outputs": 2}}),
            "usage.outputs",
        ),
        ("/v1/release", json!({"account_id": "u_1", "request_id": "r1", "hold_id": "x"}), "hold_id"),
        ("/v1/accounts", json!({"id": "u_2", "emial": "a@b.c"}), "emial"),
        ("/v1/keys", json!({"role": "gateway", "nmae": "x"}), "nmae"),
        ("/v1/accounts/u_1/tokens", json!({"ttl": 60}), "ttl"),
        ("/v1/accounts/u_1/wallet/topups", json!({"amount_usd": "1", "provider": "manual", "ref": "x"}), "ref"),
        ("/v1/accounts/u_1/suspend", json!({"reason": "x", "until": "never"}), "until"),
    ];
    for (path, body, field) in cases {
        let r = api.post(path, body.clone()).await;
        let details = r.expect_error(400, "invalid_request");
        assert_eq!(details["field"], field, "{path} {body}: {r:?}");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{field}: unknown field")), "{path}: {message}");
    }
    let r = api.put(&format!("/v1/models/{SONNET}"), json!({"cost_usd_per_mtok": {"input": "3", "ouput": "1"}})).await;
    assert_eq!(r.expect_error(400, "invalid_request")["field"], "cost_usd_per_mtok.ouput");
    let r = api.put("/v1/plans/pro", json!({"price_usd": "5", "monthly_credit": "10"})).await;
    assert_eq!(r.expect_error(400, "invalid_request")["field"], "monthly_credit");

    // Type errors name the field and what it expects.
    let r = api.post("/v1/accounts/u_1/grants", json!({"amount": 100})).await;
    let message = r.body["error"]["message"].as_str().unwrap().to_string();
    assert_eq!(r.expect_error(400, "invalid_request")["field"], "amount");
    assert!(message.starts_with("amount: expected a decimal string"), "{message}");
    let r = api.post("/v1/estimate", json!({"model": SONNET, "input_tokens": "5"})).await;
    assert_eq!(r.expect_error(400, "invalid_request")["field"], "input_tokens", "{r:?}");
    let r = api
        .post(
            "/v1/usage",
            json!({"account_id": "u_1", "request_id": "r3", "model": SONNET,
                                           "usage": {"input_tokens": -1}}),
        )
        .await;
    assert_eq!(r.expect_error(400, "invalid_request")["field"], "usage.input_tokens", "{r:?}");
    let r = api.post("/v1/accounts/u_1/grants", json!({"kind": "promo"})).await;
    assert_eq!(r.expect_error(400, "invalid_request")["field"], "amount", "{r:?}");
    // Nothing refused changed anything.
    assert_eq!(api.balance("u_1").await, before);
    assert_eq!(api.get("/v1/accounts/u_1/grants").await.body["data"].as_array().unwrap().len(), 1);
}

/// Issue 18.6: `GET /v1/accounts?cursor=%FF%FE` answered an empty 200 where
/// the other lists refuse a cursor they did not give.
#[tokio::test]
async fn an_account_cursor_that_is_not_an_account_id_answers_an_empty_200() {
    let api = Api::new().await;
    api.account("u_1").await;
    api.account("u_2").await;
    for bad in ["%FF%FE", "a%20b", "%00", &"x".repeat(129)] {
        let r = api.get(&format!("/v1/accounts?cursor={bad}")).await;
        assert_eq!(r.expect_error(400, "invalid_request")["field"], "cursor", "{bad}");
    }
    let page = api.get("/v1/accounts?limit=1").await;
    let next = page.expect(200)["next_cursor"].as_str().unwrap().to_string();
    let rest = api.get(&format!("/v1/accounts?cursor={next}")).await;
    assert_eq!(rest.expect(200)["data"][0]["id"], "u_2");
}
