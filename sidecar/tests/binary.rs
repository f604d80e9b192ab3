//! The built `infermesh-sidecar` binary: serves, reports ready, and exits 0 promptly on SIGTERM.

mod common;

use std::net::TcpListener as StdListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_exits_zero_on_sigterm() {
    let b = backend("v1", Mode::Ok).await;
    let path = temp_path("bin");
    write_config(
        &path,
        &config(serde_json::json!({}), &[("s", 100, vec![b.addr])]),
    );
    let (inbound, outbound, admin) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_infermesh-sidecar"))
        .args(["--config-file", path.to_str().unwrap()])
        .args(["--inbound", &format!("127.0.0.1:{inbound}")])
        .args(["--outbound", &format!("127.0.0.1:{outbound}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--workers", "1"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let c = client();
    let t = Instant::now();
    loop {
        let ready = c
            .get(format!("http://127.0.0.1:{admin}/ready").parse().unwrap())
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let addr = format!("127.0.0.1:{inbound}").parse().unwrap();
    for _ in 0..50 {
        assert_eq!(get(&c, addr, "llm", &[]).await.unwrap().status, 200);
    }
    if let Some(kib) = rss_kib(child.id()) {
        println!("sidecar RSS after 50 requests: {kib} KiB");
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let t = Instant::now();
    loop {
        if let Some(code) = child.try_wait().unwrap() {
            assert!(code.success(), "exit status {code:?}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "did not exit promptly on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
