//! Plans (`semantics.md` §7) and subscriptions.

use creditd_core::engine::{SubscriptionChange, SwitchProration};
use creditd_core::limits::RequestLimits;
use creditd_core::plan::{ModelAccess, Plan};
use creditd_core::subscription::{Subscription, SubscriptionKind};
use creditd_core::units::Factor;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::common::Decimal;
use crate::error::{ApiError, ApiResult};
use crate::validate;

/// Tells a field given as `null` from one left out.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Model ids a plan may list at most.
pub const MAX_PLAN_MODELS: usize = 1000;

/// `PUT /v1/plans/{plan}`. A limit left out or `null` is no limit;
/// `cost_budget_multiplier` left out is 10 (none on `free`), `null` is no budget.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanIn {
    pub name: Option<String>,
    pub price_usd: Decimal,
    pub monthly_credits: Option<Decimal>,
    pub bonus_percent: Option<Decimal>,
    pub backup_multiplier: Option<Decimal>,
    pub rate_per_minute: Option<u64>,
    pub daily_requests: Option<u64>,
    pub weekly_requests: Option<u64>,
    pub model_access: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    pub cost_budget_multiplier: Option<Option<Decimal>>,
}

fn limit(field: &str, value: Option<u64>) -> ApiResult<Option<u32>> {
    value.map(|v| u32::try_from(v).map_err(|_| ApiError::invalid_field(field, "is too large"))).transpose()
}

impl PlanIn {
    pub fn into_plan(self, id: &str) -> ApiResult<Plan> {
        let factor = |field: &str, v: Option<&str>, default: i64| match v {
            Some(v) => validate::factor(field, v),
            None => Ok(Factor::whole(default)),
        };
        let model_access = match self.model_access {
            None => ModelAccess::All,
            Some(Value::String(s)) if s == "all" => ModelAccess::All,
            Some(Value::String(s)) if s == "free" => ModelAccess::Free,
            Some(Value::Array(items)) => {
                if items.len() > MAX_PLAN_MODELS {
                    return Err(ApiError::invalid_field("model_access", format!("at most {MAX_PLAN_MODELS} models")));
                }
                let mut ids = Vec::with_capacity(items.len());
                for item in items {
                    let Value::String(m) = item else {
                        return Err(ApiError::invalid_field("model_access", "must list model ids as strings"));
                    };
                    validate::model_id("model_access", &m)?;
                    ids.push(m);
                }
                ModelAccess::List(ids)
            }
            Some(_) => {
                return Err(ApiError::invalid_field(
                    "model_access",
                    "must be \"all\", \"free\" or a list of model ids",
                ));
            }
        };
        let is_free = id == creditd_core::plan::FREE_PLAN;
        let cost_budget_multiplier = match self.cost_budget_multiplier {
            None if is_free => None,
            None => Some(Factor::whole(10)),
            Some(None) => None,
            Some(Some(v)) => Some(validate::factor("cost_budget_multiplier", &v)?),
        };
        let plan = Plan {
            id: id.to_string(),
            name: validate::text("name", self.name, validate::MAX_TEXT_CHARS)?.unwrap_or_else(|| id.to_string()),
            price_usd: validate::usd("price_usd", &self.price_usd)?,
            monthly_credits: match self.monthly_credits.as_deref() {
                Some(v) => validate::credits("monthly_credits", v)?,
                None => creditd_core::Credits::ZERO,
            },
            bonus_percent: factor("bonus_percent", self.bonus_percent.as_deref(), 20)?,
            backup_multiplier: factor("backup_multiplier", self.backup_multiplier.as_deref(), 3)?,
            limits: RequestLimits {
                rate_per_minute: limit("rate_per_minute", self.rate_per_minute)?,
                daily_requests: limit("daily_requests", self.daily_requests)?,
                weekly_requests: limit("weekly_requests", self.weekly_requests)?,
            },
            model_access,
            cost_budget_multiplier,
        };
        plan.validate().map_err(|e| ApiError::invalid_field(e.field, e.message))?;
        Ok(plan)
    }
}

/// A plan as the API shows it: the body of `PUT` plus `id` and the pools
/// and budget it gives per period.
#[derive(Debug, Serialize)]
pub struct PlanOut {
    pub id: String,
    pub name: String,
    pub price_usd: String,
    pub monthly_credits: String,
    pub bonus_percent: String,
    pub backup_multiplier: String,
    pub rate_per_minute: Option<u32>,
    pub daily_requests: Option<u32>,
    pub weekly_requests: Option<u32>,
    pub model_access: Value,
    pub cost_budget_multiplier: Option<String>,
    /// `monthly_credits × (1 + bonus_percent/100)`.
    pub main_pool: String,
    /// `monthly_credits × backup_multiplier`.
    pub backup_pool: String,
    /// `cost_budget_multiplier × price_usd`.
    pub budget_usd: Option<String>,
}

pub fn model_access_value(access: &ModelAccess) -> Value {
    match access {
        ModelAccess::All => Value::from("all"),
        ModelAccess::Free => Value::from("free"),
        ModelAccess::List(ids) => Value::from(ids.clone()),
    }
}

