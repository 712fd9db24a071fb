//! Usage history: the summary (records themselves are `UsageRecordOut`).

use creditd_store::{UsageSummary, UsageTotals};
use serde::Serialize;

/// Sums over usage records.
#[derive(Debug, Serialize)]
pub struct UsageTotalsOut {
    pub requests: u64,
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    /// Net of refunds: a refunded record's credits are in
    /// `refunded_credits` instead.
    pub credits: String,
    pub refunded_credits: String,
    /// Gross: every record's cost, refunded or not.
    pub cost_usd: String,
}

impl From<&UsageTotals> for UsageTotalsOut {
    fn from(t: &UsageTotals) -> Self {
        UsageTotalsOut {
            requests: t.requests,
            input_tokens: t.input_tokens,
            cache_read_tokens: t.cache_read_tokens,
            cache_write_tokens: t.cache_write_tokens,
            output_tokens: t.output_tokens,
            credits: t.credits.to_string(),
            refunded_credits: t.refunded_credits.to_string(),
            cost_usd: t.cost_usd.to_string(),
        }
    }
}

/// One group: its key (`null` for records without a project or
/// conversation) and its sums.
#[derive(Debug, Serialize)]
pub struct SummaryRowOut {
    pub key: Option<String>,
    #[serde(flatten)]
    pub totals: UsageTotalsOut,
}

/// `GET /v1/accounts/{id}/usage/summary`.
#[derive(Debug, Serialize)]
pub struct UsageSummaryOut {
    pub group_by: &'static str,
    pub rows: Vec<SummaryRowOut>,
    pub total: UsageTotalsOut,
    /// More groups than one answer holds: `rows` are the first ones in key
    /// order, `total` still covers every record.
    pub truncated: bool,
}

impl UsageSummaryOut {
    pub fn new(group_by: &'static str, summary: &UsageSummary) -> Self {
        UsageSummaryOut {
            group_by,
            rows: summary
                .rows
                .iter()
                .map(|r| SummaryRowOut { key: r.key.clone(), totals: UsageTotalsOut::from(&r.totals) })
                .collect(),
            total: UsageTotalsOut::from(&summary.total),
            truncated: summary.truncated,
        }
    }
}
