//! The gateway's own answers: the one table of [`Rejection`]s (status, code, origin, message),
//! rendered in the client's dialect, and plain answers. Every one carries the call's
//! [`AccessLog`], written when the body ends.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use lattice_providers::dialect::error_body;
use lattice_providers::{Dialect, ViewError};

use crate::body::{AccessLog, ResponseBody};
use crate::gates::Denial;
use crate::request::{X_LATTICE_SESSION, X_REQUEST_ID};

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Why a call was answered by the gateway itself. One place maps each to status and message.
#[derive(Debug)]
pub(crate) enum Rejection {
    NotFound,
    MethodNotAllowed(&'static str),
    BodyTooLarge(u64),
    BodyRead,
    BodyTimeout(std::time::Duration),
    /// HTTP/1.1 framing RFC 9112 does not allow (the connection is closed after the answer).
    BadFraming(&'static str),
    BadRequest(ViewError),
    UnknownModel(String),
    DialectMismatch {
        model: String,
        upstream: Arc<str>,
    },
    /// The call names fields its translated target cannot carry, and the rules refuse to drop
    /// them (`[translation]`).
    Untranslatable {
        upstream: Arc<str>,
        refused: Vec<lattice_providers::canonical::Loss>,
    },
    /// The body cannot be read as its dialect for translation.
    TranslationInvalid(String),
    /// A form of a provider's API this gateway does not serve (the message says which to use).
    Unsupported(&'static str),
    /// The upstream's answer could not be translated to the client's dialect.
    AnswerUntranslatable(Arc<str>),
    Denied(Denial),
    UpstreamConnect(Arc<str>),
    UpstreamTimeout(Arc<str>),
    UpstreamFailed(Arc<str>),
    /// Every deployment of the route is ejected (its circuit open) for at least this many
    /// seconds.
    NoDeployment(u64),
    /// An answer the response filter had to read whole was too large or too slow.
    AnswerUnscanned(Arc<str>),
    /// The audit log cannot take the call's record: refused, never unrecorded.
    AuditUnavailable,
    Internal,
}

impl From<crate::request::BodyError> for Rejection {
    fn from(e: crate::request::BodyError) -> Rejection {
        use crate::request::BodyError;
        match e {
            BodyError::TooLarge(limit) => Rejection::BodyTooLarge(limit),
            BodyError::Read => Rejection::BodyRead,
            BodyError::Framing(why) => Rejection::BadFraming(why),
        }
    }
}

impl Rejection {
    fn status(&self) -> StatusCode {
        match self {
            Rejection::NotFound | Rejection::UnknownModel(_) => StatusCode::NOT_FOUND,
            Rejection::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Rejection::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BodyRead
            | Rejection::BadRequest(_)
            | Rejection::DialectMismatch { .. }
            | Rejection::Untranslatable { .. }
            | Rejection::TranslationInvalid(_)
            | Rejection::Unsupported(_)
            | Rejection::BadFraming(_) => StatusCode::BAD_REQUEST,
            Rejection::Denied(d) => d.status,
            Rejection::UpstreamConnect(_)
            | Rejection::UpstreamFailed(_)
            | Rejection::AnswerUnscanned(_)
            | Rejection::AnswerUntranslatable(_) => StatusCode::BAD_GATEWAY,
            Rejection::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Rejection::AuditUnavailable | Rejection::NoDeployment(_) => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Rejection::NotFound => "not_found",
            Rejection::MethodNotAllowed(_) => "method_not_allowed",
            Rejection::BodyTooLarge(_) => "request_too_large",
            Rejection::BodyRead => "body_read_failed",
            Rejection::BadFraming(_) => "invalid_framing",
            Rejection::BodyTimeout(_) => "request_timeout",
            Rejection::BadRequest(ViewError::Malformed(_)) => "invalid_json",
            Rejection::BadRequest(ViewError::OutOfRange(..)) => "invalid_value",
            Rejection::BadRequest(_) => "invalid_model",
            Rejection::UnknownModel(_) => "model_not_found",
            Rejection::DialectMismatch { .. } => "dialect_not_supported",
            Rejection::Untranslatable { .. } => "unsupported_parameter",
            Rejection::TranslationInvalid(_) | Rejection::Unsupported(_) => "invalid_request",
            Rejection::AnswerUntranslatable(_) => "answer_untranslatable",
            Rejection::Denied(d) => d.code,
            Rejection::UpstreamConnect(_) => "upstream_unreachable",
            Rejection::UpstreamTimeout(_) => "upstream_timeout",
            Rejection::UpstreamFailed(_) => "upstream_error",
            Rejection::NoDeployment(_) => "upstream_unavailable",
            Rejection::AnswerUnscanned(_) => "answer_unscanned",
            Rejection::AuditUnavailable => "audit_unavailable",
            Rejection::Internal => "internal_error",
        }
    }

    /// Where the failure came from, for the access record: the gate's name for a denial.
    fn origin(&self) -> &'static str {
        match self {
            Rejection::Denied(d) => d.gate,
            Rejection::UpstreamConnect(_)
            | Rejection::UpstreamTimeout(_)
            | Rejection::UpstreamFailed(_)
            | Rejection::NoDeployment(_)
            | Rejection::AnswerUnscanned(_)
            | Rejection::AnswerUntranslatable(_) => "upstream",
            Rejection::Internal | Rejection::AuditUnavailable => "internal",
            _ => "downstream",
        }
    }

    fn message(&self) -> Cow<'_, str> {
        match self {
            Rejection::NotFound => "no such API route on this gateway".into(),
            Rejection::MethodNotAllowed(allow) => format!("method not allowed; use {allow}").into(),
            Rejection::BodyTooLarge(limit) => {
                format!("the request body is larger than this gateway's limit of {limit} bytes").into()
            }
            Rejection::BodyRead => "the request body could not be read".into(),
            Rejection::BadFraming(why) => {
                format!("the request is not framed as HTTP/1.1 allows (RFC 9112): {why}").into()
            }
            Rejection::BodyTimeout(d) => {
                format!("the request body did not arrive within {} ms", d.as_millis()).into()
            }
            Rejection::BadRequest(e) => e.to_string().into(),
            Rejection::UnknownModel(m) => format!("the model `{m}` does not exist on this gateway").into(),
            Rejection::DialectMismatch { model, upstream } => format!(
                "the model `{model}` is served by upstream `{upstream}` in another API dialect; \
                 call it through that dialect's endpoint"
            )
            .into(),
            Rejection::Untranslatable { upstream, refused } => {
                let fields: Vec<String> = refused
                    .iter()
                    .map(|l| format!("`{}` ({})", l.field, l.note))
                    .collect();
                let first = refused.first().map_or("", |l| l.field.as_str());
                format!(
                    "upstream `{upstream}` speaks another API dialect and cannot take {}; the call is \
                     refused rather than changed. To send it without them, set \
                     [translation.fields] \"{first}\" = \"drop\" (or [translation] unsupported = \"drop\")",
                    fields.join(", ")
                )
                .into()
            }
            Rejection::TranslationInvalid(m) => format!("the request cannot be translated: {m}").into(),
            Rejection::Unsupported(m) => Cow::Borrowed(*m),
            Rejection::AnswerUntranslatable(u) => {
                format!("the answer of upstream `{u}` could not be translated to this API's dialect").into()
            }
            Rejection::Denied(d) => Cow::Borrowed(&d.message),
            Rejection::UpstreamConnect(u) => format!("upstream `{u}` could not be reached").into(),
            Rejection::UpstreamTimeout(u) => format!("upstream `{u}` did not answer in time").into(),
            Rejection::UpstreamFailed(u) => format!("upstream `{u}` failed before answering").into(),
            Rejection::NoDeployment(s) => {
                format!("every upstream serving this model is failing and set aside; retry in {s} s").into()
            }
            Rejection::AnswerUnscanned(u) => format!(
                "the answer of upstream `{u}` could not be checked (compressed, or not read whole \
                 within the time limit and {} bytes), so it is not passed on",
                crate::content::filter::MAX_SCANNED_ANSWER
            )
            .into(),
            Rejection::AuditUnavailable => {
                "the audit log cannot record this call, so it is refused; retry later".into()
            }
            Rejection::Internal => "internal gateway error".into(),
        }
    }
}

/// A refusal of an endpoint outside the call path (`gate` names it in the access record).
pub(crate) fn refusal(
    gate: &'static str,
    status: StatusCode,
    code: &'static str,
    message: impl Into<Cow<'static, str>>,
) -> Rejection {
    Rejection::Denied(Denial {
        gate,
        code,
        status,
        message: message.into(),
        retry_after: None,
    })
}

pub(crate) fn plain(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    rid: HeaderValue,
    mut log: Box<AccessLog>,
) -> Response<ResponseBody> {
    log.status = status.as_u16();
    let mut resp = Response::new(ResponseBody::full(body).with_log(log));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(X_REQUEST_ID, rid);
    resp
}

/// A call whose record the audit log could not take: refused (503), never answered unrecorded.
pub(crate) fn audit_refused(
    e: &lattice_audit::AuditError,
    dialect: Dialect,
    rid: HeaderValue,
    log: Box<AccessLog>,
) -> Response<ResponseBody> {
    tracing::error!(error = %e, "call refused: audit log unavailable");
    reject(Rejection::AuditUnavailable, dialect, rid, log)
}

/// Renders a rejection in `dialect`.
pub(crate) fn reject(
    rej: Rejection,
    dialect: Dialect,
    rid: HeaderValue,
    mut log: Box<AccessLog>,
) -> Response<ResponseBody> {
    let status = rej.status();
    log.reason = Some(rej.origin());
    log.status = status.as_u16();
    let body = error_body(dialect, status, rej.code(), &rej.message());
    let session = (!log.session.is_empty()).then(|| log.session.clone());
    let mut resp = Response::new(ResponseBody::full(body).with_log(log));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, JSON);
    h.insert(X_REQUEST_ID, rid);
    if let Some(s) = session {
        h.insert(X_LATTICE_SESSION, s);
    }
    match &rej {
        Rejection::Denied(Denial {
            retry_after: Some(s), ..
        }) => {
            h.insert(header::RETRY_AFTER, HeaderValue::from(*s));
        }
        Rejection::NoDeployment(s) => {
            h.insert(header::RETRY_AFTER, HeaderValue::from(*s));
        }
        Rejection::MethodNotAllowed(allow) => {
            h.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        Rejection::BadFraming(_) => {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    resp
}
