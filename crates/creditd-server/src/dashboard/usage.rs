//! Usage: the last 30 days as a chart (credits by day, stacked by model),
//! totals by model and by project, the requests themselves (filters in the
//! URL, cursor paging) and the export buttons.
//!
//! Filters are the API's (`routes::usage::usage_filter`, same validation),
//! with dates as calendar days of `billing.timezone`: `from` is the start
//! of its day, `to` the end of its day (inclusive).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use axum::http::StatusCode;
use creditd_core::units::CreditsTotal;
use creditd_store::{GroupBy, Page, UsageFilter, UsageSummary};
use jiff::ToSpan;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde_json::json;

use super::html::{self, Chrome, Tab, amount, esc, query_string, time_el};
use super::session::Session;
use super::{PageError, PageResult, html_response};
use crate::export::Format;
use crate::extract::QueryParams;
use crate::state::AppState;

/// Requests shown per page.
const PAGE_ROWS: u32 = 25;
/// Models drawn by name in the chart; the rest are `other`.
const CHART_MODELS: usize = 6;
const CHART_DAYS: i64 = 30;

/// The filters of the page as the user wrote them (kept in links).
#[derive(Default)]
pub struct Filters {
    pub from: String,
    pub to: String,
    pub model: String,
    pub project: String,
    pub status: String,
}

impl Filters {
    fn read(query: &HashMap<String, String>) -> Filters {
        let get = |k: &str| query.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
        Filters {
            from: get("from"),
            to: get("to"),
            model: get("model"),
            project: get("project"),
            status: get("status"),
        }
    }

    fn pairs(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("from", &self.from),
            ("to", &self.to),
            ("model", &self.model),
            ("project", &self.project),
            ("status", &self.status),
        ]
    }

    fn is_empty(&self) -> bool {
        self.pairs().iter().all(|(_, v)| v.is_empty())
    }

    /// The store's filter: dates to instants of the billing time zone, then
    /// the API's own validation.
    fn to_filter(&self, tz: &TimeZone) -> Result<UsageFilter, PageError> {
        let mut q = HashMap::new();
        let day = |name: &str, text: &str, next: bool| -> Result<String, PageError> {
            let date: Date =
                text.parse().map_err(|_| PageError::invalid(format!("{name}: not a date (YYYY-MM-DD)")))?;
            let date = if next { date.tomorrow().map_err(|_| PageError::invalid("date out of range"))? } else { date };
            let zoned = date.to_zoned(tz.clone()).map_err(|_| PageError::invalid("date out of range"))?;
            Ok(zoned.timestamp().to_string())
        };
        if !self.from.is_empty() {
            q.insert("from".to_string(), day("from", &self.from, false)?);
        }
        if !self.to.is_empty() {
            q.insert("to".to_string(), day("to", &self.to, true)?);
        }
        for (k, v) in [("model", &self.model), ("project", &self.project), ("status", &self.status)] {
            if !v.is_empty() {
                q.insert(k.to_string(), v.clone());
            }
        }
        Ok(crate::routes::usage::usage_filter(&QueryParams(q))?)
    }
}

/// The 30 calendar days ending today, and the filter covering them.
fn last_days(state: &AppState) -> Result<(Vec<String>, UsageFilter), PageError> {
    let tz = &state.config.engine.billing.timezone;
    let today = state.clock.now().to_zoned(tz.clone()).date();
    let first = today.checked_sub((CHART_DAYS - 1).days()).map_err(|_| PageError::internal("date range"))?;
    let end = today.tomorrow().map_err(|_| PageError::internal("date range"))?;
    let start_ts = first.to_zoned(tz.clone()).map_err(|_| PageError::internal("date range"))?.timestamp();
    let end_ts = end.to_zoned(tz.clone()).map_err(|_| PageError::internal("date range"))?.timestamp();
    let mut days = Vec::with_capacity(CHART_DAYS as usize);
    let mut d = first;
    while d <= today {
        days.push(d.to_string());
        d = d.tomorrow().map_err(|_| PageError::internal("date range"))?;
    }
    Ok((days, UsageFilter { from: Some(start_ts), to: Some(end_ts), ..UsageFilter::default() }))
}

