//! Usage history: filters, paging while usage is recorded, summaries,
//! and the streamed CSV / JSONL export.

use std::collections::{BTreeMap, BTreeSet};

use creditd_server::export::CSV_COLUMNS;
use serde_json::{Value, json};

use crate::support::{Api, SONNET, config};

/// Records one-shot usage for `account` (unenforced: it never refuses).
async fn record(api: &Api, account: &str, request_id: &str, extra: Value) -> Value {
    let mut body = json!({"account_id": account, "request_id": request_id, "model": SONNET, "enforce": false,
                          "usage": {"input_tokens": 1000, "output_tokens": 100}});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    api.post("/v1/usage", body).await.expect(201).clone()
}

async fn haiku(api: &Api) {
    api.put(
        "/v1/models/claude-haiku",
        json!({"cost_usd_per_mtok": {"input": "1", "output": "5", "cache_read": "0.1", "cache_write": "1.25"}}),
    )
    .await
    .expect(200);
}

/// Every record of a list, following the cursor.
async fn all_pages(api: &Api, path: &str, limit: u32) -> Vec<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let page = api.get(&url).await.expect(200).clone();
        out.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

fn ids(records: &[Value]) -> Vec<String> {
    records.iter().map(|r| r["request_id"].as_str().unwrap().to_string()).collect()
}

/// A varied history for `u_1`: two models, projects (one absent), two
/// conversations, two request types, three statuses, over three days.
async fn history(api: &Api) {
    api.sonnet().await;
    haiku(api).await;
    api.account("u_1").await;
    api.account("u_2").await;
    api.grant("u_1", "1000").await;
    let rows = [
        ("r1", json!({"project": "alpha", "conversation": "c1"})),
        ("r2", json!({"project": "alpha", "conversation": "c2", "status": "error"})),
        ("r3", json!({"project": "beta", "model": "claude-haiku", "request_type": "summarization"})),
        ("r4", json!({"status": "cancelled", "usage": {"output_tokens": 10, "cache_read_tokens": 5000}})),
        (
            "r5",
            json!({"project": "beta", "conversation": "c1", "model": "claude-haiku",
                      "usage": {"input_tokens": 7, "cache_write_tokens": 300, "output_tokens": 9}}),
        ),
        ("r6", json!({"project": "alpha", "conversation": "c1"})),
    ];
    // Two records a day, 12 hours apart: 00:00, 12:00, next day 00:00…
    for (id, extra) in rows {
        record(api, "u_1", id, extra).await;
        api.clock.advance(12 * 3600).unwrap();
    }
    record(api, "u_2", "other", json!({"project": "alpha"})).await;
}

#[tokio::test]
async fn every_filter_of_the_usage_list() {
    let api = Api::new().await;
    history(&api).await;
    let list = |q: &'static str| {
        let api = &api;
        async move { ids(&all_pages(api, &format!("/v1/accounts/u_1/usage{q}"), 100).await) }
    };
    assert_eq!(list("").await, ["r6", "r5", "r4", "r3", "r2", "r1"], "newest first, this account only");
    // from inclusive, to exclusive, on recorded_at.
    assert_eq!(list("?from=2026-03-01T12:00:00Z").await, ["r6", "r5", "r4", "r3", "r2"]);
    assert_eq!(list("?to=2026-03-02T00:00:00Z").await, ["r2", "r1"]);
    assert_eq!(list("?from=2026-03-01T12:00:00Z&to=2026-03-02T12:00:00Z").await, ["r3", "r2"]);
    assert_eq!(list("?from=2026-03-01T12:00:00Z&to=2026-03-01T12:00:00Z").await, Vec::<String>::new());
    assert_eq!(list("?model=claude-haiku").await, ["r5", "r3"]);
    assert_eq!(list("?request_type=summarization").await, ["r3"]);
    assert_eq!(list("?request_type=chat").await, ["r6", "r5", "r4", "r2", "r1"]);
    assert_eq!(list("?project=alpha").await, ["r6", "r2", "r1"]);
    assert_eq!(list("?conversation=c1").await, ["r6", "r5", "r1"]);
    assert_eq!(list("?status=error").await, ["r2"]);
    assert_eq!(list("?status=cancelled").await, ["r4"]);
    assert_eq!(list("?status=success").await, ["r6", "r5", "r3", "r1"]);
    assert_eq!(list("?project=alpha&conversation=c1&status=success&model=claude-sonnet-4-5").await, ["r6", "r1"]);
    assert_eq!(list("?project=nothing").await, Vec::<String>::new());

    // The record has the API's usage record shape.
    let r = api.get("/v1/accounts/u_1/usage?limit=1").await.expect(200)["data"][0].clone();
    assert_eq!(r["request_id"], "r6");
    assert_eq!(r["usage"]["input_tokens"], 1000);
    assert_eq!(r["credits"], "0.45");
    assert_eq!(r["recorded_at"], "2026-03-03T12:00:00Z");

    for bad in [
        "?from=yesterday",
        "?to=2026-13-01T00:00:00Z",
        "?status=ok",
        "?model=has%20space",
        "?request_type=a%2Fb",
        "?from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z",
        "?limit=0",
        "?limit=1001",
        "?cursor=nonsense",
        "?cursor=1:x",
        "?project=a%01b",
    ] {
        api.get(&format!("/v1/accounts/u_1/usage{bad}")).await.expect_error(400, "invalid_request");
    }
    api.get("/v1/accounts/nobody/usage").await.expect_error(404, "not_found");
}

