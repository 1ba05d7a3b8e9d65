//! Attacks on the HTTP layer of `drover serve` (issue 13, items 2, 7 and
//! 8), each against a real server (the `drover` binary): idle and
//! half-open connections (the header timeout, the connection limit, the
//! descriptor limit, SIGTERM), DNS rebinding (the Host header), over-size
//! bodies, and TLS. Every test asserts the safe answer, then that the
//! server still answers `/healthz` and that a run submitted before the
//! attack ends as it would have.
//!
//! Layout: `common::server` starts and drives the server; the helpers
//! below write HTTP by hand where the test must choose every byte (the
//! Host header, a half-sent request), hold raw connections, and make
//! certificates (rcgen).

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::server::*;
use common::{repo, test_home};

// ---------------------------------------------------------------------
// helpers

/// The address of a server's base URL.
fn addr_of(s: &Server) -> SocketAddr {
    let hostport = s
        .base
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'))
        .unwrap_or_else(|| panic!("base URL {}", s.base));
    hostport.parse().unwrap_or_else(|e| panic!("address {hostport}: {e}"))
}

/// A run of `servers` servers whose installs take `seconds`: submitted,
/// and its control directory.
async fn run_before_attack(s: &Server, dir: &Path, name: &str, servers: usize, seconds: f64) -> String {
    let (file, control_dir) = workflow(dir, name, servers, &["a"], "");
    control(&control_dir, "install", &format!("sleep {seconds}"));
    s.submit(&file).await
}

/// The server still answers, and the run submitted before the attack
/// ended as it would have: succeeded, every task succeeded.
async fn assert_intact(s: &Server, run: &str) {
    let (code, health) = s.get("/healthz").await;
    assert_eq!(code, StatusCode::OK, "{health}");
    let end = s.wait_end(run).await;
    assert_eq!(end["status"], "succeeded", "{end:#}");
    let tasks = tasks_of(&end);
    assert!(!tasks.is_empty(), "{end:#}");
    for t in tasks {
        assert_eq!(t["status"], "succeeded", "{t}");
    }
}

/// `n` connections that send nothing.
fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| TcpStream::connect(addr).unwrap_or_else(|e| panic!("connection {i} to {addr}: {e}")))
        .collect()
}

/// Whether the server closed `c`: it reads the end of the stream, or a
/// reset. What the server sent before is read and dropped.
fn closed(c: &TcpStream) -> bool {
    c.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut &*c, &mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

fn count_closed(cs: &[TcpStream]) -> usize {
    cs.iter().filter(|c| closed(c)).count()
}

/// Poll until `cond` holds (deadline `LIMIT`); how long it took.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "not {what} within {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// One request as written (`Connection: close` added); the status code
/// and the body.
async fn raw(addr: SocketAddr, request_line: &str, headers: &[String]) -> (u16, String) {
    let mut text = format!("{request_line}\r\n");
    for h in headers {
        text.push_str(h);
        text.push_str("\r\n");
    }
    text.push_str("Connection: close\r\n\r\n");
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(text.as_bytes()).await.expect("write the request");
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, c.read_to_end(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("no answer to {request_line:?} within {LIMIT:?}"))
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn bearer(s: &Server) -> Vec<String> {
    s.token.iter().map(|t| format!("Authorization: Bearer {t}")).collect()
}

/// A CA, and a server certificate it issued for localhost and 127.0.0.1:
/// the CA's PEM file, the server's certificate and key files.
fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("drover test CA {name}"));
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
    let key = rcgen::KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("server certificate");
    let files = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&files.0, ca.pem()).expect("write CA");
    std::fs::write(&files.1, cert.pem()).expect("write certificate");
    std::fs::write(&files.2, key.serialize_pem()).expect("write key");
    (files.0, files.1, files.2)
}

