//! Who is calling: API keys (admin, gateway), the configured admin secret,
//! and account tokens.
//!
//! Secrets are `ck_<id>_<64 hex>` (keys) and `ct_<id>_<64 hex>` (account
//! tokens). The store keeps only the SHA-256 (hex) of the whole secret; a
//! presented secret is looked up by its id and its hash compared in constant
//! time. Verified keys are cached briefly; deleting a key evicts it at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use creditd_store::{AccountToken, ApiKey, Command, ProxyKey, Reply, Role, Store, StoreError};
use jiff::Timestamp;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

const KEY_PREFIX: &str = "ck_";
const TOKEN_PREFIX: &str = "ct_";
const PROXY_KEY_PREFIX: &str = "cp_";
/// A key's `last_used_at` (API and proxy keys) is written at most this often
/// per key and instance: a busy key costs one small write a minute, not one
/// per request.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// How long a verified key is trusted without asking the store again.
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// Keys cached at most; the cache is emptied when full.
const KEY_CACHE_MAX: usize = 10_000;

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Gateway,
    /// An account token: reads of this one account only.
    Account(String),
}

/// What a route requires of its caller.
#[derive(Clone, Copy, Debug)]
pub enum Access<'a> {
    /// Admin only.
    Admin,
    /// Admin or gateway (metering).
    Gateway,
    /// Admin, gateway, or the account's own token (`GET` account and balance).
    GatewayOrAccount(&'a str),
    /// Admin or the account's own token (the account's other `GET`s).
    AdminOrAccount(&'a str),
}

impl Caller {
    /// `403 forbidden` unless this caller may use a route requiring `access`.
    pub fn require(&self, access: Access<'_>) -> ApiResult<()> {
        let allowed = match (self, access) {
            (Caller::Admin, _) => true,
            (Caller::Gateway, Access::Gateway | Access::GatewayOrAccount(_)) => true,
            (Caller::Account(own), Access::GatewayOrAccount(id) | Access::AdminOrAccount(id)) => own == id,
            _ => false,
        };
        if allowed { Ok(()) } else { Err(self.refusal(access)) }
    }

    /// What this caller is, for messages: `admin`, `gateway`, `account`.
    fn role_name(&self) -> &'static str {
        match self {
            Caller::Admin => "admin",
            Caller::Gateway => "gateway",
            Caller::Account(_) => "account",
        }
    }

    /// The `403 forbidden` of a call this caller may not make. It names the
    /// least role that may (`details.required_role`: `admin` or `gateway`;
    /// an admin key always may), and the account whose own token may too
    /// (`details.account_id`), so that a gateway integrator sees at once
    /// which key to use instead of guessing.
    fn refusal(&self, access: Access<'_>) -> ApiError {
        let (required, account) = match access {
            Access::Admin => ("admin", None),
            Access::Gateway => ("gateway", None),
            Access::GatewayOrAccount(id) => ("gateway", Some(id)),
            Access::AdminOrAccount(id) => ("admin", Some(id)),
        };
        let mut needs = match required {
            "admin" => "an admin key".to_string(),
            _ => "a gateway or admin key".to_string(),
        };
        if let Some(id) = account {
            needs.push_str(&format!(", or an account token of {id:?}"));
        }
        let this = match self {
            Caller::Account(own) => format!("an account token of {own:?}"),
            other => format!("a {} key", other.role_name()),
        };
        let mut error = ApiError::forbidden(format!("this call needs {needs}; this is {this}"))
            .with_detail("required_role", required)
            .with_detail("caller_role", self.role_name());
        if let Some(id) = account {
            error = error.with_detail("account_id", id);
        }
        error
    }
}

/// SHA-256 hex of a secret: what the store keeps.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn hashes_match(secret: &str, stored_hash: &str) -> bool {
    let presented = hash_secret(secret);
    presented.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

pub(crate) fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Splits `<prefix><id>_<random>` into its id.
fn secret_id<'a>(secret: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = secret.strip_prefix(prefix)?;
    let (id, random) = rest.split_once('_')?;
    (!id.is_empty() && !random.is_empty()).then_some(id)
}