fn totals_of(records: &[&Value]) -> BTreeMap<&'static str, String> {
    let mut sums: BTreeMap<&'static str, i128> = BTreeMap::new();
    let mut credits: i128 = 0;
    let mut cost: i128 = 0;
    for r in records {
        *sums.entry("requests").or_default() += 1;
        for class in ["input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens"] {
            *sums.entry(class).or_default() += i128::from(r["usage"][class].as_u64().unwrap());
        }
        credits += units(r["credits"].as_str().unwrap(), 6);
        cost += units(r["cost_usd"].as_str().unwrap(), 9);
    }
    let mut out: BTreeMap<&'static str, String> = sums.into_iter().map(|(k, v)| (k, v.to_string())).collect();
    out.insert("credits", decimal(credits, 6));
    out.insert("cost_usd", decimal(cost, 9));
    out
}

/// A canonical decimal string as integer units of `10^-places`.
fn units(text: &str, places: u32) -> i128 {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let frac = format!("{frac:0<width$}", width = places as usize);
    whole.parse::<i128>().unwrap() * 10i128.pow(places) + frac.parse::<i128>().unwrap()
}

fn decimal(units: i128, places: u32) -> String {
    let scale = 10i128.pow(places);
    let frac = format!("{:0width$}", units % scale, width = places as usize);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() { (units / scale).to_string() } else { format!("{}.{frac}", units / scale) }
}

fn row_totals(row: &Value) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    for k in ["requests", "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens"] {
        out.insert(k, row[k].as_u64().unwrap().to_string());
    }
    out.insert("credits", row["credits"].as_str().unwrap().to_string());
    out.insert("cost_usd", row["cost_usd"].as_str().unwrap().to_string());
    out
}

/// Checks a summary against the records themselves: each row sums the
/// records of its key, every record is in one row, and the total sums all.
fn check_summary(summary: &Value, records: &[Value], key_of: impl Fn(&Value) -> Value) {
    let rows = summary["rows"].as_array().unwrap();
    let mut seen = 0;
    for row in rows {
        let mine: Vec<&Value> = records.iter().filter(|r| key_of(r) == row["key"]).collect();
        assert!(!mine.is_empty(), "a group without records: {row}");
        assert_eq!(row_totals(row), totals_of(&mine), "group {}", row["key"]);
        seen += mine.len();
    }
    assert_eq!(seen, records.len(), "every record is in exactly one group");
    assert_eq!(row_totals(&summary["total"]), totals_of(&records.iter().collect::<Vec<_>>()));
    assert_eq!(summary["truncated"], false);
}

