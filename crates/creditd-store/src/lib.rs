//! creditd-store: where decisions of `creditd-core` become durable.
//!
//! Writes go through [`Store::execute`]: a backend queues the [`Command`],
//! applies it with the core against the account's cached hot state inside a
//! batched transaction, and answers once the batch is committed
//! (acknowledged means durable). Reads use separate connections and never
//! wait for the writer.

pub mod batch;
pub mod clock;
pub mod outbox;
pub mod payments;
pub mod postgres;
pub mod sql;
pub mod sqlite;

use async_trait::async_trait;
use creditd_core::Hold;
use creditd_core::account::{AccountState, AccountStatus, Grant, UsageRecord, Wallet};
use creditd_core::campaign::Billing;
use creditd_core::config_apply::{ConfigDecision, ConfigWinner};
use creditd_core::engine::{Authorized, Context, NewGrant, Outcome, Recorded, Refusal, SubscriptionChange};
use creditd_core::invariants::Breach;
use creditd_core::ledger::{EntryKind, LedgerEntry};
use creditd_core::plan::{Plan, PlanBook};
use creditd_core::price_import::{ImportAction, ImportOptions, ImportedPrice};
use creditd_core::pricing::{EstimateInput, ModelPrice, PricingPolicy, RequestStatus};
use creditd_core::subscription::{Subscription, SubscriptionKind};
use creditd_core::units::{Credits, CreditsTotal, Usd, UsdTotal};
use jiff::Timestamp;
use jiff::tz::TimeZone;

pub use batch::{PortionRef, UsageBatch, UsageFields, UsageRow};
pub use clock::{Clock, ManualClock, SystemClock};
pub use outbox::{
    AttemptResult, CancelMode, Delivery, DeliveryFilter, DeliveryStatus, DueDelivery, Endpoint, EndpointUpdate,
    ProviderAction, ProviderCall, ProviderCallFilter,
};
pub use payments::{
    Payment, PaymentKind, WebhookAction, WebhookEvent, WebhookEventFilter, WebhookEventIn, WebhookStatus,
};

/// Engine settings the writer applies to every command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    pub policy: PricingPolicy,
    /// Hold lifetime when an authorize gives none.
    pub hold_ttl_seconds: u32,
    /// Time zone, renewal grace, switch policy and campaigns. The default
    /// has no campaigns; `creditd`'s configuration ships some.
    pub billing: Billing,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { policy: PricingPolicy::default(), hold_ttl_seconds: 900, billing: Billing::default() }
    }
}

impl EngineConfig {
    /// What the engine applies, with `plans` (the store's plan book).
    pub fn context<'a>(&'a self, plans: &'a PlanBook) -> Context<'a> {
        Context { policy: &self.policy, billing: &self.billing, plans }
    }
}

/// Limits of the writer (TigerBeetle style: a bound on everything).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterLimits {
    /// Commands waiting for the writer before callers wait to enqueue.
    pub queue_depth: usize,
    /// Commands applied in one transaction at most.
    pub batch_max: usize,
    /// Accounts whose hot state is kept in memory at most (per writer).
    pub cached_accounts: usize,
    /// Writers on PostgreSQL, each with its connection, accounts hashed over
    /// them so that their batches run in parallel. SQLite has one writer
    /// whatever this says: the database has one write lock.
    pub writers: usize,
}

impl Default for WriterLimits {
    fn default() -> Self {
        WriterLimits { queue_depth: 8192, batch_max: 512, cached_accounts: 100_000, writers: 2 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountRow {
    pub id: String,
    pub email: Option<String>,
    /// JSON text, validated by the caller.
    pub metadata: Option<String>,
    pub status: AccountStatus,
    pub created_at: Timestamp,
}

/// One model at its current (or a given) price version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelVersion {
    pub id: String,
    pub price_version: i64,
    pub price: ModelPrice,
    pub created_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Gateway,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Gateway => "gateway",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Role::Admin),
            "gateway" => Some(Role::Gateway),
            _ => None,
        }
    }
}

/// An API key. Only a hash of its secret is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub role: Role,
    pub name: String,
    pub secret_hash: String,
    pub created_at: Timestamp,
    /// To the minute at best: written at most once a minute per key and instance.
    pub last_used_at: Option<Timestamp>,
}

