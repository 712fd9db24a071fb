//! Request limits of a plan (`semantics.md` §6 checks 4–6), kept as small
//! per-account state so that no check ever scans usage history.

use std::collections::VecDeque;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::calendar;

/// Limits of a plan; `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestLimits {
    pub rate_per_minute: Option<u32>,
    pub daily_requests: Option<u32>,
    pub weekly_requests: Option<u32>,
}

/// Which limit refused a request, and when to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    RateLimited { retry_after_seconds: u64 },
    DailyCapReached { retry_after_seconds: u64 },
    WeeklyCapReached { retry_after_seconds: u64 },
}

const WINDOW: SignedDuration = SignedDuration::from_secs(60);

/// The most admission times kept for the sliding window, whatever the plan
/// says: a bound on the hot state.
pub const MAX_TRACKED_PER_MINUTE: usize = 10_000;

/// Admitted requests: the last minute's times, and this day's and week's counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestWindows {
    /// Admission times within the last 60 seconds, oldest first.
    pub recent: VecDeque<Timestamp>,
    /// Start of the day `day_count` counts, in the billing time zone.
    pub day_start: Option<Timestamp>,
    pub day_count: u32,
    pub week_start: Option<Timestamp>,
    pub week_count: u32,
}

/// Whole seconds from `now` until `at`, rounded up, at least 1.
fn seconds_until(now: Timestamp, at: Timestamp) -> u64 {
    let micros = (at.as_microsecond() - now.as_microsecond()).max(0);
    (micros as u64).div_ceil(1_000_000).max(1)
}

impl RequestWindows {
    /// Requests admitted in the 60 seconds up to `now`.
    pub fn used_last_minute(&self, now: Timestamp) -> u32 {
        self.recent.iter().filter(|&&t| t > calendar::earlier(now, WINDOW)).count() as u32
    }

    pub fn used_today(&self, now: Timestamp, tz: &TimeZone) -> u32 {
        if self.day_start == Some(calendar::day_start(now, tz)) { self.day_count } else { 0 }
    }

    pub fn used_this_week(&self, now: Timestamp, tz: &TimeZone) -> u32 {
        if self.week_start == Some(calendar::week_start(now, tz)) { self.week_count } else { 0 }
    }

    /// Checks 4–6 in order; the first limit reached refuses.
    pub fn check(&self, limits: &RequestLimits, now: Timestamp, tz: &TimeZone) -> Result<(), LimitHit> {
        if let Some(rate) = limits.rate_per_minute {
            let in_window: Vec<Timestamp> =
                self.recent.iter().copied().filter(|&t| t > calendar::earlier(now, WINDOW)).collect();
            if in_window.len() as u64 >= u64::from(rate) {
                // A slot frees when the oldest admission that keeps the
                // window full leaves it.
                let keep_full = in_window.len() - rate as usize;
                let frees_at = in_window
                    .get(keep_full)
                    .map(|&t| calendar::later(t, WINDOW))
                    .unwrap_or_else(|| calendar::later(now, WINDOW));
                return Err(LimitHit::RateLimited { retry_after_seconds: seconds_until(now, frees_at) });
            }
        }
        if let Some(cap) = limits.daily_requests
            && self.used_today(now, tz) >= cap
        {
            let next = calendar::next_day_start(now, tz);
            return Err(LimitHit::DailyCapReached { retry_after_seconds: seconds_until(now, next) });
        }
        if let Some(cap) = limits.weekly_requests
            && self.used_this_week(now, tz) >= cap
        {
            let next = calendar::next_week_start(now, tz);
            return Err(LimitHit::WeeklyCapReached { retry_after_seconds: seconds_until(now, next) });
        }
        Ok(())
    }

    /// Keeps only the last `keep` admission times: checking a limit of
    /// `rate` per minute needs no more than the last `rate` of them.
    pub fn keep_recent(&mut self, keep: usize) {
        while self.recent.len() > keep {
            self.recent.pop_front();
        }
    }

    /// Counts an admitted request.
    pub fn admit(&mut self, now: Timestamp, tz: &TimeZone) {
        while self.recent.front().is_some_and(|&t| t <= calendar::earlier(now, WINDOW))
            || self.recent.len() >= MAX_TRACKED_PER_MINUTE
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        let day = calendar::day_start(now, tz);
        if self.day_start != Some(day) {
            self.day_start = Some(day);
            self.day_count = 0;
        }
        self.day_count = self.day_count.saturating_add(1);
        let week = calendar::week_start(now, tz);
        if self.week_start != Some(week) {
            self.week_start = Some(week);
            self.week_count = 0;
        }
        self.week_count = self.week_count.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn secs(t: Timestamp, s: i64) -> Timestamp {
        t + SignedDuration::from_secs(s)
    }

    #[test]
    fn sliding_minute_refuses_until_the_oldest_slot_frees() {
        let utc = TimeZone::UTC;
        let limits = RequestLimits { rate_per_minute: Some(2), ..RequestLimits::default() };
        let t0 = ts("2027-01-04T10:00:00Z");
        let mut w = RequestWindows::default();
        w.admit(t0, &utc);
        w.admit(secs(t0, 20), &utc);
        assert_eq!(w.check(&limits, secs(t0, 30), &utc), Err(LimitHit::RateLimited { retry_after_seconds: 30 }));
        // Exactly 60 s after the first admission its slot is free again.
        assert_eq!(w.check(&limits, secs(t0, 60), &utc), Ok(()));
        assert_eq!(w.used_last_minute(secs(t0, 60)), 1);
    }

    #[test]
    fn daily_cap_resets_at_midnight_in_the_billing_zone() {
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        let limits = RequestLimits { daily_requests: Some(1), ..RequestLimits::default() };
        let mut w = RequestWindows::default();
        // 14:30 UTC is 23:30 in Tokyo: half an hour to the next day.
        let late = ts("2027-01-04T14:30:00Z");
        w.admit(late, &tokyo);
        assert_eq!(w.check(&limits, late, &tokyo), Err(LimitHit::DailyCapReached { retry_after_seconds: 1800 }));
        assert_eq!(w.check(&limits, ts("2027-01-04T15:00:00Z"), &tokyo), Ok(()));
    }

    #[test]
    fn weekly_cap_counts_from_monday() {
        let utc = TimeZone::UTC;
        let limits = RequestLimits { weekly_requests: Some(2), ..RequestLimits::default() };
        let mut w = RequestWindows::default();
        // Sunday 2027-01-10 and the Monday after are different weeks.
        w.admit(ts("2027-01-09T12:00:00Z"), &utc);
        w.admit(ts("2027-01-10T12:00:00Z"), &utc);
        assert_eq!(
            w.check(&limits, ts("2027-01-10T23:00:00Z"), &utc),
            Err(LimitHit::WeeklyCapReached { retry_after_seconds: 3600 })
        );
        assert_eq!(w.check(&limits, ts("2027-01-11T00:00:00Z"), &utc), Ok(()));
    }

    #[test]
    fn the_kept_window_is_bounded() {
        let utc = TimeZone::UTC;
        let mut w = RequestWindows::default();
        let t0 = ts("2027-01-04T10:00:00Z");
        for _ in 0..(MAX_TRACKED_PER_MINUTE + 5) {
            w.admit(t0, &utc);
        }
        assert_eq!(w.recent.len(), MAX_TRACKED_PER_MINUTE);
    }
}