/// A new API key (to be stored) and its secret.
pub(crate) fn new_key(role: Role, name: &str, now: Timestamp) -> (ApiKey, String) {
    let id = new_id();
    let secret = format!("{KEY_PREFIX}{id}_{}", random_hex());
    let key = ApiKey {
        id,
        role,
        name: name.to_string(),
        secret_hash: hash_secret(&secret),
        created_at: now,
        last_used_at: None,
    };
    (key, secret)
}

/// A new account token and its secret; the caller stores it (possibly with an
/// `Idempotency-Key`).
pub(crate) fn new_account_token(
    account_id: &str,
    now: Timestamp,
    ttl_seconds: u64,
) -> ApiResult<(AccountToken, String)> {
    let id = new_id();
    let secret = format!("{TOKEN_PREFIX}{id}_{}", random_hex());
    let ttl = i64::try_from(ttl_seconds).map_err(|_| ApiError::invalid_field("ttl_seconds", "is too large"))?;
    let expires_at = now
        .checked_add(jiff::SignedDuration::from_secs(ttl))
        .map_err(|_| ApiError::invalid_field("ttl_seconds", "is too large"))?;
    let token = AccountToken {
        id,
        account_id: account_id.to_string(),
        secret_hash: hash_secret(&secret),
        expires_at,
        created_at: now,
    };
    Ok((token, secret))
}

/// Verified keys, by id. A key read from the store before an eviction is
/// not cached after it (the generation tells), so a deleted key is refused
/// from the moment its `DELETE` answers.
#[derive(Default)]
pub(crate) struct KeyCache {
    inner: Mutex<KeyCacheInner>,
}

#[derive(Default)]
struct KeyCacheInner {
    entries: HashMap<String, (ApiKey, Instant)>,
    /// When this instance last wrote each key's `last_used_at`.
    touched: HashMap<String, Instant>,
    generation: u64,
}

/// Whether a use of key `id` should be written now (the first in
/// [`TOUCH_EVERY`]), noting it in `touched` if so.
fn touch_due(touched: &mut HashMap<String, Instant>, id: &str) -> bool {
    if touched.get(id).is_some_and(|at| at.elapsed() < TOUCH_EVERY) {
        return false;
    }
    if touched.len() >= KEY_CACHE_MAX {
        touched.clear();
    }
    touched.insert(id.to_string(), Instant::now());
    true
}

/// Writes a key's use off the request's path: the request never waits for
/// it, and a failure only loses one `last_used_at` update.
fn record_use(state: &AppState, command: Command) {
    let store = state.store.clone();
    tokio::spawn(async move {
        if let Err(e) = store.execute(command, None).await {
            tracing::warn!(error = %e, "cannot record a key's use");
        }
    });
}

impl KeyCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, KeyCacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str) -> Option<ApiKey> {
        self.lock().entries.get(id).filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL).map(|(key, _)| key.clone())
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Caches `key` unless something was evicted since `generation` was read.
    fn put(&self, key: ApiKey, generation: u64) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.entries.len() >= KEY_CACHE_MAX {
            inner.entries.clear();
        }
        inner.entries.insert(key.id.clone(), (key, Instant::now()));
    }

    pub(crate) fn evict(&self, id: &str) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.remove(id);
    }
}

impl AppState {
    /// Who a secret (API key, admin key, account token) belongs to.
    pub(crate) async fn authenticate_secret(&self, secret: &str) -> ApiResult<Caller> {
        self.authenticate(secret).await
    }

    async fn authenticate(&self, secret: &str) -> ApiResult<Caller> {
        let bad = || ApiError::unauthorized("the key is not valid");
        if let Some(admin) = &self.config.admin_key {
            // Compare digests: constant time whatever the lengths.
            let configured = Sha256::digest(admin.as_bytes());
            let presented = Sha256::digest(secret.as_bytes());
            if bool::from(configured.as_slice().ct_eq(presented.as_slice())) {
                return Ok(Caller::Admin);
            }
        }
        if let Some(id) = secret_id(secret, KEY_PREFIX) {
            let cached = self.keys.get(id);
            let key = match &cached {
                Some(key) => key.clone(),
                None => {
                    let generation = self.keys.generation();
                    let key = self.store.key(id).await?.ok_or_else(bad)?;
                    if hashes_match(secret, &key.secret_hash) {
                        self.keys.put(key.clone(), generation);
                    }
                    key
                }
            };
            if !hashes_match(secret, &key.secret_hash) {
                return Err(bad());
            }
            if touch_due(&mut self.keys.lock().touched, &key.id) {
                record_use(self, Command::TouchKey { id: key.id.clone(), at: self.clock.now() });
            }
            return Ok(match key.role {
                Role::Admin => Caller::Admin,
                Role::Gateway => Caller::Gateway,
            });
        }
        if let Some(id) = secret_id(secret, TOKEN_PREFIX) {
            let token = self.store.account_token(id).await?.ok_or_else(bad)?;
            if !hashes_match(secret, &token.secret_hash) {
                return Err(bad());
            }
            if token.expires_at <= self.clock.now() {
                return Err(ApiError::unauthorized("the account token has expired"));
            }
            return Ok(Caller::Account(token.account_id));
        }
        Err(bad())
    }
}

