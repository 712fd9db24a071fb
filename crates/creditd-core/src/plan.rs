//! Plans: what a subscription gives each period and what it allows
//! (`semantics.md` §7).

use std::collections::BTreeMap;

use crate::limits::RequestLimits;
use crate::units::{Credits, Factor, MAX_GRANT, MAX_PRICE, Usd, div_round_half_up};

/// Which models a plan may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelAccess {
    All,
    /// Only models marked `free` in the price book.
    Free,
    List(Vec<String>),
}

impl ModelAccess {
    pub fn allows(&self, model_id: &str, model_is_free: bool) -> bool {
        match self {
            ModelAccess::All => true,
            ModelAccess::Free => model_is_free,
            ModelAccess::List(ids) => ids.iter().any(|id| id == model_id),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub id: String,
    pub name: String,
    /// Per period.
    pub price_usd: Usd,
    /// Base credits of the main pool, before the bonus.
    pub monthly_credits: Credits,
    /// Percent added to the main pool (20 → +20%).
    pub bonus_percent: Factor,
    /// The backup pool is `monthly_credits × backup_multiplier`.
    pub backup_multiplier: Factor,
    pub limits: RequestLimits,
    pub model_access: ModelAccess,
    /// The period's cost budget is `price_usd × this`; `None`: no budget.
    pub cost_budget_multiplier: Option<Factor>,
}

/// The plan every account without an active subscription is on.
pub const FREE_PLAN: &str = "free";

/// The largest plan factor (`bonus_percent`, multipliers).
pub const MAX_PLAN_FACTOR: Factor = Factor::whole(1_000);

/// Plan ids: 1 to this many characters of `A–Z a–z 0–9 . _ @ -`.
pub const MAX_PLAN_ID_CHARS: usize = 128;

/// Why a plan was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError {
    /// The field at fault, as the API and the configuration name it.
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for PlanError {}

impl Plan {
    /// The plan `free` when none is stored: no limits, every model, no
    /// budget. Deployments store their own (`creditd` ships the seed's).
    pub fn builtin_free() -> Plan {
        Plan {
            id: FREE_PLAN.to_string(),
            name: "Free".to_string(),
            price_usd: Usd::ZERO,
            monthly_credits: Credits::ZERO,
            bonus_percent: Factor::whole(20),
            backup_multiplier: Factor::whole(3),
            limits: RequestLimits::default(),
            model_access: ModelAccess::All,
            cost_budget_multiplier: None,
        }
    }

    pub fn is_free(&self) -> bool {
        self.id == FREE_PLAN
    }

    /// Checks the bounds: an id of the account-id alphabet, a price of at
    /// most 10^6 USD, factors from 0 to 1000, pools of at most 10^9 credits,
    /// and no budget on `free`.
    pub fn validate(&self) -> Result<(), PlanError> {
        let err = |field: &'static str, message: String| Err(PlanError { field, message });
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_PLAN_ID_CHARS
            && self.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
        if !id_ok {
            return err("id", format!("must be 1 to {MAX_PLAN_ID_CHARS} characters of A-Z a-z 0-9 . _ @ -"));
        }
        if self.name.trim().is_empty() || self.name.chars().count() > 255 {
            return err("name", "must be 1 to 255 characters".into());
        }
        if self.price_usd.is_negative() || self.price_usd > MAX_PRICE {
            return err("price_usd", format!("must be from 0 to {MAX_PRICE}"));
        }
        if self.monthly_credits.is_negative() || self.monthly_credits > MAX_GRANT {
            return err("monthly_credits", format!("must be from 0 to {MAX_GRANT}"));
        }
        for (field, f) in [
            ("bonus_percent", Some(self.bonus_percent)),
            ("backup_multiplier", Some(self.backup_multiplier)),
            ("cost_budget_multiplier", self.cost_budget_multiplier),
        ] {
            if f.is_some_and(|f| f.is_negative() || f > MAX_PLAN_FACTOR) {
                return err(field, format!("must be from 0 to {MAX_PLAN_FACTOR}"));
            }
        }
        if self.main_pool() > MAX_GRANT || self.backup_pool() > MAX_GRANT {
            return err("monthly_credits", format!("its main or backup pool would exceed {MAX_GRANT} credits"));
        }
        if self.is_free() && self.cost_budget_multiplier.is_some() {
            return err("cost_budget_multiplier", "the free plan has no plan budget".into());
        }
        if let ModelAccess::List(ids) = &self.model_access
            && ids.iter().any(|m| m.is_empty() || m.len() > MAX_PLAN_ID_CHARS)
        {
            return err("model_access", "a model id is empty or too long".into());
        }
        Ok(())
    }

    /// `monthly_credits × (1 + bonus_percent / 100)`, rounded half up to the µcr.
    pub fn main_pool(&self) -> Credits {
        let base = self.monthly_credits.units() as i128;
        let factor = 100 * Factor::ONE as i128 + self.bonus_percent.units() as i128;
        Credits::from_units(div_round_half_up(base * factor, 100 * Factor::ONE as i128) as i64)
    }

    /// `monthly_credits × backup_multiplier`, rounded half up to the µcr.
    pub fn backup_pool(&self) -> Credits {
        let base = self.monthly_credits.units() as i128;
        Credits::from_units(div_round_half_up(base * self.backup_multiplier.units() as i128, Factor::ONE as i128) as i64)
    }

    /// `cost_budget_multiplier × price_usd`, or `None` for no budget.
    pub fn budget(&self) -> Option<Usd> {
        self.budget_at(self.price_usd)
    }

    /// The budget of a period bought at `price` (`cost_budget_multiplier ×
    /// price`); `None`: no budget. Both are bounded (10^6 USD, 1000×), so it
    /// fits.
    pub fn budget_at(&self, price: Usd) -> Option<Usd> {
        let m = self.cost_budget_multiplier?;
        let exact = price.units() as i128 * m.units() as i128;
        Some(Usd::from_units(div_round_half_up(exact, Factor::ONE as i128) as i64))
    }
}

/// Every plan by id. `free` always exists: the stored one, or
/// [`Plan::builtin_free`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanBook {
    plans: BTreeMap<String, Plan>,
    builtin_free: Plan,
}

impl Default for PlanBook {
    fn default() -> Self {
        PlanBook { plans: BTreeMap::new(), builtin_free: Plan::builtin_free() }
    }
}

impl PlanBook {
    pub fn new(plans: impl IntoIterator<Item = Plan>) -> Self {
        let mut book = PlanBook::default();
        for plan in plans {
            book.insert(plan);
        }
        book
    }