#[tokio::test]
async fn every_group_by_sums_to_the_records() {
    let api = Api::new().await;
    history(&api).await;
    let records = all_pages(&api, "/v1/accounts/u_1/usage", 100).await;
    assert_eq!(records.len(), 6);
    let keys = |s: &Value| -> Vec<Value> { s["rows"].as_array().unwrap().iter().map(|r| r["key"].clone()).collect() };

    let by = |g: &'static str| {
        let api = &api;
        async move { api.get(&format!("/v1/accounts/u_1/usage/summary?group_by={g}")).await.expect(200).clone() }
    };
    let s = by("day").await;
    assert_eq!(s["group_by"], "day");
    assert_eq!(keys(&s), [json!("2026-03-01"), json!("2026-03-02"), json!("2026-03-03")]);
    check_summary(&s, &records, |r| json!(r["recorded_at"].as_str().unwrap()[..10].to_string()));
    assert_eq!(s["rows"][0]["requests"], 2);

    let s = by("model").await;
    assert_eq!(keys(&s), [json!("claude-haiku"), json!(SONNET)]);
    check_summary(&s, &records, |r| r["model"].clone());

    let s = by("project").await;
    assert_eq!(keys(&s), [json!("alpha"), json!("beta"), Value::Null], "no project: a null key, last");
    check_summary(&s, &records, |r| r["project"].clone());

    let s = by("conversation").await;
    assert_eq!(keys(&s), [json!("c1"), json!("c2"), Value::Null]);
    check_summary(&s, &records, |r| r["conversation"].clone());

    let s = by("request_type").await;
    assert_eq!(keys(&s), [json!("chat"), json!("summarization")]);
    check_summary(&s, &records, |r| r["request_type"].clone());
    assert_eq!(s["rows"][1]["credits"], "0", "a free request type is recorded at 0 credits");

    let s = by("status").await;
    assert_eq!(keys(&s), [json!("cancelled"), json!("error"), json!("success")]);
    check_summary(&s, &records, |r| r["status"].clone());

    // The default is day; filters apply to summaries too.
    let s = api.get("/v1/accounts/u_1/usage/summary?model=claude-haiku&group_by=project").await.expect(200).clone();
    let haiku: Vec<Value> = records.iter().filter(|r| r["model"] == "claude-haiku").cloned().collect();
    check_summary(&s, &haiku, |r| r["project"].clone());
    let s = api.get("/v1/accounts/u_1/usage/summary?from=2026-03-02T00:00:00Z").await.expect(200).clone();
    assert_eq!(s["group_by"], "day");
    assert_eq!(keys(&s), [json!("2026-03-02"), json!("2026-03-03")]);
    let empty = api.get("/v1/accounts/u_2/usage/summary?group_by=model&project=none").await.expect(200).clone();
    assert_eq!(empty["rows"], json!([]));
    assert_eq!(empty["total"]["requests"], 0);
    assert_eq!(empty["total"]["credits"], "0");

    for bad in ["?group_by=week", "?group_by=", "?group_by=day&status=nope", "?from=x"] {
        api.get(&format!("/v1/accounts/u_1/usage/summary{bad}")).await.expect_error(400, "invalid_request");
    }
}

