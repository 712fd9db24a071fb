//! The rows of a usage export, as CSV or JSONL. The HTTP export and
//! `creditd export` both write with this module, so the two give the same
//! bytes for the same records.
//!
//! CSV follows RFC 4180: a header row, CRLF line ends, and a cell quoted
//! (its quotes doubled) when it holds a comma, a quote, a CR or an LF. The
//! columns are exactly those of `api.md`, in its order. JSONL is one usage
//! record a line, the shape of the API's usage record.

use creditd_core::account::UsageRecord;
use creditd_core::units::{Credits, Usd};
use creditd_store::{ExportEncoder, ExportFields, UsageBatch, UsageRow};
use jiff::Timestamp;

use crate::dto::UsageRecordOut;

/// The columns of the CSV export, in order (`api.md`).
pub const CSV_COLUMNS: [&str; 31] = [
    "request_id",
    "account_id",
    "project",
    "conversation",
    "request_type",
    "model",
    "price_version",
    "status",
    "started_at",
    "finished_at",
    "latency_ms",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "system_tokens",
    "context_tokens",
    "images",
    "tool_calls",
    "tools",
    "region",
    "retries",
    "iterations",
    "external_calls",
    "context_bytes",
    "cost_usd",
    "credits",
    "charged_from",
    "debt_incurred",
    "recorded_at",
];