/// `drover ...` with the test environment of a server in `dir`.
fn drover(dir: &Path, wrapper: &[&str]) -> Command {
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(env!("CARGO_BIN_EXE_drover"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_drover")),
    };
    cmd.current_dir(dir)
        .env("DROVER_HOME", test_home())
        .env("DROVER_VENV", repo().join(".venv"))
        .env("XDG_DATA_HOME", dir.join("xdg"))
        .env_remove("DROVER_TOKEN")
        .env_remove("DROVER_TOKEN_FILE")
        .env_remove("DROVER_METRICS_TOKEN")
        .env_remove("DROVER_STATE")
        .env_remove("DROVER_API")
        .env_remove("DROVER_CACERT")
        .env_remove("RUST_LOG");
    cmd
}

fn serve_args(dir: &Path) -> Vec<String> {
    vec![
        "serve".into(),
        "--state".into(),
        dir.join("state.db").display().to_string(),
        "--logs".into(),
        dir.join("server-logs").display().to_string(),
    ]
}

/// `drover serve ARGS` that must refuse to start: its exit status and
/// what it printed.
fn refused_start(dir: &Path, args: &[&str], wrapper: &[&str]) -> (ExitStatus, String) {
    let mut child = drover(dir, wrapper)
        .args(serve_args(dir))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drover serve");
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("drover serve {args:?} did not stop within {LIMIT:?}: it should refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).expect("stderr");
    }
    (status, err)
}

/// `drover serve ARGS` (its own --listen) until it prints where it
/// listens: the child and that URL.
fn started(dir: &Path, args: &[&str]) -> (Child, String) {
    let mut child = drover(dir, &[])
        .args(serve_args(dir))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drover serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(LIMIT) {
            Ok(line) => match line.strip_prefix("drover: listening on ") {
                Some(url) => return (child, url.trim().to_string()),
                None => seen.push(line),
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("drover serve {args:?} did not listen; stderr:\n{}", seen.join("\n"));
            }
        }
    }
}

/// SIGTERM a server started with [`started`]; it must exit 0.
fn stop(mut child: Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            assert!(s.success(), "drover serve exited with {s}");
            return;
        }
        assert!(Instant::now() < deadline, "drover serve did not exit within {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

// ---------------------------------------------------------------------
// idle connections, the connection limit, the descriptor limit

/// 300 connections that never send a request, against a server under
/// `ulimit -n 200` with `--max-connections 100`: it never holds more than
/// 100 (new ones take the place of the idle ones), a real request still
/// gets through, the rest are closed after the 2 s header timeout, and a
/// run in progress goes on (its tasks need descriptors too).
#[tokio::test(flavor = "multi_thread")]
async fn three_hundred_idle_connections_cannot_exhaust_descriptors_or_lock_clients_out() {
    let dir = tempdir();
    let s = Server::start_wrapped(
        dir.path(),
        &["--max-connections", "100", "--header-timeout", "2"],
        &[],
        &test_home(),
        &["prlimit", "--nofile=200:200"],
    );
    let pid = s.child.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.split_whitespace().filter(|w| *w == "200").count() == 2),
        "the server does not run under ulimit -n 200:\n{limits}"
    );
    let run = run_before_attack(&s, dir.path(), "before", 2, 3.0).await;
    s.wait_running(1).await;

    let addr = addr_of(&s);
    let started = Instant::now();
    let attack = idle_connections(addr, 300);
    // Each connection beyond 100 took the place of the one idle longest.
    wait_for("200 connections closed", || count_closed(&attack) >= 200);
    let open = attack.len() - count_closed(&attack);
    assert!(
        open <= 100,
        "{open} idle connections held, more than --max-connections 100"
    );
    let files = open_files(pid);
    assert!(files < 200, "the server has {files} files open under a limit of 200");
    eprintln!("after 300 idle connections: {open} held, the server has {files} files open (limit 200)");

    // A client still gets through, authenticated requests included.
    let (code, health) = s.get("/healthz").await;
    assert_eq!(code, StatusCode::OK, "{health}");
    let (code, list) = s.get("/workflows").await;
    assert_eq!(code, StatusCode::OK, "{list}");

    // The rest are closed by the header timeout, not before.
    let all_closed = wait_for("every idle connection closed", || count_closed(&attack) == attack.len());
    let since_connect = started.elapsed();
    eprintln!("the last idle connections closed {since_connect:?} after they connected (header timeout 2 s)");
    assert!(
        since_connect >= Duration::from_millis(1500),
        "closed after {since_connect:?}: before the 2 s header timeout"
    );
    assert!(
        all_closed < Duration::from_secs(8),
        "idle connections were still open {all_closed:?} later (header timeout 2 s)"
    );
    let log = std::fs::read_to_string(dir.path().join("server.out")).expect("server.out");
    assert!(log.contains("connection limit reached"), "{log}");

    assert_intact(&s, &run).await;
}

