//! Running a store command and rendering its reply, with or without an
//! `Idempotency-Key` (`semantics.md` §11).
//!
//! The same render function answers the first call and produces what is
//! stored for replays (inside the writer's transaction), so a replay is the
//! first status and body byte for byte.

use axum::response::{IntoResponse, Response};
use creditd_store::{Command, Idempotent, Reply, StoredResponse};

use crate::error::{ApiError, ApiResult};
use crate::extract::IdempotencyKey;
use crate::respond::Rendered;
use crate::state::AppState;

/// Turns a store reply into the response of one endpoint.
pub trait Render: Fn(&Reply) -> ApiResult<Rendered> + Clone + Send + Sync + 'static {}
impl<F: Fn(&Reply) -> ApiResult<Rendered> + Clone + Send + Sync + 'static> Render for F {}

/// A reply of a kind the endpoint did not ask for: a bug, `500`.
pub fn unexpected(reply: &Reply) -> ApiError {
    ApiError::internal(format!("unexpected store reply {}", reply_name(reply)))
}

pub fn reply_name(reply: &Reply) -> &'static str {
    match reply {
        Reply::Account(_) => "Account",
        Reply::Model(_) => "Model",
        Reply::Key(_) => "Key",
        Reply::Token(_) => "Token",
        Reply::Session(_) => "Session",
        Reply::Deleted => "Deleted",
        Reply::Grant(_) => "Grant",
        Reply::Wallet { .. } => "Wallet",
        Reply::Authorized(_) => "Authorized",
        Reply::Recorded(_) => "Recorded",
        Reply::Released(_) => "Released",
        Reply::Swept => "Swept",
        Reply::Plan(_) => "Plan",
        Reply::Subscription(_) => "Subscription",
        Reply::WebhookEvent(_) => "WebhookEvent",
        Reply::ProxyKey(_) => "ProxyKey",
        Reply::Touched => "Touched",
        Reply::Replayed(_) => "Replayed",
        Reply::Imported(_) => "Imported",
        Reply::ConfigApplied(_) => "ConfigApplied",
        Reply::Endpoint(_) => "Endpoint",
        Reply::Endpoints(_) => "Endpoints",
        Reply::Claimed(_) => "Claimed",
        Reply::Delivery(_) => "Delivery",
        Reply::ProviderCalls(_) => "ProviderCalls",
        Reply::ProviderCall(_) => "ProviderCall",
    }
}

/// Executes `command`; with `key`, under that `Idempotency-Key` and the body's
/// `fingerprint`. A replay answers the stored response verbatim.
pub async fn execute(
    state: &AppState,
    command: Command,
    key: Option<IdempotencyKey>,
    fingerprint: &str,
    render: impl Render,
) -> ApiResult<Response> {
    execute_inner(state, command, key, fingerprint, render, None).await
}

/// Like [`execute`], for a call whose answer carries a secret in the field
/// `secret` (`POST /v1/keys`, `POST /v1/accounts/{id}/tokens`). A secret is
/// never stored in clear: what is kept for replays is the answer with that
/// field `null` and `"redacted": ["<field>"]`, so a replay says that the
/// secret was shown once, with the first answer.
pub async fn execute_secret(
    state: &AppState,
    command: Command,
    key: Option<IdempotencyKey>,
    fingerprint: &str,
    render: impl Render,
    secret: &'static str,
) -> ApiResult<Response> {
    execute_inner(state, command, key, fingerprint, render, Some(secret)).await
}

/// The stored form of a secret-bearing answer: the secret replaced by `null`.
fn redact(rendered: Rendered, field: &str) -> Rendered {
    let Ok(serde_json::Value::Object(mut body)) = serde_json::from_slice::<serde_json::Value>(&rendered.body) else {
        return rendered;
    };
    if body.contains_key(field) {
        body.insert(field.to_string(), serde_json::Value::Null);
        body.insert("redacted".to_string(), serde_json::json!([field]));
    }
    Rendered { status: rendered.status, body: serde_json::to_vec(&body).unwrap_or_default() }
}

async fn execute_inner(
    state: &AppState,
    command: Command,
    key: Option<IdempotencyKey>,
    fingerprint: &str,
    render: impl Render,
    secret: Option<&'static str>,
) -> ApiResult<Response> {
    let idempotent = key.map(|key| {
        let render_stored = render.clone();
        Idempotent {
            scope: key.scope,
            key: key.key,
            fingerprint: fingerprint.to_string(),
            render: Box::new(move |reply: &Reply| -> StoredResponse {
                match render_stored(reply) {
                    Ok(rendered) => match secret {
                        Some(field) => redact(rendered, field).into_stored(),
                        None => rendered.into_stored(),
                    },
                    Err(error) => {
                        let response = error.clone();
                        let body = serde_json::to_vec(&crate::dto::ErrorBody::new(
                            response.code,
                            &response.message,
                            serde_json::Value::Object(response.details),
                        ))
                        .unwrap_or_default();
                        StoredResponse { status: error.status.as_u16(), body }
                    }
                }
            }),
        }
    });
    match state.store.execute(command, idempotent).await? {
        Reply::Replayed(stored) => Ok(Rendered::from_stored(stored).into_response()),
        reply => Ok(render(&reply)?.into_response()),
    }
}
