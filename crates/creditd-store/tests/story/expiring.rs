//! `grant.expiring` on a store: with nobody touching the account, the idle
//! sweeper finds a grant entering its warning window (72 hours before its
//! expiry by default), writes the event with the grant's mark, once, and is
//! not sent back to the account for it. An empty grant is never told.

use std::sync::Arc;
use std::time::{Duration, Instant};

use creditd_core::events::EventKind;
use creditd_core::units::Credits;
use creditd_store::{Clock, Command, DeliveryFilter, Endpoint, ManualClock, Page, Reply, Store};
use jiff::SignedDuration;

use super::{grant, model, outcome, promo, run, usage};

/// The grant.expiring deliveries written so far, and their events.
async fn told(store: &dyn Store) -> Vec<creditd_core::events::Event> {
    let page = Page { limit: 100, cursor: None };
    let listed = store.deliveries(DeliveryFilter::default(), page).await.expect("deliveries").data;
    let n = listed.iter().filter(|d| d.event_type == EventKind::GrantExpiring).count();
    let claim = Command::ClaimDeliveries { limit: 100, lease_seconds: 1 };
    let Reply::Claimed(claimed) = run(store, claim).await else { panic!("claimed") };
    let events: Vec<_> = claimed.into_iter().map(|c| c.event).filter(|e| e.kind == EventKind::GrantExpiring).collect();
    assert!(events.len() <= n, "claimed {events:?}, listed {n}");
    events
}

/// `sweeps` counts the writer's background sweeps (`stats().background_sweeps`).
pub async fn the_sweeper_tells_an_expiring_grant_once(
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    sweeps: impl Fn() -> u64,
) {
    let now = clock.now();
    let endpoint = Endpoint {
        id: "ops".into(),
        url: "http://127.0.0.1:9/hook".into(),
        secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
        events: vec![EventKind::GrantExpiring],
        enabled: true,
        from_config: false,
        created_at: now,
        updated_at: now,
    };
    run(store.as_ref(), Command::CreateEndpoint { endpoint }).await;
    run(store.as_ref(), Command::CreateAccount { id: "w".into(), email: None, metadata: None }).await;
    run(store.as_ref(), Command::PutModel { id: "m1".into(), price: model(1) }).await;
    let days = |n: i64| SignedDuration::from_hours(24 * n);
    let kept = grant(store.as_ref(), "w", promo(Credits::whole(50), Some(now + days(10)), "kept")).await;
    // Expires first, so it is spent first: empty when its warning comes.
    let empty = grant(store.as_ref(), "w", promo(Credits::whole(5), Some(now + days(9)), "empty")).await;
    run(store.as_ref(), usage("w", outcome("u1", "f1", 5, 0), true)).await;
    assert!(told(store.as_ref()).await.is_empty());

    // Both warnings are due; nobody touches the account.
    clock.advance(7 * 86_400 + 3600).expect("clock");
    let started = Instant::now();
    loop {
        let state = store.account_state("w").await.expect("read").expect("state");
        if state.grant(&kept.id).is_some_and(|g| g.expiring_told) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the sweeper never wrote the warning: {state:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = told(store.as_ref()).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.account_id, "w");
    assert_eq!(e.field("grant_id"), Some(kept.id.as_str()));
    assert_eq!((e.field("kind"), e.field("source")), (Some("promo"), Some("story")));
    assert_eq!(e.field("remaining"), Some("50"));
    assert_eq!(e.field("expires_at"), Some((now + days(10)).to_string().as_str()));
    assert_ne!(e.field("grant_id"), Some(empty.id.as_str()));

    // Nothing more to do: the sweeper does not come back for the account.
    let before = sweeps();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(sweeps(), before, "the sweeper kept finding work");

    // Touched and swept later, to the expiry: never told again.
    run(store.as_ref(), Command::Sweep { account_id: "w".into() }).await;
    clock.advance(3 * 86_400).expect("clock");
    run(store.as_ref(), Command::Sweep { account_id: "w".into() }).await;
    let page = Page { limit: 100, cursor: None };
    let listed = store.deliveries(DeliveryFilter::default(), page).await.expect("deliveries").data;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(store.audit().await.expect("audit").breaches, vec![]);
}
