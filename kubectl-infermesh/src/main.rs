//! `kubectl infermesh`: a kubectl plugin (kubectl runs any `kubectl-<name>` binary on its PATH as
//! `kubectl <name>`). `stat` shows each variant of the ModelServices in scope over a window, from
//! every meshed pod's sidecar through the API server's pod proxy; `top` (or `stat -w`) refreshes
//! it in place; `check` says whether the install is healthy and what to fix. It reads the
//! cluster kubectl would (`KUBECONFIG`, the current context and its namespace).
#![forbid(unsafe_code)]

mod check;
mod histogram;
mod stat;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::Client;

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-infermesh",
    bin_name = "kubectl infermesh",
    version,
    about
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Per variant: requests, success, TTFT and TPOT percentiles, tokens/s, in flight.
    Stat(StatArgs),
    /// `stat -w`: the same table, refreshed in place.
    Top(StatArgs),
    /// Checks the install: CRD, operator, webhook, injection, sidecars.
    Check,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
struct StatArgs {
    /// Only this ModelService.
    name: Option<String>,
    /// The namespace (default: the current context's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    all_namespaces: bool,
    /// The window the figures cover, from 10s to 5m (10-second resolution).
    #[arg(long, default_value = "1m", value_parser = window)]
    since: Duration,
    /// Refresh in place until interrupted.
    #[arg(short, long)]
    watch: bool,
    /// Time between refreshes with --watch.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// A `--since` the sidecars answer for.
fn window(raw: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if !(Duration::from_secs(10)..=Duration::from_secs(300)).contains(&d) {
        return Err(format!("{raw}: the sidecars keep 10s to 5m"));
    }
    Ok(d)
}

/// Left-aligned columns three spaces apart, as kubectl prints them.
fn columns(lines: &[Vec<String>]) -> String {
    let n = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            lines
                .iter()
                .filter_map(|l| l.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let mut text = String::new();
        for (i, cell) in line.iter().enumerate() {
            text.push_str(cell);
            if i + 1 < line.len() {
                let pad = widths[i] - cell.chars().count() + 3;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

async fn stat(client: Client, args: StatArgs, watch: bool) -> anyhow::Result<()> {
    let scope = stat::Scope {
        namespace: if args.all_namespaces {
            None
        } else {
            Some(
                args.namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_owned()),
            )
        },
        name: args.name.clone(),
    };
    loop {
        let report = stat::collect(&client, &scope, args.since).await?;
        let text = match args.output {
            Output::Table => stat::table(&report, args.all_namespaces),
            Output::Json => serde_json::to_string_pretty(&report)? + "\n",
        };
        let mut stdout = std::io::stdout().lock();
        if !watch {
            stdout.write_all(text.as_bytes())?;
            return Ok(());
        }
        // Home and clear, then the table: it refreshes in place in a terminal.
        write!(
            stdout,
            "\x1b[H\x1b[2J{text}\nover the last {}, every {}; Ctrl-C to stop\n",
            humantime::format_duration(args.since),
            humantime::format_duration(args.interval)
        )?;
        stdout.flush()?;
        drop(stdout);
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn check(client: Client) -> anyhow::Result<bool> {
    let outcomes = tokio::time::timeout(check::TIMEOUT, check::run(&client))
        .await
        .context("the checks did not finish within 60s: is the API server reachable?")?;
    print!("{}", check::render(&outcomes));
    Ok(outcomes.iter().all(|o| o.ok))
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let client = Client::try_default()
        .await
        .context("no cluster to talk to: set KUBECONFIG or a kubectl context")?;
    match cli.command {
        Command::Stat(args) => {
            let watch = args.watch;
            stat(client, args, watch).await.map(|()| true)
        }
        Command::Top(args) => stat(client, args, true).await.map(|()| true),
        Command::Check => check(client).await,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // The process-wide TLS provider kube's client uses (ring, as in the other binaries).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(Cli::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_three_spaces_apart() {
        let rows = vec![
            vec!["NAME".to_owned(), "N".to_owned()],
            vec!["a".to_owned(), "1000".to_owned()],
        ];
        assert_eq!(columns(&rows), "NAME   N\na      1000\n");
    }

    #[test]
    fn the_window_is_what_the_sidecars_keep() {
        assert_eq!(window("90s"), Ok(Duration::from_secs(90)));
        assert!(window("5s").is_err());
        assert!(window("10m").unwrap_err().contains("10s to 5m"));
        let cli = Cli::try_parse_from([
            "kubectl-infermesh",
            "stat",
            "llm",
            "-n",
            "demo",
            "-o",
            "json",
        ])
        .unwrap();
        let Command::Stat(a) = cli.command else {
            panic!("stat")
        };
        assert_eq!(
            (a.name.as_deref(), a.namespace.as_deref()),
            (Some("llm"), Some("demo"))
        );
        assert!(Cli::try_parse_from(["kubectl-infermesh", "stat", "-A", "-n", "x"]).is_err());
    }
}
