//! Accounts, their tokens, API keys and the balance.

use creditd_core::account::{AccountState, Grant};
use creditd_core::calendar;
use creditd_core::engine::{self, Context};
use creditd_core::subscription::Subscription;
use creditd_store::{AccountRow, ApiKey, Role};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::grant::{GrantOut, WalletOut};
use super::plan::SubscriptionOut;
use crate::error::{ApiError, ApiResult};
use crate::validate;

/// `POST /v1/accounts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountIn {
    pub id: String,
    pub email: Option<String>,
    pub metadata: Option<Value>,
}

/// A valid new account.
pub struct NewAccount {
    pub id: String,
    pub email: Option<String>,
    pub metadata: Option<String>,
}

/// Emails at most 254 characters (RFC 5321).
const MAX_EMAIL_CHARS: usize = 254;

impl AccountIn {
    pub fn validate(self) -> ApiResult<NewAccount> {
        validate::account_id("id", &self.id)?;
        let email = validate::text("email", self.email, MAX_EMAIL_CHARS)?;
        if let Some(e) = &email
            && (!e.contains('@') || e.chars().any(char::is_whitespace))
        {
            return Err(ApiError::invalid_field("email", "is not an email address"));
        }
        Ok(NewAccount { id: self.id, email, metadata: validate::metadata("metadata", self.metadata)? })
    }
}

/// An account: `{"id", "email", "metadata", "status", "created_at", "plan", "subscription"}`.
#[derive(Debug, Serialize)]
pub struct AccountOut {
    pub id: String,
    pub email: Option<String>,
    pub metadata: Value,
    pub status: &'static str,
    pub created_at: String,
    /// The plan whose rules apply: the active subscription's, else `free`.
    pub plan: String,
    /// The live subscription (active or past due), or `null`.
    pub subscription: Option<SubscriptionOut>,
}

impl From<&AccountRow> for AccountOut {
    /// An account on `free` without a subscription.
    fn from(a: &AccountRow) -> Self {
        AccountOut {
            id: a.id.clone(),
            email: a.email.clone(),
            metadata: validate::metadata_value(a.metadata.as_deref()),
            status: a.status.as_str(),
            created_at: a.created_at.to_string(),
            plan: creditd_core::plan::FREE_PLAN.to_string(),
            subscription: None,
        }
    }
}

impl AccountOut {
    /// With the plan and subscription of the account's state as of now.
    pub fn with_plan(mut self, plan: &str, subscription: Option<&Subscription>) -> Self {
        self.plan = plan.to_string();
        self.subscription = subscription.map(SubscriptionOut::from);
        self
    }
}

/// `POST /v1/accounts/{id}/tokens`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIn {
    pub ttl_seconds: Option<u64>,
}

