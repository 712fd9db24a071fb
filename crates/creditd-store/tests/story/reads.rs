//! Reads, on every backend: each answer is one committed state (issue #12
//! item 9, and the audit of #19 item 6), the usage summary sums exactly and
//! net of refunds (#12 item 12), the ledger is as of the clock (#12 item
//! 13), and a read that fails leaves no reader failing (#19 item 2).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use creditd_core::account::{AccountState, HoldStatus};
use creditd_core::ledger::EntryKind;
use creditd_core::pricing::{ModelPrice, TokenRates};
use creditd_core::units::{Credits, CreditsTotal, MAX_PRICE, MAX_TOKENS, UsdTotal};
use creditd_store::{Command, GroupBy, LedgerFilter, ManualClock, Page, Reply, Store, UsageFilter};

use super::{all, authorize, grant, outcome, promo, run};

/// What the writer of [`reads_see_only_committed_states`] holds per request.
const HELD: i64 = 140;

/// Whether `state` is one the writer committed: every open hold's parts
/// are what the grants and the wallet say they hold, and what is held is
/// nothing or one request's hold, never a mix of before and after.
fn committed(state: &AccountState) -> Result<(), String> {
    let on_grants: Credits = state.grants.iter().map(|g| g.held).sum();
    let in_holds: Credits =
        state.holds.iter().filter(|h| h.status == HoldStatus::Open).flat_map(|h| &h.parts).map(|p| p.amount).sum();
    let held = on_grants + state.wallet.held;
    let remaining: Credits = state.grants.iter().map(|g| g.remaining).sum();
    if held != in_holds {
        return Err(format!("grants and wallet hold {held}, the open holds {in_holds}"));
    }
    if held != Credits::ZERO && held != Credits::whole(HELD) {
        return Err(format!("{held} held"));
    }
    if remaining != Credits::whole(1000) {
        return Err(format!("{remaining} remaining"));
    }
    Ok(())
}

/// Issue #12 item 9 and #19 item 6: while a writer places and releases
/// holds as fast as it can, every balance read (the hot state, alone or
/// with the plans) and every audit shows a state that was committed.
pub async fn reads_see_only_committed_states(store: Arc<dyn Store>) {
    run(store.as_ref(), Command::PutModel { id: "m1".into(), price: super::model(1) }).await;
    run(store.as_ref(), Command::CreateAccount { id: "busy".into(), email: None, metadata: None }).await;
    grant(store.as_ref(), "busy", promo(Credits::whole(1000), None, "pool")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (store, stop, writes) = (store.clone(), stop.clone(), writes.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // 100 input tokens at 1 credit and 20 output at 2: 140 held.
                run(store.as_ref(), authorize("busy", &format!("r{n}"), "f", 100, None)).await;
                let release = Command::Release { account_id: "busy".into(), request_id: format!("r{n}") };
                run(store.as_ref(), release).await;
                writes.fetch_add(2, Ordering::Relaxed);
            }
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|reader| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut reads, mut wrong) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let state = match reader {
                        0 => store.account_state("busy").await.expect("read").expect("account"),
                        _ => store.stored_account("busy").await.expect("read").expect("account").state,
                    };
                    if let Err(why) = committed(&state) {
                        wrong.push(why);
                    }
                    reads += 1;
                }
                (reads, wrong)
            })
        })
        .collect();
    let auditor = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut audits = 0;
            while !stop.load(Ordering::Relaxed) {
                let report = store.audit().await.expect("audit");
                assert_eq!(report.breaches, Vec::new(), "an audit during writes");
                audits += 1;
            }
            audits
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let mut reads = 0;
    for reader in readers {
        let (n, wrong) = reader.await.expect("reader");
        assert_eq!(wrong, Vec::<String>::new(), "reads of states never committed, of {n}");
        reads += n;
    }
    let audits = auditor.await.expect("auditor");
    let writes = writes.load(Ordering::Relaxed);
    assert!(writes >= 20 && reads >= 100 && audits >= 3, "{writes} writes, {reads} reads, {audits} audits");
}

