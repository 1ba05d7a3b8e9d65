//! Shared by the provider's tests: moto (the AWS EC2 API emulator) in
//! server mode on a port of its own, a throttling proxy in front of it,
//! an EC2 client to look at what exists, and provider contexts.
// Each test binary uses part of this.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{Filter, InstanceStateName};
use drover_core::model::Server;
use drover_provider::{Connector, ProviderContext, Secrets, ServerFacts};
use drover_transport::{Transport, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const REGION: &str = "us-east-1";
/// An x86_64 Linux AMI of moto's default set.
pub const IMAGE: &str = "ami-760aaa0f";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A moto server of this test; killed on drop.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    pub url: String,
    log: PathBuf,
}

impl Moto {
    /// moto validating AMIs, instance types and key pairs (it does not by
    /// default), with `env` added (INITIAL_NO_AUTH_ACTION_COUNT=0 checks
    /// credentials).
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Result<Moto> {
        let bin = repo().join(".venv/bin/moto_server");
        if !bin.exists() {
            bail!(
                "{} is missing: run `make setup` (requirements.txt has moto[server])",
                bin.display()
            );
        }
        let port = free_port()?;
        let log = dir.join(format!("moto-{port}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ENABLE_AMI_VALIDATION", "true")
            .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
            .env("MOTO_ENABLE_KEYPAIR_VALIDATION", "true")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = moto.child.try_wait()? {
                bail!("moto_server exited with {status}: {}", moto.log_text());
            }
            if Instant::now() > deadline {
                bail!(
                    "moto_server did not listen on port {port} within 30 s: {}",
                    moto.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(moto)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An EC2 client of moto, to look at what exists.
    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        ec2_at(&self.url)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn ec2_at(url: &str) -> aws_sdk_ec2::Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .endpoint_url(url)
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        )
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

/// The run's secrets as a workflow's SOPS file `aws: {...}` gives them.
pub fn secrets(access_key: &str, image: Option<&str>) -> Secrets {
    let mut pairs = vec![
        ("AWS_ACCESS_KEY_ID".to_string(), access_key.to_string()),
        (
            "AWS_SECRET_ACCESS_KEY".to_string(),
            "fake-secret-key-of-the-run".to_string(),
        ),
        ("AWS_REGION".to_string(), REGION.to_string()),
    ];
    if let Some(i) = image {
        pairs.push(("AWS_IMAGE_ID".to_string(), i.to_string()));
    }
    Secrets::new(pairs)
}

/// A connector that reaches nothing: the emulator's instances have no
/// machines behind them, and the provider never connects to them.
#[derive(Debug)]
pub struct Unreachable;

#[async_trait::async_trait]
impl Connector for Unreachable {
    async fn connect(&self, server: &Server, _facts: &ServerFacts) -> Result<Arc<dyn Transport>, TransportError> {
        Err(TransportError::NotFound {
            host: server.hostname.clone(),
            program: "ssh (moto's instances are not machines)".into(),
        })
    }
}

/// The context of the call of `task` of run `run_id`.
pub fn ctx(state_dir: &Path, run_id: &str, task: &str, secrets: Secrets) -> ProviderContext {
    ProviderContext {
        zones: Vec::new(),
        state_dir: state_dir.to_path_buf(),
        run_id: run_id.to_string(),
        idempotency_key: format!("{run_id}/{task}"),
        plan: None,
        connector: Arc::new(Unreachable),
        secrets,
    }
}

/// The context of the run's network task, whose servers are in `zones`.
pub fn network_ctx(state_dir: &Path, run_id: &str, zones: &[&str], secrets: Secrets) -> ProviderContext {
    ProviderContext {
        zones: zones.iter().map(|z| z.to_string()).collect(),
        ..ctx(state_dir, run_id, "create-servers/network:aws", secrets)
    }
}

pub fn server(hostname: &str, plan: &str, zone: &str) -> Server {
    serde_json::from_value(serde_json::json!({
        "hostname": hostname,
        "provider": "aws",
        "plan": plan,
        "zone": zone,
    }))
    .expect("a server")
}

/// Instances not terminated, with their `drover:server` tag, zone and
/// state, sorted by server.
pub async fn live_instances(ec2: &aws_sdk_ec2::Client) -> Result<Vec<(String, String, String)>> {
    let out = ec2.describe_instances().send().await?;
    let mut v: Vec<(String, String, String)> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated))
        .map(|i| {
            let server = i
                .tags()
                .iter()
                .find(|t| t.key() == Some("drover:server"))
                .and_then(|t| t.value())
                .unwrap_or("?")
                .to_string();
            let zone = i
                .placement()
                .and_then(|p| p.availability_zone())
                .unwrap_or("?")
                .to_string();
            let state = i
                .state()
                .and_then(|s| s.name())
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            (server, zone, state)
        })
        .collect();
    v.sort();
    Ok(v)
}

/// The ids of the VPCs, subnets and security groups tagged for `run_id`.
pub async fn run_network(ec2: &aws_sdk_ec2::Client, run_id: &str) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
    let f = || Filter::builder().name("tag:drover:run").values(run_id).build();
    let vpcs = ec2.describe_vpcs().filters(f()).send().await?;
    let subnets = ec2.describe_subnets().filters(f()).send().await?;
    let groups = ec2.describe_security_groups().filters(f()).send().await?;
    Ok((
        vpcs.vpcs()
            .iter()
            .filter_map(|v| v.vpc_id())
            .map(str::to_string)
            .collect(),
        subnets
            .subnets()
            .iter()
            .filter_map(|s| s.availability_zone())
            .map(str::to_string)
            .collect(),
        groups
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id())
            .map(str::to_string)
            .collect(),
    ))
}