/// A new metering-proxy key of `account_id` (to be stored) and its secret.
pub(crate) fn new_proxy_key(account_id: &str, name: &str, now: Timestamp) -> (ProxyKey, String) {
    let id = new_id();
    let secret = format!("{PROXY_KEY_PREFIX}{id}_{}", random_hex());
    let key = ProxyKey {
        id,
        account_id: account_id.to_string(),
        name: name.to_string(),
        secret_hash: hash_secret(&secret),
        created_at: now,
        last_used_at: None,
        revoked_at: None,
    };
    (key, secret)
}

/// Verified proxy keys, by id, like [`KeyCache`]; and when this instance
/// last wrote each key's `last_used_at`.
#[derive(Default)]
pub(crate) struct ProxyKeyCache {
    inner: Mutex<ProxyKeyCacheInner>,
}

#[derive(Default)]
struct ProxyKeyCacheInner {
    entries: HashMap<String, (ProxyKey, Instant)>,
    touched: HashMap<String, Instant>,
    generation: u64,
}

impl ProxyKeyCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, ProxyKeyCacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn evict(&self, id: &str) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.remove(id);
    }

    /// Whether this use should be written (the first in a minute).
    fn touch(&self, id: &str) -> bool {
        touch_due(&mut self.lock().touched, id)
    }
}

/// The account a metering-proxy request is made for: a proxy key (`cp_…`)
/// that is not revoked, or an account token (`ct_…`) that has not expired.
pub async fn proxy_account(state: &AppState, secret: &str) -> ApiResult<String> {
    let bad = || ApiError::unauthorized("the key is not valid");
    if secret.is_empty() || secret.len() > 512 {
        return Err(bad());
    }
    if let Some(id) = secret_id(secret, PROXY_KEY_PREFIX) {
        let cache = &state.proxy_keys;
        let cached = {
            let inner = cache.lock();
            inner.entries.get(id).filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL).map(|(key, _)| key.clone())
        };
        let key = match cached {
            Some(key) => key,
            None => {
                let generation = cache.lock().generation;
                let key = state.store.proxy_key(id).await?.ok_or_else(bad)?;
                if hashes_match(secret, &key.secret_hash) {
                    let mut inner = cache.lock();
                    if inner.generation == generation {
                        if inner.entries.len() >= KEY_CACHE_MAX {
                            inner.entries.clear();
                        }
                        inner.entries.insert(key.id.clone(), (key.clone(), Instant::now()));
                    }
                }
                key
            }
        };
        if !hashes_match(secret, &key.secret_hash) {
            return Err(bad());
        }
        if key.revoked_at.is_some() {
            return Err(ApiError::unauthorized("the proxy key has been revoked"));
        }
        if cache.touch(&key.id) {
            record_use(state, Command::TouchProxyKey { id: key.id.clone(), at: state.clock.now() });
        }
        return Ok(key.account_id);
    }
    if let Some(id) = secret_id(secret, TOKEN_PREFIX) {
        let token = state.store.account_token(id).await?.ok_or_else(bad)?;
        if !hashes_match(secret, &token.secret_hash) {
            return Err(bad());
        }
        if token.expires_at <= state.clock.now() {
            return Err(ApiError::unauthorized("the account token has expired"));
        }
        return Ok(token.account_id);
    }
    Err(bad())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("an Authorization: Bearer <key> header is required"))?;
        let text = header.to_str().map_err(|_| ApiError::unauthorized("the Authorization header is not valid"))?;
        let (scheme, secret) = text
            .split_once(' ')
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be Bearer <key>"))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::unauthorized("the Authorization header must be Bearer <key>"));
        }
        let secret = secret.trim();
        if secret.is_empty() || secret.len() > 512 {
            return Err(ApiError::unauthorized("the key is not valid"));
        }
        state.authenticate(secret).await
    }
}

