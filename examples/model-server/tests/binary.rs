//! Runs the real `infermesh-model-server` binary: it listens, answers with its version header,
//! and exits promptly and cleanly on SIGTERM (as PID 1 in a container must).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn serves_then_exits_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_infermesh-model-server"))
        .args(["--address", "127.0.0.1", "--port", "0", "--version", "vbin"])
        .env("HOSTNAME", "pod-bin")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    // The first log line announces the bound address ("addr=127.0.0.1:PORT").
    let first = lines.next().expect("a log line").expect("readable");
    let addr = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {first:?}"))
        .to_owned();

    let mut conn = TcpStream::connect(&addr).expect("connects");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout set");
    conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .expect("request sent");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("answer read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("x-model-version: vbin"), "{answer}");
    assert!(answer.contains(r#""pod":"pod-bin""#), "{answer}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait works") {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("server still running 5 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit}");
}
