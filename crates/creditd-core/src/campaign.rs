//! Free credits (`semantics.md` §8): the signup bonus and recurring gifts,
//! and the account-independent billing settings the engine applies.

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, SpanFieldwise, Timestamp};

use crate::calendar;
use crate::subscription::OnSwitch;
use crate::units::Credits;

/// Granted once, when an account is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignupBonus {
    pub amount: Credits,
    /// `None`: never expires.
    pub expires_after: Option<SpanFieldwise>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cadence {
    /// Monday 00:00 in the billing time zone.
    Week,
    /// The first of the month, 00:00 in the billing time zone.
    Month,
}

impl Cadence {
    pub const ALL: [Cadence; 2] = [Cadence::Week, Cadence::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            Cadence::Week => "week",
            Cadence::Month => "month",
        }
    }

    /// The grant source of a gift of this cadence.
    pub fn source(self) -> &'static str {
        match self {
            Cadence::Week => "weekly_gift",
            Cadence::Month => "monthly_gift",
        }
    }

    /// Start of the period containing `now`.
    pub fn period_start(self, now: Timestamp, tz: &TimeZone) -> Timestamp {
        match self {
            Cadence::Week => calendar::week_start(now, tz),
            Cadence::Month => calendar::month_start(now, tz),
        }
    }

    /// Start of the period after the one containing `now`.
    pub fn next_period_start(self, now: Timestamp, tz: &TimeZone) -> Timestamp {
        match self {
            Cadence::Week => calendar::next_week_start(now, tz),
            Cadence::Month => calendar::next_month_start(now, tz),
        }
    }
}

/// Which accounts a recurring gift goes to, judged at the period start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Eligible {
    All,
    /// Without an active subscription (past due counts as free).
    Free,
    /// With an active subscription.
    Paid,
}

impl Eligible {
    pub fn as_str(self) -> &'static str {
        match self {
            Eligible::All => "all",
            Eligible::Free => "free",
            Eligible::Paid => "paid",
        }
    }

    pub fn admits(self, paid: bool) -> bool {
        match self {
            Eligible::All => true,
            Eligible::Free => !paid,
            Eligible::Paid => paid,
        }
    }
}

/// A gift at the start of every week or month.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecurringGift {
    pub amount: Credits,
    pub every: Cadence,
    /// `None`: never expires.
    pub expires_after: Option<SpanFieldwise>,
    pub eligible: Eligible,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Campaigns {
    pub signup_bonus: Option<SignupBonus>,
    pub recurring: Vec<RecurringGift>,
}

impl Campaigns {
    pub fn has(&self, cadence: Cadence) -> bool {
        self.recurring.iter().any(|g| g.every == cadence)
    }
}

/// The `[billing]` and `[campaigns]` settings beyond pricing that the
/// engine applies to every account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Billing {
    /// Days, weeks, months and periods are calendar ones here.
    pub timezone: TimeZone,
    /// How long after its period end a monthly subscription may be renewed.
    pub renewal_grace: SpanFieldwise,
    pub on_switch: OnSwitch,
    pub campaigns: Campaigns,
    /// When `credits.low` is told (outgoing webhooks).
    pub low_credits: crate::events::LowCredits,
    /// How long before a grant's expiry `grant.expiring` is told (outgoing
    /// webhooks); `None`: never.
    pub grant_expiring: Option<SignedDuration>,
}

/// `grant.expiring` is told three days (72 hours) before a grant expires.
pub const DEFAULT_GRANT_EXPIRING: SignedDuration = SignedDuration::from_hours(72);

impl Default for Billing {
    fn default() -> Self {
        Billing {
            timezone: TimeZone::UTC,
            renewal_grace: Span::new().days(1).fieldwise(),
            on_switch: OnSwitch::Prorate,
            campaigns: Campaigns::default(),
            low_credits: crate::events::LowCredits::default(),
            grant_expiring: Some(DEFAULT_GRANT_EXPIRING),
        }
    }
}
