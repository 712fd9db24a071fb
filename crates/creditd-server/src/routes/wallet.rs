//! The wallet and purchases (admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use creditd_store::{Command, Reply};

use super::grants::render_grant;
use crate::auth::{Access, Caller};
use crate::dto::{AdjustmentIn, LedgerEntryOut, PurchaseIn, TopupIn, WalletChangeOut, WalletOut};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, MaybeIdempotencyKey, PathParams};
use crate::idempotency::{Render, execute, unexpected};
use crate::respond::Rendered;
use crate::state::AppState;
use crate::validate;

fn render_wallet(state: &AppState) -> impl Render {
    let credits_per_usd = state.config.engine.policy.credits_per_usd;
    move |reply: &Reply| match reply {
        Reply::Wallet { wallet, entry } => Rendered::json(
            StatusCode::CREATED,
            &WalletChangeOut { wallet: WalletOut::new(wallet, credits_per_usd), entry: LedgerEntryOut::from(entry) },
        ),
        other => Err(unexpected(other)),
    }
}

fn account_path(path: &PathParams) -> ApiResult<String> {
    let id = path.get(0)?.to_string();
    validate::account_id("account id", &id)?;
    Ok(id)
}

/// `POST /v1/accounts/{id}/wallet/topups` → `201 {"wallet", "entry"}`.
pub async fn topup(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    MaybeIdempotencyKey(idem): MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let account_id = account_path(&path)?;
    let parsed = body.parse::<TopupIn>()?;
    let topup = parsed.value.validate()?;
    if let Some(minimum) = state.config.min_topup_usd.get(&topup.provider)
        && topup.amount_usd < *minimum
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "below_minimum_topup",
            format!("the smallest top-up through {} is {minimum} USD", topup.provider),
        )
        .with_detail("minimum_usd", minimum.to_string())
        .with_detail("provider", topup.provider.as_str()));
    }
    let command = Command::Topup {
        account_id,
        amount_usd: topup.amount_usd,
        provider: topup.provider,
        external_id: topup.external_id,
    };
    execute(&state, command, idem, &parsed.fingerprint, render_wallet(&state)).await
}

/// `POST /v1/accounts/{id}/wallet/adjustments` → `201 {"wallet", "entry"}`.
pub async fn adjust(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    MaybeIdempotencyKey(idem): MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let account_id = account_path(&path)?;
    let parsed = body.parse::<AdjustmentIn>()?;
    let (amount, reason) = parsed.value.validate()?;
    let command = Command::AdjustWallet { account_id, amount, reason };
    execute(&state, command, idem, &parsed.fingerprint, render_wallet(&state)).await
}

/// `POST /v1/accounts/{id}/purchases` → `201` a `purchased` grant.
pub async fn purchase(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    MaybeIdempotencyKey(idem): MaybeIdempotencyKey,
    body: Body,
) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let account_id = account_path(&path)?;
    let parsed = body.parse::<PurchaseIn>()?;
    let p = parsed.value.validate()?;
    let command = Command::Purchase {
        account_id,
        credits: p.credits,
        amount_usd: p.amount_usd,
        provider: p.provider,
        external_id: p.external_id,
    };
    execute(&state, command, idem, &parsed.fingerprint, render_grant(StatusCode::CREATED)).await
}