/// Days are calendar days of `billing.timezone`, 23 or 25 hours long
/// across daylight saving, not UTC days and not a fixed offset.
#[tokio::test]
async fn summary_days_follow_the_billing_timezone_across_dst() {
    let tz = jiff::tz::TimeZone::get("America/New_York").unwrap();
    let mut config = config();
    config.engine.billing.timezone = tz;
    let api = Api::build(true, config).await;
    api.sonnet().await;
    api.account("u_1").await;
    // 2026-03-08 is 23 hours long in New York (EST → EDT at 02:00 local).
    let at = |t: &str| {
        let api = &api;
        let t: jiff::Timestamp = t.parse().unwrap();
        async move {
            api.clock.set(t).unwrap();
        }
    };
    let mut n = 0;
    for (t, day) in [
        ("2026-03-08T04:59:59Z", "2026-03-07"), // 23:59:59 EST
        ("2026-03-08T05:00:00Z", "2026-03-08"), // 00:00 EST
        ("2026-03-09T03:59:59Z", "2026-03-08"), // 23:59:59 EDT: only 23 hours later
        ("2026-03-09T04:00:00Z", "2026-03-09"), // 00:00 EDT (a fixed -5h offset would say 03-08)
        ("2026-11-01T04:00:00Z", "2026-11-01"), // 00:00 EDT; 2026-11-01 is 25 hours long
        ("2026-11-02T04:30:00Z", "2026-11-01"), // 23:30 EST
        ("2026-11-02T05:00:00Z", "2026-11-02"), // 00:00 EST
    ] {
        at(t).await;
        n += 1;
        record(&api, "u_1", &format!("r{n}"), json!({"project": day})).await;
    }
    let s = api.get("/v1/accounts/u_1/usage/summary?group_by=day").await.expect(200).clone();
    let got: Vec<(String, u64)> = s["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["key"].as_str().unwrap().to_string(), r["requests"].as_u64().unwrap()))
        .collect();
    let want: Vec<(String, u64)> =
        [("2026-03-07", 1), ("2026-03-08", 2), ("2026-03-09", 1), ("2026-11-01", 2), ("2026-11-02", 1)]
            .into_iter()
            .map(|(d, n)| (d.to_string(), n))
            .collect();
    assert_eq!(got, want);
    // The day each record was put in is the one its project names.
    let by_project = api.get("/v1/accounts/u_1/usage/summary?group_by=project").await.expect(200).clone();
    let by_project: BTreeMap<String, u64> = by_project["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["key"].as_str().unwrap().to_string(), r["requests"].as_u64().unwrap()))
        .collect();
    assert_eq!(by_project, want.into_iter().collect::<BTreeMap<_, _>>());
}

/// Regression guard: a cursor is a position, not an offset, so records
/// written between pages neither repeat a record nor hide one.
#[tokio::test]
async fn pages_have_no_duplicates_or_gaps_while_usage_is_recorded() {
    let api = Api::new().await;
    api.sonnet().await;
    api.account("u_1").await;
    let mut before = Vec::new();
    for i in 0..25 {
        let id = format!("old-{i:02}");
        record(&api, "u_1", &id, json!({})).await;
        before.push(id);
        // Several records share a time: order falls back to insertion.
        if i % 3 == 2 {
            api.clock.advance(1).unwrap();
        }
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut written = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("/v1/accounts/u_1/usage?limit=4&cursor={c}"),
            None => "/v1/accounts/u_1/usage?limit=4".to_string(),
        };
        let page = api.get(&url).await.expect(200).clone();
        seen.extend(ids(page["data"].as_array().unwrap()));
        // New usage between pages: at the same instant as the newest, and later.
        for _ in 0..3 {
            written += 1;
            record(&api, "u_1", &format!("new-{written:02}"), json!({})).await;
        }
        api.clock.advance(1).unwrap();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a record repeated: {seen:?}");
    let mut expected = before.clone();
    expected.reverse();
    assert_eq!(seen, expected, "every record that existed at the start, once, newest first");

    // A fresh walk sees everything, newest first, once.
    let all = ids(&all_pages(&api, "/v1/accounts/u_1/usage", 7).await);
    assert_eq!(all.len(), 25 + written);
    assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), all.len());
    assert_eq!(all.last().unwrap(), "old-00");
    assert_eq!(all.first().unwrap(), &format!("new-{written:02}"));
}

