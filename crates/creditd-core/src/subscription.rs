//! Subscriptions to plans (`semantics.md` §7): their kinds, statuses and
//! periods. The decisions (start, renew, cancel, switch, the period
//! boundaries) are in [`crate::engine`].

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::calendar;
use crate::units::{Credits, Usd};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscriptionKind {
    /// Renews every calendar month from its anchor.
    Monthly,
    /// One period of exactly 30 days, no renewal.
    Pass30d,
}

impl SubscriptionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionKind::Monthly => "monthly",
            SubscriptionKind::Pass30d => "pass_30d",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "monthly" => Some(SubscriptionKind::Monthly),
            "pass_30d" => Some(SubscriptionKind::Pass30d),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscriptionStatus {
    Active,
    /// The period ended unpaid; renewable until the grace ends. The account
    /// is on `free` meanwhile.
    PastDue,
    Expired,
    /// Replaced by a switch to another plan.
    Switched,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::PastDue => "past_due",
            SubscriptionStatus::Expired => "expired",
            SubscriptionStatus::Switched => "switched",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(SubscriptionStatus::Active),
            "past_due" => Some(SubscriptionStatus::PastDue),
            "expired" => Some(SubscriptionStatus::Expired),
            "switched" => Some(SubscriptionStatus::Switched),
            _ => None,
        }
    }

    /// Active or past due: the subscription is still the account's.
    pub fn is_live(self) -> bool {
        matches!(self, SubscriptionStatus::Active | SubscriptionStatus::PastDue)
    }
}

/// What happens to the unused part of the old plan on a switch
/// (`billing.on_switch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnSwitch {
    /// The unused share of the old price goes to the wallet (§7).
    #[default]
    Prorate,
    /// The old main pool's unused credits become a `carry_over` grant.
    CarryOver,
}

impl OnSwitch {
    pub fn as_str(self) -> &'static str {
        match self {
            OnSwitch::Prorate => "prorate",
            OnSwitch::CarryOver => "carry_over",
        }
    }
}

/// A subscription. The account's live one (active or past due) is part of
/// its hot state; ended ones live only in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub account_id: String,
    pub plan_id: String,
    pub kind: SubscriptionKind,
    pub status: SubscriptionStatus,
    pub cancel_at_period_end: bool,
    /// Period `n` of a monthly subscription starts at `anchor + n months`.
    pub anchor: Timestamp,
    /// The current period's number.
    pub period: u32,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    /// The last period paid for: `period + 1` once renewed early.
    pub paid_through: u32,
    /// Provider cost of the period's settled requests (the plan budget's use).
    pub budget_used_usd: Usd,
    /// The period's pools as granted: the base of proration.
    pub main_amount: Credits,
    pub backup_amount: Credits,
    /// The price the current period was bought at, and its plan budget
    /// (`None`: no budget). A row stored before creditd remembered them has
    /// no price: the plan's current price and budget apply to it.
    pub price_usd: Option<Usd>,
    pub budget_usd: Option<Usd>,
    /// The price paid for the period paid in advance (`paid_through >
    /// period`), at the time it was paid.
    pub renewal_price_usd: Option<Usd>,
    /// Set while past due: when it expires unless renewed.
    pub grace_ends_at: Option<Timestamp>,
    pub external_id: Option<String>,
    pub created_at: Timestamp,
    pub ended_at: Option<Timestamp>,
}

impl Subscription {
    /// Start and end of period `n`, from the anchor (never chained), or
    /// `None` for a pass's later periods or out of range.
    pub fn period_bounds(&self, n: u32, tz: &TimeZone) -> Option<(Timestamp, Timestamp)> {
        period_bounds(self.kind, self.anchor, n, tz)
    }

    /// The next period is paid for.
    pub fn renewed(&self) -> bool {
        self.paid_through > self.period
    }

    pub fn is_active(&self) -> bool {
        self.status == SubscriptionStatus::Active
    }

    /// What the current period was bought at: the remembered price, or for
    /// an old row the plan's current one.
    pub fn price_paid(&self, plan_price: Option<Usd>) -> Usd {
        self.price_usd.or(plan_price).unwrap_or(Usd::ZERO)
    }
}

/// Start and end of period `n` of a subscription of `kind` anchored at `anchor`.
pub fn period_bounds(
    kind: SubscriptionKind,
    anchor: Timestamp,
    n: u32,
    tz: &TimeZone,
) -> Option<(Timestamp, Timestamp)> {
    match kind {
        SubscriptionKind::Monthly => Some((
            calendar::monthly_period_start(anchor, i64::from(n), tz)?,
            calendar::monthly_period_start(anchor, i64::from(n) + 1, tz)?,
        )),
        SubscriptionKind::Pass30d if n == 0 => Some((anchor, calendar::pass_end(anchor))),
        SubscriptionKind::Pass30d => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn monthly_periods_come_from_the_anchor() {
        let utc = TimeZone::UTC;
        let anchor = ts("2028-01-31T09:00:00Z");
        let b = |n| period_bounds(SubscriptionKind::Monthly, anchor, n, &utc).unwrap();
        assert_eq!(b(0), (anchor, ts("2028-02-29T09:00:00Z")));
        assert_eq!(b(1), (ts("2028-02-29T09:00:00Z"), ts("2028-03-31T09:00:00Z")));
        assert_eq!(b(2).0, ts("2028-03-31T09:00:00Z"));
        assert_eq!(
            period_bounds(SubscriptionKind::Pass30d, anchor, 0, &utc),
            Some((anchor, ts("2028-03-01T09:00:00Z")))
        );
        assert_eq!(period_bounds(SubscriptionKind::Pass30d, anchor, 1, &utc), None);
    }

    #[test]
    fn names_round_trip() {
        for k in [SubscriptionKind::Monthly, SubscriptionKind::Pass30d] {
            assert_eq!(SubscriptionKind::parse(k.as_str()), Some(k));
        }
        for s in [
            SubscriptionStatus::Active,
            SubscriptionStatus::PastDue,
            SubscriptionStatus::Expired,
            SubscriptionStatus::Switched,
        ] {
            assert_eq!(SubscriptionStatus::parse(s.as_str()), Some(s));
        }
    }
}
