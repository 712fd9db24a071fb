//! Ledger entries and the record of what one operation changed.

use jiff::Timestamp;

use crate::account::{Grant, Hold, UsageRecord};
use crate::events::Event;
use crate::subscription::Subscription;
use crate::units::Credits;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Grant,
    Expire,
    Charge,
    DebtRepayment,
    Topup,
    Refund,
    Adjustment,
    ProrationCredit,
    Void,
}

impl EntryKind {
    pub const ALL: [EntryKind; 9] = [
        EntryKind::Grant,
        EntryKind::Expire,
        EntryKind::Charge,
        EntryKind::DebtRepayment,
        EntryKind::Topup,
        EntryKind::Refund,
        EntryKind::Adjustment,
        EntryKind::ProrationCredit,
        EntryKind::Void,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Grant => "grant",
            EntryKind::Expire => "expire",
            EntryKind::Charge => "charge",
            EntryKind::DebtRepayment => "debt_repayment",
            EntryKind::Topup => "topup",
            EntryKind::Refund => "refund",
            EntryKind::Adjustment => "adjustment",
            EntryKind::ProrationCredit => "proration_credit",
            EntryKind::Void => "void",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        EntryKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// What an entry is about, beyond the balance it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    None,
    Request(String),
    Subscription(String),
    Payment(String),
    Grant(String),
}

/// One append-only change of one balance: a grant's `remaining` or the wallet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    pub id: String,
    pub account_id: String,
    pub at: Timestamp,
    pub kind: EntryKind,
    /// Signed: what the entry adds to (or takes from) its grant or the wallet.
    pub amount: Credits,
    /// `None`: the wallet.
    pub grant_id: Option<String>,
    pub reference: Reference,
    pub reason: Option<String>,
    /// The account's grants plus wallet after this entry.
    pub balance_after: Credits,
}

/// Everything one operation changed, for the store to write in the same
/// transaction. Grants and holds are written as their state after the
/// operation; entries and usage records are appended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub entries: Vec<LedgerEntry>,
    /// Grants created or changed, as they are now.
    pub grants: Vec<Grant>,
    /// Ids of the grants to snapshot into `grants` when the operation ends.
    pub(crate) touched: Vec<String>,
    pub wallet: bool,
    /// Holds created or changed, as they are now.
    pub holds: Vec<Hold>,
    pub usage: Option<UsageRecord>,
    /// The account's request windows or gift marks changed.
    pub account: bool,
    /// Subscriptions created or changed, as they are now, in the order they
    /// changed (an ended one before the one replacing it).
    pub subscriptions: Vec<Subscription>,
    /// Request ids whose usage record is now refunded.
    pub refunded: Vec<String>,
    /// What to tell the operator's systems (the outbox, `events`).
    pub events: Vec<Event>,
}

impl Changes {
    pub fn touch_grant(&mut self, grant_id: &str) {
        // From the newest: an account caught up over years of gift periods
        // touches thousands of grants, each right after the one before.
        if !self.touched.iter().rev().any(|g| g == grant_id) {
            self.touched.push(grant_id.to_string());
        }
    }

    pub fn put_hold(&mut self, hold: Hold) {
        match self.holds.iter_mut().find(|h| h.id == hold.id) {
            Some(existing) => *existing = hold,
            None => self.holds.push(hold),
        }
    }

    pub fn put_subscription(&mut self, subscription: Subscription) {
        match self.subscriptions.iter_mut().find(|s| s.id == subscription.id) {
            Some(existing) => *existing = subscription,
            None => self.subscriptions.push(subscription),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.grants.is_empty()
            && !self.wallet
            && self.holds.is_empty()
            && self.usage.is_none()
            && !self.account
            && self.subscriptions.is_empty()
            && self.refunded.is_empty()
            && self.events.is_empty()
    }
}
