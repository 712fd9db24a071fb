//! Calendar arithmetic in the billing time zone: subscription periods, days
//! and weeks for request caps.

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, Timestamp, ToSpan, Zoned};

/// Start of monthly period `n` of a subscription anchored at `anchor`:
/// `anchor + n months` in `tz`, the day clamped to the month's end. Never
/// chained from the previous period's end, so Jan 31 gives Feb 28 (or 29)
/// and then Mar 31 again.
pub fn monthly_period_start(anchor: Timestamp, n: i64, tz: &TimeZone) -> Option<Timestamp> {
    let zoned = anchor.to_zoned(tz.clone());
    // jiff clamps the day to the end of a shorter month.
    zoned.checked_add(Span::new().try_months(n).ok()?).ok().map(|z| z.timestamp())
}

/// The monthly period containing `now`: `(n, start, end)`.
pub fn monthly_period_at(anchor: Timestamp, now: Timestamp, tz: &TimeZone) -> Option<(i64, Timestamp, Timestamp)> {
    if now < anchor {
        return None;
    }
    let anchor_z = anchor.to_zoned(tz.clone());
    let now_z = now.to_zoned(tz.clone());
    let months = i64::from(now_z.year() - anchor_z.year()) * 12 + i64::from(now_z.month() - anchor_z.month());
    // The estimate may be one too high when the anchor's day-of-month or time
    // is later than now's; step back as needed.
    let mut n = months.max(0);
    while n > 0 && monthly_period_start(anchor, n, tz)? > now {
        n -= 1;
    }
    while monthly_period_start(anchor, n + 1, tz)? <= now {
        n += 1;
    }
    Some((n, monthly_period_start(anchor, n, tz)?, monthly_period_start(anchor, n + 1, tz)?))
}

/// `at + by`, held to the range of [`Timestamp`] (`Timestamp::MAX` or
/// `MIN` where it would leave it): time arithmetic never panics, whatever
/// the clock or the input says. A moment past the end of time is "never".
pub fn later(at: Timestamp, by: SignedDuration) -> Timestamp {
    at.checked_add(by).map(|t| t.min(end_of_time())).unwrap_or(if by.is_negative() {
        Timestamp::MIN
    } else {
        end_of_time()
    })
}

/// `at - by`, held to the range of [`Timestamp`] like [`later`].
pub fn earlier(at: Timestamp, by: SignedDuration) -> Timestamp {
    at.checked_sub(by).map(|t| t.min(end_of_time())).unwrap_or(if by.is_negative() {
        end_of_time()
    } else {
        Timestamp::MIN
    })
}

/// The last whole second [`Timestamp`] holds (9999-12-30T22:00:00Z), which
/// stores also hold (in microseconds: `Timestamp::MAX` has nanoseconds
/// that microseconds cannot carry).
pub fn end_of_time() -> Timestamp {
    Timestamp::from_second(Timestamp::MAX.as_second()).unwrap_or(Timestamp::MAX)
}

/// A 30-day pass: exactly 30 × 24 hours, whatever the time zone does.
pub fn pass_end(start: Timestamp) -> Timestamp {
    later(start, SignedDuration::from_hours(30 * 24))
}

/// Start of the calendar day containing `now` in `tz`.
pub fn day_start(now: Timestamp, tz: &TimeZone) -> Timestamp {
    now.to_zoned(tz.clone()).start_of_day().map(|z| z.timestamp()).unwrap_or(now)
}

/// Start of the next calendar day after `now` in `tz` (23 or 25 hours away
/// across a daylight-saving change).
pub fn next_day_start(now: Timestamp, tz: &TimeZone) -> Timestamp {
    let today = now.to_zoned(tz.clone());
    today
        .date()
        .tomorrow()
        .ok()
        .and_then(|d| d.to_zoned(tz.clone()).ok())
        .map(|z| z.timestamp())
        .unwrap_or_else(|| later(now, SignedDuration::from_hours(24)))
}

/// Start of the week (Monday 00:00 in `tz`) containing `now`.
pub fn week_start(now: Timestamp, tz: &TimeZone) -> Timestamp {
    let z: Zoned = now.to_zoned(tz.clone());
    let back = i64::from(z.weekday().to_monday_zero_offset());
    z.date()
        .checked_sub(back.days())
        .ok()
        .and_then(|d| d.to_zoned(tz.clone()).ok())
        .map(|z| z.timestamp())
        .unwrap_or(now)
}

