//! Payment providers' webhooks (no API key: the signature is the
//! authentication) and the operator's list of what arrived (`api.md`
//! §Webhooks).
//!
//! A body is verified before anything in it is used. A missing or bad
//! signature is `401 unauthorized` and records nothing: an unauthenticated
//! caller cannot write to the database, and the list stays what providers
//! sent (the refusal is logged and counted). A verified event is recorded
//! with its outcome by the writer, in the same transaction as its effect.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use creditd_store::{Command, Reply, WebhookEventFilter, WebhookEventIn, WebhookStatus};

use crate::auth::{Access, Caller};
use crate::dto::{List, WebhookAnswer, WebhookEventOut};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, QueryParams};
use crate::idempotency::unexpected;
use crate::payments::{self, CREEM, NOWPAYMENTS};
use crate::respond::{Rendered, ok};
use crate::state::AppState;
use crate::validate;

const EVENTS: &str = "creditd_webhook_events_total";

fn unauthorized(provider: &'static str, header: &str) -> ApiError {
    metrics::counter!(EVENTS, "provider" => provider, "status" => "unauthorized").increment(1);
    tracing::warn!(provider, "webhook refused: missing or bad signature");
    ApiError::unauthorized(format!("the {header} header is missing or is not the signature of this body"))
}

fn not_configured(provider: &str, setting: &str) -> ApiError {
    ApiError::not_found(format!("{provider} webhooks are off: payments.{provider}.{setting} is not configured"))
}

/// Records a verified event (and applies it) and answers the provider.
async fn record(state: &AppState, event: WebhookEventIn) -> ApiResult<Response> {
    let provider = if event.provider == CREEM { CREEM } else { NOWPAYMENTS };
    let reply = state.store.execute(Command::WebhookEvent { event }, None).await?;
    let Reply::WebhookEvent(recorded) = reply else { return Err(unexpected(&reply)) };
    let status = recorded.status.as_str();
    metrics::counter!(EVENTS, "provider" => provider, "status" => status).increment(1);
    tracing::info!(provider, status, event_id = recorded.event_id.as_deref(), "webhook event");
    let answer = match recorded.status {
        WebhookStatus::Rejected => {
            let reason = recorded.reason.unwrap_or_else(|| "the event could not be read".into());
            return Err(ApiError::invalid(reason).with_detail("webhook_event_id", recorded.id));
        }
        WebhookStatus::Applied | WebhookStatus::Duplicate => WebhookAnswer { status, reason: None },
        WebhookStatus::Ignored => WebhookAnswer { status, reason: recorded.reason },
    };
    Ok(Rendered::json(StatusCode::OK, &answer)?.into_response())
}

/// `POST /webhooks/creem`: `creem-signature` is the hex HMAC-SHA256 of the raw body.
pub async fn creem(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let Some(config) = &state.config.payments.creem else {
        return Err(not_configured(CREEM, "webhook_secret"));
    };
    let signature = headers.get("creem-signature").map(|v| v.as_bytes());
    if !payments::creem_signature_ok(&config.webhook_secret, &body.0, signature) {
        return Err(unauthorized(CREEM, "creem-signature"));
    }
    let event = payments::creem_event(&body.0, config);
    record(&state, event).await
}

/// `POST /webhooks/nowpayments`: `x-nowpayments-sig` is the hex HMAC-SHA512
/// of the body re-serialised with sorted keys. The body is parsed only to
/// be re-serialised for the check; nothing in it is used before.
pub async fn nowpayments(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let Some(config) = &state.config.payments.nowpayments else {
        return Err(not_configured(NOWPAYMENTS, "ipn_secret"));
    };
    let parsed = payments::parse_json(&body.0);
    let signature = headers.get("x-nowpayments-sig").map(|v| v.as_bytes());
    if !payments::nowpayments_signature_ok(&config.ipn_secret, &body.0, parsed.as_ref(), signature) {
        return Err(unauthorized(NOWPAYMENTS, "x-nowpayments-sig"));
    }
    let event = payments::nowpayments_event(&body.0, parsed);
    record(&state, event).await
}

/// `GET /v1/webhook-events?provider&status` (admin): newest first.
pub async fn list(State(state): State<AppState>, caller: Caller, query: QueryParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let provider = match query.get("provider") {
        None | Some("") => None,
        Some(p) => {
            validate::opaque_id("provider", p)?;
            Some(p.to_string())
        }
    };
    let status = match query.get("status") {
        None | Some("") => None,
        Some(s) => Some(WebhookStatus::parse(s).ok_or_else(|| {
            ApiError::invalid_field("status", "must be one of applied, duplicate, ignored, rejected")
        })?),
    };
    let page = query.page()?;
    let events = state.store.webhook_events(WebhookEventFilter { provider, status }, page).await?;
    ok(&List::from_paged(events, |e| WebhookEventOut::from(&e)))
}
