//! The account dashboard on the real router: sign-in, sessions and their
//! revocation, CSRF, the pages' numbers against the API's, filters, paging,
//! export, escaping and the security headers.

use serde_json::{Value, json};

use crate::support::{Api, Resp, SONNET, config};

/// A token for `account` (its secret and id).
async fn token(api: &Api, account: &str) -> (String, String) {
    let t = api.post(&format!("/v1/accounts/{account}/tokens"), json!({"ttl_seconds": 3600})).await.expect(201).clone();
    (t["token"].as_str().unwrap().to_string(), t["id"].as_str().unwrap().to_string())
}

/// `GET /dashboard?token=…` and the session cookie it sets (`name=value`).
async fn sign_in(api: &Api, token: &str) -> String {
    let r = api.raw("GET", &format!("/dashboard?token={token}"), None, vec![], &[]).await;
    assert_eq!(r.status, 303, "{r:?}");
    let cookie = r.headers.get("set-cookie").unwrap().to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

async fn page(api: &Api, path: &str, cookie: &str) -> Resp {
    api.raw("GET", path, None, vec![], &[("cookie", cookie)]).await
}

/// A form `POST` as a browser sends it.
async fn post_form(api: &Api, path: &str, cookie: &str, body: &str) -> Resp {
    let request = axum::http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", cookie)
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    api.send(request).await
}

fn text(r: &Resp) -> String {
    String::from_utf8(r.raw.to_vec()).unwrap()
}

/// The `data-amount` of the element with `id`.
fn amount_of(html: &str, id: &str) -> String {
    let at = html.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id}"));
    let rest = &html[at..];
    let start = rest.find("data-amount=\"").unwrap() + "data-amount=\"".len();
    rest[start..start + rest[start..].find('"').unwrap()].to_string()
}

async fn usage(api: &Api, account: &str, id: &str, project: &str, input: u64) {
    api.post(
        "/v1/usage",
        json!({"account_id": account, "request_id": id, "model": SONNET, "request_type": "chat",
               "project": project, "usage": {"input_tokens": input, "output_tokens": 100}}),
    )
    .await
    .expect(201);
}

#[tokio::test]
async fn signing_in_sets_a_strict_http_only_cookie_and_drops_the_token_from_the_url() {
    let api = Api::new().await;
    api.account("u1").await;
    let (secret, _) = token(&api, "u1").await;
    let r = api.raw("GET", &format!("/dashboard?token={secret}"), None, vec![], &[]).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.headers["location"], "/dashboard");
    let cookie = r.headers["set-cookie"].to_str().unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "no https public_url: {cookie}");
    assert!(!cookie.contains(&secret));
    // From another site (a link in an email), a page that moves on by itself.
    let r =
        api.raw("GET", &format!("/dashboard?token={secret}"), None, vec![], &[("sec-fetch-site", "cross-site")]).await;
    assert_eq!(r.status, 200);
    assert!(text(&r).contains("http-equiv=\"refresh\" content=\"0;url=/dashboard\""));
    assert!(r.headers["set-cookie"].to_str().unwrap().contains("HttpOnly"));
}

#[tokio::test]
async fn the_session_cookie_is_secure_when_the_public_url_is_https() {
    let mut cfg = config();
    cfg.dashboard.public_url = Some("https://credits.example.com".into());
    let api = Api::build(true, cfg).await;
    api.account("u1").await;
    let (secret, _) = token(&api, "u1").await;
    let r = api.raw("GET", &format!("/dashboard?token={secret}"), None, vec![], &[]).await;
    assert!(r.headers["set-cookie"].to_str().unwrap().contains("; Secure"));
}

