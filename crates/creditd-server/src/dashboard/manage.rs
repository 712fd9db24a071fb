//! Manage: top up the wallet (card through Creem, crypto through
//! NOWPayments), buy a credit pack, compare plans and subscribe, switch
//! (showing the engine's proration before confirming) or take a 30-day
//! pass, cancel at the period end.
//!
//! Every action is a `POST` form with the session's CSRF token, answered by
//! a redirect: to the provider's checkout or invoice, or back here with a
//! notice or an error code (never text from the request). Payments change
//! nothing here: the provider's signed webhook does, as for any payment.

use std::collections::HashMap;
use std::fmt::Write;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use creditd_core::engine::{self, StartInput};
use creditd_core::plan::{ModelAccess, Plan};
use creditd_core::subscription::SubscriptionKind;
use creditd_core::units::Usd;
use creditd_store::{Command, StoredAccount};

use super::html::{self, Chrome, Tab, amount, esc};
use super::providers;
use super::session::Session;
use super::{PageError, PageResult, config, html_response};
use crate::error::ApiError;
use crate::payments::Product;
use crate::state::AppState;

/// How a product is shown (`label`, `price_usd` of `[payments.creem.products]`).
#[derive(Clone, Debug, Default)]
pub struct ProductDisplay {
    pub label: Option<String>,
    pub price_usd: Option<Usd>,
}

fn see_other(to: &str) -> Response {
    let location = HeaderValue::from_str(to).unwrap_or_else(|_| HeaderValue::from_static("/dashboard/manage"));
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

fn back(key: &str, value: &str) -> Response {
    see_other(&format!("/dashboard/manage?{key}={value}"))
}

/// Messages for `?notice=` and `?error=`: fixed texts, chosen by code.
fn message(key: &str, code: &str) -> Option<(&'static str, &'static str)> {
    let text = match (key, code) {
        ("notice", "paid") => {
            "Thank you! Your payment shows here as soon as the provider confirms it (usually seconds)."
        }
        ("notice", "cancelled") => "Your plan will not renew: it runs to the end of the period.",
        ("error", "below_minimum") => "That amount is below the provider's minimum top-up.",
        ("error", "amount") => "Enter an amount in US dollars, such as 25 or 12.50.",
        ("error", "provider") => "The payment provider did not answer. Nothing was charged: please try again.",
        ("error", "unavailable") => "That payment method is not available.",
        ("error", "product") => "That product is not available.",
        ("error", "no_subscription") => "There is no plan to cancel.",
        ("error", "cancel") => "The plan could not be cancelled.",
        _ => return None,
    };
    Some((if key == "notice" { "notice good" } else { "notice bad" }, text))
}

/// Where users reach creditd: `server.public_url`, else this request's host.
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &config(state).public_url {
        return url.clone();
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    format!("http://{host}")
}

/// The Creem products and what they do, by id order.
fn products(state: &AppState) -> Vec<(String, Product, ProductDisplay)> {
    let Some(creem) = &state.config.payments.creem else { return Vec::new() };
    let mut list: Vec<_> = creem
        .products
        .iter()
        .map(|(id, p)| (id.clone(), p.clone(), config(state).products.get(id).cloned().unwrap_or_default()))
        .collect();
    list.sort_by(|a, b| a.2.price_usd.cmp(&b.2.price_usd).then(a.0.cmp(&b.0)));
    list
}

fn min_topup(state: &AppState, provider: &str) -> Usd {
    state.config.min_topup_usd.get(provider).copied().unwrap_or(Usd::ZERO)
}

fn usd(u: Usd) -> String {
    format!("${}", html::group_digits(&u.to_string()))
}

fn form_open(action: &str, csrf: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(action),
        esc(csrf)
    )
}

fn access(plan: &Plan) -> String {
    match &plan.model_access {
        ModelAccess::All => "All models".into(),
        ModelAccess::Free => "Free models".into(),
        ModelAccess::List(ids) => ids.join(", "),
    }
}

fn cap(n: Option<u32>) -> String {
    n.map_or_else(|| "—".to_string(), |n| html::group_digits(&n.to_string()))
}

