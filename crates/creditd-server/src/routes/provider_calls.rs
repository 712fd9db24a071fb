//! Provider calls (admin, `docs/dashboard.md` §Provider calls): what creditd
//! owes the payment providers' APIs (Creem's subscription cancels), their
//! state, and a retry.

use axum::extract::State;
use axum::response::Response;
use creditd_store::{Command, DeliveryStatus, ProviderCallFilter, Reply};

use crate::auth::{Access, Caller};
use crate::dto::{List, ProviderCallOut};
use crate::error::{ApiError, ApiResult};
use crate::extract::{PathParams, QueryParams};
use crate::idempotency::unexpected;
use crate::respond::ok;
use crate::state::AppState;
use crate::validate;

/// `GET /v1/provider-calls?status&account_id`: newest first.
pub async fn list(State(state): State<AppState>, caller: Caller, query: QueryParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let status = match query.get("status") {
        None | Some("") => None,
        Some(s) => Some(
            DeliveryStatus::parse(s)
                .ok_or_else(|| ApiError::invalid_field("status", "must be one of pending, delivered, failed"))?,
        ),
    };
    let account_id = match query.get("account_id") {
        None | Some("") => None,
        Some(id) => {
            validate::account_id("account_id", id)?;
            Some(id.to_string())
        }
    };
    let page = query.page()?;
    let calls = state.store.provider_calls(ProviderCallFilter { status, account_id }, page).await?;
    ok(&List::from_paged(calls, |c| ProviderCallOut::from(&c)))
}

/// `GET /v1/provider-calls/{id}`.
pub async fn get(State(state): State<AppState>, caller: Caller, path: PathParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?;
    validate::opaque_id("provider call id", id)?;
    let found = state.store.provider_call(id).await?;
    let call = found.ok_or_else(|| ApiError::not_found(format!("provider call {id:?} not found")))?;
    ok(&ProviderCallOut::from(&call))
}

/// `POST /v1/provider-calls/{id}/retry`: due now, whatever its status (a
/// delivered call is made again); its three days start again.
pub async fn retry(State(state): State<AppState>, caller: Caller, path: PathParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let id = path.get(0)?.to_string();
    validate::opaque_id("provider call id", &id)?;
    match state.store.execute(Command::RetryProviderCall { id }, None).await? {
        Reply::ProviderCall(c) => ok(&ProviderCallOut::from(&c)),
        other => Err(unexpected(&other)),
    }
}
