//! What the tests of existing_hosts.rs share: the operator's fleet, a
//! test's own directory with its inventory and workflow files and the
//! `drover` binary run on it, the journal read back, the hosts' files.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use drover_state::{Entry, Event, FailureKind, RunStatus, Store};
use drover_testkit::{Host, KnownHostsStyle, Sudo, TestFleet};

/// The port every host listens on: not 22, as on many real fleets.
pub const PORT: u16 = 2222;

/// Three attempts, a second apart.
pub const RETRY_3: &str =
    r#"drover.RetryPolicy {max_attempts = 3, backoff = "linear", initial_delay = 1, max_delay = 1}"#;
/// Five attempts, a second apart: a retry that should not happen shows.
pub const RETRY_5: &str =
    r#"drover.RetryPolicy {max_attempts = 5, backoff = "linear", initial_delay = 1, max_delay = 1}"#;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// `n` hosts as an operator's fleet has them: login user `fleet` (not
/// root) on port 2222, the fleet's key, `sudo` to root without a
/// password, and an /etc/drover of each host's own.
pub fn operator_fleet(n: usize) -> TestFleet {
    TestFleet::builder()
        .hosts(n)
        .port(PORT)
        .sudo(Sudo::All)
        .private_dir("/etc/drover")
        .start()
        .unwrap_or_else(|e| panic!("cannot start {n} test hosts: {e:#}"))
}

/// The `ssh` block of a server.
#[derive(Debug, Clone, Default)]
pub struct Ssh {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub key_file: Option<String>,
    pub known_hosts: Option<String>,
    pub config_file: Option<String>,
    pub jump: Option<String>,
    pub become_sudo: bool,
}

impl Ssh {
    /// How an operator reaches `fleet`: its user, port 2222, its key file
    /// (absolute), `sudo`; host keys from drover's own known_hosts.
    pub fn operator(fleet: &TestFleet) -> Ssh {
        Ssh {
            user: Some(fleet.user().to_string()),
            port: Some(PORT),
            key_file: Some(fleet.client_key().display().to_string()),
            become_sudo: true,
            ..Ssh::default()
        }
    }

    fn kcl(&self) -> String {
        let mut fields = Vec::new();
        let mut string = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                fields.push(format!("{k} = {v:?}"));
            }
        };
        string("user", &self.user);
        string("key_file", &self.key_file);
        string("known_hosts", &self.known_hosts);
        string("config_file", &self.config_file);
        string("jump", &self.jump);
        if let Some(port) = self.port {
            fields.push(format!("port = {port}"));
        }
        if self.become_sudo {
            fields.push("become = \"sudo\"".into());
        }
        format!("drover.SshAccess {{{}}}", fields.join(", "))
    }
}

/// One server of an inventory file.
#[derive(Debug, Clone)]
pub struct Srv {
    pub hostname: String,
    pub address: Option<String>,
    pub ssh: Ssh,
    pub tags: Vec<String>,
    pub groups: Vec<String>,
}

impl Srv {
    /// The test host `host`, named as it names itself, at its address.
    pub fn on(host: &Host, ssh: &Ssh) -> Srv {
        Srv {
            hostname: host.name().to_string(),
            address: Some(host.address().to_string()),
            ssh: ssh.clone(),
            tags: Vec::new(),
            groups: Vec::new(),
        }
    }

    fn kcl(&self) -> String {
        let list = |v: &[String]| format!("{v:?}");
        let mut s = format!(
            "    drover.ServerDef {{\n        hostname = {:?}\n        provider = \"static\"\n        plan = \"small\"\n",
            self.hostname
        );
        if let Some(a) = &self.address {
            s.push_str(&format!("        address = {a:?}\n"));
        }
        s.push_str(&format!(
            "        ssh = {}\n        tags = {}\n        groups = {}\n        taskservs = [\"hostinfo\"]\n    }}\n",
            self.ssh.kcl(),
            list(&self.tags),
            list(&self.groups)
        ));
        s
    }
}

/// A test's own directory: inventory and workflow files, drover's state
/// (`state/state.db`, so drover's own known_hosts is `state/known_hosts`),
/// the run logs (`logs/`, relative to the working directory), and an empty
/// home for drover (no ~/.ssh of the machine's user gets in the way).
#[derive(Debug)]
pub struct Site {
    dir: tempfile::TempDir,
}

impl Default for Site {
    fn default() -> Self {
        Site::new()
    }
}

