//! Header handling for a forwarded message: hop-by-hop headers removed (RFC 9110 §7.6.1, plus the
//! headers the `Connection` header names), `x-forwarded-*` and `forwarded` (RFC 7239) added, and an
//! `x-request-id` generated when absent. W3C `traceparent`/`tracestate` pass through unchanged.
//! [`prepare_head`] is step 4 of the request path: all of it applied to a request's head once,
//! before the first try.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use infermesh_crds::mesh::Protocol;

use super::errors::ProxyError;
use crate::hash::random_u64;

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers. `te: trailers` survives when `keep_te_trailers` (gRPC over HTTP/2
/// needs it); any other `te` is dropped.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap, keep_te_trailers: bool) {
    // One pass over the names (compared by value, not hashed): most messages carry none of them.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    if h.contains_key(header::CONNECTION) {
        // Names listed in Connection are hop-by-hop too.
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
        h.remove(header::CONNECTION);
    }
    for n in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHORIZATION,
        &header::PROXY_AUTHENTICATE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        if h.contains_key(n) {
            h.remove(n);
        }
    }
    if let Some(te) = h.get(header::TE) {
        let trailers = keep_te_trailers
            && te.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
        if trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            h.remove(header::TE);
        }
    }
}

fn is_hop_by_hop(n: &HeaderName) -> bool {
    n == header::CONNECTION
        || n == header::TE
        || n == header::TRANSFER_ENCODING
        || n == header::UPGRADE
        || n == header::TRAILER
        || n == header::PROXY_AUTHORIZATION
        || n == header::PROXY_AUTHENTICATE
        || n == KEEP_ALIVE
        || n == PROXY_CONNECTION
}

/// What a request head must not carry, checked before it is routed: two `Host` headers (RFC
/// 9112 §3.2 asks for a 400), or a protocol switch other than `h2c` (which a server may ignore,
/// RFC 9113 §3.1; a WebSocket or other tunnel is not relayed, so it is refused in words rather
/// than turned into a plain request).
pub(crate) fn check(head: &Parts) -> Result<(), ProxyError> {
    let h = &head.headers;
    // More values than names: some header is repeated (rare; Host is then looked at).
    if h.len() != h.keys_len() && h.get_all(header::HOST).iter().nth(1).is_some() {
        return Err(ProxyError::Malformed(
            "two Host headers: send exactly one (RFC 9112 §3.2)",
        ));
    }
    if let Some(up) = h.get(header::UPGRADE)
        && !up.as_bytes().eq_ignore_ascii_case(b"h2c")
    {
        return Err(ProxyError::Upgrade);
    }
    Ok(())
}

/// Per-connection values for the forwarding headers, computed once per client connection.
#[derive(Clone, Debug)]
pub(crate) struct Forwarding {
    /// The client's address as an `x-forwarded-for` element.
    pub(crate) for_ip: HeaderValue,
    /// `for=<ip>;proto=http` as a `forwarded` element.
    pub(crate) forwarded: HeaderValue,
}

impl Forwarding {
    /// Runs once per client connection. The address is written once, IPv4 without `fmt` (which
    /// cost ~3k instructions here, a twentieth of a short connection's work in the sidecar).
    pub(crate) fn new(ip: IpAddr) -> Self {
        let (text, open, close) = match ip {
            IpAddr::V4(v4) => (ipv4_text(v4), "for=", ";proto=http"),
            IpAddr::V6(v6) => (v6.to_string(), "for=\"[", "]\";proto=http"),
        };
        let node = [open, text.as_str(), close].concat();
        let for_ip = HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("unknown"));
        let forwarded =
            HeaderValue::try_from(node).unwrap_or(HeaderValue::from_static("for=unknown"));
        Self { for_ip, forwarded }
    }

    /// Appends this hop to `x-forwarded-for` and `forwarded`; sets `x-forwarded-proto` and
    /// `x-forwarded-host` when no earlier hop did.
    pub(crate) fn apply(&self, h: &mut HeaderMap, host: Option<&HeaderValue>) {
        append_list(h, &X_FORWARDED_FOR, &self.for_ip);
        append_list(h, &header::FORWARDED, &self.forwarded);
        // `entry`: one hash per header instead of a lookup and an insert.
        h.entry(&X_FORWARDED_PROTO)
            .or_insert_with(|| HeaderValue::from_static("http"));
        if let Some(host) = host
            && let Entry::Vacant(e) = h.entry(&X_FORWARDED_HOST)
        {
            e.insert(host.clone());
        }
    }
}

