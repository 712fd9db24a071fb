//! Responses as status plus JSON bytes: the form a reply is stored in for
//! `Idempotency-Key` replays, so that a replay is byte for byte the first answer.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use creditd_store::StoredResponse;
use serde::Serialize;

use crate::error::{ApiError, ApiResult};

/// A finished response: a status and a JSON body (empty for 204).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub status: StatusCode,
    pub body: Vec<u8>,
}

impl Rendered {
    pub fn json<T: Serialize>(status: StatusCode, value: &T) -> ApiResult<Rendered> {
        Ok(Rendered { status, body: json_bytes(value)? })
    }

    pub fn no_content() -> Rendered {
        Rendered { status: StatusCode::NO_CONTENT, body: Vec::new() }
    }

    pub fn from_stored(stored: StoredResponse) -> Rendered {
        Rendered {
            status: StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body: stored.body,
        }
    }

    pub fn into_stored(self) -> StoredResponse {
        StoredResponse { status: self.status.as_u16(), body: self.body }
    }
}

impl IntoResponse for Rendered {
    fn into_response(self) -> Response {
        if self.body.is_empty() {
            return self.status.into_response();
        }
        let mut response = (self.status, self.body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

pub fn json_bytes<T: Serialize>(value: &T) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| ApiError::internal(format!("could not serialise the answer: {e}")))
}

/// `200` with a JSON body.
pub fn ok<T: Serialize>(value: &T) -> ApiResult<Response> {
    Ok(Rendered::json(StatusCode::OK, value)?.into_response())
}