impl TokenIn {
    pub fn ttl_seconds(&self) -> ApiResult<u64> {
        match self.ttl_seconds {
            None => Ok(validate::DEFAULT_TOKEN_TTL_SECONDS),
            Some(n) if (1..=validate::MAX_TOKEN_TTL_SECONDS).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::invalid_field(
                "ttl_seconds",
                format!("must be from 1 to {}", validate::MAX_TOKEN_TTL_SECONDS),
            )),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TokenOut {
    /// The token's id: `DELETE /v1/accounts/{id}/tokens/{token id}` revokes it.
    pub id: String,
    pub token: String,
    pub account_id: String,
    pub expires_at: String,
}

/// An account token as `GET /v1/accounts/{id}/tokens` lists it: never the
/// secret (only its hash is stored).
#[derive(Debug, Serialize)]
pub struct TokenInfoOut {
    pub id: String,
    pub account_id: String,
    pub created_at: String,
    pub expires_at: String,
}

impl From<&creditd_store::AccountToken> for TokenInfoOut {
    fn from(t: &creditd_store::AccountToken) -> Self {
        TokenInfoOut {
            id: t.id.clone(),
            account_id: t.account_id.clone(),
            created_at: t.created_at.to_string(),
            expires_at: t.expires_at.to_string(),
        }
    }
}

/// `POST /v1/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyIn {
    pub role: String,
    pub name: Option<String>,
}

impl KeyIn {
    pub fn validate(self) -> ApiResult<(Role, String)> {
        let role = Role::parse(&self.role)
            .ok_or_else(|| ApiError::invalid_field("role", "must be \"admin\" or \"gateway\""))?;
        let name = validate::text("name", self.name, validate::MAX_ID_CHARS)?.unwrap_or_default();
        Ok((role, name))
    }
}

/// A key; `secret` only in the answer that created it.
#[derive(Debug, Serialize)]
pub struct KeyOut {
    pub id: String,
    pub role: &'static str,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: String,
    /// To the minute at best; `null` until the key is first used.
    pub last_used_at: Option<String>,
}

impl KeyOut {
    pub fn new(key: &ApiKey, secret: Option<String>) -> Self {
        KeyOut {
            id: key.id.clone(),
            role: key.role.as_str(),
            name: key.name.clone(),
            secret,
            created_at: key.created_at.to_string(),
            last_used_at: key.last_used_at.map(|t| t.to_string()),
        }
    }
}

/// `plan` of the balance: `{"id": "free"}` without an active subscription.
#[derive(Debug, Serialize)]
pub struct BalancePlanOut {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_end: Option<String>,
    /// `null` for a plan without a budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_used_usd: Option<String>,
}

/// One limit of the balance: its value, its use, and when the use resets
/// (the sliding minute has none).
#[derive(Debug, Serialize)]
pub struct LimitOut {
    pub limit: u32,
    pub used: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<String>,
}

/// `limits` of the balance; a limit that does not apply is `null`.
#[derive(Debug, Serialize)]
pub struct LimitsOut {
    pub rate_per_minute: Option<LimitOut>,
    pub daily_requests: Option<LimitOut>,
    pub weekly_requests: Option<LimitOut>,
}

/// `GET /v1/accounts/{id}/balance`.
#[derive(Debug, Serialize)]
pub struct BalanceOut {
    pub account_id: String,
    pub as_of: String,
    pub available: String,
    pub held: String,
    pub debt: String,
    pub wallet: WalletOut,
    pub grants: Vec<GrantOut>,
    pub plan: BalancePlanOut,
    pub limits: LimitsOut,
}

impl BalanceOut {
    /// `state` already brought to `now` (`creditd_core::engine::view`).
    pub fn new(state: &AccountState, now: Timestamp, ctx: Context<'_>) -> Self {
        let mut grants: Vec<&Grant> = state.grants.iter().filter(|g| g.remaining.is_positive()).collect();
        // Burn order (semantics §3), grants that have not started yet last.
        grants.sort_by(|a, b| {
            let key = |g: &Grant| {
                (!g.has_started(now), g.priority, g.expires_at.is_none(), g.expires_at, g.created_at, g.id.clone())
            };
            key(a).cmp(&key(b))
        });
        let plan = engine::effective_plan(state, ctx.plans);
        let tz = &ctx.billing.timezone;
        let windows = &state.windows;
        let limits = &plan.limits;
        let plan_out = match state.subscription.as_ref().filter(|s| s.is_active()) {
            Some(sub) => {
                let used = sub.budget_used_usd;
                BalancePlanOut {
                    id: plan.id.clone(),
                    subscription_id: Some(sub.id.clone()),
                    period_start: Some(sub.period_start.to_string()),
                    period_end: Some(sub.period_end.to_string()),
                    budget_usd: Some(plan.budget().map(|b| b.to_string())),
                    budget_used_usd: Some(used.to_string()),
                }
            }
            None => BalancePlanOut {
                id: plan.id.clone(),
                subscription_id: None,
                period_start: None,
                period_end: None,
                budget_usd: None,
                budget_used_usd: None,
            },
        };
        BalanceOut {
            account_id: state.account_id.clone(),
            as_of: now.to_string(),
            available: state.available(now).to_string(),
            held: state.held().to_string(),
            debt: state.wallet.debt().to_string(),
            wallet: WalletOut::new(&state.wallet, ctx.policy.credits_per_usd),
            grants: grants.into_iter().map(GrantOut::from).collect(),
            plan: plan_out,
            limits: LimitsOut {
                rate_per_minute: limits.rate_per_minute.map(|limit| LimitOut {
                    limit,
                    used: windows.used_last_minute(now).min(limit),
                    resets_at: None,
                }),
                daily_requests: limits.daily_requests.map(|limit| LimitOut {
                    limit,
                    used: windows.used_today(now, tz),
                    resets_at: Some(calendar::next_day_start(now, tz).to_string()),
                }),
                weekly_requests: limits.weekly_requests.map(|limit| LimitOut {
                    limit,
                    used: windows.used_this_week(now, tz),
                    resets_at: Some(calendar::next_week_start(now, tz).to_string()),
                }),
            },
        }
    }
}
