//! Which ModelService a request is for: the authority of an absolute-form URI (a proxy request, or
//! HTTP/2 `:authority`) or the `Host` header, as `name`, `name.ns`, `name.ns.svc` or
//! `name.ns.svc.<cluster domain>`, with an optional port.

use std::borrow::Cow;
use std::sync::Arc;

use http::request::Parts;

use super::errors::ProxyError;
use crate::config::table::{RoutingTable, Service};

/// The host a request names, without port or user info.
pub(crate) fn request_host(parts: &Parts) -> Result<&str, ProxyError> {
    let raw = match parts.uri.authority() {
        Some(a) => a.as_str(),
        None => parts
            .headers
            .get(http::header::HOST)
            .ok_or(ProxyError::NoHost)?
            .to_str()
            .map_err(|_| ProxyError::Malformed("the Host header is not ASCII"))?,
    };
    Ok(strip_port(raw.rsplit('@').next().unwrap_or(raw)))
}

fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h; // an IPv6 literal never names a service
    }
    h.split(':').next().unwrap_or(h)
}

/// Splits a host into (service name, namespace) if it has a service shape.
pub(crate) fn parse_host(host: &str) -> Option<(&str, Option<&str>)> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let mut labels = host.split('.');
    let name = labels.next().filter(|n| !n.is_empty())?;
    let ns = labels.next();
    match labels.next() {
        None => {}
        Some(l) if l.eq_ignore_ascii_case("svc") => {}
        Some(_) => return None,
    }
    if ns.is_some_and(str::is_empty) {
        return None;
    }
    Some((name, ns))
}

pub(crate) fn service<'t>(
    table: &'t RoutingTable,
    parts: &Parts,
) -> Result<&'t Arc<Service>, ProxyError> {
    let host = request_host(parts)?;
    let unknown = || ProxyError::UnknownService(host.to_owned());
    let (name, ns) = parse_host(host).ok_or_else(unknown)?;
    let name: Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    };
    let Some(svc) = table.service(&name) else {
        return Err(match table.refused.get(name.as_ref()) {
            Some(reason) => ProxyError::Refused {
                service: name.into_owned(),
                reason: reason.clone(),
            },
            None => unknown(),
        });
    };
    match ns {
        Some(ns) if !svc.namespace.is_empty() && !ns.eq_ignore_ascii_case(&svc.namespace) => {
            Err(unknown())
        }
        _ => Ok(svc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_forms() {
        assert_eq!(parse_host("llm"), Some(("llm", None)));
        assert_eq!(parse_host("llm.team"), Some(("llm", Some("team"))));
        assert_eq!(parse_host("llm.team.svc"), Some(("llm", Some("team"))));
        assert_eq!(
            parse_host("llm.team.svc.cluster.local"),
            Some(("llm", Some("team")))
        );
        assert_eq!(
            parse_host("llm.team.svc.cluster.local."),
            Some(("llm", Some("team")))
        );
        assert_eq!(parse_host("llm.team.example.com"), None);
        assert_eq!(parse_host(""), None);
        assert_eq!(parse_host(".x"), None);
        assert_eq!(parse_host("a..svc"), None);
        assert_eq!(strip_port("llm:8080"), "llm");
        assert_eq!(strip_port("[::1]:80"), "[::1]:80");
    }

    #[test]
    fn host_from_absolute_uri_or_header() {
        let (p, _) = http::Request::get("http://user@llm.ns:80/v1")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(request_host(&p).unwrap(), "llm.ns");
        let (p, _) = http::Request::get("/v1")
            .header("host", "llm:15001")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(request_host(&p).unwrap(), "llm");
        let (p, _) = http::Request::get("/v1").body(()).unwrap().into_parts();
        assert!(matches!(request_host(&p), Err(ProxyError::NoHost)));
    }
}