/// An export format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "csv" => Some(Format::Csv),
            "jsonl" => Some(Format::Jsonl),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8; header=present",
            Format::Jsonl => "application/jsonl; charset=utf-8",
        }
    }

    /// What comes before the first record: the CSV header row.
    pub fn write_header(self, out: &mut Vec<u8>) {
        if self == Format::Csv {
            out.extend_from_slice(CSV_COLUMNS.join(",").as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// One record, with its line end.
    pub fn write_row(self, row: &UsageRow<'_>, out: &mut Vec<u8>) {
        match self {
            Format::Csv => write_csv(row, out),
            Format::Jsonl => write_json_line(&row.to_record(), out),
        }
    }

    /// One owned record, with its line end.
    pub fn write_record(self, record: &UsageRecord, out: &mut Vec<u8>) {
        match self {
            Format::Csv => {
                let mut batch = UsageBatch::with_capacity(1, 0);
                batch.push_record(record);
                for row in batch.rows() {
                    write_csv(&row, out);
                }
            }
            Format::Jsonl => write_json_line(record, out),
        }
    }

    /// Every row of a batch.
    pub fn write_batch(self, batch: &UsageBatch, out: &mut Vec<u8>) {
        out.reserve(batch.len() * if self == Format::Csv { 320 } else { 1024 });
        for row in batch.rows() {
            self.write_row(&row, out);
        }
    }

    /// [`Format::write_batch`], for the store to run as it reads.
    pub fn encoder(self) -> ExportEncoder {
        let fields = match self {
            Format::Csv => ExportFields::Csv,
            Format::Jsonl => ExportFields::All,
        };
        ExportEncoder::new(fields, move |batch: &UsageBatch, out: &mut Vec<u8>| self.write_batch(batch, out))
    }
}

fn write_json_line(record: &UsageRecord, out: &mut Vec<u8>) {
    // A `Vec` never fails as a writer, and the record serialises.
    if serde_json::to_writer(&mut *out, &UsageRecordOut::from(record)).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.push(b'\n');
}

/// Appends one CSV cell: quoted only when it must be.
fn cell(out: &mut Vec<u8>, text: &str) {
    if text.bytes().any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n')) {
        out.push(b'"');
        for part in text.split_inclusive('"') {
            out.extend_from_slice(part.as_bytes());
            if part.ends_with('"') {
                out.push(b'"');
            }
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

/// `DIGIT_PAIRS[2n..2n + 2]`: the two digits of `n < 100`, so that numbers
/// are written two digits a division.
const DIGIT_PAIRS: [u8; 200] = {
    let mut pairs = [0u8; 200];
    let mut n = 0;
    while n < 100 {
        pairs[2 * n] = b'0' + (n / 10) as u8;
        pairs[2 * n + 1] = b'0' + (n % 10) as u8;
        n += 1;
    }
    pairs
};

/// Writes the digits of `n` so that they end just before `buf[end]`;
/// the bytes before them are left as they are (zeros, for padding).
fn put_digits(buf: &mut [u8], mut end: usize, mut n: u64) {
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        end -= 2;
        buf[end..end + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        buf[end - 2..end].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        buf[end - 1] = b'0' + n as u8;
    }
}

/// How many decimal digits `n` has.
fn digit_count(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// Appends `template` and returns its copy in `out`, to be written over
/// and cut to length. Appending a known number of bytes is a few moves,
/// where a slice of a variable length is a call to `memcpy`, and a row
/// has some thirty numbers and times.
fn append<'a, const N: usize>(out: &'a mut Vec<u8>, template: &[u8; N]) -> &'a mut [u8] {
    let start = out.len();
    out.extend_from_slice(template);
    &mut out[start..]
}

/// Decimal digits of `n`, without allocating.
fn push_u64(out: &mut Vec<u8>, n: u64) {
    let (start, len) = (out.len(), digit_count(n));
    put_digits(append(out, &[0; 20]), len, n);
    out.truncate(start + len);
}

fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs());
}

/// `units` of `10^-places` in the canonical decimal form of `semantics.md`
/// §1 (what `Credits` and `Usd` print): no trailing fractional zeros.
fn push_fixed(out: &mut Vec<u8>, units: i64, places: u32) {
    let start = out.len();
    // A sign, at most 19 whole digits, the point, `places` (≤ 9) digits.
    let buf = append(out, &[b'0'; 32]);
    let abs = units.unsigned_abs();
    let scale = 10u64.pow(places);
    let (whole, fraction) = (abs / scale, abs % scale);
    buf[0] = b'-';
    let mut len = usize::from(units < 0) + digit_count(whole);
    put_digits(buf, len, whole);
    if fraction > 0 {
        buf[len] = b'.';
        len += 1 + places as usize;
        put_digits(buf, len, fraction);
        while buf[len - 1] == b'0' {
            len -= 1;
        }
    }
    out.truncate(start + len);
}

/// Year, month and day of a count of days since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// 253402300800: 10000-01-01T00:00:00Z.
const YEAR_10000: i64 = 253_402_300_800;

/// RFC 3339 in UTC exactly as `Timestamp`'s `Display` (what the JSON API
/// shows): `2026-03-01T00:00:00Z`, a fraction only when there is one,
/// without trailing zeros.
fn push_timestamp(out: &mut Vec<u8>, t: Timestamp) {
    let seconds = t.as_second();
    let nanos = t.subsec_nanosecond();
    if !(0..YEAR_10000).contains(&seconds) || nanos < 0 {
        out.extend_from_slice(t.to_string().as_bytes());
        return;
    }
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let of_day = seconds % 86_400;
    let start = out.len();
    let buf = append(out, b"0000-00-00T00:00:00.000000000Z");
    put_digits(buf, 4, year as u64);
    put_digits(buf, 7, u64::from(month));
    put_digits(buf, 10, u64::from(day));
    put_digits(buf, 13, (of_day / 3600) as u64);
    put_digits(buf, 16, (of_day / 60 % 60) as u64);
    put_digits(buf, 19, (of_day % 60) as u64);
    let mut len = 19;
    if nanos > 0 {
        put_digits(buf, 29, nanos as u64);
        len = 29;
        while buf[len - 1] == b'0' {
            len -= 1;
        }
    }
    buf[len] = b'Z';
    out.truncate(start + len + 1);
}

/// A CSV row being written: a comma before every cell but the first.
struct Row<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Row<'_> {
    fn next(&mut self) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out
    }

    fn text(&mut self, text: &str) {
        cell(self.next(), text);
    }

    fn opt_text(&mut self, text: Option<&str>) {
        self.text(text.unwrap_or(""));
    }

    fn count(&mut self, n: u64) {
        push_u64(self.next(), n);
    }

    fn opt_count(&mut self, n: Option<u64>) {
        let out = self.next();
        if let Some(n) = n {
            push_u64(out, n);
        }
    }

    fn time(&mut self, t: Option<Timestamp>) {
        let out = self.next();
        if let Some(t) = t {
            push_timestamp(out, t);
        }
    }
}

