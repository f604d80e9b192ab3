//! `infermesh-bench`: the fixed parts of `make bench`.
//!
//! - `backend`: the fastest honest HTTP server we can write (tiny fixed body, HTTP/1.1 and h2c), plus
//!   an SSE endpoint whose events carry the wall-clock time they were written, so a client can tell
//!   how long each chunk spent in flight.
//! - `sse`: opens SSE streams through a URL and reports time to first byte and per-chunk delay.

mod backend;
mod sse;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve `GET /*` with a 2-byte body and `GET /sse?events=N&interval_ms=M` as an event stream;
    /// a POST has its body read and its length answered in `x-body-len`.
    Backend(backend::Args),
    /// Measure SSE streams through a URL and print one JSON line of figures.
    Sse(sse::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Backend(args) => backend::run(args),
        Command::Sse(args) => sse::run(args),
    }
}

/// Nanoseconds since the Unix epoch: the clock both ends of an SSE measurement share.
pub fn wall_clock_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