/// Start of the week after the one containing `now`.
pub fn next_week_start(now: Timestamp, tz: &TimeZone) -> Timestamp {
    let z: Zoned = now.to_zoned(tz.clone());
    let ahead = 7 - i64::from(z.weekday().to_monday_zero_offset());
    z.date()
        .checked_add(ahead.days())
        .ok()
        .and_then(|d| d.to_zoned(tz.clone()).ok())
        .map(|z| z.timestamp())
        .unwrap_or_else(|| later(now, SignedDuration::from_hours(24 * 7)))
}

/// Start of the calendar month containing `now` in `tz`.
pub fn month_start(now: Timestamp, tz: &TimeZone) -> Timestamp {
    let z = now.to_zoned(tz.clone());
    z.date().first_of_month().to_zoned(tz.clone()).map(|z| z.timestamp()).unwrap_or(now)
}

/// Start of the calendar month after the one containing `now` in `tz`.
pub fn next_month_start(now: Timestamp, tz: &TimeZone) -> Timestamp {
    let z = now.to_zoned(tz.clone());
    z.date()
        .first_of_month()
        .checked_add(1.month())
        .ok()
        .and_then(|d| d.to_zoned(tz.clone()).ok())
        .map(|z| z.timestamp())
        .unwrap_or_else(|| later(now, SignedDuration::from_hours(24 * 31)))
}

/// `at + span` in `tz` (days and months are calendar days and months there),
/// or `None` out of range.
pub fn add_span(at: Timestamp, span: Span, tz: &TimeZone) -> Option<Timestamp> {
    at.to_zoned(tz.clone()).checked_add(span).ok().map(|z| z.timestamp())
}

/// Monday, for readers of this module's tests.
pub const WEEK_STARTS_ON: Weekday = Weekday::Monday;

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn month_end_anchor_clamps_without_chaining() {
        let utc = TimeZone::UTC;
        let anchor = ts("2027-01-31T10:00:00Z");
        let starts: Vec<String> = (0..4).map(|n| monthly_period_start(anchor, n, &utc).unwrap().to_string()).collect();
        assert_eq!(
            starts,
            ["2027-01-31T10:00:00Z", "2027-02-28T10:00:00Z", "2027-03-31T10:00:00Z", "2027-04-30T10:00:00Z"]
        );
        // A leap year gives the 29th.
        let leap = monthly_period_start(ts("2028-01-31T00:00:00Z"), 1, &utc).unwrap();
        assert_eq!(leap, ts("2028-02-29T00:00:00Z"));
    }

    #[test]
    fn the_period_at_a_time_is_found_from_the_anchor() {
        let utc = TimeZone::UTC;
        let anchor = ts("2027-01-31T10:00:00Z");
        let (n, start, end) = monthly_period_at(anchor, ts("2027-03-15T00:00:00Z"), &utc).unwrap();
        assert_eq!((n, start, end), (1, ts("2027-02-28T10:00:00Z"), ts("2027-03-31T10:00:00Z")));
        let (n, start, _) = monthly_period_at(anchor, ts("2027-03-31T10:00:00Z"), &utc).unwrap();
        assert_eq!((n, start), (2, ts("2027-03-31T10:00:00Z")));
        assert!(monthly_period_at(anchor, ts("2027-01-01T00:00:00Z"), &utc).is_none());
    }

    #[test]
    fn days_and_weeks_follow_the_time_zone_across_dst() {
        let ny = TimeZone::get("America/New_York").unwrap();
        // 2027-03-14 is the spring-forward day in New York: 23 hours long.
        let now = ts("2027-03-14T12:00:00Z");
        assert_eq!(day_start(now, &ny), ts("2027-03-14T05:00:00Z"));
        assert_eq!(next_day_start(now, &ny), ts("2027-03-15T04:00:00Z"));
        // Sunday the 14th belongs to the week that started Monday the 8th.
        assert_eq!(week_start(now, &ny), ts("2027-03-08T05:00:00Z"));
        assert_eq!(next_week_start(now, &ny), ts("2027-03-15T04:00:00Z"));
        assert_eq!(month_start(now, &ny), ts("2027-03-01T05:00:00Z"));
        assert_eq!(next_month_start(now, &ny), ts("2027-04-01T04:00:00Z"));
        // One calendar day after the Saturday before the change is 23 hours.
        let day = Span::new().days(1);
        assert_eq!(add_span(ts("2027-03-13T12:00:00Z"), day, &ny), Some(ts("2027-03-14T11:00:00Z")));
    }

    #[test]
    fn a_pass_is_thirty_days_of_hours() {
        assert_eq!(pass_end(ts("2026-05-10T12:00:00Z")), ts("2026-06-09T12:00:00Z"));
    }
}
