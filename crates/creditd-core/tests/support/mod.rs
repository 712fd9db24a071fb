//! The engine driven like a store would: one account, everything it
//! writes kept, the §10 invariants checked after every step. Shared by the
//! engine's integration tests.
#![allow(dead_code, unused_imports)]

pub use std::collections::{BTreeMap, HashMap};

pub use creditd_core::account::{AccountState, Grant, GrantKind, Hold, RequestDetails, UsageRecord};
pub use creditd_core::campaign::{Billing, Cadence, Campaigns, Eligible, RecurringGift, SignupBonus};
pub use creditd_core::engine::{
    self, AuthorizeInput, Authorized, Context, NewGrant, Outcome, Prior, Recorded, Refusal, StartInput,
    SubscriptionChange, Tx, UsageInput,
};
pub use creditd_core::events::{Event, EventKind};
pub use creditd_core::invariants::{AccountRecords, check_account};
pub use creditd_core::ledger::{Changes, EntryKind, LedgerEntry, Reference};
pub use creditd_core::limits::RequestLimits;
pub use creditd_core::plan::{ModelAccess, Plan, PlanBook};
pub use creditd_core::pricing::{
    EstimateInput, FlatRates, ModelPrice, PricingPolicy, RequestStatus, TokenRates, Usage,
};
pub use creditd_core::subscription::{OnSwitch, Subscription, SubscriptionKind, SubscriptionStatus};
pub use creditd_core::units::{Credits, Factor, Usd};
pub use jiff::tz::TimeZone;
pub use jiff::{SignedDuration, Timestamp, ToSpan};

pub fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

pub fn cr(n: i64) -> Credits {
    Credits::whole(n)
}

pub fn usd(s: &str) -> Usd {
    Usd::parse(s).unwrap()
}

/// One credit per output token, and 0.01 USD of provider cost per request.
pub fn model(free: bool) -> ModelPrice {
    ModelPrice {
        credits_per_mtok: TokenRates {
            input: Some(Credits::ZERO),
            cache_read: Some(Credits::ZERO),
            cache_write: Some(Credits::ZERO),
            output: Some(Credits::whole(1_000_000)),
        },
        cost_usd: FlatRates { request: Some(usd("0.01")), ..FlatRates::default() },
        credits: FlatRates { request: Some(Credits::ZERO), ..FlatRates::default() },
        free,
        ..ModelPrice::default()
    }
}

pub fn plan(id: &str, price: &str, monthly: i64, limits: RequestLimits, access: ModelAccess) -> Plan {
    Plan {
        id: id.into(),
        name: id.into(),
        price_usd: usd(price),
        monthly_credits: cr(monthly),
        bonus_percent: Factor::whole(20),
        backup_multiplier: Factor::whole(3),
        limits,
        model_access: access,
        cost_budget_multiplier: if id == "free" { None } else { Some(Factor::whole(10)) },
    }
}

pub fn limits(rate: Option<u32>, daily: Option<u32>, weekly: Option<u32>) -> RequestLimits {
    RequestLimits { rate_per_minute: rate, daily_requests: daily, weekly_requests: weekly }
}

/// An account and everything a store would hold for it.
pub struct Acct {
    pub state: AccountState,
    pub now: Timestamp,
    pub policy: PricingPolicy,
    pub billing: Billing,
    pub plans: PlanBook,
    pub models: BTreeMap<String, ModelPrice>,
    pub counter: u64,
    pub grants: BTreeMap<String, Grant>,
    pub holds: HashMap<String, Hold>,
    pub entries: Vec<LedgerEntry>,
    pub usage: Vec<UsageRecord>,
    pub subscriptions: BTreeMap<String, Subscription>,
    /// The outgoing-webhook events written, in order.
    pub events: Vec<Event>,
    pub next_request: u32,
}

impl Acct {
    pub fn new(now: &str, billing: Billing, plans: Vec<Plan>) -> Acct {
        let mut models = BTreeMap::new();
        models.insert("paid-model".to_string(), model(false));
        models.insert("free-model".to_string(), model(true));
        let mut a = Acct {
            state: AccountState::new("acct"),
            now: ts(now),
            policy: PricingPolicy::default(),
            billing,
            plans: PlanBook::new(plans),
            models,
            counter: 0,
            grants: BTreeMap::new(),
            holds: HashMap::new(),
            entries: Vec::new(),
            usage: Vec::new(),
            subscriptions: BTreeMap::new(),
            events: Vec::new(),
            next_request: 0,
        };
        a.op(engine::open_account).unwrap();
        a
    }

    pub fn at(&mut self, now: &str) -> &mut Self {
        self.now = ts(now);
        self
    }

    pub fn later(&mut self, seconds: i64) -> &mut Self {
        self.now += SignedDuration::from_secs(seconds);
        self
    }

    pub fn write(&mut self, changes: Changes) {
        for g in changes.grants {
            self.grants.insert(g.id.clone(), g);
        }
        for h in changes.holds {
            self.holds.insert(h.request_id.clone(), h);
        }
        self.entries.extend(changes.entries);
        self.usage.extend(changes.usage);
        for s in changes.subscriptions {
            self.subscriptions.insert(s.id.clone(), s);
        }
        for r in changes.refunded {
            self.usage.iter_mut().find(|u| u.request_id == r).unwrap().refunded = true;
        }
        self.events.extend(changes.events);
    }

