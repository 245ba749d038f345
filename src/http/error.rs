//! Errors answered to HTTP clients: a status and a JSON body saying what is wrong.

use crate::hub::{ChannelError, PublishError};
use axum::response::{IntoResponse, Response};
use http::StatusCode;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Answered with `WWW-Authenticate: Bearer`.
    pub bearer: bool,
    /// Answered as `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), bearer: false, retry_after: None }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }
    /// A request body that did not arrive within `limits.body_read_timeout`.
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, format!("the request body did not arrive within {limit:?} (limits.body_read_timeout)"))
    }
}

impl ApiError {
    /// The JSON body every error is answered with; a server error names the request's id,
    /// which finds the log line that says what went wrong.
    pub fn json_body(&self) -> Vec<u8> {
        let mut body = serde_json::json!({ "error": self.message, "status": self.status.as_u16() });
        if self.status.is_server_error()
            && let Some(id) = crate::telemetry::request_id::current()
        {
            body["request_id"] = serde_json::Value::from(id.to_str().unwrap_or_default());
        }
        body.to_string().into_bytes()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.json_body();
        let mut resp = (self.status, [(http::header::CONTENT_TYPE, "application/json")], body).into_response();
        resp.extensions_mut().insert(super::requests::ErrorNote(self.message));
        if self.bearer {
            resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            resp.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
        }
        resp
    }
}

impl From<crate::access::Denied> for ApiError {
    fn from(d: crate::access::Denied) -> Self {
        ApiError { status: d.status, message: d.message, bearer: d.bearer, retry_after: d.retry_after }
    }
}

impl From<ChannelError> for ApiError {
    fn from(e: ChannelError) -> Self {
        let status = match e {
            ChannelError::Invalid { .. } | ChannelError::TooManyNew { .. } | ChannelError::User(_) => StatusCode::BAD_REQUEST,
            ChannelError::NotFound(_) => StatusCode::NOT_FOUND,
            ChannelError::Limit(_) | ChannelError::Closing => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Event { too_large: true, .. } => ApiError::too_large(e.to_string()),
            PublishError::Event { .. } => ApiError::bad_request(e.to_string()),
            // As the IETF Idempotency-Key draft says: the key stands for another request.
            PublishError::KeyReused(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            PublishError::Channel(e) => e.into(),
            // What the engine said (paths, addresses, its own words) is for the operator's log;
            // the client is told what failed, in words that do not change.
            PublishError::Store(e) => {
                tracing::error!(error = %e, request_id = request_id(), "publish refused: the history store failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "history store unavailable: the event was not published (see the server log)",
                )
            }
            PublishError::Bus(e) => {
                tracing::error!(error = %e, request_id = request_id(), "publish refused: the cluster bus failed");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("cluster bus ({}) unavailable: the event was not published", e.kind))
            }
        }
    }
}

/// The current request's id, for a log line.
fn request_id() -> Option<String> {
    crate::telemetry::request_id::current().and_then(|id| id.to_str().ok().map(str::to_owned))
}