#[tokio::test]
async fn account_tokens_read_and_export_their_own_usage_only() {
    let api = Api::new().await;
    history(&api).await;
    let token = |account: &'static str| {
        let api = &api;
        async move {
            let r = api.post(&format!("/v1/accounts/{account}/tokens"), json!({})).await;
            r.expect(201)["token"].as_str().unwrap().to_string()
        }
    };
    let own = token("u_1").await;
    let gateway = api.key("gateway").await;
    for path in [
        "/v1/accounts/{id}/usage",
        "/v1/accounts/{id}/usage/summary",
        "/v1/accounts/{id}/usage/summary?group_by=model",
        "/v1/accounts/{id}/usage/export",
        "/v1/accounts/{id}/usage/export?format=jsonl",
    ] {
        let mine = path.replace("{id}", "u_1");
        let theirs = path.replace("{id}", "u_2");
        api.call("GET", &mine, Some(&own), None).await.expect(200);
        api.call("GET", &theirs, Some(&own), None).await.expect_error(403, "forbidden");
        api.call("GET", &mine, Some(&gateway), None).await.expect_error(403, "forbidden");
        api.call("GET", &mine, None, None).await.expect_error(401, "unauthorized");
        // 403 before anything about the account is revealed.
        api.call("GET", &path.replace("{id}", "nobody"), Some(&own), None).await.expect_error(403, "forbidden");
    }
    // The admin-wide export is admin only, whatever account it names.
    for path in ["/v1/usage/export", "/v1/usage/export?account_id=u_1"] {
        api.call("GET", path, Some(&own), None).await.expect_error(403, "forbidden");
        api.call("GET", path, Some(&gateway), None).await.expect_error(403, "forbidden");
    }
    // An account's export holds its own records only, whatever the query says.
    let r = api.call("GET", "/v1/accounts/u_1/usage/export?format=jsonl&account_id=u_2", Some(&own), None).await;
    let text = String::from_utf8(r.raw.to_vec()).unwrap();
    assert_eq!(text.lines().count(), 6);
    assert!(text.lines().all(|l| serde_json::from_str::<Value>(l).unwrap()["account_id"] == "u_1"));
}

#[tokio::test]
async fn csv_export_quotes_what_it_must_and_parses_back() {
    let api = Api::new().await;
    api.sonnet().await;
    api.account("u_1").await;
    api.grant("u_1", "1").await;
    api.topup("u_1", "10").await;
    let tricky = [
        ("q1", "Acme, Inc.", "plain"),
        ("q2", "say \"hello\"", "a \"quoted\", conversation"),
        ("q3", "line one\nline two", "tab\there"),
        ("q4", "Проект «Ёж» 日本語 ü", "ça, va?"),
        ("q5", "\"", ","),
    ];
    for (id, project, conversation) in tricky {
        record(
            &api,
            "u_1",
            id,
            json!({"project": project, "conversation": conversation, "region": "eu,west",
                                        "tools": ["web_search", "a,b", "say \"x\""], "retries": 2,
                                        "started_at": "2026-03-01T00:00:00.25Z", "latency_ms": 1200,
                                        "usage": {"input_tokens": 0, "output_tokens": 100_000,
                                                  "reasoning_tokens": 40, "system_tokens": 3, "context_tokens": 5,
                                                  "images": 1, "tool_calls": 2}}),
        )
        .await;
        api.clock.advance(1).unwrap();
    }
    // A record with every optional value absent.
    api.post("/v1/usage", json!({"account_id": "u_1", "request_id": "bare", "model": SONNET})).await.expect(201);

    let r = api.get("/v1/accounts/u_1/usage/export?format=csv").await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    assert_eq!(r.headers["content-type"], "text/csv; charset=utf-8; header=present");
    assert!(r.headers["content-disposition"].to_str().unwrap().contains("usage-u_1.csv"));
    let text = std::str::from_utf8(&r.raw).unwrap();
    assert!(text.starts_with(&format!("{}\r\n", CSV_COLUMNS.join(","))), "exact header: {text}");
    assert!(text.ends_with("\r\n"));

    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(r.raw.as_ref());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(header, CSV_COLUMNS);
    let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().unwrap();
    assert_eq!(rows.len(), 6);
    let col = |row: &csv::StringRecord, name: &str| -> String {
        row.get(CSV_COLUMNS.iter().position(|c| *c == name).unwrap()).unwrap().to_string()
    };
    for (row, (id, project, conversation)) in rows.iter().zip(tricky) {
        assert_eq!(row.len(), 31);
        assert_eq!(col(row, "request_id"), id);
        assert_eq!(col(row, "project"), project);
        assert_eq!(col(row, "conversation"), conversation);
        assert_eq!(col(row, "region"), "eu,west");
        assert_eq!(col(row, "tools"), "web_search;a,b;say \"x\"");
        assert_eq!(col(row, "retries"), "2");
        assert_eq!(col(row, "iterations"), "");
        assert_eq!(col(row, "started_at"), "2026-03-01T00:00:00.25Z");
        assert_eq!(col(row, "finished_at"), "");
        assert_eq!(col(row, "latency_ms"), "1200");
        assert_eq!(col(row, "output_tokens"), "100000");
        assert_eq!(col(row, "reasoning_tokens"), "40");
        assert_eq!(col(row, "images"), "1");
        assert_eq!(col(row, "tool_calls"), "2");
        assert_eq!(col(row, "model"), SONNET);
        assert_eq!(col(row, "status"), "success");
        assert_eq!(col(row, "price_version"), "1");
        assert_eq!(col(row, "cost_usd"), "1.5");
        assert_eq!(col(row, "credits"), "150");
    }
    // Burn order: the promo grant's 1 credit, then the wallet.
    assert_eq!(col(&rows[0], "charged_from"), "promo=1;wallet=149");
    assert_eq!(col(&rows[1], "charged_from"), "wallet=150");
    assert_eq!(col(&rows[0], "recorded_at"), "2026-03-01T00:00:00Z");
    assert_eq!(col(&rows[4], "recorded_at"), "2026-03-01T00:00:04Z");
    assert_eq!(col(&rows[0], "debt_incurred"), "0");
    let bare = &rows[5];
    for empty in [
        "project",
        "conversation",
        "started_at",
        "finished_at",
        "latency_ms",
        "tools",
        "region",
        "retries",
        "iterations",
        "external_calls",
        "context_bytes",
    ] {
        assert_eq!(col(bare, empty), "", "{empty} of a record without it");
    }
    assert_eq!(col(bare, "request_type"), "chat");
    assert_eq!(col(bare, "input_tokens"), "0");
    assert_eq!(col(bare, "credits"), "0");
    assert_eq!(col(bare, "charged_from"), "");
}

