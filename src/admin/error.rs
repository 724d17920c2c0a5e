//! JSON errors of the admin API: `{"error": {"type", "message"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::credential::CredentialError;
use crate::pool::{BuildError, PoolError};

/// An admin API error: a status, a stable machine-readable type and a message for people.
/// Messages never carry secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub(crate) fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown account `{}`", shorten(id)),
        )
    }
}

/// Caps an echoed, caller-given string so an error never grows with its input.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 128;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(MAX).collect();
        cut.push('…');
        cut
    }
}

impl From<PoolError> for ApiError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::UnknownAccount(id) => ApiError::not_found(id.as_str()),
            PoolError::Invalid(BuildError::DuplicateId { id, .. }) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("an account with id `{id}` already exists"),
            ),
            PoolError::Invalid(other) => ApiError::bad_request(other.to_string()),
            PoolError::Credential {
                id,
                source: source @ CredentialError::NotRefreshable(_),
            } => ApiError::new(
                StatusCode::CONFLICT,
                "not_refreshable",
                format!("account `{id}`: {source}"),
            ),
            PoolError::Credential { id, source } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "refresh_failed",
                format!("account `{id}`: {source}"),
            ),
            PoolError::Store(failures) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("store {failures}"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "type": self.kind, "message": self.message }
        });
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"account-pool-admin\""),
            );
        }
        response
    }
}
