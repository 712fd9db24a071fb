//! Metering-proxy keys (`docs/proxy.md`).

use creditd_store::ProxyKey;
use serde::{Deserialize, Serialize};

use crate::error::ApiResult;
use crate::validate;

/// `POST /v1/accounts/{id}/proxy-keys`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyKeyIn {
    pub name: Option<String>,
}

impl ProxyKeyIn {
    pub fn validate(self) -> ApiResult<String> {
        Ok(validate::text("name", self.name, validate::MAX_ID_CHARS)?.unwrap_or_default())
    }
}

/// A proxy key; `secret` only in the answer that created it.
#[derive(Debug, Serialize)]
pub struct ProxyKeyOut {
    pub id: String,
    pub account_id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

impl ProxyKeyOut {
    pub fn new(key: &ProxyKey, secret: Option<String>) -> Self {
        ProxyKeyOut {
            id: key.id.clone(),
            account_id: key.account_id.clone(),
            name: key.name.clone(),
            secret,
            created_at: key.created_at.to_string(),
            last_used_at: key.last_used_at.map(|t| t.to_string()),
            revoked_at: key.revoked_at.map(|t| t.to_string()),
        }
    }
}
