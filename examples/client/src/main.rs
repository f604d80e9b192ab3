//! `infermesh-client` entry point: dispatch the subcommand, print results, set the exit code.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use infermesh_client::cli::{ArgError, Cli, Command, GetArgs, LoadArgs, StreamArgs};
use infermesh_client::stream::StreamItem;
use infermesh_client::{load, stream, transport};

#[tokio::main]
async fn main() -> ExitCode {
    let command = async {
        match Cli::parse().command {
            Command::Get(args) => get(args).await,
            Command::Load(args) => run_load(args).await,
            Command::Stream(args) => run_stream(args).await,
        }
    };
    // As PID 1 in a pod nothing else ends the process on SIGTERM: stop at once.
    let result = tokio::select! {
        result = command => result,
        () = terminated() => {
            eprintln!("infermesh-client: stopped by signal");
            return ExitCode::from(143);
        }
    };
    result.unwrap_or_else(|e| {
        // One line with the causes; no backtrace for a user-facing failure.
        eprintln!("infermesh-client: {e:#}");
        ExitCode::FAILURE
    })
}

/// Completes on SIGTERM or Ctrl-C.
async fn terminated() {
    infermesh_admin::shutdown_signal().await;
}

fn exit_if(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let spec = args.request.to_spec(None)?;
    let resp = transport::fetch(&transport::client(), &spec).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", resp.status_line())?;
    if args.include {
        for (name, value) in &resp.headers {
            writeln!(out, "{name}: {}", String::from_utf8_lossy(value.as_bytes()))?;
        }
        writeln!(out)?;
    }
    out.write_all(&resp.body)?;
    if !resp.body.is_empty() && !resp.body.ends_with(b"\n") {
        writeln!(out)?;
    }
    out.flush()?;
    Ok(exit_if(resp.status.is_success()))
}

async fn run_load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    if args.concurrency == 0 {
        return Err(ArgError::Concurrency.into());
    }
    let mut spec = args.request.to_spec(None)?;
    spec.vary = args.vary;
    let summary = load::run(&transport::client(), &spec, args.requests, args.concurrency).await;
    let line = serde_json::to_string(&summary).context("cannot encode the summary")?;
    println!("{line}");
    Ok(exit_if(summary.errors == 0 || args.allow_errors))
}

async fn run_stream(args: StreamArgs) -> anyhow::Result<ExitCode> {
    let url_path = args
        .request
        .url
        .parse::<http::Uri>()
        .map(|u| u.path().to_owned())
        .unwrap_or_default();
    let spec = args
        .request
        .to_spec(Some(stream::default_body(&url_path)))?;
    let mut out = std::io::stdout();
    let end = stream::run(&transport::client(), &spec, |item| {
        // Printed and flushed one by one, so a reader sees tokens as they come.
        let mut out = out.lock();
        let _ = match item {
            StreamItem::Head {
                at,
                status,
                version,
            } => writeln!(
                out,
                "{:>6}ms HTTP {status} x-model-version: {}",
                at.as_millis(),
                version.as_deref().unwrap_or("-")
            ),
            StreamItem::Event { at, text } => writeln!(out, "{:>6}ms {text}", at.as_millis()),
        };
        let _ = out.flush();
    })
    .await?;
    writeln!(
        out,
        "# {} events in {} ms, {}",
        end.events,
        end.elapsed.as_millis(),
        if end.done {
            "ended with [DONE]"
        } else {
            "no [DONE]"
        }
    )?;
    Ok(exit_if(end.status.is_success() && end.done))
}
