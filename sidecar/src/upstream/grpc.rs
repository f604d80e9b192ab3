//! gRPC answers in HTTP terms. A gRPC call's outcome is its `grpc-status`, in the trailers after
//! the messages or, when the server answers with no message, in the head (a trailers-only
//! response); the HTTP status is 200 either way. The request path counts, ejects and retries by
//! the HTTP status its metrics and policies speak, so a gRPC failure is given the status
//! grpc-gateway maps its code to: UNAVAILABLE is a 503, RESOURCE_EXHAUSTED a 429, INTERNAL a 500.

use http::{HeaderMap, StatusCode, header};
use infermesh_crds::mesh::Protocol;

/// `grpc-status` UNAVAILABLE: the server did not take the call.
pub(crate) const UNAVAILABLE: u32 = 14;
/// `grpc-status` RESOURCE_EXHAUSTED: refused for want of capacity (or a quota).
pub(crate) const RESOURCE_EXHAUSTED: u32 = 8;

/// The `grpc-status` code in `headers` (a head or trailers), if it holds one.
pub(crate) fn code(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The code of a trailers-only answer: a gRPC response whose head carries `grpc-status`. Only a
/// service of protocol GRPC is asked, so an HTTP service's responses are not looked at.
pub(crate) fn in_head(protocol: Protocol, headers: &HeaderMap) -> Option<u32> {
    if protocol != Protocol::Grpc {
        return None;
    }
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc { code(headers) } else { None }
}

/// The HTTP status a gRPC code counts as (grpc-gateway's mapping; unknown codes are a 500).
pub(crate) fn http_status(code: u32) -> StatusCode {
    let s = match code {
        0 => 200,
        1 => 499,          // CANCELLED: the client gave up
        3 | 9 | 11 => 400, // INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE
        4 => 504,          // DEADLINE_EXCEEDED
        5 => 404,          // NOT_FOUND
        6 | 10 => 409,     // ALREADY_EXISTS, ABORTED
        7 => 403,          // PERMISSION_DENIED
        RESOURCE_EXHAUSTED => 429,
        12 => 501, // UNIMPLEMENTED
        UNAVAILABLE => 503,
        16 => 401, // UNAUTHENTICATED
        _ => 500,  // UNKNOWN, INTERNAL, DATA_LOSS and codes not defined yet
    };
    StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_trailers_only_answer_is_a_grpc_head_with_a_status() {
        let grpc = ("content-type", "application/grpc+proto");
        let of = |h: &HeaderMap| in_head(Protocol::Grpc, h);
        assert_eq!(of(&head(&[grpc, ("grpc-status", "14")])), Some(UNAVAILABLE));
        assert_eq!(of(&head(&[grpc])), None, "messages follow");
        assert_eq!(
            of(&head(&[
                ("content-type", "text/plain"),
                ("grpc-status", "14")
            ])),
            None,
            "not gRPC"
        );
        assert_eq!(code(&head(&[("grpc-status", "x")])), None);
        let unavailable = head(&[grpc, ("grpc-status", "14")]);
        assert_eq!(
            in_head(Protocol::Http2, &unavailable),
            None,
            "an HTTP service is not asked"
        );
    }

    #[test]
    fn codes_count_as_their_http_equivalents() {
        assert_eq!(http_status(0), StatusCode::OK);
        assert_eq!(http_status(UNAVAILABLE), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            http_status(RESOURCE_EXHAUSTED),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(http_status(13), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(http_status(3), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(1).as_u16(), 499);
        assert_eq!(http_status(99), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