/// When every connection is serving a request (event streams), a new
/// connection is closed at once instead of waiting; once the streams end,
/// clients get through again.
#[tokio::test(flavor = "multi_thread")]
async fn at_the_limit_with_every_connection_busy_new_connections_are_closed_at_once() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--max-connections", "3"]);
    let run = run_before_attack(&s, dir.path(), "busy", 1, 6.0).await;
    s.wait_running(1).await;
    // Three clients, so three connections, each following the run.
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut req = reqwest::Client::new().get(s.url(&format!("/workflows/{run}/events?follow=true")));
        if let Some(t) = &s.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("follow the run");
        assert_eq!(resp.status(), StatusCode::OK);
        streams.push(resp);
    }
    let addr = addr_of(&s);
    let extra = idle_connections(addr, 1);
    let waited = wait_for("the connection beyond the limit closed", || closed(&extra[0]));
    assert!(waited < Duration::from_secs(1), "closed only after {waited:?}");
    // So is a client's request: the three streams still serve the run.
    let refused = reqwest::Client::new()
        .get(s.url("/healthz"))
        .timeout(LIMIT)
        .send()
        .await;
    assert!(refused.is_err(), "a fourth connection was served: {refused:?}");
    // The streams end with the run; then the server takes clients again.
    for st in streams {
        tokio::time::timeout(LIMIT, st.bytes())
            .await
            .expect("the stream ends with the run")
            .expect("the stream");
    }
    let (code, end) = s.get(&format!("/workflows/{run}/status")).await;
    assert_eq!(code, StatusCode::OK, "{end}");
    assert_intact(&s, &run).await;
}

/// `--max-connections` must fit `ulimit -n`: else the server says so and
/// does not start.
#[test]
fn a_connection_limit_beyond_the_descriptor_limit_refuses_to_start() {
    let dir = tempdir();
    let (status, err) = refused_start(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--max-connections", "512"],
        &["prlimit", "--nofile=200:200"],
    );
    assert!(!status.success(), "{err}");
    for want in ["--max-connections 512", "576", "200", "ulimit -n", "136"] {
        assert!(err.contains(want), "the message should name {want:?}: {err}");
    }
}

// ---------------------------------------------------------------------
// SIGTERM with idle and half-open connections

/// Idle connections, connections that sent half a request, and a
/// keep-alive connection between requests do not hold up SIGTERM (before:
/// a half-sent request held it until the client left); the run in
/// progress is checkpointed and ends at the next start.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_idle_and_half_open_connections_exits_at_once() {
    let dir = tempdir();
    let mut s = Server::start(dir.path(), &["--shutdown-grace", "1"]);
    let run = run_before_attack(&s, dir.path(), "term", 2, 4.0).await;
    s.wait_running(1).await;
    let addr = addr_of(&s);
    let mut held = idle_connections(addr, 50);
    for c in idle_connections(addr, 50) {
        let mut c = c;
        std::io::Write::write_all(&mut c, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
            .expect("half a request");
        held.push(c);
    }
    let mut keep_alive = TcpStream::connect(addr).expect("connect");
    std::io::Write::write_all(&mut keep_alive, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
    let mut answer = [0u8; 12];
    std::io::Read::read_exact(&mut keep_alive, &mut answer).expect("answer");
    assert_eq!(&answer, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&answer));
    held.push(keep_alive);

    let asked = Instant::now();
    let status = s.terminate();
    let took = asked.elapsed();
    eprintln!("SIGTERM with 101 idle or half-open connections and a run in progress: exited after {took:?}");
    assert!(status.success(), "{status}");
    // --shutdown-grace 1 for the run's tasks, and no wait for connections.
    assert!(took < Duration::from_secs(4), "exit took {took:?}");
    assert_eq!(
        count_closed(&held),
        held.len(),
        "connections left open by an exited server"
    );

    let s = Server::start(dir.path(), &[]);
    assert_intact(&s, &run).await;
}

// ---------------------------------------------------------------------
// the Host header (DNS rebinding)

/// A page of evil.example whose name was rebound to 127.0.0.1 sends
/// `Host: evil.example`: refused (421) before authentication, /healthz
/// included; the server's own names pass.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_host_header_is_refused_and_the_servers_own_names_pass() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &["--public-name", "Drover.Test"]);
    let run = run_before_attack(&s, dir.path(), "hosts", 1, 0.5).await;
    let addr = addr_of(&s);
    let port = addr.port();
    let auth = bearer(&s);

    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        "localhost.evil.example".into(),
    ] {
        for path in ["/healthz", "/workflows"] {
            let mut headers = vec![format!("Host: {host}")];
            headers.extend(auth.iter().cloned());
            let (code, body) = raw(addr, &format!("GET {path} HTTP/1.1"), &headers).await;
            assert_eq!(code, 421, "Host {host} {path}: {body}");
            let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
            assert_error(
                &(StatusCode::MISDIRECTED_REQUEST, body),
                StatusCode::MISDIRECTED_REQUEST,
                "unknown_host",
                &[host.split(':').next().unwrap_or(&host), "--public-name"],
            );
        }
    }
    // No Host header: HTTP/1.1 requires one (400); HTTP/1.0 may omit it,
    // and a browser never does, so it is no rebinding.
    let (code, body) = raw(addr, "GET /healthz HTTP/1.1", &[]).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("Host header"), "{body}");
    let (code, body) = raw(addr, "GET /healthz HTTP/1.0", &[]).await;
    assert_eq!(code, 200, "{body}");

    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("[::1]:{port}"),
        format!("drover.test:{port}"),
        "DROVER.TEST.".to_string(),
    ] {
        let (code, body) = raw(addr, "GET /healthz HTTP/1.1", &[format!("Host: {host}")]).await;
        assert_eq!(code, 200, "Host {host}: {body}");
        let mut headers = vec![format!("Host: {host}")];
        headers.extend(auth.iter().cloned());
        let (code, body) = raw(addr, "GET /workflows HTTP/1.1", &headers).await;
        assert_eq!(code, 200, "Host {host}: {body}");
    }
    assert_intact(&s, &run).await;
}