#[tokio::test]
async fn no_session_bad_tokens_and_expired_sessions_get_a_401_page() {
    let api = Api::new().await;
    api.account("u1").await;
    for path in ["/dashboard", "/dashboard/usage", "/dashboard/ledger", "/dashboard/usage/export"] {
        let r = page(&api, path, "other=1").await;
        assert_eq!(r.status, 401, "{path}");
        assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/html"));
        assert!(text(&r).contains("not signed in"));
    }
    let r = page(&api, "/dashboard", "creditd_session=cs_nonsense").await;
    assert_eq!(r.status, 401);
    let r = api.raw("GET", "/dashboard?token=ct_abc_def", None, vec![], &[]).await;
    assert_eq!(r.status, 401);
    assert!(text(&r).contains("This link does not work"));
    // An API key is not an account token.
    let r = api.raw("GET", &format!("/dashboard?token={}", api.admin), None, vec![], &[]).await;
    assert_eq!(r.status, 401);

    let (secret, _) = token(&api, "u1").await;
    let cookie = sign_in(&api, &secret).await;
    assert_eq!(page(&api, "/dashboard", &cookie).await.status, 200);
    // A session lasts 12 hours, whatever the token's own lifetime.
    api.clock.advance(12 * 3600).unwrap();
    let r = page(&api, "/dashboard", &cookie).await;
    assert_eq!(r.status, 401);
    assert!(text(&r).contains("Your session has ended"));
}

#[tokio::test]
async fn sessions_are_stored_hashed_and_end_with_their_token_or_on_revocation() {
    let api = Api::new().await;
    api.account("u1").await;
    let (secret, token_id) = token(&api, "u1").await;
    let cookie = sign_in(&api, &secret).await;
    let session_id = cookie.strip_prefix("creditd_session=cs_").unwrap().split('_').next().unwrap();
    let stored = api.store.dashboard_session(session_id).await.unwrap().unwrap();
    assert_eq!(stored.account_id, "u1");
    assert!(!stored.secret_hash.contains(cookie.split('=').nth(1).unwrap()));
    assert_eq!(stored.secret_hash.len(), 64);

    // Admin: sign the account out everywhere.
    let r = api.call("DELETE", "/v1/accounts/u1/sessions", Some(&api.admin.clone()), None).await;
    assert_eq!(r.status, 204);
    assert_eq!(page(&api, "/dashboard", &cookie).await.status, 401);
    // The token still signs in…
    let cookie = sign_in(&api, &secret).await;
    assert_eq!(page(&api, "/dashboard", &cookie).await.status, 200);
    // …until it is revoked, which ends its sessions too.
    let r = api.call("DELETE", &format!("/v1/accounts/u1/tokens/{token_id}"), Some(&api.admin.clone()), None).await;
    assert_eq!(r.status, 204);
    assert_eq!(page(&api, "/dashboard", &cookie).await.status, 401);
    assert_eq!(api.raw("GET", &format!("/dashboard?token={secret}"), None, vec![], &[]).await.status, 401);
    api.call("GET", "/v1/accounts/u1", Some(&secret), None).await.expect_error(401, "unauthorized");
    let r = api.call("DELETE", &format!("/v1/accounts/u1/tokens/{token_id}"), Some(&api.admin.clone()), None).await;
    r.expect_error(404, "not_found");
    // Account tokens may not revoke anything.
    let (other, _) = token(&api, "u1").await;
    let r = api.call("DELETE", "/v1/accounts/u1/sessions", Some(&other), None).await;
    r.expect_error(403, "forbidden");
}

