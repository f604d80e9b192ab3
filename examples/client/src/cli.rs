//! Command-line interface of `infermesh-client` and its conversion into a request description.

use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

#[derive(Debug, Parser)]
#[command(
    name = "infermesh-client",
    version,
    about = "Small HTTP client and load tool for infermesh demos and tests"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send one request; print the status line and the body. Exit 0 iff the status is 2xx.
    Get(GetArgs),
    /// Send --requests requests, --concurrency at a time; print one JSON summary line.
    Load(LoadArgs),
    /// Send one request and print each server-sent event as it arrives, with ms since the start.
    /// Without --body, asks for a 16-token stream. Exit 0 iff 2xx and the stream ended with [DONE].
    Stream(StreamArgs),
}

/// What every subcommand sends.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Target URL (http://host[:port]/path); host names resolve through the system resolver.
    pub url: String,
    /// Extra request header, 'Name: value'; repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Request body (JSON); makes the request a POST unless --method says otherwise.
    #[arg(long)]
    pub body: Option<String>,
    /// HTTP method; defaults to POST with a body, GET without.
    #[arg(short = 'X', long)]
    pub method: Option<String>,
    /// Bound on the whole command's time, in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub request: RequestArgs,
    /// Also print the response headers.
    #[arg(short = 'i', long)]
    pub include: bool,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub request: RequestArgs,
    /// Number of requests to send.
    #[arg(short = 'n', long, default_value_t = 100)]
    pub requests: u64,
    /// Requests in flight at once.
    #[arg(short = 'c', long, default_value_t = 4)]
    pub concurrency: usize,
    /// Exit 0 even when some requests failed.
    #[arg(long)]
    pub allow_errors: bool,
    /// Vary the body: in request i, `{i}` becomes i and `{k}` becomes i modulo this (e.g. K
    /// system prompts shared by many distinct questions).
    #[arg(long, value_name = "K")]
    pub vary: Option<u64>,
}

#[derive(Debug, Args)]
pub struct StreamArgs {
    #[command(flatten)]
    pub request: RequestArgs,
}

/// Why the arguments cannot make a request.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArgError {
    #[error("invalid URL {0:?}: expected http://host[:port]/path")]
    Url(String),
    #[error("only http:// URLs are supported, got {0:?}")]
    Scheme(String),
    #[error("invalid header {0:?}: expected 'Name: value'")]
    Header(String),
    #[error("invalid HTTP method {0:?}")]
    Method(String),
    #[error("--concurrency must be at least 1")]
    Concurrency,
}

/// A fully checked request, ready to be sent any number of times.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// Bound on the whole command.
    pub timeout: Duration,
    /// `load --vary K`: request `i`'s body has `{i}` replaced by `i` and `{k}` by `i % K`.
    pub vary: Option<u64>,
}

impl RequestSpec {
    /// The spec of the `i`th request of a load: the body varied as `vary` says.
    pub fn nth(&self, i: u64) -> std::borrow::Cow<'_, RequestSpec> {
        let (Some(k), Some(body)) = (self.vary, &self.body) else {
            return std::borrow::Cow::Borrowed(self);
        };
        let text = String::from_utf8_lossy(body)
            .replace("{i}", &i.to_string())
            .replace("{k}", &(i % k.max(1)).to_string());
        std::borrow::Cow::Owned(RequestSpec {
            body: Some(Bytes::from(text)),
            ..self.clone()
        })
    }
}

/// Parses one `Name: value` header.
pub fn parse_header(raw: &str) -> Result<(HeaderName, HeaderValue), ArgError> {
    let bad = || ArgError::Header(raw.to_owned());
    let (name, value) = raw.split_once(':').ok_or_else(bad)?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
    Ok((name, value))
}