impl Site {
    pub fn new() -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["state", "home", "xdg"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        Site { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The state database (DROVER_STATE).
    pub fn state(&self) -> PathBuf {
        self.state_dir().join("state.db")
    }

    /// Its directory: drover's data directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// Records the host keys of `fleet` in drover's own known_hosts, as an
    /// operator does after checking the fingerprints.
    pub fn trust(&self, fleet: &TestFleet) {
        fleet
            .write_known_hosts(&self.state_dir().join("known_hosts"), KnownHostsStyle::Plain)
            .expect("drover's known_hosts");
    }

    /// Writes `inv.k`: `inventory = drover.Inventory {...}` with `servers`
    /// and the KCL group definitions `groups`; its path.
    pub fn inventory(&self, servers: &[Srv], groups: &str) -> PathBuf {
        let mut text = String::from("import drover\n\ninventory = drover.Inventory {\n    servers = [\n");
        for s in servers {
            text.push_str(&s.kcl());
        }
        text.push_str("    ]\n    groups = [");
        text.push_str(groups);
        text.push_str("]\n}\n");
        let path = self.dir().join("inv.k");
        std::fs::write(&path, text).expect("inv.k");
        path
    }

    /// Writes `<name>.k`: every server of `inv.k` checked (create, static),
    /// then hostinfo installed on each; its path.
    pub fn workflow(&self, name: &str, max_parallel: u32, retry: &str) -> PathBuf {
        let text = format!(
            r#"import drover
import .inv as inv

workflow = drover.WorkflowDef {{
    name = "{name}"
    description = "check servers (create, static) then install hostinfo"
    max_parallel = {max_parallel}
    servers = inv.inventory.servers
    groups = inv.inventory.groups
    operations = [
        drover.OperationDef {{
            id = "check-servers"
            type = "create"
            target = "server"
            timeout = 60
        }}
        drover.OperationDef {{
            id = "hostinfo"
            type = "create"
            target = "taskserv"
            items = ["hostinfo"]
            depends_on = ["check-servers"]
            timeout = 60
        }}
    ]
    retry_policy = {retry}
}}
"#
        );
        let path = self.dir().join(format!("{name}.k"));
        std::fs::write(&path, text).expect("workflow file");
        path
    }

    /// The `drover` binary on this site: its state, its home, the repo's
    /// declarations, nothing of the caller's SSH setup.
    pub fn drover(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_drover"));
        c.current_dir(self.dir())
            .env("DROVER_STATE", self.state())
            .env("DROVER_HOME", repo())
            .env("DROVER_VENV", repo().join(".venv"))
            .env("HOME", self.dir().join("home"))
            .env("XDG_DATA_HOME", self.dir().join("xdg"))
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("DROVER_API")
            .env_remove("DROVER_TOKEN")
            .env_remove("DROVER_TOKEN_FILE")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    fn store(&self) -> Store {
        Store::open_read_only(&self.state()).expect("the state store")
    }

    /// The id of the one run.
    pub fn only_run(&self) -> String {
        let runs = self.store().runs().expect("runs");
        assert_eq!(runs.len(), 1, "one run expected: {runs:?}");
        runs[0].id.clone()
    }

    /// The id of the newest run.
    pub fn latest_run(&self) -> String {
        let runs = self.store().runs().expect("runs");
        runs.iter()
            .max_by_key(|r| r.created_at_ms)
            .map(|r| r.id.clone())
            .expect("a run")
    }

    pub fn status(&self, id: &str) -> RunStatus {
        self.store().run(id).expect("run").status
    }

    pub fn journal(&self, id: &str) -> Vec<Entry> {
        self.store().journal(id).expect("journal")
    }

    /// The run's report.txt.
    pub fn report(&self, id: &str) -> String {
        let path = self.dir().join("logs").join(id).join("report.txt");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

/// stdout and stderr of a finished command.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The events of `node`, in order.
pub fn events_of(journal: &[Entry], node: &str) -> Vec<Event> {
    journal
        .iter()
        .filter(|e| e.node.as_deref() == Some(node))
        .map(|e| e.event.clone())
        .collect()
}

/// What the success of `node` journaled.
pub fn found_of(journal: &[Entry], node: &str) -> BTreeMap<String, String> {
    journal
        .iter()
        .filter(|e| e.node.as_deref() == Some(node))
        .find_map(|e| match &e.event {
            Event::TaskSucceeded { found, .. } => Some(found.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{node} did not succeed: {:?}", events_of(journal, node)))
}

/// Attempts `node` started.
pub fn attempts(journal: &[Entry], node: &str) -> usize {
    events_of(journal, node)
        .iter()
        .filter(|e| matches!(e, Event::TaskStarted { .. }))
        .count()
}

/// A failed attempt, as journaled.
#[derive(Debug, Clone)]
pub struct Failed {
    pub attempt: u32,
    pub error: String,
    pub kind: FailureKind,
    pub will_retry: bool,
    pub at_ms: i64,
}

/// The failed attempts of `node`.
pub fn failures(journal: &[Entry], node: &str) -> Vec<Failed> {
    journal
        .iter()
        .filter(|e| e.node.as_deref() == Some(node))
        .filter_map(|e| match &e.event {
            Event::TaskFailed {
                attempt,
                error,
                kind,
                will_retry,
                ..
            } => Some(Failed {
                attempt: *attempt,
                error: error.clone(),
                kind: *kind,
                will_retry: *will_retry,
                at_ms: e.at_ms,
            }),
            _ => None,
        })
        .collect()
}

/// When the run (first) started, ms since the epoch.
pub fn run_started_ms(journal: &[Entry]) -> i64 {
    journal
        .iter()
        .find(|e| matches!(e.event, Event::RunStarted { .. }))
        .map(|e| e.at_ms)
        .expect("a run_started event")
}

/// `host` has /etc/drover/hostinfo, written by run `id`, naming itself.
pub fn assert_hostinfo(host: &Host, id: &str) {
    let path = host.path("/etc/drover/hostinfo");
    let info = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: no /etc/drover/hostinfo ({}): {e}", host.name(), path.display()));
    for line in [
        format!("hostname={}", host.name()),
        format!("server={}", host.name()),
        format!("run_id={id}"),
    ] {
        assert!(
            info.lines().any(|l| l == line),
            "{}: hostinfo lacks {line}:\n{info}",
            host.name()
        );
    }
    let meta = std::fs::metadata(&path).expect("hostinfo");
    assert_eq!(
        meta.uid(),
        0,
        "{}: hostinfo must be written by root (sudo)",
        host.name()
    );
}

/// No run directory (/tmp/drover-*) is left on `host`.
pub fn assert_no_run_dir(host: &Host) {
    let left: Vec<String> = listing(&host.path("/tmp"))
        .into_iter()
        .filter(|n| n.starts_with("drover-"))
        .collect();
    assert!(
        left.is_empty(),
        "{}: run directories left in /tmp: {left:?}",
        host.name()
    );
}

/// The names in `dir`, sorted (none when it does not exist).
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every file and directory under a directory: path, mode, owner, content.
pub type Snapshot = BTreeMap<PathBuf, (u32, u32, Vec<u8>)>;

pub fn snapshot(dir: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            let content = if meta.is_file() {
                std::fs::read(&path).unwrap_or_default()
            } else {
                Vec::new()
            };
            out.insert(rel, (meta.mode(), meta.uid(), content));
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Snapshot::new();
    if let Ok(meta) = std::fs::metadata(dir) {
        out.insert(PathBuf::from("."), (meta.mode(), meta.uid(), Vec::new()));
    }
    walk(dir, dir, &mut out);
    out
}

/// The first line sshd sends on `host` (its banner), or "" when nothing
/// answers.
pub fn banner(host: &Host) -> String {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&host.socket_addr().into(), Duration::from_secs(5)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Waits for `command` to end within `limit` (killing it otherwise).
pub fn wait_output(command: &mut Command, limit: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drover");
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(o) => o.expect("output"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(id).unwrap_or(i32::MAX)),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("drover did not end within {limit:?}");
        }
    }
}

/// A `drover serve` child on the site (its own state database), killed
/// when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    pub fn start(site: &Site, state: &Path) -> Server {
        let mut child = site
            .drover()
            .env_remove("DROVER_STATE")
            .args(["serve", "--listen", "127.0.0.1:0", "--shutdown-grace", "5", "--state"])
            .arg(state)
            .arg("--logs")
            .arg(site.dir().join("server-logs"))
            .arg("--workflows-dir")
            .arg(site.dir())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn drover serve");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => match line.strip_prefix("drover: listening on ") {
                    Some(url) => break url.trim().to_string(),
                    None => seen.push(line),
                },
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("drover serve ended before listening:\n{}", seen.join("\n"));
                }
            }
        };
        // Drain stderr for the server's whole life.
        std::thread::spawn(move || for _ in lines {});
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
