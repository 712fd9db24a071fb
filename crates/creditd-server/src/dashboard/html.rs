//! A small HTML writer: every value goes through [`esc`] unless it is
//! markup this module wrote itself. Formatting helpers for amounts, times
//! and relative times; the page layout.

use std::fmt::{self, Display, Write};

use creditd_core::units::{Factor, Usd, div_round_half_up};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// Text escaped for an HTML text node or a quoted attribute value.
pub struct Esc<'a>(pub &'a str);

/// Escapes `text` when displayed.
pub fn esc(text: &str) -> Esc<'_> {
    Esc(text)
}

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut start = 0;
        for (i, b) in self.0.bytes().enumerate() {
            let rep = match b {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                b'\'' => "&#39;",
                _ => continue,
            };
            f.write_str(&self.0[start..i])?;
            f.write_str(rep)?;
            start = i + 1;
        }
        f.write_str(&self.0[start..])
    }
}

/// JSON for a `<script type="application/json">` block: `<`, `>` and `&`
/// as `\u003c`… so that nothing in it can close the block.
pub fn json_block(value: &serde_json::Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `?k=v&…` from the pairs whose value is not empty (escaped for an
/// attribute by the caller with [`esc`]).
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        out.push(if out.is_empty() { '?' } else { '&' });
        out.push_str(k);
        out.push('=');
        out.push_str(&url_encode(v));
    }
    out
}

/// A decimal string (`"-1234.5"`) with its integer digits grouped by
/// thousands (`"-1,234.5"`). Text, never a float.
pub fn group_digits(decimal: &str) -> String {
    let (sign, rest) = match decimal.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", decimal),
    };
    let (int, frac) = match rest.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (rest, None),
    };
    let mut grouped = String::with_capacity(int.len() + int.len() / 3);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// An amount as markup: the grouped text, the API's exact string in
/// `data-amount` (what the browser test compares).
pub fn amount(decimal: &str) -> String {
    format!("<span class=\"num\" data-amount=\"{}\">{}</span>", esc(decimal), esc(&group_digits(decimal)))
}

/// `usd × rate`, to the cent (half up): a display value, never stored.
pub fn convert_usd(usd: Usd, rate: Factor) -> String {
    // Usd has 9 decimals, Factor 6: the product has 15; cents keep 2.
    let cents = div_round_half_up(i128::from(usd.units()) * i128::from(rate.units()), 10i128.pow(13));
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.abs();
    format!("{sign}{}.{:02}", group_digits(&(cents / 100).to_string()), cents % 100)
}

/// A time in the billing time zone: `2026-03-01 09:00 UTC`.
pub fn time(t: Timestamp, tz: &TimeZone) -> String {
    let zoned = t.to_zoned(tz.clone());
    zoned.strftime("%Y-%m-%d %H:%M %Z").to_string()
}

/// A `<time>` element showing [`time`].
pub fn time_el(t: Timestamp, tz: &TimeZone) -> String {
    format!("<time datetime=\"{}\">{}</time>", esc(&t.to_string()), esc(&time(t, tz)))
}

/// How far `t` is from `now`, in words: `in 3 days`, `in 5 hours`,
/// `2 days ago`.
pub fn relative(t: Timestamp, now: Timestamp) -> String {
    let secs = t.as_second() - now.as_second();
    let ahead = secs >= 0;
    let abs = secs.unsigned_abs();
    let (n, unit) = if abs < 60 {
        return if ahead { "in less than a minute".into() } else { "just now".into() };
    } else if abs < 3600 {
        (abs / 60, "minute")
    } else if abs < 86_400 * 2 {
        (abs / 3600, "hour")
    } else {
        (abs / 86_400, "day")
    };
    let plural = if n == 1 { "" } else { "s" };
    if ahead { format!("in {n} {unit}{plural}") } else { format!("{n} {unit}{plural} ago") }
}

/// Whether `t` is less than 7 days ahead of `now` (an expiry worth a look).
pub fn soon(t: Timestamp, now: Timestamp) -> bool {
    t.as_second() - now.as_second() < 7 * 86_400
}

