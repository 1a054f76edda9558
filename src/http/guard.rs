//! Guards every response of the HTTP app gets, as middleware so that a page added later gets
//! them without asking: a body limit answered with 413, security headers, and a strict
//! Origin check on writes that a browser could make on the operator's behalf.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Largest request body accepted (larger: 413 `payload_too_large`).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The dashboard is server-rendered HTML with one inline style sheet and one script of its
/// own (`/dashboard/live.js`, which may fetch this server's pages): nothing else may load or
/// run (no inline script), nothing may frame it, forms post only to itself.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     script-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// A NUL character in a request's path or query (`%00`) is refused at once with 400
/// `invalid_input`: no identifier, filter or name steward takes may hold one, and a database
/// refuses it in text, so it must never reach one.
pub async fn no_nul_in_target(request: Request, next: Next) -> Response {
    if request
        .uri()
        .path_and_query()
        .is_some_and(|t| t.as_str().contains("%00"))
    {
        return crate::api::error::ApiError::bad_request(
            "NUL characters are not accepted in a URL",
        )
        .into_response();
    }
    next.run(request).await
}

/// A request's body must arrive whole within `deadline` (the server's
/// [`super::server::ServerLimits::body_read_timeout`]): a client that sends its head, then
/// trickles the body, would otherwise hold a connection slot for ever. Late: 408
/// `request_timeout`, and the connection is closed. The body is read here (at most
/// [`BODY_LIMIT`]; larger: 413), then handed on whole.
pub async fn body_deadline(
    axum::extract::State(deadline): axum::extract::State<std::time::Duration>,
    request: Request,
    next: Next,
) -> Response {
    use crate::api::error::ApiError;
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, BODY_LIMIT)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(err)) if is_length_limit(&err) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {BODY_LIMIT} bytes"),
        )
        .into_response(),
        Ok(Err(err)) => {
            ApiError::bad_request(format!("the body could not be read: {err}")).into_response()
        }
        Err(_) => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the body did not arrive within {} s",
                    deadline.as_secs_f64()
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

fn is_length_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if cause.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Security headers on every response.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Writes a browser can be made to send on the operator's behalf (every method but GET, HEAD
/// and OPTIONS, to a dashboard page or carrying a cookie, without an `Authorization` header)
/// must come from a page of this server: their `Origin` (or, lacking it, `Referer`) names the
/// host the request was sent to. Anything else is 403 `cross_origin`. Callers with a bearer
/// token are not affected (a browser never adds one on its own), nor are anonymous API calls
/// (they get their 401).
pub async fn origin_check(request: Request, next: Next) -> Response {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let headers = request.headers();
    let browser_write =
        request.uri().path().starts_with("/dashboard") || headers.contains_key(header::COOKIE);
    if safe || !browser_write || headers.contains_key(header::AUTHORIZATION) {
        return next.run(request).await;
    }
    if same_origin(request.headers()) {
        next.run(request).await
    } else {
        crate::api::error::ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "a write without a bearer token must come from this server's own pages \
             (Origin or Referer naming this host)",
        )
        .into_response()
    }
}

/// Whether `Origin` (else `Referer`) names the request's `Host`.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let source = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    let Some(source) = source else {
        return false;
    };
    let Some((_scheme, rest)) = source.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.eq_ignore_ascii_case(host)
}

/// Whether the request reached us over TLS, as far as we can tell: a proxy in front says so
/// with `X-Forwarded-Proto: https` (steward itself serves plain HTTP). The dashboard marks its
/// cookie `Secure` then.
pub fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn only_this_hosts_pages_are_same_origin() {
        let ok = |pairs: &[(&'static str, &str)]| same_origin(&headers(pairs));
        assert!(ok(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080")
        ]));
        assert!(ok(&[
            ("host", "ops.example"),
            ("referer", "https://ops.example/dashboard/dead?q=1")
        ]));
        assert!(!ok(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example")
        ]));
        assert!(!ok(&[
            ("host", "ops.example"),
            ("origin", "https://ops.example.evil.example")
        ]));
        assert!(!ok(&[("host", "ops.example"), ("origin", "null")]));
        assert!(!ok(&[("host", "ops.example")]));
        assert!(!ok(&[("origin", "http://ops.example")]));
    }
}
