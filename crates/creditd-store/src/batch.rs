//! A batch of usage records as an export streams them.
//!
//! An export moves a million rows from a read connection to a writer of
//! CSV or JSONL. Decoding each into an owned [`UsageRecord`] costs a dozen
//! allocations a row, made on the reading thread and freed on the writing
//! one; the export would spend most of its time in the allocator. A batch
//! instead packs its rows' text into one buffer and keeps the rest as
//! values: the reading thread copies, the writing thread reads borrowed
//! [`UsageRow`]s, and a batch costs a handful of allocations whatever its
//! size. [`UsageRow::to_record`] gives the owned record when one is needed.
//!
//! Backends fill a batch with [`UsageBatch::push`] after validating what
//! they read, so every row of a batch is well formed.

use std::ops::Range;

use creditd_core::account::{GrantKind, Portion, RequestDetails, Source, UsageRecord};
use creditd_core::pricing::{RequestStatus, Usage};
use creditd_core::units::{Credits, Usd};
use jiff::Timestamp;

/// The fields of a usage record other than its lists, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageFields<'a> {
    pub account_id: &'a str,
    pub request_id: &'a str,
    /// Empty in the rows of `Store::export` (no export shows it).
    pub fingerprint: &'a str,
    pub hold_id: Option<&'a str>,
    pub request_type: &'a str,
    pub model: &'a str,
    pub price_version: i64,
    pub status: RequestStatus,
    pub usage: Usage,
    pub project: Option<&'a str>,
    pub conversation: Option<&'a str>,
    pub region: Option<&'a str>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub latency_ms: Option<u64>,
    pub retries: Option<u64>,
    pub iterations: Option<u64>,
    pub external_calls: Option<u64>,
    pub context_bytes: Option<u64>,
    pub metadata: Option<&'a str>,
    pub cost_usd: Usd,
    pub credits: Credits,
    pub debt_incurred: Credits,
    pub hold_expired: bool,
    pub refunded: bool,
    pub recorded_at: Timestamp,
}

/// Where some of a record's credits came from, borrowed: a grant (its id
/// and kind) or, for `grant: None`, the wallet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortionRef<'a> {
    pub grant: Option<(&'a str, GrantKind)>,
    pub amount: Credits,
}

/// One row of a batch.
#[derive(Clone, Debug)]
pub struct UsageRow<'a> {
    pub fields: UsageFields<'a>,
    batch: &'a UsageBatch,
    tools: Range<usize>,
    charged_from: Range<usize>,
}

impl<'a> UsageRow<'a> {
    /// Tool names, in order.
    pub fn tools(&self) -> impl ExactSizeIterator<Item = &'a str> + 'a {
        let batch = self.batch;
        batch.tools[self.tools.clone()].iter().map(move |span| batch.text(span))
    }

    /// Where the credits came from, in charge order.
    pub fn charged_from(&self) -> impl ExactSizeIterator<Item = PortionRef<'a>> + 'a {
        let batch = self.batch;
        batch.portions[self.charged_from.clone()].iter().map(move |p| PortionRef {
            grant: p.grant.as_ref().map(|(id, kind)| (batch.text(id), *kind)),
            amount: p.amount,
        })
    }

    /// The owned record.
    pub fn to_record(&self) -> UsageRecord {
        let f = &self.fields;
        let owned = |s: Option<&str>| s.map(str::to_string);
        UsageRecord {
            account_id: f.account_id.to_string(),
            request_id: f.request_id.to_string(),
            fingerprint: f.fingerprint.to_string(),
            hold_id: owned(f.hold_id),
            request_type: f.request_type.to_string(),
            model: f.model.to_string(),
            price_version: f.price_version,
            status: f.status,
            usage: f.usage,
            details: RequestDetails {
                project: owned(f.project),
                conversation: owned(f.conversation),
                region: owned(f.region),
                started_at: f.started_at,
                finished_at: f.finished_at,
                latency_ms: f.latency_ms,
                retries: f.retries,
                iterations: f.iterations,
                external_calls: f.external_calls,
                context_bytes: f.context_bytes,
                tools: self.tools().map(str::to_string).collect(),
                metadata: owned(f.metadata),
            },
            cost_usd: f.cost_usd,
            credits: f.credits,
            charged_from: self
                .charged_from()
                .map(|p| Portion {
                    source: match p.grant {
                        Some((id, kind)) => Source::Grant { grant_id: id.to_string(), kind },
                        None => Source::Wallet,
                    },
                    amount: p.amount,
                })
                .collect(),
            debt_incurred: f.debt_incurred,
            hold_expired: f.hold_expired,
            refunded: f.refunded,
            recorded_at: f.recorded_at,
        }
    }
}

/// A byte range of the batch's text.
type Span = Range<usize>;

#[derive(Clone, Debug)]
struct PackedPortion {
    grant: Option<(Span, GrantKind)>,
    amount: Credits,
}