/// A token that reads one account. Only a hash of its secret is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountToken {
    pub id: String,
    pub account_id: String,
    pub secret_hash: String,
    pub expires_at: Timestamp,
    pub created_at: Timestamp,
}

/// A metering-proxy key: bound to one account, used by SDKs as their API
/// key. Only a hash of its secret is stored; revoked keys stay listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyKey {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub secret_hash: String,
    pub created_at: Timestamp,
    /// To the minute at best: the proxy writes it at most once a minute per key.
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// A dashboard sign-in session, made from an account token. Only a hash of
/// its secret is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DashboardSession {
    pub id: String,
    pub account_id: String,
    /// The account token it was signed in with.
    pub token_id: String,
    pub secret_hash: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// The request half of an authorize; the writer adds the model's price.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizeRequest {
    pub request_id: String,
    pub fingerprint: String,
    pub model: String,
    pub request_type: String,
    pub estimate: EstimateInput,
    /// `None`: `EngineConfig::hold_ttl_seconds`.
    pub hold_ttl_seconds: Option<u32>,
    pub project: Option<String>,
    pub conversation: Option<String>,
}

/// A write. Each is applied atomically, in the order the writer receives them.
#[derive(Clone, Debug)]
pub enum Command {
    CreateAccount {
        id: String,
        email: Option<String>,
        metadata: Option<String>,
    },
    SetAccountStatus {
        account_id: String,
        status: AccountStatus,
    },
    /// Creates the model or gives it a new price version.
    PutModel {
        id: String,
        price: ModelPrice,
    },
    CreateKey {
        key: ApiKey,
    },
    DeleteKey {
        id: String,
    },
    CreateAccountToken {
        token: AccountToken,
    },
    // Dashboard sessions and token revocation (`sql/sessions.rs`).
    CreateSession {
        session: DashboardSession,
    },
    /// Revokes sessions of the account: one (`session_id`), or every one.
    RevokeSessions {
        account_id: String,
        session_id: Option<String>,
    },
    /// Deletes an account token and revokes the sessions signed in with it.
    RevokeAccountToken {
        account_id: String,
        token_id: String,
    },
    Grant {
        account_id: String,
        grant: NewGrant,
    },
    VoidGrant {
        account_id: String,
        grant_id: String,
        reason: Option<String>,
    },
    /// Dollars into the wallet at `credits_per_usd`.
    Topup {
        account_id: String,
        amount_usd: Usd,
        provider: String,
        external_id: Option<String>,
    },
    AdjustWallet {
        account_id: String,
        amount: Credits,
        reason: Option<String>,
    },
    /// A credit pack: a `purchased` grant.
    Purchase {
        account_id: String,
        credits: Credits,
        amount_usd: Usd,
        provider: String,
        external_id: Option<String>,
    },
    Authorize {
        account_id: String,
        request: AuthorizeRequest,
    },
    Settle {
        account_id: String,
        outcome: Outcome,
    },
    Release {
        account_id: String,
        request_id: String,
    },
    RecordUsage {
        account_id: String,
        outcome: Outcome,
        model: String,
        request_type: String,
        enforce: bool,
    },
    /// Writes out what is due for the account (expired holds and grants,
    /// subscription periods, gifts).
    Sweep {
        account_id: String,
    },
    /// Changes nothing: the writer that takes it begins and commits a
    /// transaction, answered `Reply::Swept` (`Store::health`).
    Ping,
    /// Creates or replaces a plan. Subscriptions keep their plan id and get
    /// the plan as it is at each period start and check.
    PutPlan {
        plan: Plan,
    },
    /// Starts a subscription, or switches the active one (`semantics.md` §7).
    StartSubscription {
        account_id: String,
        plan: String,
        kind: SubscriptionKind,
        external_id: Option<String>,
    },
    RenewSubscription {
        account_id: String,
    },
    CancelSubscription {
        account_id: String,
    },
    /// Refunds a usage record (disputed usage, `semantics.md` §9).
    RefundUsage {
        account_id: String,
        request_id: String,
        reason: Option<String>,
    },
    /// A payment provider's verified event: recorded with its outcome and
    /// applied in one savepoint, at most once per event and per payment.
    WebhookEvent {
        event: WebhookEventIn,
    },
    // Metering-proxy keys.
    CreateProxyKey {
        key: ProxyKey,
    },
    /// Revokes a key of the account (`not_found` for another account's).
    RevokeProxyKey {
        account_id: String,
        id: String,
    },
    /// Sets a key's `last_used_at` (never moves it back).
    TouchProxyKey {
        id: String,
        at: Timestamp,
    },
    /// Sets an API key's `last_used_at` (never moves it back).
    TouchKey {
        id: String,
        at: Timestamp,
    },
    /// A price map's models, written in one savepoint (`docs/import.md`).
    ImportModels {
        import: ModelImport,
    },
    /// The configuration's models and plans at a start, decided against
    /// what it said when last applied and written in one savepoint
    /// (`docs/configuration.md`).
    ApplyConfig {
        apply: ConfigApply,
    },
    // Outgoing webhooks (`outbox`, `sql/writer/outbox.rs`).
    CreateEndpoint {
        endpoint: Endpoint,
    },
    /// Changes an endpoint made over the API (`conflict` for one of the configuration).
    UpdateEndpoint {
        id: String,
        update: EndpointUpdate,
    },
    /// Makes the stored endpoints of the configuration these (their secrets
    /// are not stored): new ones created, changed ones updated, those no
    /// longer configured disabled.
    SyncConfigEndpoints {
        endpoints: Vec<Endpoint>,
    },
    /// Takes up to `limit` due deliveries of enabled endpoints, each made
    /// due again only after `lease_seconds` (a worker that dies while
    /// sending loses nothing: the delivery comes back).
    ClaimDeliveries {
        limit: u32,
        lease_seconds: u32,
    },
    /// Records one attempt of a delivery: delivered, or due again after the
    /// back-off (failed for good after three days).
    RecordAttempt {
        id: String,
        result: AttemptResult,
    },
    /// Makes a delivery due now, whatever its status.
    RetryDelivery {
        id: String,
    },
    // Provider calls (`outbox::ProviderCall`, `sql/provider_calls.rs`).
    /// Takes up to `limit` due provider calls, each made due again only
    /// after `lease_seconds`.
    ClaimProviderCalls {
        limit: u32,
        lease_seconds: u32,
    },
    /// Records one attempt of a provider call.
    RecordProviderCall {
        id: String,
        result: AttemptResult,
    },
    /// Makes a provider call due now, whatever its status.
    RetryProviderCall {
        id: String,
    },
}