pub async fn page(state: &AppState, session: &Session, query: &HashMap<String, String>) -> PageResult {
    let account = &session.account_id;
    let StoredAccount { state: stored, plans } =
        state.store.stored_account(account).await?.ok_or_else(|| ApiError::not_found("no such account"))?;
    let now = state.clock.now();
    let current = engine::view(&stored, now, state.config.engine.context(&plans));
    let active = current.subscription.as_ref().filter(|s| s.is_active());
    let creem_ready = config(state).creem.is_some() && state.config.payments.creem.is_some();
    let now_ready = config(state).nowpayments.is_some() && state.config.payments.nowpayments.is_some();
    let products = products(state);
    let csrf = &session.csrf;

    let mut b = String::from("<h1>Manage</h1>");
    for key in ["notice", "error"] {
        if let Some((class, text)) = query.get(key).and_then(|c| message(key, c)) {
            let _ = write!(b, "<p class=\"{class}\" role=\"status\">{}</p>", esc(text));
        }
    }

    // Top up.
    b.push_str(
        "<section class=\"card\" aria-labelledby=\"topup-h\"><h2 id=\"topup-h\">Top up your Pay2Go wallet</h2>\
         <p class=\"muted small\">Pay-as-you-go credits that never expire; a positive balance also lifts the plan limits.</p>",
    );
    let topups: Vec<_> = products.iter().filter(|(_, p, _)| *p == Product::Topup).collect();
    if creem_ready && !topups.is_empty() {
        let min = min_topup(state, "creem");
        b.push_str("<h3>Card (Creem)</h3><div class=\"buttons\">");
        for (id, _, display) in topups.iter().filter(|(_, _, d)| d.price_usd.is_none_or(|p| p >= min)) {
            let label = display.label.clone().unwrap_or_else(|| match display.price_usd {
                Some(p) => format!("Top up {}", usd(p)),
                None => "Top up".into(),
            });
            let _ = write!(
                b,
                "{}<input type=\"hidden\" name=\"product\" value=\"{}\"><button type=\"submit\" data-product=\"{}\">{}</button></form>",
                form_open("/dashboard/manage/checkout", csrf),
                esc(id),
                esc(id),
                esc(&label)
            );
        }
        b.push_str("</div>");
    }
    if now_ready {
        let min = min_topup(state, "nowpayments");
        let _ = write!(
            b,
            "<h3>Crypto (NOWPayments)</h3>{}<label for=\"crypto-amount\">Amount in USD</label>\
             <input id=\"crypto-amount\" name=\"amount_usd\" inputmode=\"decimal\" required pattern=\"[0-9]+(\\.[0-9]{{1,2}})?\" \
             placeholder=\"{}\" size=\"8\"><button type=\"submit\" id=\"crypto-topup\">Pay with crypto</button></form>\
             <p class=\"muted small\">At least {}. Bitcoin, Ethereum, USDT, USDC and more.</p>",
            form_open("/dashboard/manage/crypto", csrf),
            esc(&min.to_string()),
            esc(&usd(min))
        );
    }
    if (!creem_ready || topups.is_empty()) && !now_ready {
        b.push_str("<p class=\"muted\">Top-ups are not available here yet.</p>");
    }
    b.push_str("</section>");

    // Credit packs.
    let packs: Vec<_> = products.iter().filter(|(_, p, _)| matches!(p, Product::Credits(_))).collect();
    if creem_ready && !packs.is_empty() {
        b.push_str(
            "<section class=\"card\" aria-labelledby=\"packs-h\"><h2 id=\"packs-h\">Credit packs</h2>\
             <p class=\"muted small\">Credits that never expire, used after your plan's pools.</p><div class=\"buttons\">",
        );
        for (id, p, display) in packs {
            let Product::Credits(credits) = p else { continue };
            let price = display.price_usd.map(|p| format!(" · {}", usd(p))).unwrap_or_default();
            let label = display
                .label
                .clone()
                .unwrap_or_else(|| format!("{} credits", html::group_digits(&credits.to_string())));
            let _ = write!(
                b,
                "{}<input type=\"hidden\" name=\"product\" value=\"{}\"><button type=\"submit\" data-product=\"{}\">{}{}</button></form>",
                form_open("/dashboard/manage/checkout", csrf),
                esc(id),
                esc(id),
                esc(&label),
                esc(&price)
            );
        }
        b.push_str("</div></section>");
    }

    // Plans.
    let mut paid: Vec<&Plan> = plans.all().into_iter().filter(|p| !p.is_free()).collect();
    paid.sort_by(|a, b| a.price_usd.cmp(&b.price_usd).then(a.id.cmp(&b.id)));
    let plan_product = |plan: &str, kind: SubscriptionKind| {
        products.iter().find(|(_, p, _)| matches!(p, Product::Plan { plan: pl, kind: k } if pl == plan && *k == kind))
    };
    b.push_str(
        "<section class=\"card wide\" aria-labelledby=\"plans-h\"><h2 id=\"plans-h\">Plans</h2>\
         <p class=\"muted small\">Monthly plans renew each month and refill the main pool; a 30-day pass is one payment, \
         no renewal. Switching mid-period credits the unused part of your plan to your wallet.</p><div class=\"plans\">",
    );
    for plan in &paid {
        let is_current = active.is_some_and(|s| s.plan_id == plan.id);
        let _ = write!(
            b,
            "<article class=\"plan{}\" data-plan=\"{}\"><h3>{}</h3><p class=\"price\">{}<span class=\"unit\"> / month</span></p>\
             <dl><dt>Monthly credits</dt><dd>{}</dd><dt>Backup pool</dt><dd>{}</dd><dt>Per minute</dt><dd>{}</dd>\
             <dt>Per day</dt><dd>{}</dd><dt>Per week</dt><dd>{}</dd><dt>Models</dt><dd>{}</dd></dl>",
            if is_current { " current" } else { "" },
            esc(&plan.id),
            esc(&plan.name),
            esc(&usd(plan.price_usd)),
            amount(&plan.main_pool().to_string()),
            amount(&plan.backup_pool().to_string()),
            cap(plan.limits.rate_per_minute),
            cap(plan.limits.daily_requests),
            cap(plan.limits.weekly_requests),
            esc(&access(plan)),
        );
        if is_current {
            b.push_str("<p><span class=\"tag ok\">Your plan</span></p>");
        } else if creem_ready && let Some((id, _, _)) = plan_product(&plan.id, SubscriptionKind::Monthly) {
            if active.is_some() {
                let _ = write!(
                    b,
                    "<p><a class=\"button\" href=\"/dashboard/manage/switch?product={}\">Switch to {}</a></p>",
                    esc(&html::url_encode(id)),
                    esc(&plan.name)
                );
            } else {
                let _ = write!(
                    b,
                    "{}<input type=\"hidden\" name=\"product\" value=\"{}\"><button type=\"submit\" data-product=\"{}\">Subscribe</button></form>",
                    form_open("/dashboard/manage/checkout", csrf),
                    esc(id),
                    esc(id)
                );
            }
        }
        if creem_ready
            && active.is_none()
            && let Some((id, _, _)) = plan_product(&plan.id, SubscriptionKind::Pass30d)
        {
            let _ = write!(
                b,
                "{}<input type=\"hidden\" name=\"product\" value=\"{}\"><button type=\"submit\" class=\"secondary\" data-product=\"{}\">30-day pass</button></form>",
                form_open("/dashboard/manage/checkout", csrf),
                esc(id),
                esc(id)
            );
        }
        b.push_str("</article>");
    }
    b.push_str("</div></section>");

    // Cancel.
    if let Some(sub) = active.filter(|s| s.kind == SubscriptionKind::Monthly) {
        b.push_str("<section class=\"card\" aria-labelledby=\"cancel-h\"><h2 id=\"cancel-h\">Cancel</h2>");
        if sub.cancel_at_period_end {
            let _ = write!(
                b,
                "<p id=\"cancel-state\">Your plan ends on {} and will not renew.</p>",
                html::time_el(sub.period_end, &state.config.engine.billing.timezone)
            );
        } else {
            let _ = write!(
                b,
                "<p>Stop renewing: your plan keeps running until {}.</p>{}<button type=\"submit\" class=\"danger\" id=\"cancel\">Cancel at period end</button></form>",
                html::time_el(sub.period_end, &state.config.engine.billing.timezone),
                form_open("/dashboard/manage/cancel", csrf)
            );
        }
        b.push_str("</section>");
    }

    let chrome = Chrome { account_id: account, csrf, tab: Tab::Manage };
    Ok(html_response(StatusCode::OK, html::page("Manage", Some(&chrome), &b)))
}