/// Issue #12 item 12: sums of usage past what 64 bits hold are exact (the
/// summary answered a failure when `SUM(cost_usd)` overflowed), and
/// `credits` is net of refunds, the refunded credits apart; the cost is gross.
pub async fn the_usage_summary_sums_exactly_net_of_refunds(store: Arc<dyn Store>) {
    // The dearest price there is ($10^6 per million tokens) and 1 credit per
    // million: a request of 10^9 input tokens costs $10^9 (10^18 nano-dollars)
    // and 1,000 credits. Ten of them cost more than `i64` holds.
    let price = ModelPrice {
        cost_usd_per_mtok: TokenRates { input: Some(MAX_PRICE), ..TokenRates::default() },
        credits_per_mtok: TokenRates { input: Some(Credits::whole(1)), ..TokenRates::default() },
        max_output_tokens: 1,
        ..ModelPrice::default()
    };
    run(store.as_ref(), Command::PutModel { id: "m1".into(), price }).await;
    run(store.as_ref(), Command::CreateAccount { id: "dear".into(), email: None, metadata: None }).await;
    grant(store.as_ref(), "dear", promo(Credits::whole(100_000), None, "pool")).await;
    for n in 0..10 {
        let Reply::Recorded(r) =
            run(store.as_ref(), super::usage("dear", outcome(&format!("u{n}"), "f", MAX_TOKENS, 0), true)).await
        else {
            panic!("not recorded")
        };
        assert_eq!(r.record.credits, Credits::whole(1000));
    }
    let refund = Command::RefundUsage { account_id: "dear".into(), request_id: "u3".into(), reason: None };
    run(store.as_ref(), refund).await;
    for group_by in [GroupBy::Model, GroupBy::Day(jiff::tz::TimeZone::UTC)] {
        let summary = store.usage_summary("dear", UsageFilter::default(), group_by.clone()).await.expect("summary");
        assert_eq!(summary.rows.len(), 1, "{group_by:?}");
        for totals in [summary.total, summary.rows[0].totals] {
            assert_eq!(totals.requests, 10);
            assert_eq!(totals.input_tokens, 10 * MAX_TOKENS);
            assert_eq!(totals.credits, CreditsTotal::from_units(9 * 1_000 * 1_000_000), "{group_by:?}");
            assert_eq!(totals.refunded_credits, CreditsTotal::from_units(1_000 * 1_000_000), "{group_by:?}");
            assert_eq!(totals.cost_usd, UsdTotal::from_units(10 * 1_000_000_000 * 1_000_000_000), "{group_by:?}");
            assert_eq!(totals.cost_usd.to_string(), "10000000000");
        }
    }
}

/// Issue #12 item 13: right after the clock passes a grant's expiry, the
/// ledger has its `expire` entry, as the balance already shows the grant
/// expired (before, only once the idle sweeper had run).
pub async fn the_ledger_is_as_of_the_clock(store: Arc<dyn Store>, clock: Arc<ManualClock>) {
    let now = creditd_store::Clock::now(clock.as_ref());
    run(store.as_ref(), Command::CreateAccount { id: "late".into(), email: None, metadata: None }).await;
    let expires = now + jiff::SignedDuration::from_secs(3600);
    grant(store.as_ref(), "late", promo(Credits::whole(5), Some(expires), "short")).await;
    clock.advance(3601).expect("forward");
    let expired = LedgerFilter { kind: Some(EntryKind::Expire), ..LedgerFilter::default() };
    let entries = store.ledger("late", expired, all()).await.expect("ledger").data;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].amount, -Credits::whole(5));
    let whole = store.ledger("late", LedgerFilter::default(), all()).await.expect("ledger").data;
    assert_eq!(whole.first().map(|e| e.kind), Some(EntryKind::Expire));
    // A second read adds nothing.
    let again = store.ledger("late", LedgerFilter::default(), all()).await.expect("ledger").data;
    assert_eq!(again.len(), whole.len());
}

/// Issue #19 item 2: a read that fails in the database (a cursor that
/// reached SQL) fails alone; every reader of the pool serves the next reads.
pub async fn a_failed_read_leaves_the_readers_serving(store: Arc<dyn Store>) {
    run(store.as_ref(), Command::CreateAccount { id: "a1".into(), email: None, metadata: None }).await;
    // PostgreSQL refuses a NUL in text; SQLite reads it as text.
    let bad = Page { limit: 10, cursor: Some("\0".into()) };
    let _ = store.accounts(bad).await;
    let started = Instant::now();
    // More reads than there are read connections, several at once.
    let reads = (0..16).map(|_| {
        let store = store.clone();
        async move { store.accounts(Page { limit: 10, cursor: None }).await }
    });
    for read in futures_util::future::join_all(reads).await {
        assert_eq!(read.expect("a read after the failed one").data.len(), 1);
    }
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
}
