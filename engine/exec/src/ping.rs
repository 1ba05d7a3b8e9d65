//! Reachability: connect to each server the way a run would (its
//! provider's facts, the SSH transport, host keys verified) and run `true`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_core::model::{Connection, Server};
use tokio_util::sync::CancellationToken;

use crate::mask::Masker;
use crate::provider::{ProviderContext, ServerStatus, registry};
use crate::run::Options;
use crate::transport::ssh::{HostKeyPolicy, SshTarget, SshTransport};
use crate::transport::{Command, Transport};

/// One server's answer.
#[derive(Debug, Clone)]
pub struct Ping {
    /// The server.
    pub server: String,
    /// The address tried.
    pub address: String,
    /// Connect + handshake + `true`, or why it failed.
    pub result: Result<Duration, String>,
}

/// Ping `servers` in parallel.
pub async fn ping(servers: Vec<Server>, opts: &Options) -> Vec<Ping> {
    let providers = Arc::new(registry());
    let ctx = ProviderContext {
        hosts_dir: opts.data_dir.join("hosts"),
        fleet_dir: opts.data_dir.join("fleet"),
        idempotency_key: "ping".into(),
    };
    let logs = opts.data_dir.join("ping");
    let mut tasks = Vec::new();
    for s in servers {
        let (providers, ctx, logs) = (providers.clone(), ctx.clone(), logs.clone());
        tasks.push(tokio::spawn(async move { one(s, &providers, &ctx, logs).await }));
    }
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(p) = t.await {
            out.push(p);
        }
    }
    out
}

async fn one(
    s: Server,
    providers: &std::collections::BTreeMap<String, Arc<dyn crate::provider::Provider>>,
    ctx: &ProviderContext,
    logs: PathBuf,
) -> Ping {
    let address = s.address.clone().unwrap_or_default();
    let fail = |address: String, e: String| Ping {
        server: s.hostname.clone(),
        address,
        result: Err(e),
    };
    let Some(provider) = providers.get(&s.provider) else {
        return fail(
            address,
            format!("provider {} has no engine implementation in this build", s.provider),
        );
    };
    if s.connection == Connection::Local {
        return fail(
            address,
            "connection = \"local\": nothing to reach over the network".into(),
        );
    }
    let facts = match provider.status(&s, ctx).await {
        Ok(ServerStatus::Running(f)) => f,
        Ok(ServerStatus::Absent) => return fail(address, "does not exist (its provider reports it absent)".into()),
        Err(e) => return fail(address, e.to_string()),
    };
    let target = match &facts.ssh {
        Some(f) => SshTarget {
            host: s.hostname.clone(),
            address: facts.address.clone(),
            port: f.port,
            user: f.user.clone(),
            key_file: Some(f.key_file.clone()),
            use_agent: false,
            known_hosts: f.known_hosts.clone(),
            host_key_policy: HostKeyPolicy::Verify,
            connect_timeout: Duration::from_secs(5),
            keepalive: Duration::ZERO,
        },
        None => return fail(facts.address, "its provider gives no SSH access".into()),
    };
    let started = Instant::now();
    let transport = match SshTransport::connect(&target).await {
        Ok(t) => t,
        Err(e) => return fail(facts.address, e.to_string()),
    };
    let cmd = Command {
        program: "true".into(),
        args: Vec::new(),
        env: Vec::new(),
        cwd: PathBuf::from("/"),
        timeout: Some(Duration::from_secs(5)),
        log: logs.join(format!("{}.log", s.hostname)),
        mask: Masker::none(),
    };
    let result = match transport.exec(cmd, None, CancellationToken::new()).await {
        Ok(o) if o.success() => Ok(started.elapsed()),
        Ok(o) => Err(format!("`true` ended with {o:?}")),
        Err(e) => Err(e.to_string()),
    };
    let _ = transport.cleanup(crate::transport::ssh::RunDirs::Remove).await;
    Ping {
        server: s.hostname.clone(),
        address: facts.address,
        result,
    }
}
