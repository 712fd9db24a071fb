//! Disputed usage (`semantics.md` §9): an operator refunds a usage record.

use super::{Refusal, Tx};
use crate::account::{Grant, Source, UsageRecord};
use crate::ledger::{EntryKind, Reference};

/// Where a refunded part of a usage record goes.
enum Back {
    Grant(String),
    /// The grant was voided: the credits are voided again at once.
    Void(String),
    Wallet,
}

/// Returns a usage record's credits to where they came from, once: to each
/// grant of its `charged_from` that can still be spent from, and to the
/// wallet for a grant that has since expired (and for the wallet's own
/// part). Credits of a grant voided since stay void: returned to it and
/// voided again in the same step. Each return is a `refund` entry referencing the
/// request. `stored` holds the record's grants that are no longer in the
/// hot state (spent ones), as the store has them.
pub fn refund_usage(
    tx: &mut Tx<'_>,
    record: &UsageRecord,
    stored: &[Grant],
    reason: Option<String>,
) -> Result<UsageRecord, Refusal> {
    if record.refunded {
        return Err(Refusal::Conflict(format!("request {:?} is already refunded", record.request_id)));
    }
    let now = tx.now;
    let reference = || Reference::Request(record.request_id.clone());
    for part in record.charged_from.iter().filter(|p| p.amount.is_positive()) {
        let to = match &part.source {
            Source::Wallet => Back::Wallet,
            Source::Grant { grant_id, .. } => {
                if tx.state.grant(grant_id).is_none()
                    && let Some(spent) = stored.iter().find(|g| &g.id == grant_id && g.remaining.is_zero())
                {
                    // A spent grant comes back to the hot state with what it is given.
                    tx.state.grants.push(spent.clone());
                }
                match tx.state.grant(grant_id) {
                    // A voided grant's credits stay void: only an expired
                    // grant sends its credits to the wallet (§9).
                    Some(g) if g.voided => Back::Void(g.id.clone()),
                    Some(g) if !g.is_expired(now) && g.has_started(now) => Back::Grant(g.id.clone()),
                    _ => Back::Wallet,
                }
            }
        };
        match to {
            Back::Grant(grant_id) => {
                let grant = tx.grant_mut(&grant_id).expect("just found");
                grant.remaining += part.amount;
                tx.entry_with_reason(now, EntryKind::Refund, part.amount, Some(&grant_id), reference(), reason.clone());
            }
            Back::Void(grant_id) => {
                // Returned to the grant and voided with it at once: the
                // record's refund entries still sum to its credits.
                tx.grant_mut(&grant_id).expect("just found").remaining += part.amount;
                tx.entry_with_reason(now, EntryKind::Refund, part.amount, Some(&grant_id), reference(), reason.clone());
                tx.grant_mut(&grant_id).expect("just found").remaining -= part.amount;
                tx.entry_with_reason(now, EntryKind::Void, -part.amount, Some(&grant_id), reference(), reason.clone());
            }
            Back::Wallet => {
                tx.add_to_wallet(part.amount)?;
                tx.entry_with_reason(now, EntryKind::Refund, part.amount, None, reference(), reason.clone());
            }
        }
    }
    // Credits came back: they repay debt first.
    tx.repay_debt(now);
    let mut refunded = record.clone();
    refunded.refunded = true;
    tx.changes.refunded.push(refunded.request_id.clone());
    Ok(refunded)
}