impl Command {
    /// The existing account the command changes, which the writer locks
    /// (`None`: none, or one it finds only while applying the command).
    pub fn account_id(&self) -> Option<&str> {
        match self {
            Command::SetAccountStatus { account_id, .. }
            | Command::Grant { account_id, .. }
            | Command::VoidGrant { account_id, .. }
            | Command::Topup { account_id, .. }
            | Command::AdjustWallet { account_id, .. }
            | Command::Purchase { account_id, .. }
            | Command::Authorize { account_id, .. }
            | Command::Settle { account_id, .. }
            | Command::Release { account_id, .. }
            | Command::RecordUsage { account_id, .. }
            | Command::Sweep { account_id }
            | Command::StartSubscription { account_id, .. }
            | Command::RenewSubscription { account_id }
            | Command::CancelSubscription { account_id }
            | Command::RefundUsage { account_id, .. } => Some(account_id),
            Command::CreateAccountToken { token } => Some(&token.account_id),
            Command::CreateProxyKey { key } => Some(&key.account_id),
            Command::RevokeProxyKey { account_id, .. } => Some(account_id),
            Command::CreateAccount { .. }
            | Command::PutModel { .. }
            | Command::CreateKey { .. }
            | Command::DeleteKey { .. }
            | Command::PutPlan { .. }
            | Command::Ping
            | Command::WebhookEvent { .. }
            | Command::TouchProxyKey { .. }
            | Command::TouchKey { .. }
            | Command::CreateSession { .. }
            | Command::RevokeSessions { .. }
            | Command::RevokeAccountToken { .. }
            | Command::ImportModels { .. }
            | Command::ApplyConfig { .. }
            | Command::CreateEndpoint { .. }
            | Command::UpdateEndpoint { .. }
            | Command::SyncConfigEndpoints { .. }
            | Command::ClaimDeliveries { .. }
            | Command::RecordAttempt { .. }
            | Command::RetryDelivery { .. }
            | Command::ClaimProviderCalls { .. }
            | Command::RecordProviderCall { .. }
            | Command::RetryProviderCall { .. } => None,
        }
    }
}

