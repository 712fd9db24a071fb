//! Configuration: built-in defaults → TOML file → environment.
//!
//! Parse, then validate. [`figment`] merges the layers into [`RawConfig`],
//! whose leaves are the strings and numbers as written; [`Config::load`]
//! then turns every one into a validated core type ([`Credits`], [`Usd`],
//! [`Factor`], [`ModelPrice`], …), naming the key and where it came from
//! when one is wrong. Nothing downstream sees a raw string.
//!
//! The built-in defaults are the file `creditd init` writes
//! ([`DEFAULT_TOML`]), so the two can never drift apart. Layering rules:
//! - a key the file (or environment) leaves out takes its built-in default;
//! - `[models.*]` are taken whole from the file: with a file, the price book
//!   written at start is exactly the file's models (the built-in examples are
//!   used only when there is no file);
//! - `[plans.*]` are taken whole: a file with any plan defines all plans;
//! - arrays (`campaigns.recurring`, `billing.free_request_types`) replace.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use creditd_core::campaign;
use creditd_core::engine::MAX_HOLD_TTL_SECONDS;
use creditd_core::pricing::{FlatRates, MAX_MULTIPLIER, ModelPrice, PricingPolicy, Tier, TokenRates};
use creditd_core::units::{Credits, Factor, MAX_GRANT, MAX_PRICE, MAX_TOKENS, UnitError, Usd};
use creditd_store::EngineConfig;
use figment::providers::{Data, Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use jiff::Span;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

mod proxy;
mod webhooks;
pub use proxy::{ProxySection, UpstreamSection};
pub use webhooks::{EndpointSection, WebhooksSection};

/// The commented configuration `creditd init` writes, and the built-in defaults.
pub const DEFAULT_TOML: &str = include_str!("default_config.toml");

/// The file `creditd serve` reads when it exists and no other is named.
pub const DEFAULT_PATH: &str = "creditd.toml";

/// Environment variables `CREDITD_<SECTION>__<KEY>` override file keys.
pub const ENV_PREFIX: &str = "CREDITD_";

/// The largest `credits_per_usd`.
const MAX_CREDITS_PER_USD: Factor = Factor::whole(1_000_000);
/// The largest plan factor (`bonus_percent`, multipliers).
const MAX_PLAN_FACTOR: Factor = Factor::whole(1_000);
/// Tiers of one model at most (as the API).
const MAX_TIERS: usize = 32;
/// Plan and model ids: 1 to this many characters.
const ID_LEN_MAX: usize = 128;

/// A configuration that could not be read or is invalid. The message names
/// the key and where its value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A secret (API key, webhook secret): never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

// ---------------------------------------------------------------------------
// Validated configuration.

#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from; `None`: built-in defaults only.
    pub file: Option<PathBuf>,
    pub server: ServerSection,
    pub database: DatabaseSection,
    pub billing: Billing,
    pub campaigns: Campaigns,
    /// By plan id.
    pub plans: BTreeMap<String, Plan>,
    /// The price book written to the store at start, by model id.
    pub models: BTreeMap<String, ModelPrice>,
    pub payments: Payments,
    pub display: DisplaySection,
    /// `[proxy]`: the metering proxy (`docs/proxy.md`).
    pub proxy: ProxySection,
    /// `[webhooks]`: outgoing webhooks (`docs/webhooks.md`).
    pub webhooks: WebhooksSection,
}

#[derive(Clone, Debug)]
pub struct ServerSection {
    /// `host:port`; port 0 picks a free port.
    pub listen: String,
    pub admin_key: Option<Secret>,
    /// Connections served at once (kept below the open-file limit).
    pub max_connections: usize,
    /// A request head must arrive within this many seconds.
    pub header_timeout_seconds: u64,
    /// A request body must arrive within this many seconds.
    pub body_timeout_seconds: u64,
    /// A kept-alive connection with nothing to do is closed after this many seconds.
    pub idle_timeout_seconds: u64,
    /// Where users reach creditd (`https://credits.example.com`), without a
    /// trailing slash: the dashboard's links and payment return URLs.
    pub public_url: Option<String>,
}

#[derive(Clone, Debug)]
pub struct DatabaseSection {
    pub url: String,
}

