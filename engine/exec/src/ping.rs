//! Reachability: reach each server the way a run would (its provider's
//! facts, the SSH transport, host keys verified) and run `true`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use drover_core::model::{Connection, Server};
use drover_provider::{ProviderContext, Providers, ServerStatus};
use drover_transport::Command;
use tokio_util::sync::CancellationToken;

use crate::mask::Masker;
use crate::run::Options;
use crate::runner::{Paths, Pool};

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
    let paths = Paths {
        data_dir: opts.data_dir.clone(),
        logs_dir: opts.data_dir.join("ping"),
        base_dir,
        keep_remote_dirs: false,
    };
    let pool = std::sync::Arc::new(Pool::new(&paths));
    let mut tasks = Vec::new();
    for s in servers {
        let (providers, pool, paths) = (opts.providers.clone(), pool.clone(), paths.clone());
        tasks.push(tokio::spawn(async move { one(s, &providers, pool, &paths).await }));
    }
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(p) = t.await {
            out.push(p);
        }
    }
    pool.finish(false).await;
    out
}

async fn one(s: Server, providers: &Providers, pool: std::sync::Arc<Pool>, paths: &Paths) -> Ping {
    let address = s.address.clone().unwrap_or_default();
    let fail = |address: String, e: String| Ping {
        server: s.hostname.clone(),
        address,
        result: Err(e),
    };
    let Some(provider) = providers.get(&s.provider) else {
        return fail(
            address,
            format!("provider {} has no implementation in this build", s.provider),
        );
    };
    if s.connection == Connection::Local {
        return fail(
            address,
            "connection = \"local\": nothing to reach over the network".into(),
        );
    }
    let ctx = ProviderContext {
        state_dir: paths.provider_dir(&s.provider),
        run_id: "ping".into(),
        idempotency_key: "ping".into(),
        plan: None,
        connector: pool.clone(),
        zones: s.zone.iter().cloned().collect(),
        // ping decrypts no secrets: credentials come from the environment.
        secrets: drover_provider::Secrets::default(),
    };
    let started = Instant::now();
    let facts = match provider.status(&s, &ctx).await {
        Ok(ServerStatus::Running(f)) => f,
        Ok(ServerStatus::Down(why)) => return fail(address, why),
        Ok(ServerStatus::Absent) => return fail(address, "does not exist (its provider reports it absent)".into()),
        Err(e) => return fail(address, e.to_string()),
    };
    let conn = match pool.host(&s, &facts).await {
        Ok(c) => c,
        Err(e) => return fail(facts.address, e.to_string()),
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
        log: paths.logs_dir.join(format!("{}.log", s.hostname)),
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