fn by_key(summary: &UsageSummary) -> BTreeMap<String, CreditsTotal> {
    summary.rows.iter().filter_map(|r| r.key.clone().map(|k| (k, r.totals.credits))).collect()
}

/// The chart's data: per model (the largest [`CHART_MODELS`], then
/// `other`), the credits of each day as decimal strings.
async fn chart_data(state: &AppState, account: &str) -> Result<serde_json::Value, PageError> {
    let tz = state.config.engine.billing.timezone.clone();
    let (days, window) = last_days(state)?;
    let models = state.store.usage_summary(account, window.clone(), GroupBy::Model).await?;
    let mut ranked: Vec<_> = models.rows.iter().filter_map(|r| r.key.clone().map(|k| (k, r.totals.credits))).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let named: Vec<String> = ranked.iter().take(CHART_MODELS).map(|(k, _)| k.clone()).collect();
    let all_days = by_key(&state.store.usage_summary(account, window.clone(), GroupBy::Day(tz.clone())).await?);
    let mut rest = all_days.clone();
    let mut series = Vec::new();
    for model in &named {
        let filter = UsageFilter { model: Some(model.clone()), ..window.clone() };
        let per_day = by_key(&state.store.usage_summary(account, filter, GroupBy::Day(tz.clone())).await?);
        for (day, credits) in &per_day {
            if let Some(r) = rest.get_mut(day) {
                *r = r.checked_sub(*credits).unwrap_or(CreditsTotal::ZERO);
            }
        }
        let values: Vec<String> =
            days.iter().map(|d| per_day.get(d).copied().unwrap_or(CreditsTotal::ZERO).to_string()).collect();
        series.push(json!({"name": model, "credits": values}));
    }
    if rest.values().any(|c| !c.is_zero()) {
        let values: Vec<String> =
            days.iter().map(|d| rest.get(d).copied().unwrap_or(CreditsTotal::ZERO).to_string()).collect();
        series.push(json!({"name": "other", "credits": values}));
    }
    let totals: Vec<String> =
        days.iter().map(|d| all_days.get(d).copied().unwrap_or(CreditsTotal::ZERO).to_string()).collect();
    Ok(json!({"days": days, "series": series, "totals": totals, "unit": "credits"}))
}

fn totals_table(title: &str, id: &str, summary: &UsageSummary, none_label: &str) -> String {
    let mut b = format!(
        "<section class=\"card\" aria-labelledby=\"{id}-h\"><h2 id=\"{id}-h\">{}</h2>\
         <div class=\"scroll\" tabindex=\"0\" role=\"region\" aria-label=\"{}\"><table id=\"{id}\"><thead><tr>\
         <th scope=\"col\">{}</th><th scope=\"col\" class=\"r\">Requests</th><th scope=\"col\" class=\"r\">Credits</th>\
         </tr></thead><tbody>",
        esc(title),
        esc(title),
        if id == "by-model" { "Model" } else { "Project" }
    );
    if summary.rows.is_empty() {
        b.push_str("<tr><td colspan=\"3\" class=\"muted\">No requests in this period.</td></tr>");
    }
    for row in &summary.rows {
        let key = match &row.key {
            Some(k) => esc(k).to_string(),
            None => format!("<span class=\"muted\">{}</span>", esc(none_label)),
        };
        let _ = write!(
            b,
            "<tr><td>{key}</td><td class=\"r num\">{}</td><td class=\"r\">{}</td></tr>",
            row.totals.requests,
            amount(&row.totals.credits.to_string())
        );
    }
    let _ = write!(
        b,
        "</tbody><tfoot><tr><th scope=\"row\">Total</th><td class=\"r num\">{}</td><td class=\"r\">{}</td></tr></tfoot></table></div></section>",
        summary.total.requests,
        amount(&summary.total.credits.to_string())
    );
    b
}

fn opt(text: Option<&str>) -> String {
    match text {
        Some(t) => esc(t).to_string(),
        None => "<span class=\"muted\">—</span>".to_string(),
    }
}

