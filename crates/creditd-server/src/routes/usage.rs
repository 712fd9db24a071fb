//! Usage history (admin or the account's token): the list, the summary and
//! the streamed export; and the admin-wide export.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use creditd_core::pricing::RequestStatus;
use creditd_store::{GroupBy, UsageFilter};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::load_account;
use crate::auth::{Access, Caller};
use crate::dto::{List, UsageRecordOut, UsageSummaryOut};
use crate::error::{ApiError, ApiResult};
use crate::export::Format;
use crate::extract::{PathParams, QueryParams};
use crate::respond::ok;
use crate::state::AppState;
use crate::validate;

/// Encoded chunks between the store's reads and the response body: with
/// `EXPORT_BATCH_ROWS` rows each, what an export holds in memory at most.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The filters of `?from&to&model&request_type&project&conversation&status`.
pub fn usage_filter(query: &QueryParams) -> ApiResult<UsageFilter> {
    let from = validate::opt_timestamp("from", query.get("from"))?;
    let to = validate::opt_timestamp("to", query.get("to"))?;
    if let (Some(from), Some(to)) = (from, to)
        && to < from
    {
        return Err(ApiError::invalid_field("to", "must not be before from"));
    }
    let model = query.get("model").map(|m| validate::model_id("model", m).map(|()| m.to_string())).transpose()?;
    let request_type = match query.get("request_type") {
        None => None,
        Some(t) => Some(validate::request_type("request_type", Some(t.to_string()))?),
    };
    let status = match query.get("status") {
        None => None,
        Some(s) => Some(
            RequestStatus::parse(s)
                .ok_or_else(|| ApiError::invalid_field("status", "must be \"success\", \"error\" or \"cancelled\""))?,
        ),
    };
    Ok(UsageFilter {
        from,
        to,
        model,
        request_type,
        project: validate::text("project", query.get("project").map(str::to_string), validate::MAX_TEXT_CHARS)?,
        conversation: validate::text(
            "conversation",
            query.get("conversation").map(str::to_string),
            validate::MAX_TEXT_CHARS,
        )?,
        status,
    })
}

/// `GET /v1/accounts/{id}/usage`: records newest first, paged.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    query: QueryParams,
) -> ApiResult<Response> {
    let account_id = path.get(0)?;
    caller.require(Access::AdminOrAccount(account_id))?;
    let filter = usage_filter(&query)?;
    let page = query.page()?;
    load_account(&state, account_id).await?;
    let records = state.store.usage(account_id, filter, page).await?;
    ok(&List::from_paged(records, |r| UsageRecordOut::from(&r)))
}

/// `GET /v1/accounts/{id}/usage/summary?group_by=…` (default `day`).
pub async fn summary(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    query: QueryParams,
) -> ApiResult<Response> {
    let account_id = path.get(0)?;
    caller.require(Access::AdminOrAccount(account_id))?;
    let filter = usage_filter(&query)?;
    let (name, group_by) = match query.get("group_by").unwrap_or("day") {
        "day" => ("day", GroupBy::Day(state.config.engine.billing.timezone.clone())),
        "model" => ("model", GroupBy::Model),
        "project" => ("project", GroupBy::Project),
        "conversation" => ("conversation", GroupBy::Conversation),
        "request_type" => ("request_type", GroupBy::RequestType),
        "status" => ("status", GroupBy::Status),
        _ => {
            return Err(ApiError::invalid_field(
                "group_by",
                "must be one of day, model, project, conversation, request_type, status",
            ));
        }
    };
    load_account(&state, account_id).await?;
    let summary = state.store.usage_summary(account_id, filter, group_by).await?;
    ok(&UsageSummaryOut::new(name, &summary))
}

fn format(query: &QueryParams) -> ApiResult<Format> {
    match query.get("format") {
        None => Ok(Format::Csv),
        Some(f) => Format::parse(f).ok_or_else(|| ApiError::invalid_field("format", "must be csv or jsonl")),
    }
}

/// `GET /v1/accounts/{id}/usage/export?format=csv|jsonl&…`.
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    path: PathParams,
    query: QueryParams,
) -> ApiResult<Response> {
    let account_id = path.get(0)?;
    caller.require(Access::AdminOrAccount(account_id))?;
    let format = format(&query)?;
    let filter = usage_filter(&query)?;
    load_account(&state, account_id).await?;
    stream(&state, Some(account_id.to_string()), filter, format).await
}

/// `GET /v1/usage/export?format=csv|jsonl&account_id=&…` (admin): every
/// account, or the one given.
pub async fn export_all(State(state): State<AppState>, caller: Caller, query: QueryParams) -> ApiResult<Response> {
    caller.require(Access::Admin)?;
    let format = format(&query)?;
    let filter = usage_filter(&query)?;
    let account_id = match query.get("account_id") {
        None | Some("") => None,
        Some(id) => {
            validate::account_id("account_id", id)?;
            load_account(&state, id).await?;
            Some(id.to_string())
        }
    };
    stream(&state, account_id, filter, format).await
}

/// The export as a streamed body. The store reads and encodes chunks into
/// a bounded channel, so memory is flat in the number of rows and a client
/// that stops reading stops the reads. The first chunk is awaited before the
/// answer starts, so a store that fails at once is a JSON error; a failure
/// later cuts the body short (no final chunk), which a client sees as an
/// incomplete download.
pub(crate) async fn stream(
    state: &AppState,
    account_id: Option<String>,
    filter: UsageFilter,
    format: Format,
) -> ApiResult<Response> {
    let (sink, mut chunks) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let store = state.store.clone();
    let account = account_id.clone();
    tokio::spawn(async move {
        if let Err(error) = store.export(account.as_deref(), filter, format.encoder(), sink).await {
            tracing::error!(%error, "usage export failed");
        }
    });
    let mut head = Vec::new();
    format.write_header(&mut head);
    match chunks.recv().await {
        Some(Err(e)) => return Err(e.into()),
        Some(Ok(chunk)) => head.extend_from_slice(&chunk.bytes),
        None => {}
    }
    let rest = futures_util::stream::unfold(chunks, move |mut chunks| async move {
        let item = match chunks.recv().await? {
            Ok(chunk) => Ok(Bytes::from(chunk.bytes)),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        Some((item, chunks))
    });
    let body = futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(Bytes::from(head)))).chain(rest);
    let filename = format!("usage-{}.{}", account_id.as_deref().unwrap_or("all"), format.as_str());
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    // Account ids are `A–Z a–z 0–9 . _ @ -`: nothing to escape.
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
