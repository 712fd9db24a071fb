//! `grant.expiring` (outgoing webhooks, `docs/webhooks.md`): told once per
//! grant, `Billing::grant_expiring` before its expiry, while it still has
//! credits; a step of the engine's time-driven advance, so a read or any
//! operation brings it, in time order with what else is due.

mod support;

use support::*;

const START: &str = "2027-03-01T00:00:00Z";

fn expiring(a: &Acct) -> Vec<&Event> {
    a.events.iter().filter(|e| e.kind == EventKind::GrantExpiring).collect()
}

fn promo(a: &mut Acct, amount: i64, expires_at: &str) -> Grant {
    let new = NewGrant {
        kind: GrantKind::Promo,
        source: "spring".into(),
        reason: None,
        amount: cr(amount),
        priority: None,
        starts_at: None,
        expires_at: Some(ts(expires_at)),
        reference: Reference::None,
    };
    a.op(|tx| engine::grant(tx, new)).unwrap()
}

#[test]
fn a_grant_is_told_once_three_days_before_it_expires() {
    let mut a = Acct::new(START, Billing::default(), vec![]);
    let g = promo(&mut a, 100, "2027-03-20T12:00:00Z");
    // Spent out (it expires first, so it burns first): never told.
    let spent = promo(&mut a, 5, "2027-03-20T11:00:00Z");
    let never = a.grant(7);
    a.usage(5).unwrap();
    assert_eq!(a.grants[&spent.id].remaining, Credits::ZERO);
    // A second before the warning: nothing.
    a.at("2027-03-17T11:59:59Z").sync();
    assert!(expiring(&a).is_empty(), "{:?}", a.events);
    // At 72 hours before: once, with the grant's fields.
    a.at("2027-03-17T12:00:00Z");
    a.usage(10).unwrap();
    let told = expiring(&a);
    assert_eq!(told.len(), 1, "{:?}", a.events);
    let e = told[0];
    assert_eq!((e.account_id.as_str(), e.at), ("acct", ts("2027-03-17T12:00:00Z")));
    let field = |name| e.field(name).unwrap().to_string();
    assert_eq!(field("grant_id"), g.id);
    assert_eq!((field("kind"), field("source")), ("promo".to_string(), "spring".to_string()));
    assert_eq!(field("remaining"), "100", "told before the usage of the same operation");
    assert_eq!(field("expires_at"), "2027-03-20T12:00:00Z");
    assert_eq!(e.data[0], ("account_id".to_string(), "acct".to_string()));
    // The mark is written with the grant, and the grant is never told again.
    assert!(a.grants[&g.id].expiring_told);
    assert!(!a.grants[&never.id].expiring_told);
    for at in ["2027-03-18T00:00:00Z", "2027-03-20T11:59:59Z", "2027-03-20T12:00:00Z", "2027-04-01T00:00:00Z"] {
        a.at(at).sync();
    }
    assert_eq!(expiring(&a).len(), 1, "{:?}", a.events);
    assert_eq!(a.view().grants.len(), 1, "only the grant without expiry is left");
}

