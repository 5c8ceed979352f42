//! The one mapping from errors to HTTP statuses. Every error body is
//! `{"error": {"code": "...", "message": "..."}}` with a message that says what to do.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use testmesh_consensus::Rejected;

use crate::core::insights::InsightsError;
use crate::core::logs::LogError;
use crate::core::models::ModelError;
use crate::core::submit::{InvalidTask, SubmitError};
use crate::core::writer::WriteError;

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    Unprocessable(String),
    TooLarge(String),
    Unavailable(String),
    /// This node's data dir is short of room.
    InsufficientStorage(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match &self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, "unschedulable", m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            ApiError::InsufficientStorage(m) => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", m)
            }
        };
        (
            status,
            Json(Body {
                error: Detail { code, message },
            }),
        )
            .into_response()
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Invalid(m) => ApiError::BadRequest(m),
            SubmitError::TooLarge(m) => ApiError::TooLarge(m),
            SubmitError::Unschedulable(m) => ApiError::Unprocessable(m),
            e @ SubmitError::Models(_) => ApiError::Unavailable(e.to_string()),
            e @ SubmitError::DiskFull(_) => ApiError::InsufficientStorage(e.to_string()),
        }
    }
}

impl From<InvalidTask> for ApiError {
    fn from(e: InvalidTask) -> Self {
        ApiError::BadRequest(e.0)
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<InsightsError> for ApiError {
    fn from(e: InsightsError) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::BadStream(_) => ApiError::BadRequest(e.to_string()),
            LogError::NoTask(_) | LogError::NoAttempt { .. } => ApiError::NotFound(e.to_string()),
            LogError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<Rejected> for ApiError {
    fn from(r: Rejected) -> Self {
        match r {
            Rejected::UnknownTask(_) | Rejected::UnknownWorker(_) => {
                ApiError::NotFound(r.to_string())
            }
            Rejected::InvalidSpec(_) | Rejected::BatchTooLarge(_) | Rejected::NestedBatch => {
                ApiError::BadRequest(r.to_string())
            }
            _ => ApiError::Conflict(r.to_string()),
        }
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::BytesRejection(e))
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::TooLarge(format!(
                    "request body is larger than {} MiB; submit fewer tasks per request",
                    super::MAX_BODY >> 20
                )))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::BadRequest(
                "send the body as JSON with the header Content-Type: application/json".into(),
            )),
            Err(e) => Err(ApiError::BadRequest(format!(
                "invalid JSON body: {}",
                e.body_text()
            ))),
        }
    }
}

/// `Query<T>` whose rejections are [`ApiError`]s.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(q) => Ok(ApiQuery(q.0)),
            Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => Err(
                ApiError::BadRequest(format!("invalid query: {}", e.body_text())),
            ),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}