/// Which page of the menu is shown.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Overview,
    Usage,
    Ledger,
    Manage,
    None,
}

/// What the layout needs to know about the signed-in account.
pub struct Chrome<'a> {
    pub account_id: &'a str,
    pub csrf: &'a str,
    pub tab: Tab,
}

/// The whole page: head, skip link, menu, `main`, the one script.
pub fn page(title: &str, chrome: Option<&Chrome<'_>>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{} · creditd</title>\
         <link rel=\"stylesheet\" href=\"/dashboard/assets/dashboard.css\">\
         <link rel=\"icon\" href=\"/dashboard/assets/icon.svg\" type=\"image/svg+xml\"></head><body>\
         <a class=\"skip\" href=\"#main\">Skip to content</a><header class=\"top\"><div class=\"bar\">\
         <span class=\"brand\">Credits</span>",
        esc(title)
    );
    if let Some(c) = chrome {
        let _ = write!(out, "<span class=\"who\">Account <b>{}</b></span>", esc(c.account_id));
        out.push_str("<nav aria-label=\"Dashboard\"><ul>");
        for (tab, href, label) in [
            (Tab::Overview, "/dashboard", "Overview"),
            (Tab::Usage, "/dashboard/usage", "Usage"),
            (Tab::Ledger, "/dashboard/ledger", "Credit record"),
            (Tab::Manage, "/dashboard/manage", "Manage"),
        ] {
            let current = if tab == c.tab { " aria-current=\"page\"" } else { "" };
            let _ = write!(out, "<li><a href=\"{href}\"{current}>{label}</a></li>");
        }
        out.push_str("</ul></nav>");
        let _ = write!(
            out,
            "<form class=\"signout\" method=\"post\" action=\"/dashboard/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Sign out</button></form>",
            esc(c.csrf)
        );
    }
    out.push_str("</div></header><main id=\"main\" tabindex=\"-1\">");
    out.push_str(body);
    out.push_str("</main><script src=\"/dashboard/assets/dashboard.js\"></script></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(esc("<a href=\"x\">'&'</a>").to_string(), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(esc("plain").to_string(), "plain");
    }

    #[test]
    fn json_blocks_cannot_close_their_script() {
        let v = serde_json::json!({"k": "</script><script>alert(1)</script>&"});
        let text = json_block(&v);
        assert!(!text.contains('<') && !text.contains('>') && !text.contains('&'));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), v);
    }

    #[test]
    fn digits_group_by_thousands() {
        assert_eq!(group_digits("1234567.891"), "1,234,567.891");
        assert_eq!(group_digits("-1000"), "-1,000");
        assert_eq!(group_digits("999.5"), "999.5");
        assert_eq!(group_digits("0"), "0");
    }

    #[test]
    fn currency_conversion_rounds_to_the_cent() {
        let usd = Usd::parse("5").unwrap();
        assert_eq!(convert_usd(usd, Factor::parse("0.92").unwrap()), "4.60");
        assert_eq!(convert_usd(Usd::parse("1234.565").unwrap(), Factor::parse("1").unwrap()), "1,234.57");
        assert_eq!(convert_usd(Usd::parse("-2.5").unwrap(), Factor::parse("150.5").unwrap()), "-376.25");
    }

    #[test]
    fn relative_times_read_as_words() {
        let now: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(relative(at("2026-03-04T00:00:00Z"), now), "in 3 days");
        assert_eq!(relative(at("2026-03-01T05:10:00Z"), now), "in 5 hours");
        assert_eq!(relative(at("2026-03-01T00:01:00Z"), now), "in 1 minute");
        assert_eq!(relative(at("2026-02-27T00:00:00Z"), now), "2 days ago");
        assert!(soon(at("2026-03-07T23:00:00Z"), now));
        assert!(!soon(at("2026-03-08T00:00:00Z"), now));
    }

    #[test]
    fn query_strings_skip_empty_values_and_encode() {
        assert_eq!(query_string(&[("a", "x y&z"), ("b", ""), ("c", "ü")]), "?a=x%20y%26z&c=%C3%BC");
    }
}
