//! Grants, the wallet, purchases and the ledger.

use creditd_core::account::{Grant, GrantKind, Wallet};
use creditd_core::engine::NewGrant;
use creditd_core::ledger::{LedgerEntry, Reference};
use creditd_core::units::{Credits, Factor, MAX_GRANT, Usd};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::common::Decimal;
use crate::error::{ApiError, ApiResult};
use crate::validate;

/// Payment providers a top-up may name.
pub const TOPUP_PROVIDERS: [&str; 3] = ["manual", "creem", "nowpayments"];

/// `POST /v1/accounts/{id}/grants`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantIn {
    pub amount: Decimal,
    pub kind: Option<String>,
    pub source: Option<String>,
    pub reason: Option<String>,
    pub priority: Option<i64>,
    pub starts_at: Option<String>,
    pub expires_at: Option<String>,
    pub expires_after: Option<String>,
}

fn positive_credits(field: &str, text: &str) -> ApiResult<Credits> {
    let amount = validate::credits(field, text)?;
    if !amount.is_positive() || amount > MAX_GRANT {
        return Err(ApiError::invalid_field(field, format!("must be above 0 and at most {MAX_GRANT}")));
    }
    Ok(amount)
}

impl GrantIn {
    pub fn into_new_grant(self, now: Timestamp) -> ApiResult<NewGrant> {
        let amount = positive_credits("amount", &self.amount)?;
        let kind = match self.kind.as_deref() {
            None | Some("promo") => GrantKind::Promo,
            Some("purchased") => GrantKind::Purchased,
            Some(_) => return Err(ApiError::invalid_field("kind", "must be \"promo\" or \"purchased\"")),
        };
        let source = validate::text("source", self.source, validate::MAX_ID_CHARS)?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "manual".to_string());
        let reason = validate::text("reason", self.reason, validate::MAX_REASON_CHARS)?;
        let priority = match self.priority {
            None => None,
            Some(p) if (0..=i64::from(creditd_core::account::MAX_PRIORITY)).contains(&p) => Some(p as u8),
            Some(_) => return Err(ApiError::invalid_field("priority", "must be from 0 to 100")),
        };
        let starts_at = validate::opt_timestamp("starts_at", self.starts_at.as_deref())?;
        let expires_at = match (self.expires_at.as_deref(), self.expires_after.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid("give expires_at or expires_after, not both")
                    .with_detail("field", "expires_after"));
            }
            (Some(at), None) => Some(validate::timestamp("expires_at", at)?),
            (None, Some(after)) => Some(validate::add_iso_duration("expires_after", starts_at.unwrap_or(now), after)?),
            (None, None) => None,
        };
        if let Some(expires_at) = expires_at {
            if expires_at <= now {
                return Err(ApiError::invalid_field("expires_at", "must be in the future"));
            }
            if starts_at.is_some_and(|s| expires_at <= s) {
                return Err(ApiError::invalid_field("expires_at", "must be after starts_at"));
            }
        }
        Ok(NewGrant { kind, source, reason, amount, priority, starts_at, expires_at, reference: Reference::None })
    }
}

/// A grant: `{"id", "kind", "source", "reason", "amount", "remaining", "held",
/// "priority", "starts_at", "expires_at", "created_at"}` plus `voided`.
#[derive(Debug, Serialize)]
pub struct GrantOut {
    pub id: String,
    pub kind: &'static str,
    pub source: String,
    pub reason: Option<String>,
    pub amount: String,
    pub remaining: String,
    pub held: String,
    pub priority: u8,
    pub starts_at: String,
    pub expires_at: Option<String>,
    pub created_at: String,
    pub voided: bool,
}

impl From<&Grant> for GrantOut {
    fn from(g: &Grant) -> Self {
        GrantOut {
            id: g.id.clone(),
            kind: g.kind.as_str(),
            source: g.source.clone(),
            reason: g.reason.clone(),
            amount: g.amount.to_string(),
            remaining: g.remaining.to_string(),
            held: g.held.to_string(),
            priority: g.priority,
            starts_at: g.starts_at.to_string(),
            expires_at: g.expires_at.map(|t| t.to_string()),
            created_at: g.created_at.to_string(),
            voided: g.voided,
        }
    }
}

/// `POST /v1/accounts/{id}/wallet/topups`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopupIn {
    pub amount_usd: Decimal,
    pub provider: String,
    pub external_id: Option<String>,
}

pub struct Topup {
    pub amount_usd: Usd,
    pub provider: String,
    pub external_id: Option<String>,
}

impl TopupIn {
    pub fn validate(self) -> ApiResult<Topup> {
        let amount_usd = validate::usd("amount_usd", &self.amount_usd)?;
        if !amount_usd.is_positive() {
            return Err(ApiError::invalid_field("amount_usd", "must be above 0"));
        }
        if !TOPUP_PROVIDERS.contains(&self.provider.as_str()) {
            return Err(ApiError::invalid_field("provider", "must be \"manual\", \"creem\" or \"nowpayments\""));
        }
        let external_id = validate::text("external_id", self.external_id, validate::MAX_TEXT_CHARS)?;
        Ok(Topup { amount_usd, provider: self.provider, external_id })
    }
}