/// A row with its text as spans of the batch's buffer.
#[derive(Clone, Debug)]
struct Packed {
    account_id: Span,
    request_id: Span,
    fingerprint: Span,
    hold_id: Option<Span>,
    request_type: Span,
    model: Span,
    project: Option<Span>,
    conversation: Option<Span>,
    region: Option<Span>,
    metadata: Option<Span>,
    tools: Range<usize>,
    charged_from: Range<usize>,
    price_version: i64,
    status: RequestStatus,
    usage: Usage,
    started_at: Option<Timestamp>,
    finished_at: Option<Timestamp>,
    latency_ms: Option<u64>,
    retries: Option<u64>,
    iterations: Option<u64>,
    external_calls: Option<u64>,
    context_bytes: Option<u64>,
    cost_usd: Usd,
    credits: Credits,
    debt_incurred: Credits,
    hold_expired: bool,
    refunded: bool,
    recorded_at: Timestamp,
}

/// Usage rows, packed (see the module).
#[derive(Clone, Debug, Default)]
pub struct UsageBatch {
    text: String,
    rows: Vec<Packed>,
    tools: Vec<Span>,
    portions: Vec<PackedPortion>,
}

impl UsageBatch {
    /// An empty batch with room for `rows` rows of about `text_bytes` of text in all.
    pub fn with_capacity(rows: usize, text_bytes: usize) -> Self {
        UsageBatch {
            text: String::with_capacity(text_bytes),
            rows: Vec::with_capacity(rows),
            tools: Vec::with_capacity(rows),
            portions: Vec::with_capacity(rows),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn text(&self, span: &Span) -> &str {
        // Spans are made by `put` on char boundaries; `get` keeps this total.
        self.text.get(span.clone()).unwrap_or("")
    }

    fn put(&mut self, s: &str) -> Span {
        let start = self.text.len();
        self.text.push_str(s);
        start..self.text.len()
    }

    fn put_opt(&mut self, s: Option<&str>) -> Option<Span> {
        s.map(|s| self.put(s))
    }

    /// Appends a row: its fields, its tool names, where its credits came from.
    pub fn push<'t>(
        &mut self,
        f: &UsageFields<'_>,
        tools: impl IntoIterator<Item = &'t str>,
        charged_from: impl IntoIterator<Item = PortionRef<'t>>,
    ) {
        let never = |never: std::convert::Infallible| match never {};
        let pushed: Result<(), std::convert::Infallible> =
            self.try_push(f, tools.into_iter().map(Ok), charged_from.into_iter().map(Ok));
        pushed.unwrap_or_else(never);
    }

    /// Like [`UsageBatch::push`] for lists decoded on the way: the first
    /// error leaves the batch as it was and is returned.
    pub fn try_push<'t, E>(
        &mut self,
        f: &UsageFields<'_>,
        tools: impl IntoIterator<Item = Result<&'t str, E>>,
        charged_from: impl IntoIterator<Item = Result<PortionRef<'t>, E>>,
    ) -> Result<(), E> {
        let (text_len, first_tool, first_portion) = (self.text.len(), self.tools.len(), self.portions.len());
        let lists = (|| {
            for tool in tools {
                let span = self.put(tool?);
                self.tools.push(span);
            }
            for p in charged_from {
                let p = p?;
                let grant = p.grant.map(|(id, kind)| (self.put(id), kind));
                self.portions.push(PackedPortion { grant, amount: p.amount });
            }
            Ok(())
        })();
        if let Err(e) = lists {
            self.text.truncate(text_len);
            self.tools.truncate(first_tool);
            self.portions.truncate(first_portion);
            return Err(e);
        }
        let tools = first_tool..self.tools.len();
        let charged_from = first_portion..self.portions.len();
        let packed = Packed {
            account_id: self.put(f.account_id),
            request_id: self.put(f.request_id),
            fingerprint: self.put(f.fingerprint),
            hold_id: self.put_opt(f.hold_id),
            request_type: self.put(f.request_type),
            model: self.put(f.model),
            project: self.put_opt(f.project),
            conversation: self.put_opt(f.conversation),
            region: self.put_opt(f.region),
            metadata: self.put_opt(f.metadata),
            tools,
            charged_from,
            price_version: f.price_version,
            status: f.status,
            usage: f.usage,
            started_at: f.started_at,
            finished_at: f.finished_at,
            latency_ms: f.latency_ms,
            retries: f.retries,
            iterations: f.iterations,
            external_calls: f.external_calls,
            context_bytes: f.context_bytes,
            cost_usd: f.cost_usd,
            credits: f.credits,
            debt_incurred: f.debt_incurred,
            hold_expired: f.hold_expired,
            refunded: f.refunded,
            recorded_at: f.recorded_at,
        };
        self.rows.push(packed);
        Ok(())
    }

