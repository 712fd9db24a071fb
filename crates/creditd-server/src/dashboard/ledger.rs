//! The credit record: the account's ledger, newest first, paged, filtered
//! by entry type.

use std::collections::HashMap;
use std::fmt::Write;

use axum::http::StatusCode;
use creditd_core::ledger::{EntryKind, Reference};
use creditd_store::{LedgerFilter, Page};

use super::html::{self, Chrome, Tab, amount, esc, query_string, time_el};
use super::overview::kind_label;
use super::session::Session;
use super::{PageError, PageResult, html_response};
use crate::state::AppState;

const PAGE_ROWS: u32 = 25;

fn type_label(kind: EntryKind) -> &'static str {
    match kind.as_str() {
        "grant" => "Credits added",
        "expire" => "Expired",
        "charge" => "Request",
        "debt_repayment" => "Debt repaid",
        "topup" => "Top-up",
        "refund" => "Refund",
        "adjustment" => "Adjustment",
        "proration_credit" => "Plan change credit",
        "void" => "Withdrawn",
        _ => "Other",
    }
}

pub async fn page(state: &AppState, session: &Session, query: &HashMap<String, String>) -> PageResult {
    let account = &session.account_id;
    let tz = state.config.engine.billing.timezone.clone();
    let kind_text = query.get("type").map(String::as_str).unwrap_or("");
    let kind = match kind_text {
        "" => None,
        t => Some(EntryKind::parse(t).ok_or_else(|| PageError::invalid(format!("type {t:?} is not an entry type")))?),
    };
    let cursor = query.get("cursor").filter(|c| !c.is_empty()).cloned();
    let entries = state
        .store
        .ledger(
            account,
            LedgerFilter { kind, ..LedgerFilter::default() },
            Page { limit: PAGE_ROWS, cursor: cursor.clone() },
        )
        .await?;
    // What each grant is, to name the pool of an entry.
    let grants = state.store.grants(account, true, Page { limit: 1000, cursor: None }).await?;
    let pools: HashMap<&str, (&str, &str)> =
        grants.data.iter().map(|g| (g.id.as_str(), (g.kind.as_str(), g.source.as_str()))).collect();

    let mut b = String::from("<h1>Credit record</h1>");
    b.push_str(
        "<section class=\"card wide\"><form class=\"filters\" method=\"get\" action=\"/dashboard/ledger\">\
         <label>Type <select name=\"type\"><option value=\"\">all</option>",
    );
    for k in EntryKind::ALL {
        let sel = if kind == Some(k) { " selected" } else { "" };
        let _ = write!(b, "<option value=\"{}\"{sel}>{}</option>", k.as_str(), type_label(k));
    }
    b.push_str(
        "</select></label><div class=\"actions\"><button type=\"submit\">Apply</button> \
         <a href=\"/dashboard/ledger\">Clear</a></div></form>\
         <div class=\"scroll\" tabindex=\"0\" role=\"region\" aria-label=\"Credit record\"><table id=\"ledger\" class=\"stack\"><thead><tr>\
         <th scope=\"col\">Time</th><th scope=\"col\">What</th><th scope=\"col\" class=\"r\">Amount</th>\
         <th scope=\"col\">Pool</th><th scope=\"col\">Reference</th><th scope=\"col\" class=\"r\">Balance after</th>\
         </tr></thead><tbody>",
    );
    if entries.data.is_empty() {
        b.push_str("<tr><td colspan=\"6\" class=\"muted\">No entries.</td></tr>");
    }
    for e in &entries.data {
        let pool = match e.grant_id.as_deref() {
            None => "Pay2Go wallet".to_string(),
            Some(id) => match pools.get(id) {
                Some((kind, source)) => format!("{} · {}", kind_label(kind), source),
                None => "credit pool".to_string(),
            },
        };
        let reference = match &e.reference {
            Reference::None => String::new(),
            Reference::Request(id) => format!("request {id}"),
            Reference::Subscription(id) => format!("subscription {id}"),
            Reference::Payment(id) => format!("payment {id}"),
            Reference::Grant(id) => format!("grant {id}"),
        };
        let reason = e.reason.as_deref().map(|r| format!("<br><span class=\"muted\">{}</span>", esc(r)));
        let sign = if e.amount.is_negative() { "neg" } else { "pos" };
        let _ = write!(
            b,
            "<tr data-entry=\"{}\" data-type=\"{}\"><td data-label=\"Time\">{}</td><td data-label=\"What\">{}{}</td>\
             <td class=\"r {sign}\" data-label=\"Amount\">{}</td><td data-label=\"Pool\">{}</td>\
             <td class=\"ref\" data-label=\"Reference\">{}</td><td class=\"r\" data-label=\"Balance after\">{}</td></tr>",
            esc(&e.id),
            e.kind.as_str(),
            time_el(e.at, &tz),
            type_label(e.kind),
            reason.unwrap_or_default(),
            amount(&e.amount.to_string()),
            esc(&pool),
            esc(&reference),
            amount(&e.balance_after.to_string()),
        );
    }
    b.push_str("</tbody></table></div><nav class=\"pager\" aria-label=\"Pages of the credit record\">");
    if cursor.is_some() {
        let _ = write!(b, "<a href=\"/dashboard/ledger{}\">« Newest</a> ", esc(&query_string(&[("type", kind_text)])));
    }
    if let Some(next) = &entries.next_cursor {
        let q = query_string(&[("type", kind_text), ("cursor", next)]);
        let _ = write!(b, "<a id=\"older\" rel=\"next\" href=\"/dashboard/ledger{}\">Older »</a>", esc(&q));
    }
    b.push_str("</nav></section>");
    let chrome = Chrome { account_id: account, csrf: &session.csrf, tab: Tab::Ledger };
    Ok(html_response(StatusCode::OK, html::page("Credit record", Some(&chrome), &b)))
}