    pub fn insert(&mut self, plan: Plan) {
        self.plans.insert(plan.id.clone(), plan);
    }

    /// The plan with this id; `free` is always there.
    pub fn get(&self, id: &str) -> Option<&Plan> {
        match self.plans.get(id) {
            Some(plan) => Some(plan),
            None if id == FREE_PLAN => Some(&self.builtin_free),
            None => None,
        }
    }

    pub fn free(&self) -> &Plan {
        self.plans.get(FREE_PLAN).unwrap_or(&self.builtin_free)
    }

    /// Every plan in id order, `free` included.
    pub fn all(&self) -> Vec<&Plan> {
        let mut all: Vec<&Plan> = self.plans.values().collect();
        if !self.plans.contains_key(FREE_PLAN) {
            all.push(&self.builtin_free);
            all.sort_by(|a, b| a.id.cmp(&b.id));
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn starter() -> Plan {
        Plan {
            id: "starter".into(),
            name: "Starter".into(),
            price_usd: Usd::whole(10),
            monthly_credits: Credits::whole(1000),
            bonus_percent: Factor::whole(20),
            backup_multiplier: Factor::whole(3),
            limits: RequestLimits { rate_per_minute: Some(20), daily_requests: Some(100), weekly_requests: Some(300) },
            model_access: ModelAccess::All,
            cost_budget_multiplier: Some(Factor::whole(10)),
        }
    }

    #[test]
    fn pools_and_budget_match_the_seed_table() {
        // Seed 004: Starter shows 1,200 (+20%) main and 3× (3,000) backup.
        let p = starter();
        assert_eq!(p.main_pool(), Credits::whole(1200));
        assert_eq!(p.backup_pool(), Credits::whole(3000));
        assert_eq!(p.budget(), Some(Usd::whole(100)));
        let free = Plan { cost_budget_multiplier: None, ..p };
        assert_eq!(free.budget(), None);
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(starter().validate(), Ok(()));
        let e = |p: Plan| p.validate().unwrap_err().field;
        assert_eq!(e(Plan { id: "a b".into(), ..starter() }), "id");
        assert_eq!(e(Plan { price_usd: Usd::whole(-1), ..starter() }), "price_usd");
        assert_eq!(e(Plan { monthly_credits: MAX_GRANT, ..starter() }), "monthly_credits");
        assert_eq!(e(Plan { bonus_percent: Factor::whole(1001), ..starter() }), "bonus_percent");
        assert_eq!(e(Plan { id: FREE_PLAN.into(), ..starter() }), "cost_budget_multiplier");
    }

    #[test]
    fn the_book_always_has_free() {
        let book = PlanBook::new([starter()]);
        assert_eq!(book.free(), &Plan::builtin_free());
        assert_eq!(book.get(FREE_PLAN), Some(&Plan::builtin_free()));
        assert!(book.get("nope").is_none());
        assert_eq!(book.all().iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["free", "starter"]);
        let mine = Plan { id: FREE_PLAN.into(), cost_budget_multiplier: None, ..starter() };
        let book = PlanBook::new([mine.clone()]);
        assert_eq!(book.free(), &mine);
    }

    #[test]
    fn model_access() {
        assert!(ModelAccess::All.allows("x", false));
        assert!(!ModelAccess::Free.allows("x", false));
        assert!(ModelAccess::Free.allows("x", true));
        assert!(ModelAccess::List(vec!["a".into()]).allows("a", false));
        assert!(!ModelAccess::List(vec!["a".into()]).allows("b", true));
    }
}
