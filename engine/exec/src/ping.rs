//! Reachability: reach each server the way a run would (its provider's
//! facts, the SSH transport, host keys verified) and run `true`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::sync::Arc;

use drover_core::model::{Connection, Server};
use drover_transport::Command;
use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;
use crate::mask::Masker;
use crate::run::Options;

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

/// Ping `servers` in parallel. `base_dir` is what the servers' relative
/// paths (SSH keys, known_hosts, config) are relative to: the directory of
/// the file that declares them.
pub async fn ping(servers: Vec<Server>, base_dir: PathBuf, opts: &Options) -> Vec<Ping> {
    let fleet = Arc::new(Fleet::new(servers, base_dir, opts, "ping"));
    let mut tasks = Vec::new();
    for s in fleet.servers() {
        let (fleet, s) = (fleet.clone(), s.clone());
        tasks.push(tokio::spawn(async move { one(s, &fleet).await }));
    }
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(p) = t.await {
            out.push(p);
        }
    }
    fleet.finish().await;
    out
}

async fn one(s: Server, fleet: &Fleet) -> Ping {
    let address = s.address.clone().unwrap_or_default();
    let fail = |address: String, e: String| Ping {
        server: s.hostname.clone(),
        address,
        result: Err(e),
    };
    if s.connection == Connection::Local {
        return fail(
            address,
            "connection = \"local\": nothing to reach over the network".into(),
        );
    }
    let started = Instant::now();
    let (conn, facts) = match fleet.reach(&s.hostname).await {
        Ok(c) => c,
        Err(e) => return fail(address, e),
    };
    let cmd = Command {
        program: "true".into(),
        args: Vec::new(),
        script: None,
        files: None,
        remove_run_dir: false,
        env: Vec::new(),
        cwd: PathBuf::from("/"),
        timeout: Some(Duration::from_secs(5)),
        log: PathBuf::from("/dev/null"),
        mask: Masker::none(),
    };
    let result = match conn.transport().exec(cmd, None, CancellationToken::new()).await {
        Ok(o) if o.success() => Ok(started.elapsed()),
        Ok(o) => Err(format!("`true` ended with {o:?}")),
        Err(e) => Err(e.to_string()),
    };
    Ping {
        server: s.hostname.clone(),
        address: facts.address,
        result,
    }
}