#[tokio::test]
async fn jsonl_export_is_one_usage_record_a_line() {
    let api = Api::new().await;
    history(&api).await;
    let r = api.get("/v1/accounts/u_1/usage/export?format=jsonl").await;
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    assert_eq!(r.headers["content-type"], "application/jsonl; charset=utf-8");
    let text = std::str::from_utf8(&r.raw).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut listed = all_pages(&api, "/v1/accounts/u_1/usage", 100).await;
    listed.reverse();
    assert_eq!(lines, listed, "the same records as the list, oldest first");
    // Filters apply.
    let r = api.get("/v1/accounts/u_1/usage/export?format=jsonl&project=alpha&status=success").await;
    let got: Vec<String> = std::str::from_utf8(&r.raw)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["request_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ["r1", "r6"]);
    // Nothing to export: an empty body (CSV: the header alone).
    let r = api.get("/v1/accounts/u_2/usage/export?format=jsonl&model=claude-haiku").await;
    assert_eq!(r.status.as_u16(), 200);
    assert!(r.raw.is_empty());
    let r = api.get("/v1/accounts/u_2/usage/export?model=claude-haiku").await;
    assert_eq!(std::str::from_utf8(&r.raw).unwrap(), format!("{}\r\n", CSV_COLUMNS.join(",")));

    for bad in ["?format=xml", "?format=CSV", "?from=nope", "?status=done", "?to=2026-01-01"] {
        api.get(&format!("/v1/accounts/u_1/usage/export{bad}")).await.expect_error(400, "invalid_request");
        api.get(&format!("/v1/usage/export{bad}")).await.expect_error(400, "invalid_request");
    }
    api.get("/v1/accounts/nobody/usage/export").await.expect_error(404, "not_found");
    api.get("/v1/usage/export?account_id=nobody").await.expect_error(404, "not_found");
    api.get("/v1/usage/export?account_id=bad%20id").await.expect_error(400, "invalid_request");
}

/// Many rows: more than one store batch, streamed in `recorded_at` order
/// across accounts, every row once.
#[tokio::test]
async fn exports_stream_many_rows_in_recorded_at_order() {
    let api = Api::new().await;
    api.sonnet().await;
    let accounts = ["a_1", "a_2", "a_3"];
    for a in accounts {
        api.account(a).await;
    }
    const ROWS: usize = 3_250;
    let mut n = 0;
    while n < ROWS {
        // Concurrent calls so the writer commits them in batches; 230 a
        // second, so that store batches end in the middle of a second.
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..230.min(ROWS - n) {
            let account = accounts[n % 3];
            let body = json!({"account_id": account, "request_id": format!("r{n:05}"), "model": SONNET,
                              "enforce": false, "usage": {"output_tokens": 10}});
            let router = api.router.clone();
            let admin = api.admin.clone();
            calls.spawn(async move {
                use tower::ServiceExt;
                let request = axum::http::Request::post("/v1/usage")
                    .header("authorization", format!("Bearer {admin}"))
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap();
                router.oneshot(request).await.unwrap().status().as_u16()
            });
            n += 1;
        }
        while let Some(status) = calls.join_next().await {
            assert_eq!(status.unwrap(), 201);
        }
        api.clock.advance(7).unwrap();
    }

    let r = api.get("/v1/usage/export?format=jsonl").await;
    assert_eq!(r.status.as_u16(), 200);
    assert!(r.headers.get("content-length").is_none(), "streamed, not buffered: {:?}", r.headers);
    let records: Vec<Value> =
        std::str::from_utf8(&r.raw).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), ROWS);
    let times: Vec<&str> = records.iter().map(|r| r["recorded_at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "recorded_at order");
    let unique: BTreeSet<&str> = records.iter().map(|r| r["request_id"].as_str().unwrap()).collect();
    assert_eq!(unique.len(), ROWS, "every row once");
    assert_eq!(records.iter().filter(|r| r["account_id"] == "a_2").count(), ROWS / 3);

    // One account, CSV, through both routes: the same bytes.
    let one = api.get("/v1/accounts/a_2/usage/export").await;
    let admin_one = api.get("/v1/usage/export?account_id=a_2&format=csv").await;
    assert_eq!(one.raw, admin_one.raw);
    let mut reader = csv::Reader::from_reader(one.raw.as_ref());
    let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().unwrap();
    assert_eq!(rows.len(), ROWS / 3);
    assert!(rows.iter().all(|r| &r[1] == "a_2"));
    let times: Vec<&str> = rows.iter().map(|r| r.get(30).unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "recorded_at order");
    // And a time window.
    let r = api.get("/v1/usage/export?format=jsonl&from=2026-03-01T00:00:07Z&to=2026-03-01T00:00:14Z").await;
    assert_eq!(std::str::from_utf8(&r.raw).unwrap().lines().count(), 230);
}

/// Issue #12 item 12: the summary's `credits` are net of refunds, with the
/// refunded records' credits as `refunded_credits`; `cost_usd` stays gross.
#[tokio::test]
async fn the_summary_counts_credits_net_of_refunds() {
    let api = Api::new().await;
    api.sonnet().await;
    api.account("u_r").await;
    api.grant("u_r", "1000").await;
    let kept = record(&api, "u_r", "kept", json!({})).await;
    let refunded = record(&api, "u_r", "refunded", json!({})).await;
    api.post("/v1/accounts/u_r/usage/refunded/refund", json!({"reason": "disputed"})).await.expect(200);
    for group_by in ["model", "day"] {
        let s = api.get(&format!("/v1/accounts/u_r/usage/summary?group_by={group_by}")).await.expect(200).clone();
        for totals in [&s["total"], &s["rows"][0]] {
            assert_eq!(totals["requests"], 2, "{group_by}: {totals}");
            assert_eq!(totals["credits"], kept["credits"], "{group_by}: {totals}");
            assert_eq!(totals["refunded_credits"], refunded["credits"], "{group_by}: {totals}");
            let cost = units(kept["cost_usd"].as_str().unwrap(), 9) + units(refunded["cost_usd"].as_str().unwrap(), 9);
            assert_eq!(totals["cost_usd"], decimal(cost, 9), "{group_by}: {totals}");
        }
    }
}