impl RequestArgs {
    /// Checks URL, headers and method; `default_body` is used when --body is absent.
    pub fn to_spec(&self, default_body: Option<&str>) -> Result<RequestSpec, ArgError> {
        let uri: Uri = self
            .url
            .parse()
            .map_err(|_| ArgError::Url(self.url.clone()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(ArgError::Scheme(other.to_owned())),
            None => return Err(ArgError::Url(self.url.clone())),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(ArgError::Url(self.url.clone()));
        }
        let mut headers = HeaderMap::new();
        for raw in &self.headers {
            let (name, value) = parse_header(raw)?;
            headers.append(name, value);
        }
        let body = self
            .body
            .as_deref()
            .or(default_body)
            .map(|b| Bytes::copy_from_slice(b.as_bytes()));
        if body.is_some() && !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let method = match &self.method {
            Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| ArgError::Method(m.clone()))?,
            None if body.is_some() => Method::POST,
            None => Method::GET,
        };
        Ok(RequestSpec {
            method,
            uri,
            headers,
            body,
            timeout: Duration::from_secs(self.timeout_secs),
            vary: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_varied_load_gives_each_request_its_own_body() {
        let args = RequestArgs {
            url: "http://llm/v1/chat/completions".into(),
            headers: vec![],
            body: Some(r#"{"s":"system {k}","q":"question {i}"}"#.into()),
            method: None,
            timeout_secs: 5,
        };
        let mut spec = args.to_spec(None).unwrap();
        assert_eq!(spec.nth(7).body, spec.body, "without --vary, one body");
        spec.vary = Some(3);
        assert_eq!(
            spec.nth(7).body.as_deref(),
            Some(&br#"{"s":"system 1","q":"question 7"}"#[..])
        );
    }

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("infermesh-client").chain(args.iter().copied()))
            .expect("arguments parse")
            .command
    }

    #[test]
    fn get_with_headers() {
        let Command::Get(get) =
            parse(&["get", "http://svc:8080/", "-H", "x-user: beta", "-H", "a:b"])
        else {
            panic!("expected get");
        };
        let spec = get.request.to_spec(None).expect("valid");
        assert_eq!(spec.method, Method::GET);
        assert_eq!(spec.uri.host(), Some("svc"));
        assert_eq!(spec.headers["x-user"], "beta");
        assert_eq!(spec.headers["a"], "b");
        assert!(spec.body.is_none());
        assert_eq!(spec.timeout, Duration::from_secs(60));
    }

    #[test]
    fn load_flags_and_body_make_post() {
        let Command::Load(load) = parse(&[
            "load",
            "http://m.ns.svc.cluster.local/v1/completions",
            "--requests",
            "300",
            "--concurrency",
            "8",
            "--body",
            r#"{"prompt":"x"}"#,
            "--allow-errors",
            "--timeout-secs",
            "5",
        ]) else {
            panic!("expected load");
        };
        assert_eq!(
            (load.requests, load.concurrency, load.allow_errors),
            (300, 8, true)
        );
        let spec = load.request.to_spec(None).expect("valid");
        assert_eq!(spec.method, Method::POST);
        assert_eq!(spec.headers[CONTENT_TYPE], "application/json");
        assert_eq!(spec.timeout, Duration::from_secs(5));
    }

    #[test]
    fn stream_uses_default_body_and_explicit_method_wins() {
        let Command::Stream(s) = parse(&["stream", "http://h/v1/completions", "-X", "put"]) else {
            panic!("expected stream");
        };
        let spec = s.request.to_spec(Some("{}")).expect("valid");
        assert_eq!(spec.method, Method::PUT);
        assert_eq!(spec.body.as_deref(), Some(&b"{}"[..]));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(Cli::try_parse_from(["infermesh-client", "load"]).is_err());
        assert_eq!(
            parse_header("nocolon"),
            Err(ArgError::Header("nocolon".into()))
        );
        assert_eq!(
            parse_header("bad name: v"),
            Err(ArgError::Header("bad name: v".into()))
        );
        let args = |url: &str| RequestArgs {
            url: url.to_owned(),
            headers: vec![],
            body: None,
            method: None,
            timeout_secs: 1,
        };
        assert_eq!(
            args("https://h/").to_spec(None).unwrap_err(),
            ArgError::Scheme("https".into())
        );
        assert!(matches!(
            args("/just/a/path").to_spec(None),
            Err(ArgError::Url(_))
        ));
        assert!(matches!(
            args("not a url").to_spec(None),
            Err(ArgError::Url(_))
        ));
    }
}
