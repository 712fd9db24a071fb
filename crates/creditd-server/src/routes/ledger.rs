//! The ledger of an account (admin or the account's token).

use axum::extract::State;
use axum::response::Response;
use creditd_core::ledger::EntryKind;
use creditd_store::LedgerFilter;

use super::load_account;
use crate::auth::{Access, Caller};
use crate::dto::{LedgerEntryOut, List};
use crate::error::{ApiError, ApiResult};
use crate::extract::{PathParams, QueryParams};
use crate::respond::ok;
use crate::state::AppState;
use crate::validate;

/// `GET /v1/accounts/{id}/ledger?from&to&type`: newest first; `from`
/// inclusive, `to` exclusive.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    query: QueryParams,
) -> ApiResult<Response> {
    let account_id = path.get(0)?;
    caller.require(Access::AdminOrAccount(account_id))?;
    let filter = LedgerFilter {
        from: validate::opt_timestamp("from", query.get("from"))?,
        to: validate::opt_timestamp("to", query.get("to"))?,
        kind: match query.get("type") {
            None => None,
            Some(t) => Some(EntryKind::parse(t).ok_or_else(|| {
                ApiError::invalid_field(
                    "type",
                    format!("must be one of {}", EntryKind::ALL.map(EntryKind::as_str).join(", ")),
                )
            })?),
        },
    };
    let page = query.page()?;
    load_account(&state, account_id).await?;
    let entries = state.store.ledger(account_id, filter, page).await?;
    ok(&List::from_paged(entries, |e| LedgerEntryOut::from(&e)))
}