impl Command {
    /// The `(account, request id)` of a metering command, whose hold and
    /// usage record the writer looks up.
    pub fn request(&self) -> Option<(&str, &str)> {
        match self {
            Command::Authorize { account_id, request } => Some((account_id, &request.request_id)),
            Command::Settle { account_id, outcome } | Command::RecordUsage { account_id, outcome, .. } => {
                Some((account_id, &outcome.request_id))
            }
            Command::Release { account_id, request_id } => Some((account_id, request_id)),
            _ => None,
        }
    }
}

/// A write's answer.
// Each reply is moved once, from the writer to its caller: boxing the large
// variants would cost an allocation per write and buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Account(AccountRow),
    Model(ModelVersion),
    Key(ApiKey),
    Token(AccountToken),
    Session(DashboardSession),
    /// Deleted or revoked.
    Deleted,
    Grant(Grant),
    Wallet {
        wallet: Wallet,
        entry: LedgerEntry,
    },
    Authorized(Authorized),
    Recorded(Recorded),
    Released(Hold),
    Swept,
    Plan(Plan),
    /// A started, switched, renewed or cancelled subscription (renew and
    /// cancel have no `previous` or `proration`).
    Subscription(SubscriptionChange),
    /// A webhook event as recorded (its status says what was done).
    WebhookEvent(WebhookEvent),
    /// A proxy key as created or revoked.
    ProxyKey(ProxyKey),
    /// A proxy key's use was recorded.
    Touched,
    /// An `Idempotency-Key` seen before with the same body: the first answer.
    Replayed(StoredResponse),
    /// What an import did (or, dry or refused, would do) to each model.
    Imported(ImportOutcome),
    Endpoint(Endpoint),
    /// The stored endpoints of the configuration, after a sync.
    Endpoints(Vec<Endpoint>),
    Claimed(Vec<DueDelivery>),
    Delivery(Delivery),
    ProviderCalls(Vec<ProviderCall>),
    ProviderCall(ProviderCall),
    /// What a start did with each configured model and plan.
    ConfigApplied(ConfigOutcome),
}

/// The configuration's models and plans, to apply at a start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigApply {
    pub models: Vec<(String, ModelPrice)>,
    pub plans: Vec<Plan>,
    /// Which side wins a conflict; `None`: a conflict writes nothing at all.
    pub on_conflict: Option<ConfigWinner>,
}

/// What a configured entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigKind {
    Model,
    Plan,
}

impl ConfigKind {
    /// As recorded in `config_applied.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKind::Model => "model",
            ConfigKind::Plan => "plan",
        }
    }
}

/// One configured model or plan and what the start did with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub kind: ConfigKind,
    pub id: String,
    pub decision: ConfigDecision,
    /// Whether what the configuration said was recorded by an earlier start
    /// (false: a new entry, or a database from before the record was kept).
    pub recorded: bool,
    /// A conflict's resolution (`None`: unresolved, or not a conflict).
    pub resolved: Option<ConfigWinner>,
    /// Models: the current price version after the start (written or kept).
    pub price_version: Option<i64>,
}

/// What a start did with the configuration. `applied` is false when a
/// conflict was left unresolved: then nothing at all was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigOutcome {
    pub entries: Vec<ConfigEntry>,
    pub applied: bool,
}

/// A price map's models to write into the price book.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelImport {
    /// Where the prices came from (`litellm`, `modelsdev`), recorded with each version written.
    pub format: String,
    pub models: Vec<(String, ImportedPrice)>,
    pub options: ImportOptions,
    /// Decide everything, write nothing.
    pub dry_run: bool,
}

/// One model of an import and what was done to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedModel {
    pub id: String,
    pub action: ImportAction,
    /// The version current before the import.
    pub previous: Option<ModelVersion>,
    /// The version written (none when dry, refused, unchanged or kept).
    pub price_version: Option<i64>,
}

/// What an import did. `applied` is false for a dry run and for an import
/// refused because a rate moves more than 10× without `force` (then nothing
/// was written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportOutcome {
    pub models: Vec<ImportedModel>,
    pub applied: bool,
}

/// The first answer to a call made with an `Idempotency-Key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Turns a reply into the response stored for replays, inside the writer's
/// transaction so that the effect and its key are committed together. A
/// batch that fails as a whole runs its commands again, so it may be called
/// more than once.
pub type Render = Box<dyn Fn(&Reply) -> StoredResponse + Send>;