    pub fn op<T>(&mut self, op: impl FnOnce(&mut Tx<'_>) -> Result<T, Refusal>) -> Result<T, Refusal> {
        let ctx = Context { policy: &self.policy, billing: &self.billing, plans: &self.plans };
        let mut counter = self.counter;
        let mut ids = || {
            counter += 1;
            format!("id-{counter:06}")
        };
        let result = engine::apply(&mut self.state, self.now, ctx, &mut ids, op);
        self.counter = counter;
        let (out, changes) = result?;
        self.write(changes);
        self.check();
        Ok(out)
    }

    pub fn check(&self) {
        let grants: Vec<Grant> = self.grants.values().cloned().collect();
        let holds: Vec<Hold> = self.holds.values().cloned().collect();
        let breaches = check_account(AccountRecords {
            account_id: "acct",
            grants: &grants,
            wallet: self.state.wallet,
            holds: &holds,
            entries: &self.entries,
            usage: &self.usage,
        });
        assert!(breaches.is_empty(), "{breaches:#?}");
        // The hot state's subscription is what the store last wrote for it.
        if let Some(live) = &self.state.subscription {
            assert_eq!(self.subscriptions.get(&live.id), Some(live));
        }
    }

    pub fn view(&self) -> AccountState {
        let ctx = Context { policy: &self.policy, billing: &self.billing, plans: &self.plans };
        engine::view(&self.state, self.now, ctx)
    }

    pub fn sync(&mut self) {
        self.op(|_| Ok(())).unwrap();
    }

    pub fn grant(&mut self, amount: i64) -> Grant {
        let new = NewGrant {
            kind: GrantKind::Promo,
            source: "test".into(),
            reason: None,
            amount: cr(amount),
            priority: None,
            starts_at: None,
            expires_at: None,
            reference: Reference::None,
        };
        self.op(|tx| engine::grant(tx, new)).unwrap()
    }

    pub fn topup(&mut self, amount: i64) {
        self.op(|tx| engine::credit_wallet(tx, EntryKind::Topup, cr(amount), Reference::None, None)).unwrap();
    }

    pub fn authorize_as(&mut self, model: &str, request_type: &str, output: u64) -> Result<Authorized, Refusal> {
        let rid = format!("r{}", self.next_request);
        self.next_request += 1;
        let price = self.models.get(model).cloned();
        let input = AuthorizeInput {
            request_id: rid.clone(),
            fingerprint: rid,
            model_id: model.into(),
            model: price.as_ref().map(|p| (1, p)),
            request_type: request_type.into(),
            estimate: EstimateInput { max_output_tokens: Some(output), ..EstimateInput::default() },
            ttl_seconds: 900,
            project: None,
            conversation: None,
        };
        self.op(|tx| engine::authorize(tx, input, Prior::default()))
    }

    pub fn authorize(&mut self, output: u64) -> Result<Authorized, Refusal> {
        self.authorize_as("paid-model", "chat", output)
    }

    pub fn settle(&mut self, request_id: &str, output: u64) -> Recorded {
        let hold = self.holds.get(request_id).cloned();
        let price = self.models["paid-model"].clone();
        let outcome = outcome(request_id, output);
        self.op(|tx| engine::settle(tx, outcome, Some(&price), Prior { hold: hold.as_ref(), usage: None })).unwrap()
    }

    pub fn usage_as(&mut self, model: &str, output: u64, enforce: bool) -> Result<Recorded, Refusal> {
        let rid = format!("u{}", self.next_request);
        self.next_request += 1;
        let price = self.models.get(model).cloned();
        let input = UsageInput {
            outcome: outcome(&rid, output),
            model_id: model.into(),
            model: price.as_ref().map(|p| (1, p)),
            request_type: "chat".into(),
            enforce,
        };
        self.op(|tx| engine::record_usage(tx, input, Prior::default()))
    }

    pub fn usage(&mut self, output: u64) -> Result<Recorded, Refusal> {
        self.usage_as("paid-model", output, true)
    }

    pub fn subscribe(&mut self, plan: &str, kind: SubscriptionKind) -> Result<SubscriptionChange, Refusal> {
        let input = StartInput { plan_id: plan.into(), kind, external_id: None };
        self.op(|tx| engine::start_subscription(tx, input))
    }

    pub fn last_subscription(&self) -> Option<Subscription> {
        self.subscriptions.values().max_by_key(|s| s.created_at).cloned()
    }

    pub fn renew(&mut self) -> Result<Subscription, Refusal> {
        let last = self.last_subscription();
        self.op(|tx| engine::renew_subscription(tx, last.as_ref()))
    }

    pub fn cancel(&mut self) -> Result<Subscription, Refusal> {
        let last = self.last_subscription();
        self.op(|tx| engine::cancel_subscription(tx, last.as_ref()))
    }

    pub fn live_grants(&self, kind: GrantKind) -> Vec<Grant> {
        let now = self.now;
        self.view().grants.into_iter().filter(|g| g.kind == kind && g.is_usable(now)).collect()
    }
}

pub fn outcome(request_id: &str, output: u64) -> Outcome {
    Outcome {
        request_id: request_id.into(),
        fingerprint: format!("{request_id}/{output}"),
        status: RequestStatus::Success,
        usage: Usage { output_tokens: output, ..Usage::default() },
        details: RequestDetails::default(),
    }
}

pub fn free_plan(limits: RequestLimits) -> Plan {
    plan("free", "0", 0, limits, ModelAccess::Free)
}