// ---------------------------------------------------------------------
// over-size bodies

/// A body over the 2 MiB limit is 413 with a JSON error naming the limit,
/// whether its length is announced or it is sent in chunks; a body under
/// the limit is read (and judged on what it says).
#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_body_is_refused_with_413() {
    let dir = tempdir();
    let s = Server::start(dir.path(), &[]);
    let run = run_before_attack(&s, dir.path(), "big", 1, 0.5).await;
    let big = json!({"source": "x".repeat(3 << 20)});

    let got = s.post("/workflows/batch", big.clone()).await;
    assert_error(
        &got,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        &["2097152 bytes", "2 MiB"],
    );

    let bytes = serde_json::to_vec(&big).expect("json");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = bytes.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
    let resp = s
        .request(reqwest::Method::POST, "/workflows/batch")
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .expect("POST in chunks");
    let got = json_of(resp).await;
    assert_error(&got, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", &["2 MiB"]);

    // Under the limit: read, and refused for what it is (not KCL).
    let (code, body) = s.post("/workflows/batch", json!({"source": "y".repeat(1 << 20)})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_ne!(body["code"], "payload_too_large", "{body}");

    assert_intact(&s, &run).await;
}

// ---------------------------------------------------------------------
// TLS

/// With --tls-cert/--tls-key the API is HTTPS: `drover batch --cacert`
/// (or DROVER_CACERT) works, without it the certificate is refused with a
/// hint, plain HTTP to the port gets no answer, and a TLS handshake that
/// never comes is closed after the header timeout.
#[tokio::test(flavor = "multi_thread")]
async fn tls_serves_https_and_batch_trusts_the_server_with_cacert() {
    let dir = tempdir();
    let (ca, cert, key) = certificates(dir.path(), "a");
    let cert_arg = cert.display().to_string();
    let key_arg = key.display().to_string();
    let mut s = Server::start(
        dir.path(),
        &["--tls-cert", &cert_arg, "--tls-key", &key_arg, "--header-timeout", "2"],
    );
    assert!(s.base.starts_with("https://127.0.0.1:"), "{}", s.base);
    let ca_pem = std::fs::read(&ca).expect("CA");
    s.client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).expect("CA certificate"))
        .tls_built_in_root_certs(false)
        .build()
        .expect("client");
    let run = run_before_attack(&s, dir.path(), "tls", 1, 0.5).await;
    s.wait_end(&run).await;

    let token = s.token.clone().unwrap_or_default();
    let batch = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = drover(dir.path(), &[]);
        cmd.args(["batch", "--api", &s.base]).args(extra).arg("list");
        if !token.is_empty() {
            cmd.env("DROVER_TOKEN", &token);
        }
        cmd.envs(env.iter().copied()).output().expect("drover batch")
    };
    let ca_arg = ca.display().to_string();
    for (how, out) in [
        ("--cacert", batch(&["--cacert", &ca_arg], &[])),
        ("DROVER_CACERT", batch(&[], &[("DROVER_CACERT", &ca_arg)])),
    ] {
        let text = common::text(&out);
        assert!(out.status.success(), "drover batch with {how}: {text}");
        assert!(
            text.contains(&run),
            "drover batch list with {how} does not show {run}: {text}"
        );
    }
    // Without the CA: refused, saying what to do.
    let out = batch(&[], &[]);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("certificate") && text.contains("--cacert"), "{text}");
    // A --cacert that is no certificate is named.
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").expect("write");
    let out = batch(&["--cacert", &not_pem.display().to_string()], &[]);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("--cacert") && text.contains("not.pem") && text.contains("no certificate"),
        "{text}"
    );

    // Plain HTTP to the TLS port: no HTTP answer.
    let addr = addr_of(&s);
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .timeout(LIMIT)
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP to the TLS port was answered: {plain:?}");
    // A connection that never starts its handshake is closed after the
    // header timeout.
    let silent = idle_connections(addr, 1);
    let waited = wait_for("the silent TLS connection closed", || closed(&silent[0]));
    assert!(
        waited > Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "closed after {waited:?} (header timeout 2 s)"
    );

    assert_intact(&s, &run).await;
}

