//! One error type for the HTTP API, mapped once to status codes and the error envelope of
//! CONTRACT.md §2.

use legato_schema::api::{BadRequest, Detail, ErrorBody};
use warp::Reply;
use warp::http::StatusCode;
use warp::reply::Response;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{}", .0.message)]
    BadRequest(BadRequest),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("Not found")]
    NotFound,
    #[error("Method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("cursor expired")]
    CursorExpired,
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The broker or the store cannot take or serve the request now.
    #[error("Service unavailable: {0}")]
    Unavailable(&'static str),
    #[error("Internal server error")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) | ApiError::CursorExpired => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn bad_request(path: &str, reason: impl Into<String>) -> ApiError {
        ApiError::BadRequest(BadRequest {
            message: "Invalid request body".into(),
            details: vec![Detail {
                path: path.into(),
                reason: reason.into(),
            }],
        })
    }

    pub fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            success: false,
            error: self.to_string(),
            code: status.as_u16(),
            details: match &self {
                ApiError::BadRequest(b) => b.details.clone(),
                _ => Vec::new(),
            },
            resync: matches!(self, ApiError::CursorExpired).then_some(true),
        };
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), status).into_response();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of an over-limit body is not read: the connection cannot carry another
            // request, and a client must not take it back into its pool.
            response.headers_mut().insert(
                warp::http::header::CONNECTION,
                warp::http::HeaderValue::from_static("close"),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                warp::http::header::RETRY_AFTER,
                warp::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}