    /// Appends an owned record.
    pub fn push_record(&mut self, r: &UsageRecord) {
        let d = &r.details;
        let fields = UsageFields {
            account_id: &r.account_id,
            request_id: &r.request_id,
            fingerprint: &r.fingerprint,
            hold_id: r.hold_id.as_deref(),
            request_type: &r.request_type,
            model: &r.model,
            price_version: r.price_version,
            status: r.status,
            usage: r.usage,
            project: d.project.as_deref(),
            conversation: d.conversation.as_deref(),
            region: d.region.as_deref(),
            started_at: d.started_at,
            finished_at: d.finished_at,
            latency_ms: d.latency_ms,
            retries: d.retries,
            iterations: d.iterations,
            external_calls: d.external_calls,
            context_bytes: d.context_bytes,
            metadata: d.metadata.as_deref(),
            cost_usd: r.cost_usd,
            credits: r.credits,
            debt_incurred: r.debt_incurred,
            hold_expired: r.hold_expired,
            refunded: r.refunded,
            recorded_at: r.recorded_at,
        };
        let portions = r.charged_from.iter().map(|p| PortionRef {
            grant: match &p.source {
                Source::Grant { grant_id, kind } => Some((grant_id.as_str(), *kind)),
                Source::Wallet => None,
            },
            amount: p.amount,
        });
        self.push(&fields, d.tools.iter().map(String::as_str), portions);
    }

    /// The rows, in order.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = UsageRow<'_>> {
        self.rows.iter().map(move |p| self.row_of(p))
    }

    fn row_of<'a>(&'a self, p: &'a Packed) -> UsageRow<'a> {
        let t = |span: &Span| self.text(span);
        let o = |span: &Option<Span>| span.as_ref().map(|s| self.text(s));
        UsageRow {
            fields: UsageFields {
                account_id: t(&p.account_id),
                request_id: t(&p.request_id),
                fingerprint: t(&p.fingerprint),
                hold_id: o(&p.hold_id),
                request_type: t(&p.request_type),
                model: t(&p.model),
                price_version: p.price_version,
                status: p.status,
                usage: p.usage,
                project: o(&p.project),
                conversation: o(&p.conversation),
                region: o(&p.region),
                started_at: p.started_at,
                finished_at: p.finished_at,
                latency_ms: p.latency_ms,
                retries: p.retries,
                iterations: p.iterations,
                external_calls: p.external_calls,
                context_bytes: p.context_bytes,
                metadata: o(&p.metadata),
                cost_usd: p.cost_usd,
                credits: p.credits,
                debt_incurred: p.debt_incurred,
                hold_expired: p.hold_expired,
                refunded: p.refunded,
                recorded_at: p.recorded_at,
            },
            batch: self,
            tools: p.tools.clone(),
            charged_from: p.charged_from.clone(),
        }
    }

    /// The owned records.
    pub fn to_records(&self) -> Vec<UsageRecord> {
        self.rows().map(|r| r.to_record()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64, tools: &[&str], portions: Vec<Portion>) -> UsageRecord {
        UsageRecord {
            account_id: format!("a{n}"),
            request_id: format!("r{n}"),
            fingerprint: "f".repeat(64),
            hold_id: n.is_multiple_of(2).then(|| format!("h{n}")),
            request_type: "chat".into(),
            model: "m".into(),
            price_version: 3,
            status: RequestStatus::Cancelled,
            usage: Usage { input_tokens: n, output_tokens: 2 * n, reasoning_tokens: n, ..Usage::default() },
            details: RequestDetails {
                project: Some("Проект, \"x\"\n".into()),
                conversation: None,
                region: Some("eu".into()),
                started_at: Some(Timestamp::from_microsecond(1_000_123).unwrap()),
                finished_at: None,
                latency_ms: Some(5),
                retries: None,
                iterations: Some(0),
                external_calls: None,
                context_bytes: Some(u64::MAX >> 1),
                tools: tools.iter().map(|t| t.to_string()).collect(),
                metadata: Some("{\"k\":1}".into()),
            },
            cost_usd: Usd::from_units(123),
            credits: Credits::from_units(456),
            charged_from: portions,
            debt_incurred: Credits::from_units(7),
            hold_expired: true,
            refunded: n.is_multiple_of(3),
            recorded_at: Timestamp::from_second(1_800_000_000).unwrap(),
        }
    }

    #[test]
    fn records_round_trip_through_a_batch() {
        let grant = |id: &str, kind, units| Portion {
            source: Source::Grant { grant_id: id.into(), kind },
            amount: Credits::from_units(units),
        };
        let records = vec![
            record(1, &[], vec![]),
            record(2, &["bash", "", "a;b,c"], vec![grant("g1", GrantKind::PlanMain, 10)]),
            record(
                3,
                &["é"],
                vec![
                    grant("g2", GrantKind::Promo, 1),
                    Portion { source: Source::Wallet, amount: Credits::from_units(-4) },
                ],
            ),
        ];
        let mut batch = UsageBatch::with_capacity(0, 0);
        assert!(batch.is_empty());
        for r in &records {
            batch.push_record(r);
        }
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.to_records(), records);
        let second = batch.rows().nth(1).unwrap();
        assert_eq!(second.tools().collect::<Vec<_>>(), ["bash", "", "a;b,c"]);
        assert_eq!(second.fields.request_id, "r2");
        let third = batch.rows().nth(2).unwrap();
        assert_eq!(
            third.charged_from().collect::<Vec<_>>(),
            [
                PortionRef { grant: Some(("g2", GrantKind::Promo)), amount: Credits::from_units(1) },
                PortionRef { grant: None, amount: Credits::from_units(-4) }
            ]
        );
    }
}