/// An `Idempotency-Key` and what to store under it.
pub struct Idempotent {
    /// Where the key is valid, e.g. the method and path.
    pub scope: String,
    pub key: String,
    /// Digest of the request body: a different body is `idempotency_conflict`.
    pub fingerprint: String,
    pub render: Render,
}

impl std::fmt::Debug for Idempotent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotent").field("scope", &self.scope).field("key", &self.key).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The engine refused the command; nothing changed.
    Refused(Refusal),
    /// The store failed; the command may or may not have been applied
    /// only if the failure was at commit, and then the caller is told so.
    Internal(String),
    /// The database cannot be reached (down, restarting, the connection
    /// lost): worth retrying shortly (`503` with `Retry-After`). The command
    /// was not applied, unless the message says its outcome is unknown.
    Unavailable(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Refused(r) => r.fmt(f),
            StoreError::Internal(why) => write!(f, "store failure: {why}"),
            StoreError::Unavailable(why) => write!(f, "store unavailable: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// How a [`StoreError::Unavailable`] says that a write may or may not have
/// been committed (the answer to its COMMIT was lost).
pub const OUTCOME_UNKNOWN: &str = "the outcome of the commit is unknown";

impl StoreError {
    /// A write whose commit may or may not have happened.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, StoreError::Unavailable(why) if why.contains(OUTCOME_UNKNOWN))
    }
}

impl From<Refusal> for StoreError {
    fn from(r: Refusal) -> Self {
        StoreError::Refused(r)
    }
}

/// What [`Store::health`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreHealth {
    pub writer: Result<(), StoreError>,
    pub reader: Result<(), StoreError>,
}

/// A page request: at most `limit` rows after `cursor`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    /// Opaque, from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paged<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerFilter {
    /// Inclusive.
    pub from: Option<Timestamp>,
    /// Exclusive.
    pub to: Option<Timestamp>,
    pub kind: Option<EntryKind>,
}

/// Which usage records a list, summary or export covers. Every field is
/// optional; the time window is on `recorded_at`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageFilter {
    /// Inclusive.
    pub from: Option<Timestamp>,
    /// Exclusive.
    pub to: Option<Timestamp>,
    pub model: Option<String>,
    pub request_type: Option<String>,
    pub project: Option<String>,
    pub conversation: Option<String>,
    pub status: Option<RequestStatus>,
}

/// How a usage summary groups its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupBy {
    /// Calendar days in this zone (`billing.timezone`), keys `YYYY-MM-DD`.
    Day(TimeZone),
    Model,
    Project,
    Conversation,
    RequestType,
    Status,
}

/// An account's hot state as stored and the plans, as of one instant.
#[derive(Clone, Debug)]
pub struct StoredAccount {
    pub state: AccountState,
    pub plans: PlanBook,
}

/// Sums over a set of usage records, exact however many there are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub requests: u64,
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    /// Credits charged, net of refunds: refunded records count nothing here.
    pub credits: CreditsTotal,
    /// Credits of the refunded records (what they were charged).
    pub refunded_credits: CreditsTotal,
    /// What the requests cost, refunded or not (gross): a refund gives the
    /// account its credits back, not the provider its cost.
    pub cost_usd: UsdTotal,
}

impl UsageTotals {
    /// `self + other`; `None` if a sum leaves its type's range.
    pub fn checked_add(self, other: UsageTotals) -> Option<UsageTotals> {
        Some(UsageTotals {
            requests: self.requests.checked_add(other.requests)?,
            input_tokens: self.input_tokens.checked_add(other.input_tokens)?,
            cache_read_tokens: self.cache_read_tokens.checked_add(other.cache_read_tokens)?,
            cache_write_tokens: self.cache_write_tokens.checked_add(other.cache_write_tokens)?,
            output_tokens: self.output_tokens.checked_add(other.output_tokens)?,
            credits: self.credits.checked_add(other.credits)?,
            refunded_credits: self.refunded_credits.checked_add(other.refunded_credits)?,
            cost_usd: self.cost_usd.checked_add(other.cost_usd)?,
        })
    }