pub async fn page(state: &AppState, session: &Session, query: &HashMap<String, String>) -> PageResult {
    let account = &session.account_id;
    let tz = state.config.engine.billing.timezone.clone();
    let filters = Filters::read(query);
    let filter = filters.to_filter(&tz)?;
    let cursor = query.get("cursor").filter(|c| !c.is_empty()).cloned();
    let records = state.store.usage(account, filter.clone(), Page { limit: PAGE_ROWS, cursor: cursor.clone() }).await?;
    let by_model = state.store.usage_summary(account, filter.clone(), GroupBy::Model).await?;
    let by_project = state.store.usage_summary(account, filter.clone(), GroupBy::Project).await?;
    let chart = chart_data(state, account).await?;

    let mut b = String::new();
    b.push_str("<h1>Usage</h1>");
    // The chart: drawn by dashboard.js from the JSON block; the same
    // numbers as a table for everyone else.
    let _ = write!(
        b,
        "<section class=\"card wide\" aria-labelledby=\"chart-h\"><h2 id=\"chart-h\">Credits by day, last 30 days</h2>\
         <p class=\"muted small\">Calendar days in {}; stacked by model.</p>\
         <div id=\"usage-chart\" class=\"chart\" role=\"img\" aria-label=\"Credits used per day over the last 30 days, by model\"></div>\
         <script type=\"application/json\" id=\"usage-chart-data\">{}</script>",
        esc(tz.iana_name().unwrap_or("UTC")),
        html::json_block(&chart)
    );
    b.push_str(
        "<details><summary>The numbers</summary><div class=\"scroll\" tabindex=\"0\" role=\"region\" aria-label=\"Credits by day\">\
         <table id=\"by-day\"><thead><tr><th scope=\"col\">Day</th><th scope=\"col\" class=\"r\">Credits</th></tr></thead><tbody>",
    );
    if let (Some(days), Some(totals)) = (chart["days"].as_array(), chart["totals"].as_array()) {
        for (d, t) in days.iter().zip(totals).rev() {
            let (d, t) = (d.as_str().unwrap_or(""), t.as_str().unwrap_or("0"));
            let _ = write!(b, "<tr><td>{}</td><td class=\"r\">{}</td></tr>", esc(d), amount(t));
        }
    }
    b.push_str("</tbody></table></div></details></section>");

    // Filters (a GET form: they live in the URL).
    let status_opt = |v: &str, label: &str| {
        let sel = if filters.status == v { " selected" } else { "" };
        format!("<option value=\"{v}\"{sel}>{label}</option>")
    };
    let mut model_opts = String::from("<datalist id=\"models\">");
    for row in &by_model.rows {
        if let Some(k) = &row.key {
            let _ = write!(model_opts, "<option value=\"{}\">", esc(k));
        }
    }
    model_opts.push_str("</datalist>");
    let _ = write!(
        b,
        "<section class=\"card wide\" aria-labelledby=\"filters-h\"><h2 id=\"filters-h\">Filter</h2>\
         <form class=\"filters\" method=\"get\" action=\"/dashboard/usage\">\
         <label>From <input type=\"date\" name=\"from\" value=\"{}\"></label>\
         <label>To <input type=\"date\" name=\"to\" value=\"{}\"></label>\
         <label>Model <input type=\"text\" name=\"model\" list=\"models\" value=\"{}\" autocomplete=\"off\"></label>{model_opts}\
         <label>Project <input type=\"text\" name=\"project\" value=\"{}\"></label>\
         <label>Status <select name=\"status\">{}{}{}{}</select></label>\
         <div class=\"actions\"><button type=\"submit\">Apply</button> <a href=\"/dashboard/usage\">Clear</a></div></form>",
        esc(&filters.from),
        esc(&filters.to),
        esc(&filters.model),
        esc(&filters.project),
        status_opt("", "any"),
        status_opt("success", "success"),
        status_opt("error", "error"),
        status_opt("cancelled", "cancelled"),
    );
    let export_q = |format: &str| {
        let mut pairs = vec![("format", format)];
        pairs.extend(filters.pairs());
        format!("/dashboard/usage/export{}", query_string(&pairs))
    };
    let _ = write!(
        b,
        "<p class=\"exports\">Download {}: <a class=\"button\" id=\"export-csv\" href=\"{}\" download>CSV</a> \
         <a class=\"button\" id=\"export-jsonl\" href=\"{}\" download>JSONL</a></p></section>",
        if filters.is_empty() { "every request" } else { "the filtered requests" },
        esc(&export_q("csv")),
        esc(&export_q("jsonl"))
    );

    let period = if filters.from.is_empty() && filters.to.is_empty() { "all time" } else { "the chosen dates" };
    b.push_str("<div class=\"grid2\">");
    b.push_str(&totals_table(&format!("By model ({period})"), "by-model", &by_model, "none"));
    b.push_str(&totals_table(&format!("By project ({period})"), "by-project", &by_project, "no project"));
    b.push_str("</div>");

    // The requests.
    b.push_str(
        "<section class=\"card wide\" aria-labelledby=\"requests-h\"><h2 id=\"requests-h\">Requests</h2>\
         <div class=\"scroll\" tabindex=\"0\" role=\"region\" aria-label=\"Requests\"><table id=\"requests\" class=\"dense\"><thead><tr>\
         <th scope=\"col\">Time</th><th scope=\"col\">Model</th><th scope=\"col\">Type</th><th scope=\"col\">Project</th>\
         <th scope=\"col\">Conversation</th><th scope=\"col\" class=\"r\">Input</th><th scope=\"col\" class=\"r\">Cache read</th>\
         <th scope=\"col\" class=\"r\">Cache write</th><th scope=\"col\" class=\"r\">Output</th><th scope=\"col\" class=\"r\">Credits</th>\
         <th scope=\"col\">Status</th><th scope=\"col\">Refunded</th><th scope=\"col\" class=\"r\">Latency</th></tr></thead><tbody>",
    );
    if records.data.is_empty() {
        b.push_str("<tr><td colspan=\"13\" class=\"muted\">No requests match.</td></tr>");
    }
    for r in &records.data {
        let latency = r.details.latency_ms.map(|ms| format!("{ms} ms"));
        let status_class = if r.status.as_str() == "success" { "ok" } else { "bad" };
        let _ = write!(
            b,
            "<tr data-request=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"r num\">{}</td><td class=\"r num\">{}</td><td class=\"r num\">{}</td><td class=\"r num\">{}</td>\
             <td class=\"r\">{}</td><td><span class=\"tag {status_class}\">{}</span></td><td>{}</td><td class=\"r\">{}</td></tr>",
            esc(&r.request_id),
            time_el(r.recorded_at, &tz),
            esc(&r.model),
            esc(&r.request_type),
            opt(r.details.project.as_deref()),
            opt(r.details.conversation.as_deref()),
            html::group_digits(&r.usage.input_tokens.to_string()),
            html::group_digits(&r.usage.cache_read_tokens.to_string()),
            html::group_digits(&r.usage.cache_write_tokens.to_string()),
            html::group_digits(&r.usage.output_tokens.to_string()),
            amount(&r.credits.to_string()),
            r.status.as_str(),
            if r.refunded { "<span class=\"tag\">refunded</span>" } else { "" },
            opt(latency.as_deref()),
        );
    }
    b.push_str("</tbody></table></div><nav class=\"pager\" aria-label=\"Pages of requests\">");
    if cursor.is_some() {
        let _ = write!(b, "<a href=\"/dashboard/usage{}\">« Newest</a> ", esc(&query_string(&filters.pairs())));
    }
    if let Some(next) = &records.next_cursor {
        let mut pairs = filters.pairs();
        pairs.push(("cursor", next));
        let _ = write!(
            b,
            "<a id=\"older\" rel=\"next\" href=\"/dashboard/usage{}\">Older »</a>",
            esc(&query_string(&pairs))
        );
    }
    b.push_str("</nav></section>");

    let chrome = Chrome { account_id: account, csrf: &session.csrf, tab: Tab::Usage };
    Ok(html_response(StatusCode::OK, html::page("Usage", Some(&chrome), &b)))
}

/// `GET /dashboard/usage/export?format=csv|jsonl&…`: the API's export of
/// the session's account, with the page's filters.
pub async fn export(state: &AppState, session: &Session, query: &HashMap<String, String>) -> PageResult {
    let tz = state.config.engine.billing.timezone.clone();
    let format = match query.get("format").map(String::as_str) {
        None | Some("") => Format::Csv,
        Some(f) => Format::parse(f).ok_or_else(|| PageError::invalid("format must be csv or jsonl"))?,
    };
    let filter = Filters::read(query).to_filter(&tz)?;
    Ok(crate::routes::usage::stream(state, Some(session.account_id.clone()), filter, format).await?)
}