impl From<&Plan> for PlanOut {
    fn from(p: &Plan) -> Self {
        PlanOut {
            id: p.id.clone(),
            name: p.name.clone(),
            price_usd: p.price_usd.to_string(),
            monthly_credits: p.monthly_credits.to_string(),
            bonus_percent: p.bonus_percent.to_string(),
            backup_multiplier: p.backup_multiplier.to_string(),
            rate_per_minute: p.limits.rate_per_minute,
            daily_requests: p.limits.daily_requests,
            weekly_requests: p.limits.weekly_requests,
            model_access: model_access_value(&p.model_access),
            cost_budget_multiplier: p.cost_budget_multiplier.map(|f| f.to_string()),
            main_pool: p.main_pool().to_string(),
            backup_pool: p.backup_pool().to_string(),
            budget_usd: p.budget().map(|b| b.to_string()),
        }
    }
}

/// `POST /v1/accounts/{id}/subscription`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionIn {
    pub plan: String,
    pub kind: Option<String>,
    pub external_id: Option<String>,
}

impl SubscriptionIn {
    pub fn validate(self) -> ApiResult<(String, SubscriptionKind, Option<String>)> {
        validate::account_id("plan", &self.plan)?;
        let kind = match self.kind.as_deref() {
            None => SubscriptionKind::Monthly,
            Some(k) => SubscriptionKind::parse(k)
                .ok_or_else(|| ApiError::invalid_field("kind", "must be \"monthly\" or \"pass_30d\""))?,
        };
        let external_id = validate::text("external_id", self.external_id, validate::MAX_TEXT_CHARS)?;
        Ok((self.plan, kind, external_id))
    }
}

/// A subscription (`api.md`), plus `renewed` (the next period is paid),
/// `external_id` and `ended_at`.
#[derive(Debug, Serialize)]
pub struct SubscriptionOut {
    pub id: String,
    pub account_id: String,
    pub plan: String,
    pub kind: &'static str,
    pub status: &'static str,
    pub cancel_at_period_end: bool,
    pub anchor: String,
    pub current_period_start: String,
    pub current_period_end: String,
    pub renewed: bool,
    pub grace_ends_at: Option<String>,
    pub external_id: Option<String>,
    pub created_at: String,
    pub ended_at: Option<String>,
}

impl From<&Subscription> for SubscriptionOut {
    fn from(s: &Subscription) -> Self {
        SubscriptionOut {
            id: s.id.clone(),
            account_id: s.account_id.clone(),
            plan: s.plan_id.clone(),
            kind: s.kind.as_str(),
            status: s.status.as_str(),
            cancel_at_period_end: s.cancel_at_period_end,
            anchor: s.anchor.to_string(),
            current_period_start: s.period_start.to_string(),
            current_period_end: s.period_end.to_string(),
            renewed: s.renewed(),
            grace_ends_at: s.grace_ends_at.map(|t| t.to_string()),
            external_id: s.external_id.clone(),
            created_at: s.created_at.to_string(),
            ended_at: s.ended_at.map(|t| t.to_string()),
        }
    }
}

/// The `proration` of a switch: fractions rounded half up to 6 places,
/// `credit_usd` and `credited` exact; plus the policy and, under
/// `carry_over`, the credits carried over.
#[derive(Debug, Serialize)]
pub struct ProrationOut {
    pub from_plan: String,
    pub to_plan: String,
    pub time_used: String,
    pub usage_used: String,
    pub consumed: String,
    pub credit_usd: String,
    pub credited: String,
    pub policy: &'static str,
    pub carried_over: String,
    /// A period paid in advance that had not started: its price, credited
    /// in full to the wallet beside `credited` ("0" without one).
    pub prepaid_usd: String,
    pub prepaid_credited: String,
}

impl From<&SwitchProration> for ProrationOut {
    fn from(p: &SwitchProration) -> Self {
        ProrationOut {
            from_plan: p.from_plan.clone(),
            to_plan: p.to_plan.clone(),
            time_used: p.time_used.to_string(),
            usage_used: p.usage_used.to_string(),
            consumed: p.consumed.to_string(),
            credit_usd: p.credit_usd.to_string(),
            credited: p.credited.to_string(),
            policy: p.policy.as_str(),
            carried_over: p.carried_over.to_string(),
            prepaid_usd: p.prepaid_usd.to_string(),
            prepaid_credited: p.prepaid_credited.to_string(),
        }
    }
}

/// `POST /v1/accounts/{id}/subscription` → `{"subscription", "proration"}`.
#[derive(Debug, Serialize)]
pub struct SubscriptionChangeOut {
    pub subscription: SubscriptionOut,
    pub proration: Option<ProrationOut>,
}

impl From<&SubscriptionChange> for SubscriptionChangeOut {
    fn from(c: &SubscriptionChange) -> Self {
        SubscriptionChangeOut {
            subscription: SubscriptionOut::from(&c.subscription),
            proration: c.proration.as_ref().map(ProrationOut::from),
        }
    }
}
