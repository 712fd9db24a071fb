//! The overview: balance, wallet (with the display currency), plan, budget,
//! limits and every pool in burn order. The numbers are the fields of the
//! API's `BalanceOut`, built by the same code from the same read.

use std::collections::HashMap;
use std::fmt::Write;

use axum::http::StatusCode;
use creditd_core::engine;
use creditd_core::units::Usd;
use creditd_store::StoredAccount;
use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::html::{self, Chrome, Tab, amount, esc, time_el};
use super::session::Session;
use super::{PageError, PageResult, config, html_response};
use crate::dto::{BalanceOut, LimitOut};
use crate::error::ApiError;
use crate::state::AppState;

fn parse_ts(text: &str) -> Option<Timestamp> {
    text.parse().ok()
}

/// Readable names of grant kinds.
pub fn kind_label(kind: &str) -> &str {
    match kind {
        "plan_main" => "Plan · main pool",
        "plan_backup" => "Plan · backup pool",
        "promo" => "Free credits",
        "purchased" => "Credit pack",
        other => other,
    }
}

/// A meter with its numbers as text beside it.
fn meter(label: &str, used: &str, limit: &str, used_n: u64, limit_n: u64, note: &str) -> String {
    let high = limit_n.saturating_mul(9) / 10;
    format!(
        "<div class=\"gauge\"><div class=\"gauge-head\"><span>{}</span><span class=\"num\">{} / {}</span></div>\
         <meter min=\"0\" max=\"{limit_n}\" low=\"{}\" high=\"{high}\" optimum=\"0\" value=\"{used_n}\" \
         aria-label=\"{}\">{} of {}</meter><div class=\"muted small\">{}</div></div>",
        esc(label),
        esc(used),
        esc(limit),
        limit_n.saturating_mul(7) / 10,
        esc(label),
        esc(used),
        esc(limit),
        note
    )
}

fn limit_meter(label: &str, limit: Option<&LimitOut>, tz: &TimeZone, now: Timestamp, window: &str) -> String {
    match limit {
        None => format!(
            "<div class=\"gauge\"><div class=\"gauge-head\"><span>{}</span><span>no limit</span></div></div>",
            esc(label)
        ),
        Some(l) => {
            let note = match l.resets_at.as_deref().and_then(parse_ts) {
                Some(at) => format!("Resets {} ({})", esc(&html::relative(at, now)), time_el(at, tz)),
                None => esc(window).to_string(),
            };
            let (used, limit) = (html::group_digits(&l.used.to_string()), html::group_digits(&l.limit.to_string()));
            meter(label, &used, &limit, u64::from(l.used), u64::from(l.limit), &note)
        }
    }
}

/// Micro-units of a decimal string (for a meter's value; never displayed).
fn micros(decimal: &str) -> u64 {
    Usd::parse(decimal).map(|u| u.units().max(0) as u64 / 1000).unwrap_or(0)
}