#[derive(Clone, Debug)]
pub struct Billing {
    pub credits_per_usd: Factor,
    pub timezone_name: String,
    pub timezone: TimeZone,
    pub hold_ttl_seconds: u32,
    pub min_charge: Credits,
    pub free_request_types: Vec<String>,
    pub charge_errors: bool,
    pub renewal_grace: Span,
    pub on_switch: OnSwitch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnSwitch {
    Prorate,
    CarryOver,
}

#[derive(Clone, Debug, Default)]
pub struct Campaigns {
    /// `None`: no signup bonus (amount `"0"`).
    pub signup_bonus: Option<SignupBonus>,
    /// Gifts with a non-zero amount.
    pub recurring: Vec<RecurringGift>,
}

#[derive(Clone, Debug)]
pub struct SignupBonus {
    pub amount: Credits,
    pub expires_after: Option<Span>,
}

#[derive(Clone, Debug)]
pub struct RecurringGift {
    pub amount: Credits,
    pub every: Every,
    pub expires_after: Option<Span>,
    pub eligible: Eligible,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Every {
    Week,
    Month,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eligible {
    All,
    Free,
    Paid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub id: String,
    pub name: String,
    pub price_usd: Usd,
    /// The base: the main pool is this × (1 + bonus_percent/100).
    pub monthly_credits: Credits,
    pub bonus_percent: Factor,
    pub backup_multiplier: Factor,
    pub rate_per_minute: Option<u32>,
    pub daily_requests: Option<u32>,
    pub weekly_requests: Option<u32>,
    pub model_access: ModelAccess,
    /// `None` on the free plan: it has no plan budget.
    pub cost_budget_multiplier: Option<Factor>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelAccess {
    All,
    Free,
    Models(Vec<String>),
}

impl Plan {
    /// The plan as the engine and the store know it.
    pub fn to_core(&self) -> creditd_core::plan::Plan {
        creditd_core::plan::Plan {
            id: self.id.clone(),
            name: self.name.clone(),
            price_usd: self.price_usd,
            monthly_credits: self.monthly_credits,
            bonus_percent: self.bonus_percent,
            backup_multiplier: self.backup_multiplier,
            limits: creditd_core::limits::RequestLimits {
                rate_per_minute: self.rate_per_minute,
                daily_requests: self.daily_requests,
                weekly_requests: self.weekly_requests,
            },
            model_access: match &self.model_access {
                ModelAccess::All => creditd_core::plan::ModelAccess::All,
                ModelAccess::Free => creditd_core::plan::ModelAccess::Free,
                ModelAccess::Models(ids) => creditd_core::plan::ModelAccess::List(ids.clone()),
            },
            cost_budget_multiplier: self.cost_budget_multiplier,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Payments {
    pub creem: Creem,
    pub nowpayments: NowPayments,
    /// `min_topup_usd` of the `manual` provider.
    pub manual_min_topup_usd: Option<Usd>,
}

#[derive(Clone, Debug, Default)]
pub struct Creem {
    pub webhook_secret: Option<Secret>,
    /// For the dashboard's checkouts (`POST {api_base}/v1/checkouts`).
    pub api_key: Option<Secret>,
    /// `https://api.creem.io` by default (`https://test-api.creem.io`: test mode).
    pub api_base: Option<String>,
    /// How the dashboard shows each product (`label`, `price_usd`).
    pub product_display: BTreeMap<String, (Option<String>, Option<Usd>)>,
    pub min_topup_usd: Option<Usd>,
    /// By Creem product id.
    pub products: BTreeMap<String, Product>,
}

#[derive(Clone, Debug, Default)]
pub struct NowPayments {
    pub ipn_secret: Option<Secret>,
    /// For the dashboard's invoices (`POST {api_base}/v1/invoice`).
    pub api_key: Option<Secret>,
    /// `https://api.nowpayments.io` by default.
    pub api_base: Option<String>,
    pub min_topup_usd: Option<Usd>,
}

/// What a payment for a provider's product does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Product {
    /// The amount paid goes to the wallet.
    Topup,
    /// Starts (or renews) a plan.
    Plan { plan: String, kind: SubscriptionKind },
    /// A credit pack: a `purchased` grant.
    Credits(Credits),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionKind {
    Monthly,
    Pass30d,
}

#[derive(Clone, Debug, Default)]
pub struct DisplaySection {
    /// Units of each currency per 1 USD, by ISO 4217 code.
    pub currencies: BTreeMap<String, Factor>,
}

impl Config {
    /// Reads the configuration: built-in defaults, then `file` (which must
    /// exist), then the environment (`CREDITD_<SECTION>__<KEY>`).
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(path) = file
            && !path.is_file()
        {
            return Err(ConfigError(format!("configuration file {} does not exist", path.display())));
        }
        let file_layer = file.map(Toml::file_exact);
        let env = Env::prefixed(ENV_PREFIX).filter(|key| key.as_str().contains("__")).split("__");
        let mut config = load_layers(file_layer, env)?;
        config.file = file.map(Path::to_path_buf);
        Ok(config)
    }

    /// The built-in defaults alone.
    pub fn builtin() -> Config {
        load_layers(None::<Data<Toml>>, Figment::new()).expect("the built-in configuration is valid")
    }

    /// Parses a configuration given as TOML text over the built-in defaults,
    /// as if it were a file (no environment).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        load_layers(Some(Toml::string(text)), Figment::new())
    }

    pub fn pricing_policy(&self) -> PricingPolicy {
        PricingPolicy {
            credits_per_usd: self.billing.credits_per_usd,
            free_request_types: self.billing.free_request_types.clone(),
            charge_errors: self.billing.charge_errors,
            min_charge: self.billing.min_charge,
        }
    }

    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            policy: self.pricing_policy(),
            hold_ttl_seconds: self.billing.hold_ttl_seconds,
            billing: self.core_billing(),
        }
    }

    /// `[billing]` (beyond pricing) and `[campaigns]` as the engine applies them.
    pub fn core_billing(&self) -> campaign::Billing {
        let c = &self.campaigns;
        campaign::Billing {
            timezone: self.billing.timezone.clone(),
            renewal_grace: self.billing.renewal_grace.fieldwise(),
            low_credits: self.webhooks.low_credits.clone(),
            grant_expiring: self.webhooks.grant_expiring(),
            on_switch: match self.billing.on_switch {
                OnSwitch::Prorate => creditd_core::subscription::OnSwitch::Prorate,
                OnSwitch::CarryOver => creditd_core::subscription::OnSwitch::CarryOver,
            },
            campaigns: campaign::Campaigns {
                signup_bonus: c.signup_bonus.as_ref().map(|b| campaign::SignupBonus {
                    amount: b.amount,
                    expires_after: b.expires_after.map(|s| s.fieldwise()),
                }),
                recurring: c
                    .recurring
                    .iter()
                    .map(|g| campaign::RecurringGift {
                        amount: g.amount,
                        every: match g.every {
                            Every::Week => campaign::Cadence::Week,
                            Every::Month => campaign::Cadence::Month,
                        },
                        expires_after: g.expires_after.map(|s| s.fieldwise()),
                        eligible: match g.eligible {
                            Eligible::All => campaign::Eligible::All,
                            Eligible::Free => campaign::Eligible::Free,
                            Eligible::Paid => campaign::Eligible::Paid,
                        },
                    })
                    .collect(),
            },
        }
    }

    /// The plans as the store keeps them, in id order.
    pub fn core_plans(&self) -> Vec<creditd_core::plan::Plan> {
        self.plans.values().map(Plan::to_core).collect()
    }

    /// The smallest API top-up, by provider name.
    pub fn min_topup_usd(&self) -> HashMap<String, Usd> {
        let p = &self.payments;
        [
            ("creem", p.creem.min_topup_usd),
            ("nowpayments", p.nowpayments.min_topup_usd),
            ("manual", p.manual_min_topup_usd),
        ]
        .into_iter()
        .filter_map(|(name, min)| min.map(|m| (name.to_string(), m)))
        .collect()
    }
}

/// Finds the configuration file: `explicit` if given, else `./creditd.toml`
/// when it exists, else none (built-in defaults).
pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(path) => Some(path.to_path_buf()),
        None => {
            let default = Path::new(DEFAULT_PATH);
            default.is_file().then(|| default.to_path_buf())
        }
    }
}

/// Checks that `listen` is `host:port` (`127.0.0.1:8080`, `[::1]:8080`,
/// `localhost:0`): what the listener can be given. Whether the host
/// resolves and the port is free is for the bind to say.
pub fn check_listen(listen: &str) -> Result<(), String> {
    let wrong =
        || format!("{listen:?} is not an address such as \"127.0.0.1:8080\" (host:port; port 0 picks a free one)");
    if listen.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = listen.rsplit_once(':').ok_or_else(wrong)?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !host_ok || port.parse::<u16>().is_err() {
        return Err(wrong());
    }
    Ok(())
}

fn load_layers<F: Provider, E: Provider>(file: Option<F>, env: E) -> Result<Config, ConfigError> {
    let builtin: RawConfig = Figment::from(Toml::string(DEFAULT_TOML))
        .extract()
        .map_err(|e| ConfigError(format!("the built-in configuration is invalid: {e}")))?;
    let has_file = file.is_some();
    let mut user = Figment::new();
    if let Some(file) = file {
        user = user.merge(file);
    }
    user = user.merge(env);

    let mut defaults = builtin;
    if has_file {
        defaults.models.clear();
    }
    if user.contains("plans") {
        defaults.plans.clear();
    }
    let figment = Figment::from(Serialized::defaults(defaults)).merge(user);
    let raw: RawConfig = figment.extract().map_err(|e| ConfigError(describe_figment_error(e)))?;
    Validator { figment: &figment }.config(raw)
}

// ---------------------------------------------------------------------------
// Raw configuration: what the layers say, before validation.

/// A scalar written as a string or a number: amounts (`"0.3"`), secrets.
/// Numbers are accepted so that environment variables (which figment reads
/// as numbers when they look like one) work; a TOML float is taken at its
/// shortest decimal form, which is what was typed for any amount in range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string such as \"12\" or \"0.5\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                if v.is_finite() { Ok(Scalar(format!("{v}"))) } else { Err(E::custom("not a finite number")) }
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    database: RawDatabase,
    billing: RawBilling,
    campaigns: RawCampaigns,
    plans: BTreeMap<String, RawPlan>,
    models: BTreeMap<String, RawModel>,
    payments: RawPayments,
    display: RawDisplay,
    proxy: proxy::RawProxy,
    webhooks: webhooks::RawWebhooks,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin_key: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_connections: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    header_timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body_timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idle_timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_url: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawBilling {
    credits_per_usd: Option<Scalar>,
    timezone: String,
    hold_ttl_seconds: u64,
    min_charge: Option<Scalar>,
    free_request_types: Vec<String>,
    charge_errors: bool,
    renewal_grace: String,
    on_switch: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawCampaigns {
    #[serde(skip_serializing_if = "Option::is_none")]
    signup_bonus: Option<RawSignupBonus>,
    recurring: Vec<RawRecurring>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSignupBonus {
    amount: Scalar,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_after: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRecurring {
    amount: Scalar,
    every: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    eligible: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    price_usd: Scalar,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    monthly_credits: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bonus_percent: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backup_multiplier: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    daily_requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weekly_requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model_access: Option<RawModelAccess>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cost_budget_multiplier: Option<Scalar>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
enum RawModelAccess {
    Named(String),
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for RawModelAccess {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawModelAccess;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"all\", \"free\" or a list of model ids")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawModelAccess, E> {
                Ok(RawModelAccess::Named(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawModelAccess, A::Error> {
                let mut ids = Vec::new();
                while let Some(id) = seq.next_element::<String>()? {
                    ids.push(id);
                }
                Ok(RawModelAccess::List(ids))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawTokenRates {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_read: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_write: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<Scalar>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawFlatRates {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_call: Option<Scalar>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    above_input_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cost_usd_per_mtok: Option<RawTokenRates>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credits_per_mtok: Option<RawTokenRates>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cost_usd_per_mtok: Option<RawTokenRates>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cost_usd: Option<RawFlatRates>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credits_per_mtok: Option<RawTokenRates>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credits: Option<RawFlatRates>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    multiplier: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    free: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tiers: Vec<RawTier>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawPayments {
    #[serde(skip_serializing_if = "Option::is_none")]
    creem: Option<RawCreem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nowpayments: Option<RawNowPayments>,
    #[serde(skip_serializing_if = "Option::is_none")]
    manual: Option<RawManual>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawCreem {
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_secret: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_base: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_topup_usd: Option<Scalar>,
    products: BTreeMap<String, RawProduct>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawNowPayments {
    #[serde(skip_serializing_if = "Option::is_none")]
    ipn_secret: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_base: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_topup_usd: Option<Scalar>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawManual {
    #[serde(skip_serializing_if = "Option::is_none")]
    min_topup_usd: Option<Scalar>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawProduct {
    #[serde(skip_serializing_if = "Option::is_none")]
    topup: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credits: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    price_usd: Option<Scalar>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct RawDisplay {
    currencies: BTreeMap<String, Scalar>,
}

// ---------------------------------------------------------------------------
// Validation.

/// Turns figment's errors into lines that name the key and its origin.
fn describe_figment_error(error: figment::Error) -> String {
    let mut lines = Vec::new();
    for e in error {
        let origin = e.metadata.as_ref().map(origin_of).unwrap_or_default();
        let path = e.path.join(".");
        // figment's path may or may not end with the field already.
        let join = |field: &str| match e.path.last() {
            Some(last) if last == field => path.clone(),
            Some(_) => format!("{path}.{field}"),
            None => field.to_string(),
        };
        let line = match &e.kind {
            figment::error::Kind::UnknownField(field, expected) => {
                let expected = if expected.is_empty() {
                    String::new()
                } else {
                    format!("; expected one of: {}", expected.join(", "))
                };
                format!("unknown key `{}`{origin}{expected}", join(field))
            }
            figment::error::Kind::MissingField(field) => format!("missing key `{}`{origin}", join(field)),
            kind if path.is_empty() && origin.is_empty() => kind.to_string(),
            kind if path.is_empty() => {
                format!("{}: {kind}", origin.trim_start().trim_start_matches('(').trim_end_matches(')'))
            }
            kind => format!("`{path}`{origin}: {kind}"),
        };
        lines.push(line);
    }
    format!("invalid configuration: {}", lines.join("; "))
}

/// " (in FILE)", " (in the environment)", or "" for the built-in defaults.
fn origin_of(md: &figment::Metadata) -> String {
    match &md.source {
        Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
        _ if md.name.contains("environment") => " (in the environment)".to_string(),
        _ if md.name.contains("TOML") => " (in the configuration)".to_string(),
        _ => String::new(),
    }
}

struct Validator<'a> {
    figment: &'a Figment,
}

impl Validator<'_> {
    /// An error about `key`, naming where its value came from.
    fn error(&self, key: &str, why: impl fmt::Display) -> ConfigError {
        let origin = match self.figment.find_metadata(key) {
            Some(md) if md.name.contains("environment") => {
                format!(" (from the environment variable {ENV_PREFIX}{})", key.to_uppercase().replace('.', "__"))
            }
            Some(md) => match &md.source {
                Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
                _ if md.name.contains("TOML") => " (in the configuration)".to_string(),
                _ => " (built-in default)".to_string(),
            },
            None => String::new(),
        };
        ConfigError(format!("invalid configuration: `{key}`{origin}: {why}"))
    }

    fn value_error(&self, key: &str, value: &Scalar, why: impl fmt::Display) -> ConfigError {
        self.error(key, format!("{:?} is {why}", value.0))
    }

    fn unit<T>(
        &self,
        key: &str,
        value: &Scalar,
        parse: fn(&str) -> Result<T, UnitError>,
        what: &str,
    ) -> Result<T, ConfigError> {
        parse(&value.0).map_err(|e| self.value_error(key, value, format!("not a valid {what}: {e}")))
    }

    /// A non-negative amount at most `max`.
    fn credits(&self, key: &str, value: &Scalar, max: Credits) -> Result<Credits, ConfigError> {
        let v = self.unit(key, value, Credits::parse, "credit amount")?;
        if v.is_negative() || v > max {
            return Err(self.value_error(key, value, format!("out of range: 0 to {max} credits")));
        }
        Ok(v)
    }

    fn usd(&self, key: &str, value: &Scalar, max: Usd) -> Result<Usd, ConfigError> {
        let v = self.unit(key, value, Usd::parse, "USD amount")?;
        if v.is_negative() || v > max {
            return Err(self.value_error(key, value, format!("out of range: 0 to {max} USD")));
        }
        Ok(v)
    }

    fn factor(&self, key: &str, value: &Scalar, max: Factor) -> Result<Factor, ConfigError> {
        let v = self.unit(key, value, Factor::parse, "number")?;
        if v.is_negative() || v > max {
            return Err(self.value_error(key, value, format!("out of range: 0 to {max}")));
        }
        Ok(v)
    }

    /// An ISO 8601 duration such as `P30D`, at least zero (`positive`: above zero).
    fn duration(&self, key: &str, text: &str, positive: bool) -> Result<Span, ConfigError> {
        let span: Span = text.parse().map_err(|e| {
            self.error(key, format!("{text:?} is not an ISO 8601 duration such as \"P30D\" or \"PT12H\": {e}"))
        })?;
        if span.is_negative() || (positive && span.is_zero()) {
            let bound = if positive { "above zero" } else { "zero or more" };
            return Err(self.error(key, format!("{text:?} must be {bound}")));
        }
        Ok(span)
    }

    /// Plan ids take the characters of account ids (`A–Z a–z 0–9 . _ @ -`);
    /// model ids also `:` and `/`, as the API does.
    fn id(&self, key: &str, id: &str, what: &str) -> Result<(), ConfigError> {
        let (extra, shown): (&[u8], &str) =
            if what == "model" { (b"._:/@-", ". _ : / @ -") } else { (b"._@-", ". _ @ -") };
        let ok = !id.is_empty()
            && id.len() <= ID_LEN_MAX
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b));
        if ok {
            Ok(())
        } else {
            Err(self
                .error(key, format!("{what} id {id:?} must be 1 to {ID_LEN_MAX} characters of A-Z a-z 0-9 {shown}")))
        }
    }

    fn limit(&self, key: &str, value: Option<u64>) -> Result<Option<u32>, ConfigError> {
        value.map(|v| u32::try_from(v).map_err(|_| self.error(key, format!("{v} is above {}", u32::MAX)))).transpose()
    }

    fn secret(&self, value: Option<Scalar>) -> Option<Secret> {
        value.filter(|s| !s.0.is_empty()).map(|s| Secret(s.0))
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let server = self.server(raw.server)?;
        let database = self.database(raw.database)?;
        let billing = self.billing(raw.billing)?;
        let campaigns = self.campaigns(raw.campaigns)?;
        let mut models = BTreeMap::new();
        for (id, model) in raw.models {
            let price = self.model(&id, model)?;
            models.insert(id, price);
        }
        let mut plans = BTreeMap::new();
        for (id, plan) in raw.plans {
            let plan = self.plan(&id, plan)?;
            plans.insert(id, plan);
        }
        if !plans.contains_key("free") {
            return Err(
                self.error("plans.free", "a plan `free` is required: every account without a subscription is on it")
            );
        }
        let payments = self.payments(raw.payments, &plans)?;
        let display = self.display(raw.display)?;
        let proxy = self.proxy(raw.proxy)?;
        let webhooks = self.webhooks(raw.webhooks)?;
        Ok(Config {
            file: None,
            server,
            database,
            billing,
            campaigns,
            plans,
            models,
            payments,
            display,
            proxy,
            webhooks,
        })
    }

    fn server(&self, raw: RawServer) -> Result<ServerSection, ConfigError> {
        if let Err(why) = check_listen(&raw.listen) {
            return Err(self.error("server.listen", why));
        }
        let limit = |key: &str, value: Option<u64>, default: u64, max: u64| match value {
            None => Ok(default),
            Some(v) if (1..=max).contains(&v) => Ok(v),
            Some(v) => Err(self.error(key, format!("{v} is not from 1 to {max}"))),
        };
        let max_connections = limit("server.max_connections", raw.max_connections, 10_000, 1_000_000)?;
        let public_url = match raw.public_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url)
                if (url.starts_with("https://") || url.starts_with("http://"))
                    && !url.contains(char::is_whitespace) =>
            {
                Some(url.trim_end_matches('/').to_string())
            }
            Some(url) => {
                return Err(self.error(
                    "server.public_url",
                    format!("{url:?} is not a URL such as \"https://credits.example.com\""),
                ));
            }
        };
        Ok(ServerSection {
            listen: raw.listen,
            public_url,
            admin_key: self.secret(raw.admin_key),
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            header_timeout_seconds: limit("server.header_timeout_seconds", raw.header_timeout_seconds, 10, 3600)?,
            body_timeout_seconds: limit("server.body_timeout_seconds", raw.body_timeout_seconds, 30, 3600)?,
            idle_timeout_seconds: limit("server.idle_timeout_seconds", raw.idle_timeout_seconds, 60, 86_400)?,
        })
    }

    fn database(&self, raw: RawDatabase) -> Result<DatabaseSection, ConfigError> {
        if !(raw.url.starts_with("sqlite:")
            || raw.url.starts_with("postgres://")
            || raw.url.starts_with("postgresql://"))
        {
            return Err(self.error(
                "database.url",
                format!("{:?} is not a database URL such as \"sqlite://creditd.db\"", raw.url),
            ));
        }
        Ok(DatabaseSection { url: raw.url })
    }

    fn billing(&self, raw: RawBilling) -> Result<Billing, ConfigError> {
        let credits_per_usd = match &raw.credits_per_usd {
            Some(v) => self.factor("billing.credits_per_usd", v, MAX_CREDITS_PER_USD)?,
            None => Factor::whole(100),
        };
        if !credits_per_usd.is_positive() {
            return Err(self.error("billing.credits_per_usd", "must be above zero"));
        }
        let timezone = TimeZone::get(&raw.timezone).map_err(|e| {
            self.error(
                "billing.timezone",
                format!("{:?} is not an IANA time zone such as \"UTC\" or \"Europe/Paris\": {e}", raw.timezone),
            )
        })?;
        let hold_ttl_seconds = u32::try_from(raw.hold_ttl_seconds)
            .ok()
            .filter(|&s| (1..=MAX_HOLD_TTL_SECONDS).contains(&s))
            .ok_or_else(|| {
                self.error(
                    "billing.hold_ttl_seconds",
                    format!("{} is outside 1 to {MAX_HOLD_TTL_SECONDS}", raw.hold_ttl_seconds),
                )
            })?;
        let min_charge = match &raw.min_charge {
            Some(v) => self.credits("billing.min_charge", v, MAX_GRANT)?,
            None => Credits::ZERO,
        };
        if let Some(t) = raw.free_request_types.iter().find(|t| t.trim().is_empty()) {
            return Err(self.error("billing.free_request_types", format!("{t:?} is not a request type")));
        }
        let renewal_grace = self.duration("billing.renewal_grace", &raw.renewal_grace, false)?;
        let on_switch = match raw.on_switch.as_str() {
            "prorate" => OnSwitch::Prorate,
            "carry_over" => OnSwitch::CarryOver,
            other => {
                return Err(
                    self.error("billing.on_switch", format!("{other:?} is not one of \"prorate\", \"carry_over\""))
                );
            }
        };
        Ok(Billing {
            credits_per_usd,
            timezone_name: raw.timezone,
            timezone,
            hold_ttl_seconds,
            min_charge,
            free_request_types: raw.free_request_types,
            charge_errors: raw.charge_errors,
            renewal_grace,
            on_switch,
        })
    }

    fn campaigns(&self, raw: RawCampaigns) -> Result<Campaigns, ConfigError> {
        let mut campaigns = Campaigns::default();
        if let Some(bonus) = raw.signup_bonus {
            let amount = self.credits("campaigns.signup_bonus.amount", &bonus.amount, MAX_GRANT)?;
            let expires_after = bonus
                .expires_after
                .map(|d| self.duration("campaigns.signup_bonus.expires_after", &d, true))
                .transpose()?;
            if amount.is_positive() {
                campaigns.signup_bonus = Some(SignupBonus { amount, expires_after });
            }
        }
        for (i, gift) in raw.recurring.into_iter().enumerate() {
            let key = |field: &str| format!("campaigns.recurring.{i}.{field}");
            let amount = self.credits(&key("amount"), &gift.amount, MAX_GRANT)?;
            let every = match gift.every.as_str() {
                "week" => Every::Week,
                "month" => Every::Month,
                other => return Err(self.error(&key("every"), format!("{other:?} is not one of \"week\", \"month\""))),
            };
            let expires_after =
                gift.expires_after.map(|d| self.duration(&key("expires_after"), &d, true)).transpose()?;
            let eligible = match gift.eligible.as_deref().unwrap_or("all") {
                "all" => Eligible::All,
                "free" => Eligible::Free,
                "paid" => Eligible::Paid,
                other => {
                    return Err(
                        self.error(&key("eligible"), format!("{other:?} is not one of \"all\", \"free\", \"paid\""))
                    );
                }
            };
            if amount.is_positive() {
                campaigns.recurring.push(RecurringGift { amount, every, expires_after, eligible });
            }
        }
        Ok(campaigns)
    }

    fn plan(&self, id: &str, raw: RawPlan) -> Result<Plan, ConfigError> {
        let key = |field: &str| format!("plans.{id}.{field}");
        self.id(&format!("plans.{id}"), id, "plan")?;
        let name = raw.name.unwrap_or_else(|| id.to_string());
        if name.trim().is_empty() {
            return Err(self.error(&key("name"), "must not be empty"));
        }
        let price_usd = self.usd(&key("price_usd"), &raw.price_usd, MAX_PRICE)?;
        let monthly_credits = match &raw.monthly_credits {
            Some(v) => self.credits(&key("monthly_credits"), v, MAX_GRANT)?,
            None => Credits::ZERO,
        };
        let factor = |field: &str, value: &Option<Scalar>, default: i64| match value {
            Some(v) => self.factor(&key(field), v, MAX_PLAN_FACTOR),
            None => Ok(Factor::whole(default)),
        };
        let bonus_percent = factor("bonus_percent", &raw.bonus_percent, 20)?;
        let backup_multiplier = factor("backup_multiplier", &raw.backup_multiplier, 3)?;
        // Both pools must be grantable: at most 10^9 credits each.
        let pool = |f: i128| monthly_credits.units() as i128 * f / Factor::ONE as i128;
        let main = pool(Factor::ONE as i128 + bonus_percent.units() as i128 / 100);
        let backup = pool(backup_multiplier.units() as i128);
        if main > MAX_GRANT.units() as i128 || backup > MAX_GRANT.units() as i128 {
            return Err(self
                .error(&key("monthly_credits"), format!("its main or backup pool would exceed {MAX_GRANT} credits")));
        }
        let cost_budget_multiplier = if id == "free" {
            if raw.cost_budget_multiplier.is_some() {
                return Err(self.error(&key("cost_budget_multiplier"), "the free plan has no plan budget"));
            }
            None
        } else {
            Some(factor("cost_budget_multiplier", &raw.cost_budget_multiplier, 10)?)
        };
        let model_access = match raw.model_access {
            None => ModelAccess::All,
            Some(RawModelAccess::Named(n)) if n == "all" => ModelAccess::All,
            Some(RawModelAccess::Named(n)) if n == "free" => ModelAccess::Free,
            Some(RawModelAccess::Named(n)) => {
                return Err(
                    self.error(&key("model_access"), format!("{n:?} is not \"all\", \"free\" or a list of model ids"))
                );
            }
            Some(RawModelAccess::List(ids)) => {
                for m in &ids {
                    self.id(&key("model_access"), m, "model")?;
                }
                ModelAccess::Models(ids)
            }
        };
        Ok(Plan {
            id: id.to_string(),
            name,
            price_usd,
            monthly_credits,
            bonus_percent,
            backup_multiplier,
            rate_per_minute: self.limit(&key("rate_per_minute"), raw.rate_per_minute)?,
            daily_requests: self.limit(&key("daily_requests"), raw.daily_requests)?,
            weekly_requests: self.limit(&key("weekly_requests"), raw.weekly_requests)?,
            model_access,
            cost_budget_multiplier,
        })
    }

    fn token_usd(&self, key: &str, raw: Option<RawTokenRates>) -> Result<TokenRates<Usd>, ConfigError> {
        let raw = raw.unwrap_or_default();
        let one = |field: &str, v: &Option<Scalar>| {
            v.as_ref().map(|v| self.usd(&format!("{key}.{field}"), v, MAX_PRICE)).transpose()
        };
        Ok(TokenRates {
            input: one("input", &raw.input)?,
            cache_read: one("cache_read", &raw.cache_read)?,
            cache_write: one("cache_write", &raw.cache_write)?,
            output: one("output", &raw.output)?,
        })
    }

    fn token_credits(&self, key: &str, raw: Option<RawTokenRates>) -> Result<TokenRates<Credits>, ConfigError> {
        let raw = raw.unwrap_or_default();
        let max = Credits::from_units(MAX_PRICE.units());
        let one = |field: &str, v: &Option<Scalar>| {
            v.as_ref().map(|v| self.credits(&format!("{key}.{field}"), v, max)).transpose()
        };
        Ok(TokenRates {
            input: one("input", &raw.input)?,
            cache_read: one("cache_read", &raw.cache_read)?,
            cache_write: one("cache_write", &raw.cache_write)?,
            output: one("output", &raw.output)?,
        })
    }

    fn model(&self, id: &str, raw: RawModel) -> Result<ModelPrice, ConfigError> {
        let base = format!("models.{id}");
        let key = |field: &str| format!("{base}.{field}");
        self.id(&base, id, "model")?;
        let cost_flat = raw.cost_usd.unwrap_or_default();
        let credit_flat = raw.credits.unwrap_or_default();
        let flat_usd = |field: &str, v: &Option<Scalar>| {
            v.as_ref().map(|v| self.usd(&format!("{base}.cost_usd.{field}"), v, MAX_PRICE)).transpose()
        };
        let max_credits = Credits::from_units(MAX_PRICE.units());
        let flat_credits = |field: &str, v: &Option<Scalar>| {
            v.as_ref().map(|v| self.credits(&format!("{base}.credits.{field}"), v, max_credits)).transpose()
        };
        if raw.tiers.len() > MAX_TIERS {
            return Err(self.error(&key("tiers"), format!("at most {MAX_TIERS} tiers")));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(t) = raw.tiers.iter().find(|t| !seen.insert(t.above_input_tokens)) {
            return Err(
                self.error(&key("tiers"), format!("two tiers have above_input_tokens = {}", t.above_input_tokens))
            );
        }
        let mut tiers = Vec::with_capacity(raw.tiers.len());
        for (i, tier) in raw.tiers.into_iter().enumerate() {
            let tier_key = format!("{base}.tiers.{i}");
            if tier.above_input_tokens > MAX_TOKENS {
                return Err(self.error(&format!("{tier_key}.above_input_tokens"), format!("is above {MAX_TOKENS}")));
            }
            tiers.push(Tier {
                above_input_tokens: tier.above_input_tokens,
                cost_usd_per_mtok: self.token_usd(&format!("{tier_key}.cost_usd_per_mtok"), tier.cost_usd_per_mtok)?,
                credits_per_mtok: self.token_credits(&format!("{tier_key}.credits_per_mtok"), tier.credits_per_mtok)?,
            });
        }
        let defaults = ModelPrice::default();
        let max_output_tokens = raw.max_output_tokens.unwrap_or(defaults.max_output_tokens);
        if max_output_tokens == 0 || max_output_tokens > MAX_TOKENS {
            return Err(
                self.error(&key("max_output_tokens"), format!("{max_output_tokens} is outside 1 to {MAX_TOKENS}"))
            );
        }
        let price = ModelPrice {
            cost_usd_per_mtok: self.token_usd(&key("cost_usd_per_mtok"), raw.cost_usd_per_mtok)?,
            cost_usd: FlatRates {
                request: flat_usd("request", &cost_flat.request)?,
                image: flat_usd("image", &cost_flat.image)?,
                tool_call: flat_usd("tool_call", &cost_flat.tool_call)?,
            },
            credits_per_mtok: self.token_credits(&key("credits_per_mtok"), raw.credits_per_mtok)?,
            credits: FlatRates {
                request: flat_credits("request", &credit_flat.request)?,
                image: flat_credits("image", &credit_flat.image)?,
                tool_call: flat_credits("tool_call", &credit_flat.tool_call)?,
            },
            multiplier: match &raw.multiplier {
                Some(v) => self.factor(&key("multiplier"), v, MAX_MULTIPLIER)?,
                None => defaults.multiplier,
            },
            tiers,
            free: raw.free.unwrap_or(false),
            max_output_tokens,
        };
        price.validate().map_err(|e| self.error(&base, e))?;
        Ok(price)
    }

    fn payments(&self, raw: RawPayments, plans: &BTreeMap<String, Plan>) -> Result<Payments, ConfigError> {
        let mut payments = Payments::default();
        let min = |key: &str, v: &Option<Scalar>| v.as_ref().map(|v| self.usd(key, v, MAX_PRICE)).transpose();
        if let Some(creem) = raw.creem {
            payments.creem.webhook_secret = self.secret(creem.webhook_secret);
            payments.creem.api_key = self.secret(creem.api_key);
            payments.creem.api_base = self.api_base("payments.creem.api_base", creem.api_base)?;
            payments.creem.min_topup_usd = min("payments.creem.min_topup_usd", &creem.min_topup_usd)?;
            for (id, product) in creem.products {
                let key = format!("payments.creem.products.{id}");
                let price = product
                    .price_usd
                    .as_ref()
                    .map(|v| self.usd(&format!("{key}.price_usd"), v, MAX_PRICE))
                    .transpose()?;
                let label = product.label.clone().filter(|l| !l.trim().is_empty());
                if label.as_ref().is_some_and(|l| l.chars().count() > 80) {
                    return Err(self.error(&format!("{key}.label"), "must be at most 80 characters"));
                }
                payments.creem.product_display.insert(id.clone(), (label, price));
                let product = RawProduct { label: None, price_usd: None, ..product };
                let product = self.product(&key, product, plans)?;
                payments.creem.products.insert(id, product);
            }
        }
        if let Some(now) = raw.nowpayments {
            payments.nowpayments.ipn_secret = self.secret(now.ipn_secret);
            payments.nowpayments.api_key = self.secret(now.api_key);
            payments.nowpayments.api_base = self.api_base("payments.nowpayments.api_base", now.api_base)?;
            payments.nowpayments.min_topup_usd = min("payments.nowpayments.min_topup_usd", &now.min_topup_usd)?;
        }
        if let Some(manual) = raw.manual {
            payments.manual_min_topup_usd = min("payments.manual.min_topup_usd", &manual.min_topup_usd)?;
        }
        Ok(payments)
    }

    /// An API base URL (`https://…`, or `http://…` for a local stand-in).
    fn api_base(&self, key: &str, raw: Option<String>) -> Result<Option<String>, ConfigError> {
        match raw.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(url)
                if (url.starts_with("https://") || url.starts_with("http://"))
                    && !url.contains(char::is_whitespace) =>
            {
                Ok(Some(url.trim_end_matches('/').to_string()))
            }
            Some(url) => Err(self.error(key, format!("{url:?} is not a URL such as \"https://api.creem.io\""))),
        }
    }

    fn product(&self, key: &str, raw: RawProduct, plans: &BTreeMap<String, Plan>) -> Result<Product, ConfigError> {
        let shape = "must be one of { topup = true }, { plan = \"pro\", kind = \"monthly\" | \"pass_30d\" } or { credits = \"500\" }";
        match (raw.topup, raw.plan, raw.kind, raw.credits) {
            (Some(true), None, None, None) => Ok(Product::Topup),
            (None, Some(plan), kind, None) => {
                if !plans.contains_key(&plan) || plan == "free" {
                    return Err(self.error(&format!("{key}.plan"), format!("{plan:?} is not a paid plan of [plans]")));
                }
                let kind = match kind.as_deref().unwrap_or("monthly") {
                    "monthly" => SubscriptionKind::Monthly,
                    "pass_30d" => SubscriptionKind::Pass30d,
                    other => {
                        return Err(self.error(
                            &format!("{key}.kind"),
                            format!("{other:?} is not one of \"monthly\", \"pass_30d\""),
                        ));
                    }
                };
                Ok(Product::Plan { plan, kind })
            }
            (None, None, None, Some(credits)) => {
                let amount = self.credits(&format!("{key}.credits"), &credits, MAX_GRANT)?;
                if !amount.is_positive() {
                    return Err(self.error(&format!("{key}.credits"), "must be above zero"));
                }
                Ok(Product::Credits(amount))
            }
            _ => Err(self.error(key, shape)),
        }
    }

    fn display(&self, raw: RawDisplay) -> Result<DisplaySection, ConfigError> {
        let mut display = DisplaySection::default();
        for (code, rate) in raw.currencies {
            let key = format!("display.currencies.{code}");
            if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(self.error(&key, format!("{code:?} is not a currency code such as \"EUR\"")));
            }
            let rate = self.factor(&key, &rate, Factor::from_units(i64::MAX))?;
            if !rate.is_positive() {
                return Err(self.error(&key, "must be above zero"));
            }
            display.currencies.insert(code, rate);
        }
        Ok(display)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(toml: &str) -> String {
        Config::from_toml(toml).expect_err("the configuration should be refused").0
    }

    #[test]
    fn built_in_defaults_parse_and_match_the_documented_defaults() {
        let c = Config::builtin();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.database.url, "sqlite://creditd.db");
        assert_eq!(c.billing.credits_per_usd, Factor::whole(100));
        assert_eq!(c.billing.timezone_name, "UTC");
        assert_eq!(c.billing.hold_ttl_seconds, 900);
        assert_eq!(c.billing.min_charge, Credits::ZERO);
        assert_eq!(c.billing.free_request_types, ["summarization"]);
        assert!(!c.billing.charge_errors);
        assert_eq!(c.billing.on_switch, OnSwitch::Prorate);
        let engine = c.engine();
        let defaults = EngineConfig::default();
        assert_eq!((&engine.policy, engine.hold_ttl_seconds), (&defaults.policy, defaults.hold_ttl_seconds));
        // The store's defaults have no campaigns; the shipped configuration has.
        let billing = engine.billing;
        assert_eq!(
            (&billing.timezone, billing.renewal_grace),
            (&defaults.billing.timezone, defaults.billing.renewal_grace)
        );
        assert_eq!(billing.on_switch, defaults.billing.on_switch);
        assert_eq!(billing.grant_expiring, defaults.billing.grant_expiring, "three days");
        let bonus = billing.campaigns.signup_bonus.as_ref().unwrap();
        assert_eq!((bonus.amount, bonus.expires_after), (Credits::whole(50), Some(Span::new().days(30).fieldwise())));
        assert_eq!(billing.campaigns.recurring.len(), 1);
        assert_eq!(billing.campaigns.recurring[0].every, campaign::Cadence::Week);
        assert_eq!(billing.campaigns.recurring[0].eligible, campaign::Eligible::All);
        // Every shipped plan is one the store accepts, with the seed's pools and budget.
        for plan in c.core_plans() {
            assert_eq!(plan.validate(), Ok(()), "{}", plan.id);
        }
        let ultra = c.plans["ultra"].to_core();
        assert_eq!((ultra.main_pool(), ultra.backup_pool()), (Credits::whole(24_000), Credits::whole(60_000)));
        assert_eq!(ultra.budget(), Some(Usd::whole(2000)));

        let bonus = c.campaigns.signup_bonus.as_ref().unwrap();
        assert_eq!(bonus.amount, Credits::whole(50));
        assert_eq!(c.campaigns.recurring.len(), 1);
        assert_eq!(c.campaigns.recurring[0].every, Every::Week);
        assert_eq!(c.campaigns.recurring[0].eligible, Eligible::All);

        // Seed 004: base credits, 100 credits per USD, +20% bonus, 3x backup.
        let expect = [
            ("free", "0", "0", Some(1), Some(1000), None),
            ("starter", "10", "1000", Some(20), Some(100), Some(300)),
            ("premium", "25", "2500", Some(40), Some(250), Some(750)),
            ("pro", "50", "5000", Some(60), Some(500), Some(1500)),
            ("master", "100", "10000", Some(80), Some(1000), Some(3000)),
            ("ultra", "200", "20000", Some(120), Some(2000), Some(6000)),
        ];
        assert_eq!(c.plans.len(), expect.len());
        for (id, price, credits, rate, daily, weekly) in expect {
            let p = &c.plans[id];
            assert_eq!(p.price_usd, Usd::parse(price).unwrap(), "{id}");
            assert_eq!(p.monthly_credits, Credits::parse(credits).unwrap(), "{id}");
            assert_eq!((p.rate_per_minute, p.daily_requests, p.weekly_requests), (rate, daily, weekly), "{id}");
            assert_eq!(p.bonus_percent, Factor::whole(20), "{id}");
            assert_eq!(p.backup_multiplier, Factor::whole(3), "{id}");
            if id == "free" {
                assert_eq!(p.model_access, ModelAccess::Free);
                assert_eq!(p.cost_budget_multiplier, None);
            } else {
                assert_eq!(p.model_access, ModelAccess::All);
                assert_eq!(p.cost_budget_multiplier, Some(Factor::whole(10)));
            }
        }

        let sonnet = &c.models["claude-sonnet-4-5"];
        assert_eq!(sonnet.cost_usd_per_mtok.cache_write, Some(Usd::parse("3.75").unwrap()));
        assert_eq!(sonnet.max_output_tokens, 8192);
        assert!(c.models["gpt-4o-mini"].free);
        assert!(!c.models["gpt-4o"].free);

        assert_eq!(c.min_topup_usd().get("creem"), Some(&Usd::whole(5)));
        assert_eq!(c.min_topup_usd().get("nowpayments"), Some(&Usd::whole(10)));
        assert!(c.payments.creem.webhook_secret.is_none());
        assert!(c.payments.creem.products.is_empty());
    }

    #[test]
    fn a_file_overrides_keys_and_keeps_the_other_defaults() {
        let c = Config::from_toml(
            r#"
            [billing]
            timezone = "Europe/Paris"
            min_charge = "0.01"
            [models.cheap]
            credits = { request = "1" }
            multiplier = "0.5"
            "#,
        )
        .unwrap();
        assert_eq!(c.billing.timezone_name, "Europe/Paris");
        assert_eq!(c.billing.min_charge, Credits::parse("0.01").unwrap());
        assert_eq!(c.billing.hold_ttl_seconds, 900);
        // Models come only from the file; plans stay the built-in ones.
        assert_eq!(c.models.keys().collect::<Vec<_>>(), ["cheap"]);
        assert_eq!(c.models["cheap"].credits.request, Some(Credits::whole(1)));
        assert_eq!(c.models["cheap"].multiplier, Factor::parse("0.5").unwrap());
        assert_eq!(c.plans.len(), 6);
    }

    #[test]
    fn plans_in_a_file_replace_the_built_in_plans() {
        let c = Config::from_toml(
            r#"
            [plans.free]
            price_usd = "0"
            model_access = ["gpt-4o-mini"]
            [plans.team]
            name = "Team"
            price_usd = "99"
            monthly_credits = "9900"
            "#,
        )
        .unwrap();
        assert_eq!(c.plans.keys().collect::<Vec<_>>(), ["free", "team"]);
        let team = &c.plans["team"];
        assert_eq!(team.bonus_percent, Factor::whole(20));
        assert_eq!(team.cost_budget_multiplier, Some(Factor::whole(10)));
        assert_eq!(team.daily_requests, None);
        assert_eq!(c.plans["free"].model_access, ModelAccess::Models(vec!["gpt-4o-mini".into()]));
    }

    #[test]
    fn a_bad_amount_names_its_key() {
        let e = err("[billing]\nmin_charge = \"1.2.3\"\n");
        assert!(e.contains("`billing.min_charge`"), "{e}");
        assert!(e.contains("\"1.2.3\""), "{e}");

        let e = err("[models.m]\ncost_usd_per_mtok = { input = \"abc\" }\n");
        assert!(e.contains("`models.m.cost_usd_per_mtok.input`"), "{e}");

        let e = err("[plans.free]\nprice_usd = \"0\"\n[plans.pro]\nprice_usd = \"-5\"\n");
        assert!(e.contains("`plans.pro.price_usd`"), "{e}");

        let e = err("[campaigns.signup_bonus]\namount = \"0.0000001\"\n");
        assert!(e.contains("`campaigns.signup_bonus.amount`") && e.contains("6 fractional digits"), "{e}");
    }

    #[test]
    fn listen_not_an_address_names_the_key() {
        let e = err("[server]\nlisten = \"not-an-address\"\n");
        assert!(e.contains("`server.listen`") && e.contains("\"not-an-address\""), "{e}");
        for bad in ["127.0.0.1", ":8080", "127.0.0.1:99999", "a b:80", ""] {
            assert!(check_listen(bad).is_err(), "{bad:?}");
        }
        for good in ["127.0.0.1:8080", "0.0.0.0:0", "[::1]:8080", "localhost:8080", "db.internal:80"] {
            assert!(check_listen(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        let e = err("[billing]\ncredit_per_usd = \"100\"\n");
        assert!(e.contains("unknown key `billing.credit_per_usd`"), "{e}");
        let e = err("[models.m]\ncost_usd_per_mtok = { input = \"1\", ouput = \"2\" }\n");
        assert!(e.contains("`models.m.cost_usd_per_mtok.ouput`"), "{e}");
        let e = err("[serverr]\nlisten = \"x\"\n");
        assert!(e.contains("unknown key `serverr`"), "{e}");
    }

    #[test]
    fn other_invalid_values_are_refused_with_their_key() {
        for (toml, key) in [
            ("[billing]\ntimezone = \"Mars/Olympus\"", "billing.timezone"),
            ("[billing]\nhold_ttl_seconds = 0", "billing.hold_ttl_seconds"),
            ("[billing]\nhold_ttl_seconds = 86401", "billing.hold_ttl_seconds"),
            ("[billing]\ncredits_per_usd = \"0\"", "billing.credits_per_usd"),
            ("[billing]\nrenewal_grace = \"one day\"", "billing.renewal_grace"),
            ("[billing]\non_switch = \"refund\"", "billing.on_switch"),
            ("[[campaigns.recurring]]\namount = \"5\"\nevery = \"day\"", "campaigns.recurring.0.every"),
            ("[models.\"a b\"]\nmultiplier = \"1\"", "models.a b"),
            ("[models.m]\nmultiplier = \"1001\"", "models.m.multiplier"),
            ("[models.m]\nmax_output_tokens = 0", "models.m.max_output_tokens"),
            ("[plans.pro]\nprice_usd = \"5\"", "plans.free"),
            ("[plans.free]\nprice_usd = \"0\"\ncost_budget_multiplier = \"10\"", "plans.free.cost_budget_multiplier"),
            ("[plans.free]\nprice_usd = \"0\"\nmodel_access = \"some\"", "plans.free.model_access"),
            ("[payments.creem.products]\np = { plan = \"gold\" }", "payments.creem.products.p.plan"),
            ("[payments.creem.products]\np = { topup = true, credits = \"5\" }", "payments.creem.products.p"),
            ("[display.currencies]\neuro = \"0.9\"", "display.currencies.euro"),
            ("[database]\nurl = \"mysql://x\"", "database.url"),
        ] {
            let e = err(toml);
            assert!(e.contains(&format!("`{key}`")), "{toml}: {e}");
        }
    }

    #[test]
    fn numbers_are_accepted_where_amounts_are_strings() {
        let c = Config::from_toml("[billing]\nmin_charge = 0.25\ncredits_per_usd = 1000\n").unwrap();
        assert_eq!(c.billing.min_charge, Credits::parse("0.25").unwrap());
        assert_eq!(c.billing.credits_per_usd, Factor::whole(1000));
    }

    #[test]
    fn campaigns_can_be_turned_off() {
        let c = Config::from_toml("[campaigns]\nrecurring = []\n[campaigns.signup_bonus]\namount = \"0\"\n").unwrap();
        assert!(c.campaigns.signup_bonus.is_none());
        assert!(c.campaigns.recurring.is_empty());
    }

    #[test]
    fn products_map_to_what_a_payment_does() {
        let c = Config::from_toml(
            r#"
            [payments.creem]
            webhook_secret = "whsec_x"
            [payments.creem.products]
            t = { topup = true }
            p = { plan = "pro", kind = "pass_30d" }
            c = { credits = "500" }
            "#,
        )
        .unwrap();
        let products = &c.payments.creem.products;
        assert_eq!(products["t"], Product::Topup);
        assert_eq!(products["p"], Product::Plan { plan: "pro".into(), kind: SubscriptionKind::Pass30d });
        assert_eq!(products["c"], Product::Credits(Credits::whole(500)));
        assert_eq!(c.payments.creem.webhook_secret.as_ref().map(Secret::expose), Some("whsec_x"));
        assert!(!format!("{c:?}").contains("whsec_x"), "secrets must not appear in Debug output");
        // The minimum stays the built-in one.
        assert_eq!(c.payments.creem.min_topup_usd, Some(Usd::whole(5)));
    }
}
