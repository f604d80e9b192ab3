//! `infermesh-client` entry point: dispatch the subcommand, print results, set the exit code.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use infermesh_client::cli::{Cli, Command, GetArgs};
use infermesh_client::transport;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Get(args) => get(args).await,
        Command::Load(_) | Command::Stream(_) => anyhow::bail!("not available in this build"),
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
    if !resp.body.ends_with(b"\n") && !resp.body.is_empty() {
        writeln!(out)?;
    }
    out.flush()?;
    Ok(if resp.status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