pub async fn page(state: &AppState, session: &Session, query: &HashMap<String, String>) -> PageResult {
    let id = &session.account_id;
    let account = state.store.account(id).await?.ok_or_else(|| ApiError::not_found("the account no longer exists"))?;
    let StoredAccount { state: stored, plans } =
        state.store.stored_account(id).await?.ok_or_else(|| ApiError::not_found("no such account"))?;
    let ctx = state.config.engine.context(&plans);
    let now = state.clock.now();
    let current = engine::view(&stored, now, ctx);
    let balance = BalanceOut::new(&current, now, ctx);
    let plan = engine::effective_plan(&current, &plans);
    let tz = &state.config.engine.billing.timezone;

    let mut b = String::new();
    b.push_str("<h1 class=\"sr-only\">Overview</h1>");
    if account.status.as_str() == "suspended" {
        b.push_str("<p class=\"notice bad\" role=\"alert\">This account is suspended: requests are refused.</p>");
    }

    // Available, held, debt.
    let _ = write!(
        b,
        "<section class=\"card hero\" aria-labelledby=\"avail-h\"><h2 id=\"avail-h\" class=\"label\">Available credits</h2>\
         <p class=\"big\" id=\"available\">{}</p><dl class=\"stats\"><div><dt>Held for requests in flight</dt>\
         <dd id=\"held\">{}</dd></div>",
        amount(&balance.available),
        amount(&balance.held)
    );
    if balance.debt != "0" {
        let _ = write!(b, "<div class=\"debt\"><dt>Debt</dt><dd id=\"debt\">{}</dd></div>", amount(&balance.debt));
    }
    let _ = write!(b, "</dl><p class=\"muted small\">As of {}</p></section>", time_el(now, tz));

    // Wallet and the display currency.
    let currencies = &config(state).currencies;
    let chosen = query.get("currency").filter(|c| !c.is_empty());
    let rate = match chosen {
        None => None,
        Some(code) => Some(
            currencies
                .iter()
                .find(|(c, _)| c == code)
                .ok_or_else(|| PageError::invalid(format!("currency {code:?} is not one of [display.currencies]")))?,
        ),
    };
    let _ = write!(
        b,
        "<section class=\"card\" aria-labelledby=\"wallet-h\"><h2 id=\"wallet-h\">Pay2Go wallet</h2>\
         <p class=\"value\" id=\"wallet-balance\">{} <span class=\"unit\">credits</span></p>\
         <p>= <span id=\"wallet-usd\">{}</span> USD",
        amount(&balance.wallet.balance),
        amount(&balance.wallet.usd)
    );
    if balance.wallet.held != "0" {
        let _ = write!(b, " · {} held", amount(&balance.wallet.held));
    }
    b.push_str("</p>");
    if let Some((code, factor)) = rate {
        let usd = Usd::parse(&balance.wallet.usd).map_err(|_| PageError::internal("wallet usd"))?;
        let _ = write!(
            b,
            "<p class=\"converted\" id=\"wallet-converted\">≈ <span class=\"num\">{}</span> {}</p>\
             <p class=\"muted small\">At 1 USD = {} {} — for display only; balances stay in credits and USD.</p>",
            esc(&html::convert_usd(usd, *factor)),
            esc(code),
            esc(&factor.to_string()),
            esc(code)
        );
    }
    if !currencies.is_empty() {
        b.push_str(
            "<form class=\"inline\" method=\"get\" action=\"/dashboard\"><label for=\"currency\">Show in</label>\
             <select id=\"currency\" name=\"currency\"><option value=\"\">USD only</option>",
        );
        for (code, factor) in currencies {
            let selected = if Some(code) == chosen { " selected" } else { "" };
            let _ = write!(
                b,
                "<option value=\"{}\"{selected}>{} (1 USD = {})</option>",
                esc(code),
                esc(code),
                esc(&factor.to_string())
            );
        }
        b.push_str("</select><button type=\"submit\">Show</button></form>");
    }
    b.push_str("<p class=\"muted small\">Never expires; used after your plan and other credits.</p></section>");

    // Plan, period, budget.
    let _ = write!(b, "<section class=\"card\" aria-labelledby=\"plan-h\"><h2 id=\"plan-h\">Plan</h2>");
    let _ = write!(b, "<p class=\"value\" id=\"plan-name\">{}</p>", esc(&plan.name));
    match current.subscription.as_ref().filter(|s| s.is_active()) {
        Some(sub) => {
            let kind = if sub.kind.as_str() == "monthly" { "Monthly" } else { "30-day pass" };
            let end = sub.period_end;
            let fate = if sub.kind.as_str() != "monthly" {
                "Ends"
            } else if sub.cancel_at_period_end {
                "Cancels at period end"
            } else {
                "Renews"
            };
            let _ = write!(
                b,
                "<p>{kind} · <span id=\"plan-fate\">{fate}</span> {} ({})</p>",
                time_el(end, tz),
                esc(&html::relative(end, now))
            );
            if let (Some(Some(limit)), Some(used)) = (&balance.plan.budget_usd, &balance.plan.budget_used_usd) {
                let note = "Provider cost of this period's requests; past it, requests use your other credits.";
                b.push_str(&meter(
                    "Plan budget (USD)",
                    &html::group_digits(used),
                    &html::group_digits(limit),
                    micros(used),
                    micros(limit),
                    note,
                ));
            }
        }
        None => {
            let past_due = current.subscription.as_ref().filter(|s| s.status.as_str() == "past_due");
            if let Some(sub) = past_due {
                let _ = write!(
                    b,
                    "<p class=\"notice bad\">Payment for your {} plan is overdue; free plan rules apply until it arrives.</p>",
                    esc(&sub.plan_id)
                );
            }
            b.push_str("<p class=\"muted\">No subscription: free plan rules apply.</p>");
        }
    }
    b.push_str("</section>");

    // Limits.
    let l = &balance.limits;
    b.push_str("<section class=\"card\" aria-labelledby=\"limits-h\"><h2 id=\"limits-h\">Request limits</h2>");
    b.push_str(&limit_meter("Per minute", l.rate_per_minute.as_ref(), tz, now, "Sliding 60-second window"));
    b.push_str(&limit_meter("Today", l.daily_requests.as_ref(), tz, now, ""));
    b.push_str(&limit_meter("This week", l.weekly_requests.as_ref(), tz, now, ""));
    b.push_str("<p class=\"muted small\">A positive wallet balance lifts these limits.</p></section>");

    // Pools in burn order.
    b.push_str(
        "<section class=\"card wide\" aria-labelledby=\"pools-h\"><h2 id=\"pools-h\">Your credits, in the order they are used</h2>\
         <div class=\"scroll\" tabindex=\"0\" role=\"region\" aria-label=\"Credit pools\"><table id=\"pools\" class=\"stack\"><thead><tr>\
         <th scope=\"col\">#</th><th scope=\"col\">Kind</th><th scope=\"col\">Source</th>\
         <th scope=\"col\" class=\"r\">Remaining / amount</th><th scope=\"col\" class=\"r\">Held</th>\
         <th scope=\"col\">Expires</th></tr></thead><tbody>",
    );
    for (i, g) in balance.grants.iter().enumerate() {
        let starts = parse_ts(&g.starts_at).filter(|s| *s > now);
        let expiry = match g.expires_at.as_deref().and_then(parse_ts) {
            None => "<span class=\"muted\">never</span>".to_string(),
            Some(at) => {
                let class = if html::soon(at, now) { "soon" } else { "" };
                format!(
                    "<span class=\"{class}\">{}</span> <span class=\"muted small\">{}</span>",
                    esc(&html::relative(at, now)),
                    time_el(at, tz)
                )
            }
        };
        let starts = starts.map(|s| format!(" <span class=\"tag\">starts {}</span>", esc(&html::relative(s, now))));
        let _ = write!(
            b,
            "<tr data-grant=\"{}\"><td data-label=\"#\">{}</td><td data-label=\"Kind\">{}{}</td>\
             <td data-label=\"Source\">{}</td><td class=\"r\" data-label=\"Remaining / amount\">{} / {}</td>\
             <td class=\"r\" data-label=\"Held\">{}</td><td data-label=\"Expires\">{}</td></tr>",
            esc(&g.id),
            i + 1,
            esc(kind_label(g.kind)),
            starts.unwrap_or_default(),
            esc(&g.source),
            amount(&g.remaining),
            amount(&g.amount),
            amount(&g.held),
            expiry
        );
    }
    let _ = write!(
        b,
        "<tr data-grant=\"wallet\"><td data-label=\"#\">{}</td><td data-label=\"Kind\">Pay2Go wallet</td>\
         <td data-label=\"Source\">top-ups</td><td class=\"r\" data-label=\"Remaining\">{}</td>\
         <td class=\"r\" data-label=\"Held\">{}</td><td data-label=\"Expires\"><span class=\"muted\">never</span></td>\
         </tr></tbody></table></div></section>",
        balance.grants.len() + 1,
        amount(&balance.wallet.balance),
        amount(&balance.wallet.held)
    );

    let chrome = Chrome { account_id: id, csrf: &session.csrf, tab: Tab::Overview };
    Ok(html_response(StatusCode::OK, html::page("Overview", Some(&chrome), &b)))
}
