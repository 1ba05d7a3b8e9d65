//! Test support for executor tests: a temporary state store and control
//! directory, the deterministic test taskservs of tests/home, and readers
//! for what the scripts recorded.
#![allow(dead_code)]

pub mod fake;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use drover_core::model::{Catalog, Source, Workflow};
use drover_exec::report::Summary;
use drover_exec::{Inputs, Options, RunHandle};
use drover_kcl::{EngineLocation, Home, Loader};
use drover_state::Store;
use serde_json::{Value, json};

/// The test home: the real schemas and local provider, and test
/// taskservs a, b (requires a), c (requires a), d (requires b, c),
/// noremove (no remove.sh), all driven by taskservs/behave.sh.
pub fn home() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/home")
}

pub fn catalog() -> Catalog {
    let real = Home::discover().expect("drover home");
    let location = EngineLocation::discover(&real).expect("KCL engine: run `make setup`");
    let loader = Loader::with_engine(Home::at(&home()).expect("test home"), &location).expect("engine loads");
    loader.load_catalog().expect("test catalog loads")
}

/// One execution recorded by behave.sh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    pub result: String,
    pub action: String,
    pub target: String,
    pub attempt: u32,
    pub key: String,
    pub start_ns: u128,
    pub end_ns: u128,
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub control: PathBuf,
    pub store: Arc<Store>,
    pub catalog: Catalog,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::in_dir(tempfile::tempdir().expect("tempdir"))
    }

    /// A fixture outside /tmp: SSH hosts have a /tmp of their own, and
    /// the scripts on them must still see the control directory.
    pub fn outside_tmp() -> Fixture {
        Fixture::in_dir(tempfile::tempdir_in("/var/tmp").expect("tempdir in /var/tmp"))
    }

    fn in_dir(dir: tempfile::TempDir) -> Fixture {
        let control = dir.path().join("control");
        std::fs::create_dir_all(&control).expect("control dir");
        let store = Arc::new(Store::open(&dir.path().join("state.db")).expect("store"));
        Fixture {
            dir,
            control,
            store,
            catalog: catalog(),
        }
    }

    pub fn options(&self) -> Options {
        Options {
            data_dir: self.dir.path().to_path_buf(),
            logs_root: Some(self.dir.path().join("logs")),
            retention_cap_days: None,
            max_parallel: None,
            seed: 42,
            keep_remote_dirs: false,
            start_paused: false,
            providers: drover_registry::providers(),
        }
    }

    /// Tell behave.sh how `<action>.<target>` behaves.
    pub fn control(&self, name: &str, mode: &str) {
        std::fs::write(self.control.join(name), mode).expect("write control file");
    }

    /// A workflow with the control directory in its variables.
    pub fn inputs(&self, mut wf: Value) -> Inputs {
        wf["variables"]["CONTROL"] = json!(self.control.display().to_string());
        let workflow: Workflow = serde_json::from_value(wf).expect("workflow JSON fits the model");
        let source = Source {
            file: "test.k".into(),
            workflow,
        };
        drover_core::compile(&source, &self.catalog).unwrap_or_else(|d| panic!("invalid test workflow: {d:#?}"));
        Inputs {
            source,
            catalog: self.catalog.clone(),
        }
    }

    pub fn start(&self, wf: Value) -> RunHandle {
        drover_exec::run::start(self.store.clone(), self.inputs(wf), &self.options(), None).expect("run starts")
    }

    pub async fn run(&self, wf: Value) -> Summary {
        self.start(wf).wait().await.expect("run finishes")
    }

    pub fn executions(&self) -> Vec<Execution> {
        let text = std::fs::read_to_string(self.control.join("executions.log")).unwrap_or_default();
        text.lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                Execution {
                    result: f[0].into(),
                    action: f[1].into(),
                    target: f[2].into(),
                    attempt: f[3].parse().unwrap_or(0),
                    key: f[4].into(),
                    start_ns: f[5].parse().unwrap_or(0),
                    end_ns: f[6].parse().unwrap_or(0),
                }
            })
            .collect()
    }

    /// Executions of one action on one target ("taskserv@server").
    pub fn runs_of(&self, action: &str, target: &str) -> Vec<Execution> {
        self.executions()
            .into_iter()
            .filter(|e| e.action == action && e.target == target)
            .collect()
    }

    /// The root directory of a local host.
    pub fn host(&self, server: &str) -> PathBuf {
        self.dir.path().join("providers/local/hosts").join(server)
    }

    pub fn installed(&self, server: &str, taskserv: &str) -> bool {
        self.host(server).join("installed").join(taskserv).is_file()
    }
}