/// `POST /v1/accounts/{id}/wallet/adjustments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentIn {
    pub amount: Decimal,
    pub reason: Option<String>,
}

impl AdjustmentIn {
    pub fn validate(self) -> ApiResult<(Credits, Option<String>)> {
        let amount = validate::credits("amount", &self.amount)?;
        if amount.is_zero() || amount.units().unsigned_abs() > MAX_GRANT.units().unsigned_abs() {
            return Err(ApiError::invalid_field(
                "amount",
                format!("must be non-zero and at most {MAX_GRANT} either way"),
            ));
        }
        Ok((amount, validate::text("reason", self.reason, validate::MAX_REASON_CHARS)?))
    }
}

/// `POST /v1/accounts/{id}/purchases`: a credit pack.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseIn {
    pub credits: Decimal,
    pub amount_usd: Decimal,
    pub provider: Option<String>,
    pub external_id: Option<String>,
}

pub struct Purchase {
    pub credits: Credits,
    pub amount_usd: Usd,
    pub provider: String,
    pub external_id: Option<String>,
}

impl PurchaseIn {
    pub fn validate(self) -> ApiResult<Purchase> {
        let credits = positive_credits("credits", &self.credits)?;
        let amount_usd = validate::usd("amount_usd", &self.amount_usd)?;
        if amount_usd.is_negative() {
            return Err(ApiError::invalid_field("amount_usd", "must not be negative"));
        }
        let provider = self.provider.unwrap_or_else(|| "manual".to_string());
        if provider.is_empty()
            || provider.len() > 64
            || !provider.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(ApiError::invalid_field("provider", "must be 1 to 64 characters of A-Z a-z 0-9 . _ -"));
        }
        let external_id = validate::text("external_id", self.external_id, validate::MAX_TEXT_CHARS)?;
        Ok(Purchase { credits, amount_usd, provider, external_id })
    }
}

/// The wallet: its balance in credits (negative in debt), what open holds
/// reserve on it, and the balance in USD at `credits_per_usd`.
#[derive(Debug, Serialize)]
pub struct WalletOut {
    pub balance: String,
    pub held: String,
    pub usd: String,
}

impl WalletOut {
    pub fn new(wallet: &Wallet, credits_per_usd: Factor) -> Self {
        WalletOut {
            balance: wallet.balance.to_string(),
            held: wallet.held.to_string(),
            usd: credits_in_usd(wallet.balance, credits_per_usd),
        }
    }
}

/// `credits / credits_per_usd` as a USD decimal string (9 decimals at most,
/// rounded half up), computed in `i128`: a wallet past ~9.2·10^11 credits is
/// more nano-dollars than `Usd` (an `i64`) holds, and used to read "0".
pub fn credits_in_usd(credits: Credits, credits_per_usd: Factor) -> String {
    let per_usd = i128::from(credits_per_usd.units());
    if per_usd <= 0 {
        return "0".to_string();
    }
    // µcr × 10^9 / (credits per USD in millionths) = nano-dollars.
    let nano = creditd_core::units::div_round_half_up(i128::from(credits.units()) * 1_000_000_000, per_usd);
    let sign = if nano < 0 { "-" } else { "" };
    let (whole, frac) = (nano.unsigned_abs() / 1_000_000_000, nano.unsigned_abs() % 1_000_000_000);
    if frac == 0 {
        return if whole == 0 { "0".to_string() } else { format!("{sign}{whole}") };
    }
    let frac = format!("{frac:09}");
    format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
}

/// The answer of a top-up or an adjustment.
#[derive(Debug, Serialize)]
pub struct WalletChangeOut {
    pub wallet: WalletOut,
    pub entry: LedgerEntryOut,
}

/// A ledger entry.
#[derive(Debug, Serialize)]
pub struct LedgerEntryOut {
    pub id: String,
    pub at: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub amount: String,
    pub grant_id: Option<String>,
    pub wallet: bool,
    pub reference: Map<String, Value>,
    pub reason: Option<String>,
    pub balance_after: String,
}

impl From<&LedgerEntry> for LedgerEntryOut {
    fn from(e: &LedgerEntry) -> Self {
        let mut reference = Map::new();
        let (key, value) = match &e.reference {
            Reference::None => ("", None),
            Reference::Request(id) => ("request_id", Some(id)),
            Reference::Subscription(id) => ("subscription_id", Some(id)),
            Reference::Payment(id) => ("payment_id", Some(id)),
            Reference::Grant(id) => ("grant_id", Some(id)),
        };
        if let Some(v) = value {
            reference.insert(key.to_string(), Value::String(v.clone()));
        }
        LedgerEntryOut {
            id: e.id.clone(),
            at: e.at.to_string(),
            kind: e.kind.as_str(),
            amount: e.amount.to_string(),
            grant_id: e.grant_id.clone(),
            wallet: e.grant_id.is_none(),
            reference,
            reason: e.reason.clone(),
            balance_after: e.balance_after.to_string(),
        }
    }
}
