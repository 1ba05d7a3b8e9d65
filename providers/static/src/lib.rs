//! Provider `static`: servers that already exist.
//!
//! drover neither makes nor destroys these machines. It reaches them over
//! SSH as they are, with the run's shared connection
//! ([`ProviderContext::connector`]):
//!
//! - **create** checks that the server answers and records what one probe
//!   finds (OS, kernel, architecture, CPUs, memory, root filesystem size,
//!   hostname); it refuses, permanently, a machine smaller than its plan
//!   says (the plan is what the operator states it has at least);
//! - **delete** only forgets it: nothing runs on the machine, so a rollback
//!   of a static server never destroys anything;
//! - **status** answers whether it is reachable: whether the run's
//!   connection to it opens (TCP, host key, login).
//!
//! Taskservs install into `/` (`DROVER_ROOT`): these are real machines.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_core::FailureKind;
use drover_core::model::{Resources, Server};
use drover_provider::{Provider, ProviderContext, ProviderError, Reach, ServerFacts, ServerStatus, SshHints};
use drover_transport::mask::Masker;
use drover_transport::{Command, Outcome, Transport, TransportError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long the probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// One command that prints what create records, one `key=value` a line.
/// Every value has a fallback: a minimal system (busybox, no
/// /etc/os-release) still answers.
const PROBE: &str = r#"os=unknown
if [ -r /etc/os-release ]; then . /etc/os-release; os=${PRETTY_NAME:-${NAME:-unknown}}; fi
echo "os=$os"
echo "kernel=$(uname -r)"
echo "arch=$(uname -m)"
echo "hostname=$(uname -n)"
echo "cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || grep -c '^processor' /proc/cpuinfo)"
while read -r k v _; do [ "$k" = MemTotal: ] && echo "memory_mib=$((v / 1024))"; done < /proc/meminfo
set -- $(df -Pk / | tail -n 1)
echo "disk_gib=$(($2 / 1048576))"
"#;

/// The `static` provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct StaticProvider;

impl StaticProvider {
    /// What is known of `server` before anything is asked of it: its
    /// address (its hostname when it declares none, so that an SSH config
    /// `Host` entry can name it), reached over SSH with its declared access.
    fn facts(server: &Server) -> ServerFacts {
        ServerFacts {
            address: server.address.clone().unwrap_or_else(|| server.hostname.clone()),
            root: "/".into(),
            reach: Reach::Ssh(SshHints::default()),
            found: BTreeMap::new(),
        }
    }

    fn transport_error(&self, e: &TransportError) -> ProviderError {
        ProviderError {
            provider: self.name().to_string(),
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    /// Runs `script` on the server; its output lines, or why it failed.
    async fn run(
        &self,
        transport: &Arc<dyn Transport>,
        server: &Server,
        ctx: &ProviderContext,
        script: &str,
    ) -> Result<Vec<String>, ProviderError> {
        let log = ctx.state_dir.join("probes").join(format!("{}.log", server.hostname));
        let cmd = Command {
            program: "/bin/sh".into(),
            args: vec!["drover-probe".into()],
            script: Some(script.into()),
            files: None,
            remove_run_dir: false,
            env: Vec::new(),
            cwd: PathBuf::from("/"),
            timeout: Some(PROBE_TIMEOUT),
            log,
            mask: Masker::none(),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let outcome = transport
            .exec(cmd, Some(tx), CancellationToken::new())
            .await
            .map_err(|e| self.transport_error(&e))?;
        let mut lines = Vec::new();
        while let Some(l) = rx.recv().await {
            lines.push(l.line);
        }
        match outcome {
            Outcome::Exited(0) => Ok(lines),
            other => Err(self.transient(format!(
                "server {}: the probe ended with {other:?}: {}",
                server.hostname,
                lines.last().map(String::as_str).unwrap_or("no output")
            ))),
        }
    }

    /// The machine is smaller than its plan: a mistake in the inventory
    /// (or the wrong machine), which no retry fixes.
    fn check_plan(
        &self,
        server: &Server,
        plan: &Resources,
        found: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError> {
        let have = |k: &str| found.get(k).and_then(|v| v.parse::<u64>().ok());
        let mut short = Vec::new();
        for (key, what, want) in [
            ("cpus", "CPUs", u64::from(plan.cpu)),
            ("memory_mib", "MiB of memory", plan.memory),
            ("disk_gib", "GiB of root filesystem", plan.disk),
        ] {
            match have(key) {
                Some(n) if n < want => short.push(format!("{n} {what} (plan {}: {want})", server.plan)),
                _ => {}
            }
        }
        if short.is_empty() {
            Ok(())
        } else {
            Err(self.permanent(format!(
                "server {} is smaller than its plan: it has {}; give it a smaller plan or check that {} is the machine meant",
                server.hostname,
                short.join(", "),
                Self::facts(server).address
            )))
        }
    }
}

#[async_trait::async_trait]
impl Provider for StaticProvider {
    fn name(&self) -> &str {
        "static"
    }

    async fn create(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerFacts, ProviderError> {
        let mut facts = Self::facts(server);
        let transport = ctx
            .connector
            .connect(server, &facts)
            .await
            .map_err(|e| self.transport_error(&e))?;
        let lines = self.run(&transport, server, ctx, PROBE).await?;
        for line in lines {
            if let Some((k, v)) = line.split_once('=') {
                facts.found.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        if let Some(plan) = &ctx.plan {
            self.check_plan(server, plan, &facts.found)?;
        }
        Ok(facts)
    }

    /// Delete only forgets: the machine stays as it is.
    fn destroys_servers(&self) -> bool {
        false
    }

    /// Forgets the server; nothing runs on it.
    async fn delete(&self, _server: &Server, _ctx: &ProviderContext) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn status(&self, server: &Server, ctx: &ProviderContext) -> Result<ServerStatus, ProviderError> {
        let facts = Self::facts(server);
        // An authenticated connection is the answer: the server is up and
        // lets the run in. (It is the connection the run's tasks use next,
        // opened here, before the first of them is ready; a command here
        // would cost every server one more round and prove nothing the
        // first task does not.)
        let reached = match ctx.connector.connect(server, &facts).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.transport_error(&e)),
        };
        match reached {
            Ok(()) => Ok(ServerStatus::Running(facts)),
            // Unreachable now is "down"; a refused login or a changed host
            // key is not a state of the server but a failure to fix.
            Err(e) if e.kind == FailureKind::Transient => Ok(ServerStatus::Down(e.message)),
            Err(e) => Err(e),
        }
    }
}