    /// The totals of one record.
    pub fn of(record: &UsageRecord) -> UsageTotals {
        let credits = CreditsTotal::from_units(record.credits.units().into());
        let (credits, refunded_credits) =
            if record.refunded { (CreditsTotal::ZERO, credits) } else { (credits, CreditsTotal::ZERO) };
        UsageTotals {
            requests: 1,
            input_tokens: record.usage.input_tokens,
            cache_read_tokens: record.usage.cache_read_tokens,
            cache_write_tokens: record.usage.cache_write_tokens,
            output_tokens: record.usage.output_tokens,
            credits,
            refunded_credits,
            cost_usd: UsdTotal::from_units(record.cost_usd.units().into()),
        }
    }
}

/// One group of a usage summary. `key` is `None` for the records without a
/// project (or conversation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryRow {
    pub key: Option<String>,
    pub totals: UsageTotals,
}

/// A usage summary: groups in key order (days ascending; the group without
/// a key last), and the totals of every record the filter covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageSummary {
    pub rows: Vec<SummaryRow>,
    pub total: UsageTotals,
    /// More than [`SUMMARY_ROWS_MAX`] groups: `rows` holds the first ones
    /// (`total` still covers every record).
    pub truncated: bool,
}

/// Groups a summary answers with at most.
pub const SUMMARY_ROWS_MAX: usize = 10_000;

/// Where an export sends its rows: chunks of at most [`EXPORT_BATCH_ROWS`]
/// records in `(recorded_at, seq)` order, then nothing (the sender is
/// dropped) when done, or one `Err` if the read failed part way.
pub type ExportSink = tokio::sync::mpsc::Sender<Result<ExportChunk, StoreError>>;

/// How an export writes its batches as the bytes that go out (CSV, JSONL:
/// the store knows no format). The export runs it on the thread that read
/// the batch, so that formatting runs beside the reads, on every core,
/// rather than after them on one.
#[derive(Clone)]
pub struct ExportEncoder {
    /// The fields it shows: the others are not read.
    pub fields: ExportFields,
    pub write: std::sync::Arc<EncodeBatch>,
}

/// Appends the encoding of a batch to a buffer.
pub type EncodeBatch = dyn Fn(&UsageBatch, &mut Vec<u8>) + Send + Sync;

impl ExportEncoder {
    pub fn new(fields: ExportFields, write: impl Fn(&UsageBatch, &mut Vec<u8>) + Send + Sync + 'static) -> Self {
        ExportEncoder { fields, write: std::sync::Arc::new(write) }
    }
}

/// Which fields of its records an export reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFields {
    /// Every field (but the fingerprint, which no export shows).
    All,
    /// The columns of the CSV export (`api.md`): the records come without
    /// their metadata and hold id, and with `hold_expired` and `refunded`
    /// false. A tenth of the cells, and the largest text, left unread.
    Csv,
}

/// A batch of an export, encoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportChunk {
    /// How many records it holds.
    pub records: usize,
    pub bytes: Vec<u8>,
}

/// Records per export batch.
pub const EXPORT_BATCH_ROWS: usize = 1000;

