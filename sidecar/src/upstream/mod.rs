//! Sending to an upstream: the request body a try sends (`body`, buffered for replay or
//! streamed, within the sidecar-wide cap of `replay`), the keep-alive HTTP/1.1 connections of one address (`pool`), and the client that
//! sends one try over them or over HTTP/2 (`forward`); a gRPC answer's status in HTTP terms
//! (`grpc`). This is the bottom of the request path:
//! it knows addresses and bodies, not services, variants or retries.

pub(crate) mod body;
pub(crate) mod forward;
pub(crate) mod grpc;
pub(crate) mod pool;
pub(crate) mod replay;