/// TLS files that are missing, hold no certificate, or a key that is not
/// the certificate's stop the start, naming the file.
#[test]
fn wrong_tls_files_refuse_to_start_naming_the_file() {
    let dir = tempdir();
    let (_, cert, key) = certificates(dir.path(), "a");
    let (_, _, other_key) = certificates(dir.path(), "b");
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let p = |f: &Path| f.display().to_string();
    let cases: [(&[String], &[&str]); 4] = [
        (
            &["--tls-cert".into(), p(&missing), "--tls-key".into(), p(&key)],
            &["--tls-cert", "missing.pem", "cannot read"],
        ),
        (
            &["--tls-cert".into(), p(&empty), "--tls-key".into(), p(&key)],
            &["--tls-cert", "empty.pem", "no certificate"],
        ),
        (
            &["--tls-cert".into(), p(&cert), "--tls-key".into(), p(&cert)],
            &["--tls-key", "a-cert.pem", "no private key"],
        ),
        (
            &["--tls-cert".into(), p(&cert), "--tls-key".into(), p(&other_key)],
            &["--tls-key", "b-key.pem", "does not belong", "a-cert.pem"],
        ),
    ];
    for (args, wants) in cases {
        let mut all: Vec<&str> = vec!["--listen", "127.0.0.1:0"];
        all.extend(args.iter().map(String::as_str));
        let (status, err) = refused_start(dir.path(), &all, &[]);
        assert!(!status.success(), "{args:?}: {err}");
        for w in wants {
            assert!(err.contains(w), "{args:?}: the message should name {w:?}: {err}");
        }
    }
}

/// Beyond loopback, plain HTTP needs --insecure-http (the message says
/// what to do); with it, or with TLS, the server starts and answers.
#[tokio::test(flavor = "multi_thread")]
async fn plain_http_beyond_loopback_refuses_to_start_unless_insecure_http() {
    let dir = tempdir();
    let (status, err) = refused_start(dir.path(), &["--listen", "0.0.0.0:0"], &[]);
    assert!(!status.success(), "{err}");
    for want in ["0.0.0.0:0", "plain HTTP", "--tls-cert", "--tls-key", "--insecure-http"] {
        assert!(err.contains(want), "the message should name {want:?}: {err}");
    }

    let (child, url) = started(dir.path(), &["--listen", "0.0.0.0:0", "--insecure-http"]);
    assert!(url.starts_with("http://0.0.0.0:"), "{url}");
    let port = url.rsplit(':').next().unwrap_or_default().to_string();
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(resp.status(), StatusCode::OK);
    stop(child);

    // TLS with a self-signed certificate, which `drover batch --cacert`
    // takes as its own trust anchor.
    let self_signed = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("self-signed certificate");
    let (cert, key) = (dir.path().join("self-cert.pem"), dir.path().join("self-key.pem"));
    std::fs::write(&cert, self_signed.cert.pem()).expect("write certificate");
    std::fs::write(&key, self_signed.key_pair.serialize_pem()).expect("write key");
    let (child, url) = started(
        dir.path(),
        &[
            "--listen",
            "0.0.0.0:0",
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ],
    );
    assert!(url.starts_with("https://0.0.0.0:"), "{url}");
    let port = url.rsplit(':').next().unwrap_or_default().to_string();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(self_signed.cert.pem().as_bytes()).expect("certificate"))
        .tls_built_in_root_certs(false)
        .build()
        .expect("client");
    let resp = client
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .expect("healthz over TLS");
    // The token the server generated next to its state (none with --no-auth).
    let mut cmd = drover(dir.path(), &[]);
    let token_file = dir.path().join("api-token");
    if token_file.exists() {
        cmd.env("DROVER_TOKEN_FILE", &token_file);
    }
    let out = cmd
        .args(["batch", "--api", &format!("https://127.0.0.1:{port}"), "--cacert"])
        .arg(&cert)
        .arg("list")
        .output()
        .expect("drover batch");
    assert!(
        out.status.success(),
        "drover batch --cacert SELF-SIGNED list: {}",
        common::text(&out)
    );
    assert_eq!(resp.status(), StatusCode::OK);
    stop(child);
}