/// What `creditd audit` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditReport {
    pub accounts: u64,
    pub entries: u64,
    pub usage_records: u64,
    pub breaches: Vec<Breach>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies one write through the batching writer. With `idempotent`, a
    /// key seen before answers `Reply::Replayed` (same body) or
    /// `idempotency_conflict` (different body), and a new key is stored with
    /// the rendered answer in the same transaction as the effect.
    async fn execute(&self, command: Command, idempotent: Option<Idempotent>) -> Result<Reply, StoreError>;

    /// Answers once the store can serve reads.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Whether each part of the store works now: its writers (each commits
    /// a transaction) and its readers (each part in at most a few seconds).
    async fn health(&self) -> StoreHealth {
        let reader = self.ping().await;
        StoreHealth { writer: reader.clone(), reader }
    }

    async fn account(&self, id: &str) -> Result<Option<AccountRow>, StoreError>;
    async fn accounts(&self, page: Page) -> Result<Paged<AccountRow>, StoreError>;
    /// The hot state as stored (bring it to now with `creditd_core::engine::view`).
    async fn account_state(&self, id: &str) -> Result<Option<AccountState>, StoreError>;
    /// The hot state as stored and the plans, read in one snapshot: what
    /// an answer about the account as of now (its balance, an estimate's
    /// `allowed`, its subscription) is made from.
    async fn stored_account(&self, id: &str) -> Result<Option<StoredAccount>, StoreError>;
    /// Grants newest first; without `include_spent`, only those with credits left.
    async fn grants(&self, account_id: &str, include_spent: bool, page: Page) -> Result<Paged<Grant>, StoreError>;
    /// Entries newest first.
    async fn ledger(
        &self,
        account_id: &str,
        filter: LedgerFilter,
        page: Page,
    ) -> Result<Paged<LedgerEntry>, StoreError>;
    async fn usage_record(&self, account_id: &str, request_id: &str) -> Result<Option<UsageRecord>, StoreError>;

    /// Usage records newest first (`recorded_at`, then insertion order). The
    /// cursor is a position in that order, so records written between two
    /// pages neither repeat nor hide a record of a later page.
    async fn usage(&self, account_id: &str, filter: UsageFilter, page: Page) -> Result<Paged<UsageRecord>, StoreError>;
    /// The account's usage grouped by `group_by`, with totals.
    async fn usage_summary(
        &self,
        account_id: &str,
        filter: UsageFilter,
        group_by: GroupBy,
    ) -> Result<UsageSummary, StoreError>;
    /// How many records an export of the same arguments would send (about:
    /// records may arrive in between).
    async fn usage_count(&self, account_id: Option<&str>, filter: UsageFilter) -> Result<u64, StoreError>;
    /// Streams the records of one account (or every account) in
    /// `recorded_at` order into `sink`, a bounded channel, in batches: memory
    /// stays flat whatever the number of rows. The records are those
    /// committed when the export starts. Returns how many were sent; a
    /// dropped receiver stops the export early (not an error). A failure is
    /// sent into the sink as well as returned. Exported rows carry no
    /// fingerprint (it is empty): no export shows it. Each batch is
    /// written by `encode` before it goes into the sink.
    async fn export(
        &self,
        account_id: Option<&str>,
        filter: UsageFilter,
        encode: ExportEncoder,
        sink: ExportSink,
    ) -> Result<u64, StoreError>;

    /// Every plan, `free` included (the built-in one when none is stored).
    async fn plans(&self) -> Result<PlanBook, StoreError>;
    /// The account's latest subscription as stored (bring it to now with
    /// `creditd_core::engine::view_with_changes`).
    async fn subscription(&self, account_id: &str) -> Result<Option<Subscription>, StoreError>;

    /// The model at its current price version.
    async fn model(&self, id: &str) -> Result<Option<ModelVersion>, StoreError>;
    async fn models(&self) -> Result<Vec<ModelVersion>, StoreError>;

    async fn key(&self, id: &str) -> Result<Option<ApiKey>, StoreError>;
    async fn keys(&self) -> Result<Vec<ApiKey>, StoreError>;
    async fn account_token(&self, id: &str) -> Result<Option<AccountToken>, StoreError>;
    /// The account's tokens (no secrets are stored), oldest first.
    async fn account_tokens(&self, account_id: &str) -> Result<Vec<AccountToken>, StoreError>;
    async fn proxy_key(&self, id: &str) -> Result<Option<ProxyKey>, StoreError>;
    /// The account's proxy keys, revoked ones included, oldest first.
    async fn proxy_keys(&self, account_id: &str) -> Result<Vec<ProxyKey>, StoreError>;
    async fn dashboard_session(&self, id: &str) -> Result<Option<DashboardSession>, StoreError>;

    /// Webhook events newest first.
    async fn webhook_events(&self, filter: WebhookEventFilter, page: Page) -> Result<Paged<WebhookEvent>, StoreError>;
    /// A recorded payment.
    async fn payment(&self, provider: &str, external_id: &str) -> Result<Option<Payment>, StoreError>;

    /// Every endpoint, oldest first.
    async fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError>;
    async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError>;
    /// Deliveries newest first.
    async fn deliveries(&self, filter: DeliveryFilter, page: Page) -> Result<Paged<Delivery>, StoreError>;
    async fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError>;

    /// Provider calls newest first.
    async fn provider_calls(&self, filter: ProviderCallFilter, page: Page) -> Result<Paged<ProviderCall>, StoreError>;
    async fn provider_call(&self, id: &str) -> Result<Option<ProviderCall>, StoreError>;
    /// How many provider calls there are of each status.
    async fn provider_call_counts(&self) -> Result<Vec<(DeliveryStatus, u64)>, StoreError>;

    /// Checks every invariant of `semantics.md` §10 over the whole database.
    async fn audit(&self) -> Result<AuditReport, StoreError>;
}