/// A local server carrying `taskservs`.
pub fn server(name: &str, taskservs: &[&str]) -> Value {
    json!({"hostname": name, "provider": "local", "plan": "small", "connection": "local", "taskservs": taskservs})
}

/// The maximum number of executions overlapping in time.
pub fn max_overlap(execs: &[Execution]) -> usize {
    let mut points: Vec<(u128, i32)> = Vec::new();
    for e in execs {
        points.push((e.start_ns, 1));
        points.push((e.end_ns, -1));
    }
    points.sort();
    let (mut cur, mut best) = (0i32, 0i32);
    for (_, d) in points {
        cur += d;
        best = best.max(cur);
    }
    best as usize
}

pub fn status_of(s: &Summary, task: &str) -> drover_exec::Status {
    s.tasks
        .iter()
        .find(|t| t.task == task)
        .unwrap_or_else(|| panic!("no task {task}"))
        .status
}

/// A retry policy of one attempt: failures are final at once.
pub fn no_retry() -> Value {
    json!({"max_attempts": 1, "backoff": "linear", "initial_delay": 1, "max_delay": 1, "jitter": false})
}

/// The report line of a task.
pub fn task<'a>(s: &'a Summary, id: &str) -> &'a drover_exec::report::TaskSummary {
    s.tasks
        .iter()
        .find(|t| t.task == id)
        .unwrap_or_else(|| panic!("no task {id} in {:#?}", s.tasks))
}

/// Wall-clock ns, comparable with behave.sh's `date +%s%N`.
pub fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// Whether `pid` no longer runs: gone (ESRCH), or a zombie. A zombie
/// counts: an orphaned grandchild is reparented to init, which in some
/// sandboxes (this one's included) reaps late or never; it runs no code.
pub fn is_gone(pid: i32) -> bool {
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    match kill(Pid::from_raw(pid), None) {
        Err(Errno::ESRCH) => true,
        Err(_) => false,
        Ok(()) => std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.split_whitespace().next() == Some("Z"))
            })
            .unwrap_or(true),
    }
}

/// Polls (every 20 ms, up to `limit`) until `cond` holds; false if it never did.
pub async fn eventually(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

impl Fixture {
    /// The pid in control file `name`, once written completely.
    pub fn pid(&self, name: &str) -> Option<i32> {
        std::fs::read_to_string(self.control.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Waits until behave.sh's `hang` mode for `target` (taskserv@server)
    /// has started its child; returns (script pid, child pid).
    pub async fn wait_hanging(&self, target: &str) -> (i32, i32) {
        let (pid, child) = (format!("hang.{target}.pid"), format!("hang.{target}.child"));
        let up = eventually(std::time::Duration::from_secs(20), || {
            self.pid(&pid).is_some() && self.pid(&child).is_some()
        })
        .await;
        assert!(up, "{target} never started hanging");
        (self.pid(&pid).unwrap_or(0), self.pid(&child).unwrap_or(0))
    }

    /// Waits until the run's journal has an entry matching `pred`.
    pub async fn wait_journal(&self, run_id: &str, what: &str, pred: impl Fn(&drover_state::Entry) -> bool) {
        let found = eventually(std::time::Duration::from_secs(20), || {
            self.store.journal(run_id).map(|j| j.iter().any(&pred)).unwrap_or(false)
        })
        .await;
        assert!(found, "the journal of {run_id} never showed {what}");
    }
}

/// Whether `e` is the event `kind` (its serde tag, e.g. "task_started")
/// about `node`.
pub fn is_event(e: &drover_state::Entry, node: &str, kind: &str) -> bool {
    e.node.as_deref() == Some(node) && serde_json::to_value(&e.event).is_ok_and(|v| v["event"] == kind)
}