/// A proxy in front of moto answering the first `throttle` RunInstances
/// calls with EC2's throttling error (HTTP 503, RequestLimitExceeded),
/// forwarding everything else, and recording when each call arrived.
#[derive(Debug)]
pub struct ThrottlingProxy {
    pub url: String,
    pub throttled: Arc<AtomicUsize>,
    pub run_instances_forwarded: Arc<AtomicUsize>,
    /// When each call arrived, and its action.
    pub arrivals: Arc<Mutex<Vec<(Instant, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ThrottlingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const THROTTLED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>";

impl ThrottlingProxy {
    /// How many calls of `action` arrived.
    pub fn calls(&self, action: &str) -> usize {
        self.arrivals
            .lock()
            .expect("arrivals")
            .iter()
            .filter(|(_, a)| a == action)
            .count()
    }

    pub async fn start(upstream: &str, throttle: usize) -> Result<ThrottlingProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse()?;
        let throttled = Arc::new(AtomicUsize::new(0));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let (t, f, a) = (throttled.clone(), forwarded.clone(), arrivals.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (t, f, a) = (t.clone(), f.clone(), a.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, upstream, throttle, t, f, a).await;
                });
            }
        });
        Ok(ThrottlingProxy {
            url,
            throttled,
            run_instances_forwarded: forwarded,
            arrivals,
            task,
        })
    }
}

/// One request per connection (the answer says `Connection: close`).
async fn serve(
    mut conn: tokio::net::TcpStream,
    upstream: SocketAddr,
    throttle: usize,
    throttled: Arc<AtomicUsize>,
    forwarded: Arc<AtomicUsize>,
    arrivals: Arc<Mutex<Vec<(Instant, String)>>>,
) -> Result<()> {
    let (head, body) = read_message(&mut conn, true).await?;
    let text = String::from_utf8_lossy(&body).to_string();
    let action = text
        .split('&')
        .find_map(|p| p.strip_prefix("Action="))
        .unwrap_or("?")
        .to_string();
    let run_instances = action == "RunInstances";
    arrivals.lock().expect("arrivals").push((Instant::now(), action));
    if run_instances && throttled.fetch_add(1, Ordering::SeqCst) < throttle {
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{THROTTLED}",
            THROTTLED.len()
        );
        conn.write_all(answer.as_bytes()).await?;
        return Ok(());
    }
    if run_instances {
        throttled.fetch_sub(1, Ordering::SeqCst);
        forwarded.fetch_add(1, Ordering::SeqCst);
    }
    let mut up = tokio::net::TcpStream::connect(upstream).await?;
    let head = head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    up.write_all(format!("{}\r\nConnection: close\r\n\r\n", head.trim_end()).as_bytes())
        .await?;
    up.write_all(&body).await?;
    let (rhead, rbody) = read_message(&mut up, false).await?;
    let rhead = rhead
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.starts_with("connection:") && !l.starts_with("content-length:") && !l.starts_with("transfer-encoding:")
        })
        .collect::<Vec<_>>()
        .join("\r\n");
    conn.write_all(
        format!(
            "{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            rhead.trim_end(),
            rbody.len()
        )
        .as_bytes(),
    )
    .await?;
    conn.write_all(&rbody).await?;
    Ok(())
}

/// An HTTP/1.1 message: its head (without the blank line) and its body
/// (Content-Length bytes, else none for a request and up to the end of
/// the stream for an answer).
async fn read_message(s: &mut tokio::net::TcpStream, request: bool) -> Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("the stream ended inside a message head");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut body = buf[end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        bail!("chunked messages are not handled by this proxy");
    }
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    match length {
        Some(n) => {
            while body.len() < n {
                let r = s.read(&mut chunk).await?;
                if r == 0 {
                    bail!("the stream ended inside a body");
                }
                body.extend_from_slice(&chunk[..r]);
            }
            body.truncate(n);
        }
        None if request => body.clear(),
        None => {
            s.read_to_end(&mut body).await?;
        }
    }
    Ok((head, body))
}