#[tokio::test]
async fn signing_out_needs_the_sessions_csrf_token() {
    let api = Api::new().await;
    api.account("u1").await;
    let (secret, _) = token(&api, "u1").await;
    let cookie = sign_in(&api, &secret).await;
    let html = text(&page(&api, "/dashboard", &cookie).await);
    let at = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    let csrf = &html[at..at + 64];
    let r = post_form(&api, "/dashboard/logout", &cookie, "csrf=forged").await;
    assert_eq!(r.status, 403);
    assert_eq!(page(&api, "/dashboard", &cookie).await.status, 200);
    let r = post_form(&api, "/dashboard/logout", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(page(&api, "/dashboard", &cookie).await.status, 401);
}

#[tokio::test]
async fn the_overview_shows_the_apis_numbers_and_converts_the_wallet_for_display_only() {
    let mut cfg = config();
    cfg.dashboard.currencies = vec![("EUR".into(), creditd_core::units::Factor::parse("0.92").unwrap())];
    let api = Api::build(true, cfg).await;
    api.sonnet().await;
    api.account("u1").await;
    api.grant("u1", "1234.5").await;
    api.topup("u1", "20").await;
    api.authorize("u1", "held", 2000, 1000).await.expect(201);
    let (secret, _) = token(&api, "u1").await;
    let cookie = sign_in(&api, &secret).await;
    let r = page(&api, "/dashboard", &cookie).await;
    assert_eq!(r.status, 200);
    let html = text(&r);
    let balance = api.balance("u1").await;
    assert_eq!(amount_of(&html, "available"), balance["available"].as_str().unwrap());
    assert_eq!(amount_of(&html, "held"), balance["held"].as_str().unwrap());
    assert_eq!(amount_of(&html, "wallet-balance"), balance["wallet"]["balance"].as_str().unwrap());
    assert_eq!(amount_of(&html, "wallet-usd"), "20");
    assert!(html.contains(">3,232.4<"), "grouped available: {html}");
    for g in balance["grants"].as_array().unwrap() {
        assert!(html.contains(&format!("data-grant=\"{}\"", g["id"].as_str().unwrap())));
    }
    assert!(html.contains("<option value=\"EUR\">EUR (1 USD = 0.92)</option>"));
    assert!(!html.contains("wallet-converted"));
    let html = text(&page(&api, "/dashboard?currency=EUR", &cookie).await);
    assert!(html.contains("≈ <span class=\"num\">18.40</span> EUR"), "{html}");
    assert!(html.contains("1 USD = 0.92 EUR"));
    // Display only: the stored balance did not change.
    assert_eq!(api.balance("u1").await["wallet"], balance["wallet"]);
    assert_eq!(page(&api, "/dashboard?currency=XXX", &cookie).await.status, 400);
}

#[tokio::test]
async fn pages_carry_a_strict_csp_and_no_inline_script() {
    let api = Api::new().await;
    api.account("u1").await;
    let (secret, _) = token(&api, "u1").await;
    let cookie = sign_in(&api, &secret).await;
    for path in ["/dashboard", "/dashboard/usage", "/dashboard/ledger"] {
        let r = page(&api, path, &cookie).await;
        assert_eq!(r.status, 200, "{path}");
        let csp = r.headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(r.headers["cache-control"], "no-store");
        assert_eq!(r.headers["x-frame-options"], "DENY");
        let html = text(&r);
        // Every script is the embedded file or a JSON data block.
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find('>').unwrap()];
            assert!(
                tag.contains("src=\"/dashboard/assets/") || tag.contains("type=\"application/json\""),
                "{path}: {tag}"
            );
        }
        assert!(!html.contains("style=\""), "{path}: inline style");
        assert!(!html.contains("http://") && !html.contains("https://"), "{path}: an outside URL");
    }
    for (asset, kind) in
        [("dashboard.css", "text/css"), ("dashboard.js", "text/javascript"), ("icon.svg", "image/svg+xml")]
    {
        let r = api.raw("GET", &format!("/dashboard/assets/{asset}"), None, vec![], &[]).await;
        assert_eq!(r.status, 200);
        assert!(r.headers["content-type"].to_str().unwrap().starts_with(kind));
    }
    assert_eq!(api.raw("GET", "/dashboard/assets/nope.js", None, vec![], &[]).await.status, 404);
}

