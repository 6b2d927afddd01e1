//! polycall's status codes as HTTP statuses: one table.

use hyper::StatusCode;
use polycall_core::{Code, Status};

/// The HTTP status a polycall code is answered with.
///
/// ```
/// use polycall_core::Code;
/// assert_eq!(polycall_gateway::http_status(Code::NotFound).as_u16(), 404);
/// assert_eq!(polycall_gateway::http_status(Code::Busy).as_u16(), 429);
/// ```
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidInput | Code::Malformed => StatusCode::BAD_REQUEST,
        Code::NotFound | Code::UnknownMethod => StatusCode::NOT_FOUND,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Busy => StatusCode::TOO_MANY_REQUESTS,
        Code::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Code::Unsupported => StatusCode::NOT_IMPLEMENTED,
        Code::VersionMismatch | Code::AlreadyExists | Code::FailedPrecondition => {
            StatusCode::CONFLICT
        }
        // `internal`, `unknown`, and codes newer than this table.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body of an error answer: `{"code", "message"}` (`code` is polycall's
/// stable name, e.g. `not_found`).
pub(crate) fn error_body(status: &Status) -> serde_json::Value {
    serde_json::json!({"code": status.code.name(), "message": status.message})
}