#[test]
fn empty_voided_and_already_expired_grants_are_not_told() {
    let mut a = Acct::new(START, Billing::default(), vec![]);
    let empty = promo(&mut a, 10, "2027-03-10T00:00:00Z");
    a.usage(10).unwrap();
    let voided = promo(&mut a, 10, "2027-03-10T00:00:00Z");
    a.op(|tx| engine::void(tx, voided.clone(), None)).unwrap();
    a.at("2027-03-08T00:00:00Z").sync();
    assert!(expiring(&a).is_empty(), "{:?}", a.events);
    assert!(!a.grants[&empty.id].expiring_told, "spent out, it left the hot state");
    assert!(!a.grants[&voided.id].expiring_told, "voided whole, it left the hot state");

    // Voided while a hold keeps part of it: still in the hot state, with
    // credits, passed over and marked (so the store's sweeper is not sent
    // back to it). A notice of an hour, so that the hold is still open.
    let billing = Billing { grant_expiring: Some(SignedDuration::from_hours(1)), ..Billing::default() };
    let mut h = Acct::new(START, billing, vec![]);
    let held = promo(&mut h, 10, "2027-03-01T01:10:00Z");
    h.authorize(4).unwrap();
    h.op(|tx| engine::void(tx, held.clone(), None)).unwrap();
    h.at("2027-03-01T00:11:00Z").sync();
    let g = h.state.grant(&held.id).unwrap();
    assert!(g.voided && g.remaining == cr(4) && g.expiring_told, "{g:?}");
    assert!(h.grants[&held.id].expiring_told);
    assert!(expiring(&h).is_empty(), "{:?}", h.events);

    // A clock that jumps past both the warning and the expiry tells only
    // the expiry.
    let jumped = promo(&mut a, 10, "2027-03-20T00:00:00Z");
    a.at("2027-03-25T00:00:00Z").sync();
    assert!(expiring(&a).is_empty(), "{:?}", a.events);
    assert_eq!(a.grants[&jumped.id].remaining, Credits::ZERO);
}

#[test]
fn grants_made_inside_the_window_are_told_at_the_next_touch_and_none_when_off() {
    // A grant that expires in two days is inside its window when it is
    // made: told by the next operation (or the store's sweeper), once.
    let mut a = Acct::new(START, Billing::default(), vec![]);
    let g = promo(&mut a, 10, "2027-03-03T00:00:00Z");
    assert!(expiring(&a).is_empty());
    a.later(1).sync();
    a.later(1).sync();
    assert_eq!(expiring(&a).len(), 1);
    assert_eq!(expiring(&a)[0].field("grant_id"), Some(g.id.as_str()));

    // A plan's pools are grants like any other: told before the period
    // ends, once each, and told again for the next period's pools.
    let pro = plan("pro", "20", 1000, limits(None, None, None), ModelAccess::All);
    let mut s = Acct::new(START, Billing::default(), vec![free_plan(limits(None, None, None)), pro]);
    s.subscribe("pro", SubscriptionKind::Monthly).unwrap();
    s.at("2027-03-29T00:00:00Z").sync();
    let kinds: Vec<&str> = expiring(&s).iter().map(|e| e.field("kind").unwrap()).collect();
    assert_eq!(kinds, ["plan_main", "plan_backup"], "{:?}", s.events);
    assert!(expiring(&s).iter().all(|e| e.field("expires_at") == Some("2027-04-01T00:00:00Z")));

    // Off: nothing is told, nothing is marked.
    let billing = Billing { grant_expiring: None, ..Billing::default() };
    let mut off = Acct::new(START, billing, vec![]);
    let g = promo(&mut off, 10, "2027-03-10T00:00:00Z");
    off.at("2027-03-09T00:00:00Z").sync();
    assert!(expiring(&off).is_empty());
    assert!(!off.state.grant(&g.id).unwrap().expiring_told);

    // Another notice: a week.
    let billing = Billing { grant_expiring: Some(SignedDuration::from_hours(7 * 24)), ..Billing::default() };
    let mut week = Acct::new(START, billing, vec![]);
    promo(&mut week, 10, "2027-03-20T00:00:00Z");
    week.at("2027-03-12T23:59:59Z").sync();
    assert!(expiring(&week).is_empty());
    week.at("2027-03-13T00:00:00Z").sync();
    assert_eq!(expiring(&week).len(), 1);
}

#[test]
fn a_read_shows_nothing_it_would_not_write() {
    // A view brings time forward on a copy: the warning it computes is not
    // kept, so the operation that follows writes it (once).
    let mut a = Acct::new(START, Billing::default(), vec![]);
    let g = promo(&mut a, 10, "2027-03-10T00:00:00Z");
    a.at("2027-03-08T00:00:00Z");
    assert!(a.view().grant(&g.id).unwrap().expiring_told);
    assert!(!a.state.grant(&g.id).unwrap().expiring_told);
    a.sync();
    a.sync();
    assert_eq!(expiring(&a).len(), 1);
}