fn write_csv(r: &UsageRow<'_>, out: &mut Vec<u8>) {
    let f = &r.fields;
    let u = &f.usage;
    let mut row = Row { out, first: true };
    row.text(f.request_id);
    row.text(f.account_id);
    row.opt_text(f.project);
    row.opt_text(f.conversation);
    row.text(f.request_type);
    row.text(f.model);
    push_i64(row.next(), f.price_version);
    row.text(f.status.as_str());
    row.time(f.started_at);
    row.time(f.finished_at);
    row.opt_count(f.latency_ms);
    for n in [
        u.input_tokens,
        u.cache_read_tokens,
        u.cache_write_tokens,
        u.output_tokens,
        u.reasoning_tokens,
        u.system_tokens,
        u.context_tokens,
        u.images,
        u.tool_calls,
    ] {
        row.count(n);
    }
    // `tools` joined with `;`, quoted as one cell if any name needs it.
    let tools = r.tools();
    let out = row.next();
    if tools.len() > 0 {
        let quote = r.tools().any(|t| t.bytes().any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n')));
        if quote {
            let mut joined = String::new();
            for (i, t) in tools.enumerate() {
                if i > 0 {
                    joined.push(';');
                }
                joined.push_str(t);
            }
            cell(out, &joined);
        } else {
            for (i, t) in tools.enumerate() {
                if i > 0 {
                    out.push(b';');
                }
                out.extend_from_slice(t.as_bytes());
            }
        }
    }
    row.opt_text(f.region);
    row.opt_count(f.retries);
    row.opt_count(f.iterations);
    row.opt_count(f.external_calls);
    row.opt_count(f.context_bytes);
    push_fixed(row.next(), f.cost_usd.units(), Usd::SCALE);
    push_fixed(row.next(), f.credits.units(), Credits::SCALE);
    // `kind=amount` pairs joined with `;`: no comma, quote or line break.
    let out = row.next();
    for (i, p) in r.charged_from().enumerate() {
        if i > 0 {
            out.push(b';');
        }
        let kind = p.grant.map_or("wallet", |(_, kind)| kind.as_str());
        out.extend_from_slice(kind.as_bytes());
        out.push(b'=');
        push_fixed(out, p.amount.units(), Credits::SCALE);
    }
    push_fixed(row.next(), f.debt_incurred.units(), Credits::SCALE);
    row.time(Some(f.recorded_at));
    row.out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_quoted_only_when_they_must_be() {
        let quoted = |s: &str| {
            let mut out = Vec::new();
            cell(&mut out, s);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(quoted("plain"), "plain");
        assert_eq!(quoted(""), "");
        assert_eq!(quoted("é; ü"), "é; ü");
        assert_eq!(quoted("a,b"), "\"a,b\"");
        assert_eq!(quoted("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(quoted("\""), "\"\"\"\"");
        assert_eq!(quoted("line\nbreak"), "\"line\nbreak\"");
        assert_eq!(quoted("cr\rhere"), "\"cr\rhere\"");
    }

    /// A small deterministic generator for the formatter checks.
    fn numbers(seed: u64) -> impl Iterator<Item = u64> {
        let mut x = seed;
        std::iter::repeat_with(move || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            x >> 11
        })
    }

    fn text(f: impl Fn(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_print_as_their_display() {
        for n in [0, 1, 9, 10, 99, 100, u64::MAX, 1 << 53] {
            assert_eq!(text(|o| push_u64(o, n)), n.to_string());
        }
        for n in [0, -1, i64::MIN, i64::MAX, 42, -1_000_000] {
            assert_eq!(text(|o| push_i64(o, n)), n.to_string());
        }
        let edge = [0, 1, -1, 10, 1_000_000, -1_000_000, 1_500_000, 123_456_789, i64::MAX, i64::MIN, -2_250_000];
        let random = numbers(7).take(20_000).map(|n| (n as i64) >> (n % 50));
        for units in edge.into_iter().chain(random) {
            for units in [units, -units.saturating_abs()] {
                assert_eq!(
                    text(|o| push_fixed(o, units, Credits::SCALE)),
                    Credits::from_units(units).to_string(),
                    "{units}"
                );
                assert_eq!(text(|o| push_fixed(o, units, Usd::SCALE)), Usd::from_units(units).to_string(), "{units}");
            }
        }
    }

    #[test]
    fn timestamps_print_as_their_display() {
        let max = Timestamp::MAX.as_second();
        let edge = [0, 1, 951_782_400, 1_709_251_199, 4_102_444_800, max - 1];
        let random = numbers(11).take(20_000).map(|n| (n % max as u64) as i64);
        for (i, second) in edge.into_iter().chain(random).enumerate() {
            for nanos in [0, 1, 250_000_000, 123_456_000, 999_999_999, (i as i32 * 7_919) % 1_000_000_000] {
                let t = Timestamp::new(second, nanos).unwrap();
                assert_eq!(text(|o| push_timestamp(o, t)), t.to_string());
            }
        }
        for t in ["-000001-01-01T00:00:00Z", "1969-12-31T23:59:59.5Z", "9999-12-30T22:00:00.999999999Z"] {
            let t: Timestamp = t.parse().unwrap();
            assert_eq!(text(|o| push_timestamp(o, t)), t.to_string());
        }
    }

    /// The store reads a CSV export without these fields
    /// (`ExportFields::Csv`): CSV must not show them, or it would show them
    /// empty.
    #[test]
    fn csv_shows_none_of_the_fields_a_csv_export_leaves_unread() {
        use creditd_core::account::RequestDetails;
        use creditd_core::pricing::{RequestStatus, Usage};
        let full = UsageRecord {
            account_id: "acct".into(),
            request_id: "req".into(),
            fingerprint: String::new(),
            hold_id: Some("hold_1".into()),
            request_type: "chat".into(),
            model: "m".into(),
            price_version: 3,
            status: RequestStatus::Success,
            usage: Usage { input_tokens: 10, output_tokens: 5, ..Usage::default() },
            details: RequestDetails {
                project: Some("p".into()),
                metadata: Some(r#"{"k":"v"}"#.into()),
                ..RequestDetails::default()
            },
            cost_usd: Usd::from_units(12),
            credits: Credits::from_units(34),
            charged_from: Vec::new(),
            debt_incurred: Credits::from_units(0),
            hold_expired: true,
            refunded: true,
            recorded_at: Timestamp::from_second(1_800_000_000).unwrap(),
        };
        let mut unread = full.clone();
        unread.hold_id = None;
        unread.details.metadata = None;
        unread.hold_expired = false;
        unread.refunded = false;
        let csv = |record: &UsageRecord| text(|o| Format::Csv.write_record(record, o));
        assert_eq!(csv(&full), csv(&unread));
        assert_eq!(Format::Csv.encoder().fields, ExportFields::Csv);
        // JSONL shows them all, and reads them all.
        let jsonl = |record: &UsageRecord| text(|o| Format::Jsonl.write_record(record, o));
        assert_ne!(jsonl(&full), jsonl(&unread));
        assert_eq!(Format::Jsonl.encoder().fields, ExportFields::All);
    }

    #[test]
    fn the_header_is_the_spec_columns() {
        let mut out = Vec::new();
        Format::Csv.write_header(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "request_id,account_id,project,conversation,request_type,model,price_version,status,started_at,\
             finished_at,latency_ms,input_tokens,cache_read_tokens,cache_write_tokens,output_tokens,\
             reasoning_tokens,system_tokens,context_tokens,images,tool_calls,tools,region,retries,iterations,\
             external_calls,context_bytes,cost_usd,credits,charged_from,debt_incurred,recorded_at\r\n"
        );
        let mut out = Vec::new();
        Format::Jsonl.write_header(&mut out);
        assert!(out.is_empty());
    }
}