/// `GET /dashboard/manage/switch?product=…`: what a switch would credit,
/// computed by the engine on a copy of the account, before confirming.
pub async fn switch_page(state: &AppState, session: &Session, query: &HashMap<String, String>) -> PageResult {
    let product_id = query.get("product").cloned().unwrap_or_default();
    let Some((_, Product::Plan { plan, kind }, _)) = products(state).into_iter().find(|(id, _, _)| *id == product_id)
    else {
        return Ok(back("error", "product"));
    };
    let StoredAccount { state: stored, plans } =
        state.store.stored_account(&session.account_id).await?.ok_or_else(|| ApiError::not_found("no such account"))?;
    let now = state.clock.now();
    let ctx = state.config.engine.context(&plans);
    let mut copy = stored.clone();
    let mut n = 0u64;
    let mut new_id = || {
        n += 1;
        format!("preview-{n}")
    };
    let input = StartInput { plan_id: plan.clone(), kind, external_id: None };
    let preview = engine::apply(&mut copy, now, ctx, &mut new_id, |tx| engine::start_subscription(tx, input));
    let target = plans.get(&plan).map(|p| p.name.clone()).unwrap_or_else(|| plan.clone());
    let mut b = format!("<h1>Switch to {}</h1><section class=\"card wide\">", esc(&target));
    match preview {
        Ok((change, _)) => {
            match &change.proration {
                Some(p) => {
                    let total_usd = p.credit_usd.checked_add(p.prepaid_usd).unwrap_or(p.credit_usd);
                    let total_credits = p.credited.checked_add(p.prepaid_credited).unwrap_or(p.credited);
                    let _ = write!(
                        b,
                        "<p>Your current plan ends when the payment for {} is confirmed. For its unused part, \
                         <strong id=\"proration-usd\">{}</strong> (<span id=\"proration-credits\">{}</span> credits) \
                         goes to your Pay2Go wallet.</p>\
                         <dl class=\"stats\"><div><dt>Period used</dt><dd>{}</dd></div><div><dt>Pools used</dt><dd>{}</dd></div>\
                         <div><dt>Counted as used</dt><dd>{}</dd></div></dl>",
                        esc(&target),
                        esc(&usd(total_usd)),
                        amount(&total_credits.to_string()),
                        esc(&percent(p.time_used.units())),
                        esc(&percent(p.usage_used.units())),
                        esc(&percent(p.consumed.units())),
                    );
                    if p.carried_over.is_positive() {
                        let _ = write!(
                            b,
                            "<p>{} unused credits carry over to the new plan.</p>",
                            amount(&p.carried_over.to_string())
                        );
                    }
                }
                None => b.push_str("<p>Nothing to credit: the new plan starts when its payment is confirmed.</p>"),
            }
            b.push_str("<p class=\"muted small\">The figure is as of now; it is worked out again when the payment arrives.</p>");
            let _ = write!(
                b,
                "{}<input type=\"hidden\" name=\"product\" value=\"{}\"><input type=\"hidden\" name=\"confirm\" value=\"1\">\
                 <button type=\"submit\" id=\"confirm-switch\">Pay and switch</button> <a class=\"keep\" href=\"/dashboard/manage\">Keep my plan</a></form>",
                form_open("/dashboard/manage/checkout", &session.csrf),
                esc(&product_id)
            );
        }
        Err(refusal) => {
            let _ = write!(b, "<p class=\"notice bad\">This switch is not possible: {}</p>", esc(&refusal.to_string()));
        }
    }
    b.push_str("</section>");
    let chrome = Chrome { account_id: &session.account_id, csrf: &session.csrf, tab: Tab::Manage };
    Ok(html_response(StatusCode::OK, html::page("Switch plan", Some(&chrome), &b)))
}