/// Dotted-decimal text of an IPv4 address.
fn ipv4_text(ip: std::net::Ipv4Addr) -> String {
    let mut text = String::with_capacity(15);
    let mut digits = itoa::Buffer::new();
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        text.push_str(digits.format(octet));
    }
    text
}

/// Appends `v` to a comma-separated list header (one line, as proxies conventionally do).
fn append_list(h: &mut HeaderMap, name: &HeaderName, v: &HeaderValue) {
    match h.entry(name) {
        Entry::Vacant(e) => {
            e.insert(v.clone());
        }
        Entry::Occupied(mut e) => {
            let old = e.get();
            let mut joined = Vec::with_capacity(old.len() + 2 + v.len());
            joined.extend_from_slice(old.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(v.as_bytes());
            if let Ok(j) = HeaderValue::from_bytes(&joined) {
                e.insert(j);
            }
        }
    }
}

/// Sets a random 128-bit hex `x-request-id` unless the request carries one.
pub(crate) fn ensure_request_id(h: &mut HeaderMap) {
    let Entry::Vacant(e) = h.entry(&X_REQUEST_ID) else {
        return;
    };
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    let (a, b) = (random_u64(), random_u64());
    for (i, byte) in buf.iter_mut().enumerate() {
        let word = if i < 16 { a } else { b };
        *byte = HEX[((word >> ((i % 16) * 4)) & 0xf) as usize];
    }
    if let Ok(v) = HeaderValue::from_bytes(&buf) {
        e.insert(v);
    }
}

/// x-forwarded-{for,proto,host}, forwarded, x-request-id, host, x-infermesh-routed.
const ADDED_HEADERS: usize = 7;

/// Step 4: hop-by-hop headers out, forwarding headers and request id in, Host kept.
pub(crate) fn prepare_head(head: &mut Parts, forwarding: &Forwarding, protocol: Protocol) {
    // Room for the headers added below and the routed marker, so the map grows once, not per
    // insert (a parsed request's map is sized to the headers it arrived with).
    head.headers.reserve(ADDED_HEADERS);
    strip_hop_by_hop(&mut head.headers, protocol != Protocol::Http);
    // An absolute-form target (or HTTP/2 :authority) names the host, and a Host header saying
    // otherwise is replaced (RFC 9112 §3.2.2, RFC 9113 §8.3.1): the upstream sees the host the
    // request was routed by.
    let host = match head
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        Some(h) => {
            if protocol == Protocol::Http {
                head.headers.insert(http::header::HOST, h.clone());
            }
            Some(h)
        }
        None => head.headers.get(http::header::HOST).cloned(),
    };
    forwarding.apply(&mut head.headers, host.as_ref());
    ensure_request_id(&mut head.headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("te", HeaderValue::from_static("trailers, deflate"));
        h.insert("traceparent", HeaderValue::from_static("00-abc-def-01"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        let mut grpc = h.clone();
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["traceparent", "x-keep"]);
        strip_hop_by_hop(&mut grpc, true);
        assert_eq!(grpc["te"], "trailers");
    }

    #[test]
    fn forwarding_headers_append_this_hop() {
        let f = Forwarding::new("10.1.2.3".parse().unwrap());
        let mut h = HeaderMap::new();
        f.apply(&mut h, Some(&HeaderValue::from_static("llm")));
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["forwarded"], "for=10.1.2.3;proto=http");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "llm");
        for ip in ["0.0.0.0", "255.255.255.255", "127.0.0.1", "192.168.10.200"] {
            let f = Forwarding::new(ip.parse().unwrap());
            assert_eq!(f.for_ip, ip);
            assert_eq!(f.forwarded, format!("for={ip};proto=http"));
        }
        let f6 = Forwarding::new("::1".parse().unwrap());
        f6.apply(&mut h, Some(&HeaderValue::from_static("other")));
        assert_eq!(h["x-forwarded-for"], "10.1.2.3, ::1");
        assert_eq!(
            h["forwarded"],
            "for=10.1.2.3;proto=http, for=\"[::1]\";proto=http"
        );
        assert_eq!(h["x-forwarded-host"], "llm", "the first hop's host is kept");
    }

    #[test]
    fn request_id_is_generated_once() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = h["x-request-id"].clone();
        assert_eq!(id.len(), 32);
        ensure_request_id(&mut h);
        assert_eq!(h["x-request-id"], id);
    }
}
