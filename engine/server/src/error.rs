//! API errors: JSON with a stable code and a message for people, never a
//! stack trace. Every handler returns these; extractor rejections (bad
//! JSON, bad query strings) are converted too.

use axum::Json;
use axum::extract::FromRequest;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::wire::ApiErrorBody;

/// The most problems an invalid-workflow answer lists.
pub const MAX_PROBLEMS: usize = 50;

/// The longest problem line an answer carries, bytes (an engine message
/// can quote a whole value).
pub const MAX_PROBLEM_BYTES: usize = 4096;

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: ApiErrorBody,
    /// Seconds after which a retry may succeed (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ApiErrorBody {
                code: code.into(),
                message: message.into(),
                problems: Vec::new(),
            },
            retry_after: None,
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 400: the workflow does not evaluate or validate; one line per
    /// problem, each with where it is. At most [`MAX_PROBLEMS`] are
    /// listed, each cut at [`MAX_PROBLEM_BYTES`]; the message says how
    /// many more there are.
    pub fn invalid_workflow(message: impl Into<String>, mut problems: Vec<String>) -> ApiError {
        let mut message = message.into();
        if problems.len() > MAX_PROBLEMS {
            let more = problems.len() - MAX_PROBLEMS;
            problems.truncate(MAX_PROBLEMS);
            message = format!("{message} (the first {MAX_PROBLEMS} are listed, and {more} more)");
        }
        for p in &mut problems {
            if p.len() > MAX_PROBLEM_BYTES {
                let mut cut = MAX_PROBLEM_BYTES;
                while !p.is_char_boundary(cut) {
                    cut -= 1;
                }
                let more = p.len() - cut;
                p.truncate(cut);
                p.push_str(&format!("… (and {more} more bytes)"));
            }
        }
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_workflow", message);
        e.body.problems = problems;
        e
    }

    /// 422: evaluating the workflow hit one of the server's limits (its
    /// memory, its time, the evaluator's stack); the evaluator that hit it
    /// was replaced and nothing else was touched. The message names the
    /// limit.
    pub fn evaluation_limit(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "evaluation_limit", message)
    }

    /// 401: no token, or a wrong one.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: a token that may not do this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 421: the request names a host this server does not answer to (DNS
    /// rebinding; see `http::HostCheck`).
    pub fn misdirected(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::MISDIRECTED_REQUEST, "unknown_host", message)
    }

    /// 413: the body is larger than the server accepts.
    pub fn payload_too_large() -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is larger than the server accepts ({} bytes, {} MiB)",
                crate::http::MAX_BODY_BYTES,
                crate::http::MAX_BODY_BYTES / (1024 * 1024)
            ),
        )
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this path does not take this method; see /openapi.json",
        )
    }

    /// 409: the run is not in a state that allows this.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 429: the queue is full.
    pub fn queue_full(message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", message);
        e.retry_after = Some(2);
        e
    }

    /// 503: shutting down, or the KCL engine is missing.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        e.retry_after = Some(5);
        e
    }

    /// 507: the server's disk is full; nothing was recorded. Retry once
    /// space is freed.
    pub fn insufficient_storage(reason: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %reason, "the server's disk is full");
        let mut e = ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            format!(
                "the server cannot record anything: its disk is full ({reason}); nothing was accepted, retry once the operator has freed space"
            ),
        );
        e.retry_after = Some(30);
        e
    }

    /// A file-system error of the server: 507 when the disk is full, else
    /// 500.
    pub fn io(e: std::io::Error) -> ApiError {
        // ENOSPC, EDQUOT
        if matches!(e.raw_os_error(), Some(28) | Some(122)) {
            ApiError::insufficient_storage(e)
        } else {
            ApiError::internal(e)
        }
    }

    /// 500: something on the server broke. The detail goes to the server's
    /// log; the client gets what it can act on.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "internal error answering a request");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to answer; its log has the details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

impl From<drover_state::StateError> for ApiError {
    fn from(e: drover_state::StateError) -> ApiError {
        match e {
            drover_state::StateError::UnknownRun(id) => ApiError::not_found(format!("no run {id}")),
            e @ drover_state::StateError::UnknownSchedule(_) => ApiError::not_found(e.to_string()),
            e @ (drover_state::StateError::Held { .. } | drover_state::StateError::Fenced { .. }) => {
                ApiError::conflict(e.to_string())
            }
            e @ drover_state::StateError::QueueFull { .. } => ApiError::queue_full(e.to_string()),
            e @ drover_state::StateError::Pg(_) => ApiError::unavailable(e.to_string()),
            other if other.is_disk_full() => ApiError::insufficient_storage(other),
            other => ApiError::internal(other),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::payload_too_large();
        }
        let mut e = ApiError::bad_request(format!("the request body is not valid: {}", r.body_text()));
        if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            e.status = status;
            e.body.code = "unsupported_media_type".into();
            e.body.message = "send the body as JSON with Content-Type: application/json".into();
        }
        e
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request(format!("the query string is not valid: {}", r.body_text()))
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `Query<T>` whose rejections are [`ApiError`]s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Runs `f` (store calls, which block) on the blocking pool, off the
/// runtime's workers; its error as the API answers it.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)?
}