#[tokio::test]
async fn usage_lists_filters_pages_and_exports_with_the_pages_filters() {
    let api = Api::new().await;
    api.sonnet().await;
    api.account("u1").await;
    api.grant("u1", "10000").await;
    for i in 0..30 {
        usage(&api, "u1", &format!("r{i:02}"), if i % 3 == 0 { "alpha" } else { "beta" }, 1000 + i).await;
        api.clock.advance(60).unwrap();
    }
    // Another day, for the date filter.
    api.clock.advance(86_400).unwrap();
    usage(&api, "u1", "late", "<script>alert(1)</script>", 5000).await;
    let (secret, _) = token(&api, "u1").await;
    let cookie = sign_in(&api, &secret).await;

    let html = text(&page(&api, "/dashboard/usage", &cookie).await);
    assert_eq!(html.matches("data-request=").count(), 25);
    assert!(html.contains("data-request=\"late\""));
    assert!(!html.contains("<script>alert(1)"), "escaped");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("id=\"usage-chart-data\""));
    // The chart's data: the last 30 days, today last, the totals the API sums.
    let at = html.find("id=\"usage-chart-data\">").unwrap() + "id=\"usage-chart-data\">".len();
    let chart: Value = serde_json::from_str(&html[at..at + html[at..].find("</script>").unwrap()]).unwrap();
    assert_eq!(chart["days"].as_array().unwrap().len(), 30);
    assert_eq!(chart["days"][29], "2026-03-02");
    let summary = api.get("/v1/accounts/u1/usage/summary?group_by=day").await.expect(200).clone();
    for row in summary["rows"].as_array().unwrap() {
        let i = chart["days"].as_array().unwrap().iter().position(|d| *d == row["key"]).unwrap();
        assert_eq!(chart["totals"][i], row["credits"]);
        assert_eq!(chart["series"][0]["credits"][i], row["credits"], "one model");
    }
    // Paging: the older page holds the rest, and keeps the filters.
    let at = html.find("id=\"older\" rel=\"next\" href=\"").unwrap() + "id=\"older\" rel=\"next\" href=\"".len();
    let older = html[at..at + html[at..].find('"').unwrap()].replace("&amp;", "&");
    let html2 = text(&page(&api, &older, &cookie).await);
    assert_eq!(html2.matches("data-request=").count(), 6);
    assert!(!html2.contains("id=\"older\""));

    // Filters in the URL: project and dates (calendar days, `to` inclusive).
    let html = text(&page(&api, "/dashboard/usage?project=alpha&status=success", &cookie).await);
    assert_eq!(html.matches("data-request=").count(), 10);
    assert!(html.contains("href=\"/dashboard/usage/export?format=csv&amp;project=alpha&amp;status=success\""));
    let html = text(&page(&api, "/dashboard/usage?from=2026-03-02&to=2026-03-02", &cookie).await);
    assert_eq!(html.matches("data-request=").count(), 1);
    let html = text(&page(&api, "/dashboard/usage?to=2026-03-01", &cookie).await);
    assert_eq!(html.matches("data-request=").count(), 25);
    assert_eq!(page(&api, "/dashboard/usage?from=yesterday", &cookie).await.status, 400);
    assert_eq!(page(&api, "/dashboard/usage?status=lost", &cookie).await.status, 400);

    // Export: the API's bytes for the same filter.
    let ours = page(&api, "/dashboard/usage/export?format=csv&project=alpha", &cookie).await;
    assert_eq!(ours.status, 200);
    assert!(ours.headers["content-disposition"].to_str().unwrap().contains("attachment"));
    let theirs = api.get("/v1/accounts/u1/usage/export?format=csv&project=alpha").await;
    assert_eq!(ours.raw, theirs.raw);
    assert_eq!(String::from_utf8_lossy(&ours.raw).lines().count(), 11);
    let ours = page(&api, "/dashboard/usage/export?format=jsonl&from=2026-03-02", &cookie).await;
    let theirs = api.get("/v1/accounts/u1/usage/export?format=jsonl&from=2026-03-02T00:00:00Z").await;
    assert_eq!(ours.raw, theirs.raw);
    assert_eq!(String::from_utf8_lossy(&ours.raw).lines().count(), 1);
}

#[tokio::test]
async fn the_credit_record_pages_and_filters_by_type() {
    let api = Api::new().await;
    api.sonnet().await;
    api.account("u1").await;
    for _ in 0..3 {
        api.grant("u1", "10").await;
    }
    api.topup("u1", "5").await;
    for i in 0..30 {
        usage(&api, "u1", &format!("r{i}"), "p", 1000).await;
    }
    let (secret, _) = token(&api, "u1").await;
    let cookie = sign_in(&api, &secret).await;
    let html = text(&page(&api, "/dashboard/ledger", &cookie).await);
    let ledger = api.get("/v1/accounts/u1/ledger?limit=25").await.expect(200).clone();
    let ids: Vec<&str> = ledger["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    let shown: Vec<&str> =
        html.match_indices("data-entry=\"").map(|(i, m)| &html[i + m.len()..i + m.len() + 36]).collect();
    assert_eq!(shown.len(), 25);
    for (id, shown) in ids.iter().zip(&shown) {
        assert!(id.starts_with(shown), "{id} vs {shown}");
    }
    assert!(html.contains("id=\"older\""));
    let html = text(&page(&api, "/dashboard/ledger?type=topup", &cookie).await);
    assert_eq!(html.matches("data-entry=").count(), 1);
    assert_eq!(html.matches("data-type=\"topup\"").count(), 1);
    assert!(html.contains("<option value=\"topup\" selected>"));
    assert_eq!(page(&api, "/dashboard/ledger?type=nope", &cookie).await.status, 400);
}