/// Millionths as a percentage with at most one decimal (`0.25` → `25%`).
fn percent(millionths: i64) -> String {
    let tenths = (millionths + 500) / 1000;
    if tenths % 10 == 0 { format!("{}%", tenths / 10) } else { format!("{}.{}%", tenths / 10, tenths % 10) }
}

/// `POST /dashboard/manage/checkout {product, confirm?}`: a Creem checkout.
pub async fn checkout(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Response {
    let (Some(api), Some(_)) = (&config(state).creem, &state.config.payments.creem) else {
        return back("error", "unavailable");
    };
    let product_id = form.get("product").cloned().unwrap_or_default();
    let Some((_, product, display)) = products(state).into_iter().find(|(id, _, _)| *id == product_id) else {
        return back("error", "product");
    };
    if product == Product::Topup && display.price_usd.is_some_and(|p| p < min_topup(state, "creem")) {
        return back("error", "below_minimum");
    }
    // A switch is confirmed on the page that shows its proration first.
    if let Product::Plan { kind: SubscriptionKind::Monthly, .. } = product
        && form.get("confirm").map(String::as_str) != Some("1")
        && let Ok(Some(stored)) = state.store.account_state(&session.account_id).await
        && stored.subscription.as_ref().is_some_and(|s| s.is_active())
    {
        return see_other(&format!("/dashboard/manage/switch?product={}", html::url_encode(&product_id)));
    }
    let request_id = uuid::Uuid::now_v7().simple().to_string();
    let success = format!("{}/dashboard/manage?notice=paid", base_url(state, headers));
    match providers::creem_checkout(api, &product_id, &request_id, &success, &session.account_id).await {
        Ok(to) => {
            tracing::info!(provider = "creem", checkout = %to.id, "dashboard checkout created");
            see_other(&to.url)
        }
        Err(error) => {
            tracing::warn!(provider = "creem", %error, "dashboard checkout failed");
            back("error", "provider")
        }
    }
}

/// `POST /dashboard/manage/crypto {amount_usd}`: a NOWPayments invoice.
pub async fn crypto(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Response {
    let (Some(api), Some(_)) = (&config(state).nowpayments, &state.config.payments.nowpayments) else {
        return back("error", "unavailable");
    };
    let text = form.get("amount_usd").map(|s| s.trim().trim_start_matches('$').to_string()).unwrap_or_default();
    let valid = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.split('.').nth(1).is_none_or(|cents| cents.len() <= 2)
        && text.len() <= 12;
    let Some(amount) = valid.then(|| Usd::parse(&text).ok()).flatten().filter(|a| a.is_positive()) else {
        return back("error", "amount");
    };
    if amount < min_topup(state, "nowpayments") {
        return back("error", "below_minimum");
    }
    let base = base_url(state, headers);
    let order_id = format!("{}:{}", session.account_id, uuid::Uuid::now_v7().simple());
    let ipn = format!("{base}/webhooks/nowpayments");
    let success = format!("{base}/dashboard/manage?notice=paid");
    match providers::nowpayments_invoice(api, &amount.to_string(), &order_id, &ipn, &success).await {
        Ok(to) => {
            tracing::info!(provider = "nowpayments", invoice = %to.id, "dashboard invoice created");
            see_other(&to.url)
        }
        Err(error) => {
            tracing::warn!(provider = "nowpayments", %error, "dashboard invoice failed");
            back("error", "provider")
        }
    }
}

/// `POST /dashboard/manage/cancel`: cancel at the period end.
pub async fn cancel(state: &AppState, session: &Session) -> Response {
    let command = Command::CancelSubscription { account_id: session.account_id.clone() };
    match state.store.execute(command, None).await {
        Ok(_) => back("notice", "cancelled"),
        Err(creditd_store::StoreError::Refused(_)) => back("error", "no_subscription"),
        Err(e) => PageError::from(e).into_response(),
    }
}