/// Creates a key through the store and returns it with its secret (shown once).
/// The key's `created_at` is the machine's clock: keys are made outside any
/// test clock (by the CLI, or at the first start).
pub async fn create_key(store: &dyn Store, role: Role, name: &str) -> Result<(ApiKey, String), StoreError> {
    let (key, secret) = new_key(role, name, Timestamp::now());
    match store.execute(Command::CreateKey { key }, None).await? {
        Reply::Key(key) => Ok((key, secret)),
        other => Err(StoreError::Internal(format!(
            "unexpected reply to CreateKey: {}",
            crate::idempotency::reply_name(&other)
        ))),
    }
}

/// Creates a metering-proxy key of `account_id` through the store and
/// returns it with its secret (shown once); for the CLI.
pub async fn create_proxy_key(
    store: &dyn Store,
    account_id: &str,
    name: &str,
) -> Result<(ProxyKey, String), StoreError> {
    let (key, secret) = new_proxy_key(account_id, name, Timestamp::now());
    match store.execute(Command::CreateProxyKey { key }, None).await? {
        Reply::ProxyKey(key) => Ok((key, secret)),
        other => Err(StoreError::Internal(format!(
            "unexpected reply to CreateProxyKey: {}",
            crate::idempotency::reply_name(&other)
        ))),
    }
}

/// If no admin key is configured and none is stored, creates one and returns
/// its secret, to be printed once.
pub async fn ensure_admin_key(store: &dyn Store, configured: Option<&str>) -> Result<Option<String>, StoreError> {
    if configured.is_some_and(|k| !k.is_empty()) {
        return Ok(None);
    }
    if store.keys().await?.iter().any(|k| k.role == Role::Admin) {
        return Ok(None);
    }
    let (_, secret) = create_key(store, Role::Admin, "admin").await?;
    Ok(Some(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_split_into_their_id() {
        assert_eq!(secret_id("ck_abc_def", KEY_PREFIX), Some("abc"));
        assert_eq!(secret_id("ck__def", KEY_PREFIX), None);
        assert_eq!(secret_id("ck_abc_", KEY_PREFIX), None);
        assert_eq!(secret_id("ct_abc_def", KEY_PREFIX), None);
    }

    #[test]
    fn access_rules() {
        let token = Caller::Account("u_1".into());
        assert!(token.require(Access::AdminOrAccount("u_1")).is_ok());
        assert!(token.require(Access::AdminOrAccount("u_2")).is_err());
        assert!(token.require(Access::Gateway).is_err());
        assert!(Caller::Gateway.require(Access::GatewayOrAccount("u_2")).is_ok());
        assert!(Caller::Gateway.require(Access::AdminOrAccount("u_2")).is_err());
        assert!(Caller::Gateway.require(Access::Admin).is_err());
        assert!(Caller::Admin.require(Access::AdminOrAccount("x")).is_ok());
    }

    /// Issue 13.6: a 403 did not say which key the call needs.
    #[test]
    fn refusals_name_the_role_needed() {
        let e = Caller::Gateway.require(Access::Admin).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (403, "forbidden"));
        assert_eq!(e.details["required_role"], "admin");
        assert_eq!(e.details["caller_role"], "gateway");
        assert!(e.details.get("account_id").is_none());
        assert_eq!(e.message, "this call needs an admin key; this is a gateway key");
        let e = Caller::Account("u_2".into()).require(Access::GatewayOrAccount("u_1")).unwrap_err();
        assert_eq!(e.details["required_role"], "gateway");
        assert_eq!(e.details["account_id"], "u_1");
        assert_eq!(
            e.message,
            "this call needs a gateway or admin key, or an account token of \"u_1\"; this is an account token of \"u_2\""
        );
        let e = Caller::Account("u_1".into()).require(Access::Gateway).unwrap_err();
        assert_eq!(e.details["required_role"], "gateway");
        assert_eq!(e.details["caller_role"], "account");
    }

    #[test]
    fn hash_compare() {
        let h = hash_secret("ck_a_b");
        assert!(hashes_match("ck_a_b", &h));
        assert!(!hashes_match("ck_a_c", &h));
    }
}
