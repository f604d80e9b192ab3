//! The SSE probe: time to first byte of a stream and the delay of every chunk, measured at the
//! client against the write time the backend stamped into each event.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(clap::Args)]
pub struct Args {
    /// `http://host:port/sse?...` (through a proxy or direct).
    #[arg(long)]
    url: http::Uri,
    /// Host header to send (a proxy routes on it).
    #[arg(long)]
    host: Option<String>,
    /// Streams to open, one after the other.
    #[arg(long, default_value_t = 50)]
    streams: u32,
    /// Give up on the whole run after this long.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

#[derive(Default)]
struct Samples {
    ttfb_us: Vec<f64>,
    delay_us: Vec<f64>,
    events: u64,
    /// Events that arrived in the same read as another: the sign of a proxy that batches.
    batched: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Duration::from_secs(args.timeout_secs);
    let samples = runtime.block_on(async {
        tokio::time::timeout(deadline, measure(&args))
            .await
            .context("SSE probe ran past --timeout-secs")?
    })?;
    println!(
        "{}",
        serde_json::json!({
            "streams": args.streams,
            "events": samples.events,
            "batchedEvents": samples.batched,
            "ttfbUs": summary(samples.ttfb_us),
            "chunkDelayUs": summary(samples.delay_us),
        })
    );
    Ok(())
}

async fn measure(args: &Args) -> anyhow::Result<Samples> {
    let authority = args
        .url
        .authority()
        .context("--url needs host:port")?
        .clone();
    let host = args.host.clone().unwrap_or_else(|| authority.to_string());
    let mut samples = Samples::default();
    for _ in 0..args.streams {
        let stream = TcpStream::connect(authority.as_str()).await?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let request = Request::get(args.url.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, &host)
            .header(http::header::ACCEPT, "text/event-stream")
            .body(Empty::<Bytes>::new())?;
        let started = Instant::now();
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            bail!("{} answered {}", args.url, response.status());
        }
        let mut body = response.into_body();
        let mut first = true;
        while let Some(frame) = body.frame().await {
            let arrived_ns = crate::wall_clock_ns();
            let Some(data) = frame?.into_data().ok() else {
                continue;
            };
            if first {
                samples.ttfb_us.push(started.elapsed().as_secs_f64() * 1e6);
                first = false;
            }
            let stamps = event_stamps(&data);
            if stamps.len() > 1 {
                samples.batched += stamps.len() as u64 - 1;
            }
            for written_ns in stamps {
                samples.events += 1;
                samples
                    .delay_us
                    .push(arrived_ns.saturating_sub(written_ns) as f64 / 1e3);
            }
        }
    }
    Ok(samples)
}

/// Write times of the events in one chunk (`data: <index> <ns>` lines, or chat chunks whose
/// content is `<index> <ns>`).
pub(crate) fn event_stamps(chunk: &[u8]) -> Vec<u128> {
    String::from_utf8_lossy(chunk)
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|rest| {
            // An OpenAI-shaped chunk carries `<index> <ns>` as its content.
            let content;
            let text = if rest.starts_with('{') {
                let v: serde_json::Value = serde_json::from_str(rest).ok()?;
                content = v["choices"][0]["delta"]["content"].as_str()?.to_owned();
                content.as_str()
            } else {
                rest
            };
            text.split_whitespace().nth(1)?.parse().ok()
        })
        .collect()
}

fn summary(mut values: Vec<f64>) -> serde_json::Value {
    values.sort_by(f64::total_cmp);
    let pick = |q: f64| -> f64 {
        if values.is_empty() {
            return 0.0;
        }
        let i = ((values.len() - 1) as f64 * q).round() as usize;
        (values[i] * 10.0).round() / 10.0
    };
    serde_json::json!({"p50": pick(0.5), "p99": pick(0.99), "max": pick(1.0), "n": values.len()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_read_from_every_event_of_a_chunk() {
        let chunk = b"data: 0 100\n\ndata: 1 250\n\n";
        assert_eq!(event_stamps(chunk), vec![100, 250]);
        assert!(event_stamps(b"data: [DONE]\n\n").is_empty());
    }

    #[test]
    fn summary_picks_nearest_rank() {
        let s = summary((1..=100).map(f64::from).collect());
        assert_eq!(s["p50"], 51.0);
        assert_eq!(s["max"], 100.0);
        assert_eq!(summary(vec![])["n"], 0);
    }
}
