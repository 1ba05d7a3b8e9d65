//! `drover watch` and `drover tail` on real sshd hosts the test starts
//! (drover-testkit), through the `drover` binary: a child process whose
//! stdout and stderr are read line by line as they come, with a deadline,
//! and that is ended with SIGINT as an operator's Ctrl-C would.
//!
//! The hosts are those of existing_hosts.rs (a non-root login user on port
//! 2222, host keys in drover's own known_hosts), but reached without
//! `become`: the commands read the login user's own files.
//!
//! `watch --notifications` is checked against a real HTTP receiver on a
//! free loopback port (a std `TcpListener` thread answering 200).

#[path = "existing_hosts/support.rs"]
// This file uses the fleet, site and inventory of the module, not its
// journal and report helpers.
#[allow(dead_code)]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use drover_testkit::{Host, TestFleet};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

/// Which stream of drover a line came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Stdout,
    Stderr,
}

/// A running `drover` whose output is read as it comes.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<(Out, String)>,
    /// Every line read so far, for failure messages.
    seen: Vec<(Out, String)>,
}

impl Follower {
    fn spawn(command: &mut Command) -> Follower {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn drover");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for (which, stream) in [
            (Out::Stdout, Box::new(stdout) as Box<dyn std::io::Read + Send>),
            (Out::Stderr, Box::new(stderr)),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((which, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Follower {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one of `which` satisfies `wanted`, within `limit`;
    /// returns the lines of `which` read meanwhile, that one included.
    fn until(&mut self, which: Out, limit: Duration, what: &str, mut wanted: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((w, line)) => {
                    self.seen.push((w, line.clone()));
                    if w == which {
                        got.push(line.clone());
                        if wanted(&line) {
                            return got;
                        }
                    }
                }
                Err(_) => panic!(
                    "no {what} on drover's {which:?} within {limit:?}; drover said:\n{}",
                    self.transcript()
                ),
            }
        }
    }

    /// The lines of `which` that come within `quiet` (none expected, or
    /// a known few), without waiting longer.
    fn drain(&mut self, which: Out, quiet: Duration) -> Vec<String> {
        let deadline = Instant::now() + quiet;
        let mut got = Vec::new();
        while let Ok((w, line)) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push((w, line.clone()));
            if w == which {
                got.push(line);
            }
        }
        got
    }

    fn transcript(&self) -> String {
        self.seen
            .iter()
            .map(|(w, l)| format!("{}{l}", if *w == Out::Stderr { "[stderr] " } else { "" }))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn interrupt(&self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        kill(pid, Signal::SIGINT).expect("SIGINT to drover");
    }

    /// Waits for drover to end within `limit`; reads what is left of its
    /// output.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                self.drain(Out::Stdout, Duration::from_millis(200));
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("drover did not end within {limit:?}; it said:\n{}", self.transcript());
            }
            // Keep reading: a full pipe would hold drover up.
            self.drain(Out::Stdout, Duration::from_millis(100));
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `n` hosts, drover's site trusting their keys, and its inventory of
/// them, reached as the login user (no `become`).
fn setup(n: usize) -> (TestFleet, Site, PathBuf) {
    let fleet = operator_fleet(n);
    let site = Site::new();
    site.trust(&fleet);
    let ssh = Ssh {
        become_sudo: false,
        ..Ssh::operator(&fleet)
    };
    let servers: Vec<Srv> = fleet.hosts().iter().map(|h| Srv::on(h, &ssh)).collect();
    let inventory = site.inventory(&servers, "");
    (fleet, site, inventory)
}

/// Replaces the login user's file `name` on `host`.
fn write_home(host: &Host, name: &str, text: &str) {
    let path = host.home().join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Appends `line` to the login user's file `name` on `host`.
fn append_home(host: &Host, name: &str, line: &str) {
    let path = host.home().join(name);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    writeln!(f, "{line}").expect("append");
}

/// How many processes named `name` run on `host`.
fn running(host: &Host, name: &str) -> usize {
    host.processes()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
                .is_ok_and(|comm| comm.trim() == name)
        })
        .count()
}

/// Waits until `tail` runs on each of `hosts`: drover has started
/// following there, and lines appended from now on are seen.
fn wait_for_tail(hosts: &[&Host], follower: &mut Follower) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while hosts.iter().any(|h| running(h, "tail") == 0) {
        assert!(
            Instant::now() < deadline,
            "tail did not start on every host within 20 s; drover said:\n{}",
            follower.transcript()
        );
        follower.drain(Out::Stdout, Duration::from_millis(100));
    }
}

/// `HOST: text` as drover tail prints it (the host name padded).
fn split_line(line: &str) -> Option<(&str, &str)> {
    let (host, rest) = line.split_once(':')?;
    Some((host, rest.trim_start()))
}

#[test]
fn watch_reports_the_one_host_whose_output_changed() {
    let (fleet, site, inventory) = setup(4);
    for h in fleet.hosts() {
        write_home(h, "state.txt", "version=1\nmode=steady\n");
    }
    let changed = fleet.host(1);
    let mut watch = Follower::spawn(site.drover().arg("watch").arg(&inventory).args([
        "--interval",
        "2s",
        "--count",
        "4",
        "--",
        "cat",
        "~/state.txt",
    ]));

    // First round: one group of four, its output indented.
    let names: Vec<String> = fleet.hosts().iter().map(|h| h.name().to_string()).collect();
    let all = drover_exec::fleet::hostlist(&names);
    let first = watch.until(Out::Stdout, Duration::from_secs(30), "first round", |l| {
        l.starts_with("==> ")
    });
    assert_eq!(
        first.last().map(String::as_str),
        Some(format!("==> {all} (4 servers): exit 0").as_str()),
        "{}",
        watch.transcript()
    );
    let body = watch.until(Out::Stdout, Duration::from_secs(5), "first round's output", |l| {
        l == "    mode=steady"
    });
    assert_eq!(body, ["    version=1", "    mode=steady"]);

    write_home(changed, "state.txt", "version=2\nmode=steady\n");
    let status = watch.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "drover watch:\n{}", watch.transcript());

    let later: Vec<String> = watch
        .seen
        .iter()
        .filter(|(w, _)| *w == Out::Stdout)
        .map(|(_, l)| l.clone())
        .skip(3)
        .collect();
    let headers: Vec<&String> = later.iter().filter(|l| l.starts_with("==> ")).collect();
    assert_eq!(headers.len(), 1, "one change expected:\n{}", watch.transcript());
    assert!(
        headers[0].starts_with(&format!("==> {} changed at ", changed.name())),
        "{}",
        watch.transcript()
    );
    for line in ["    -version=1", "    +version=2", "     mode=steady"] {
        assert!(
            later.iter().any(|l| l == line),
            "the diff lacks {line:?}:\n{}",
            watch.transcript()
        );
    }
    for h in fleet.hosts().iter().filter(|h| h.name() != changed.name()) {
        assert!(
            !later.iter().any(|l| l.contains(h.name())),
            "{} did not change:\n{}",
            h.name(),
            watch.transcript()
        );
    }
}

/// An HTTP receiver on 127.0.0.1 that answers every request 200 and
/// keeps each body (the minimal one of notifications.rs).
fn webhook_receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    let got = Arc::new(Mutex::new(Vec::new()));
    let record = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut len = 0;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.trim_end().split_once(':')
                    && k.trim().eq_ignore_ascii_case("content-length")
                {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            record.lock().expect("lock").push(value);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (url, got)
}

#[test]
fn watch_notifies_a_webhook_once_of_the_round_in_which_a_host_changed() {
    let (fleet, site, inventory) = setup(3);
    for h in fleet.hosts() {
        write_home(h, "state.txt", "version=1\n");
    }
    let changed = fleet.host(2);
    let (url, got) = webhook_receiver();
    let targets = site.dir().join("notifications.json");
    std::fs::write(
        &targets,
        serde_json::json!([{"name": "hook", "type": "webhook", "url": url, "events": ["watch_change"]}]).to_string(),
    )
    .expect("write the notifications file");
    let mut watch = Follower::spawn(
        site.drover()
            .arg("watch")
            .arg(&inventory)
            .args(["--interval", "2s", "--count", "3", "--notifications"])
            .arg(&targets)
            .arg("--state")
            .arg(site.state())
            .args(["--", "cat", "~/state.txt"]),
    );
    watch.until(Out::Stdout, Duration::from_secs(30), "first round's output", |l| {
        l == "    version=1"
    });
    write_home(changed, "state.txt", "version=2\n");
    let status = watch.wait(Duration::from_secs(40));
    assert_eq!(status.code(), Some(0), "drover watch:\n{}", watch.transcript());

    // Watch gave the delivery its time before ending: it is in already.
    let got = got.lock().expect("lock").clone();
    assert_eq!(got.len(), 1, "one webhook expected: {got:#?}\n{}", watch.transcript());
    let body = &got[0];
    assert_eq!(body["event"], "watch_change", "{body:#}");
    assert_eq!(body["target"], "hook", "{body:#}");
    assert_eq!(body["count"], 1, "{body:#}");
    assert_eq!(body["workflow"], inventory.display().to_string(), "{body:#}");
    assert_eq!(
        body["summary"],
        format!("drover watch: 1 server changed in round 2: {}", changed.name()),
        "{body:#}"
    );
    assert_eq!(body["detail"]["round"], 2, "{body:#}");
    assert_eq!(body["detail"]["command"], "cat ~/state.txt", "{body:#}");
    let servers = body["detail"]["servers"].as_array().expect("detail.servers");
    assert_eq!(servers.len(), 1, "{body:#}");
    assert_eq!(servers[0]["server"], changed.name(), "{body:#}");
    assert_eq!(servers[0]["change"], "changed", "{body:#}");
    assert_eq!(servers[0]["outcome"], "exit 0", "{body:#}");
    let diff = servers[0]["diff"].as_str().expect("a diff");
    assert!(diff.contains("\n-version=1\n+version=2\n"), "{diff}");
}

#[test]
fn tail_follows_a_file_on_every_host_and_ends_on_sigint_leaving_no_tail_behind() {
    let (fleet, site, inventory) = setup(3);
    for h in fleet.hosts() {
        write_home(h, "app.log", "old line, before drover tail\n");
    }
    let mut tail = Follower::spawn(
        site.drover()
            .arg("tail")
            .arg(&inventory)
            .args(["--grep", "^keep", "~/app.log"]),
    );
    let hosts: Vec<&Host> = fleet.hosts().iter().collect();
    wait_for_tail(&hosts, &mut tail);

    let (a, b) = (fleet.host(0), fleet.host(2));
    // The line --grep drops goes first: once the kept line after it is
    // shown, the dropped one has been through drover.
    append_home(a, "app.log", "skip this one on a");
    append_home(a, "app.log", "keep: first on a");
    append_home(b, "app.log", "keep: first on b");
    append_home(b, "app.log", "skip this one on b");
    append_home(b, "app.log", "keep: second on b");
    // The hosts' lines come in any order; each host's in its own.
    let mut last_of_each = ["keep: first on a", "keep: second on b"].to_vec();
    let mut got = tail.until(Out::Stdout, Duration::from_secs(15), "the kept lines", |l| {
        last_of_each.retain(|end| !l.ends_with(end));
        last_of_each.is_empty()
    });
    got.extend(tail.drain(Out::Stdout, Duration::from_secs(1)));
    got.retain(|l| !l.is_empty());

    let mut parsed: Vec<(String, String)> = got
        .iter()
        .map(|l| {
            let (h, t) = split_line(l).unwrap_or_else(|| panic!("not HOST: line: {l:?}"));
            (h.trim().to_string(), t.to_string())
        })
        .collect();
    parsed.sort();
    let mut expected = vec![
        (a.name().to_string(), "keep: first on a".to_string()),
        (b.name().to_string(), "keep: first on b".to_string()),
        (b.name().to_string(), "keep: second on b".to_string()),
    ];
    expected.sort();
    assert_eq!(parsed, expected, "drover said:\n{}", tail.transcript());
    // Host names padded to one width: the texts line up.
    let starts: Vec<usize> = got.iter().map(|l| l.find("keep").unwrap_or(0)).collect();
    assert!(starts.windows(2).all(|w| w[0] == w[1]), "{got:?}");

    tail.interrupt();
    let status = tail.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "drover tail:\n{}", tail.transcript());
    for h in fleet.hosts() {
        assert_eq!(running(h, "tail"), 0, "{}: a tail is left behind", h.name());
    }
}

#[test]
fn tail_reconnects_to_a_host_that_was_stopped_and_started_again() {
    let (fleet, site, inventory) = setup(2);
    for h in fleet.hosts() {
        write_home(h, "app.log", "");
    }
    let mut tail = Follower::spawn(site.drover().arg("tail").arg(&inventory).arg("app.log"));
    let hosts: Vec<&Host> = fleet.hosts().iter().collect();
    wait_for_tail(&hosts, &mut tail);
    let (steady, bounced) = (fleet.host(0), fleet.host(1));

    append_home(bounced, "app.log", "before the stop");
    tail.until(Out::Stdout, Duration::from_secs(15), "the line before the stop", |l| {
        l.ends_with("before the stop")
    });

    bounced.stop().expect("stop the host");
    let lost = format!("drover: {}: connection lost (", bounced.name());
    let said = tail.until(Out::Stderr, Duration::from_secs(30), "connection lost", |l| {
        l.starts_with(&lost)
    });
    assert!(
        said.last().is_some_and(|l| l.ends_with("; reconnecting")),
        "{}",
        tail.transcript()
    );
    bounced.start().expect("start the host again");
    let back = format!("drover: {}: reconnected", bounced.name());
    tail.until(Out::Stderr, Duration::from_secs(40), "reconnected", |l| l == back);
    wait_for_tail(&[bounced], &mut tail);

    append_home(bounced, "app.log", "after the restart");
    append_home(steady, "app.log", "steady all along");
    let mut waited = ["after the restart", "steady all along"].to_vec();
    let got = tail.until(Out::Stdout, Duration::from_secs(15), "a line of each host", |l| {
        waited.retain(|end| !l.ends_with(end));
        waited.is_empty()
    });
    let after: Vec<&String> = got.iter().filter(|l| l.ends_with("after the restart")).collect();
    assert_eq!(after.len(), 1, "{}", tail.transcript());
    assert_eq!(
        split_line(after[0]).map(|(h, _)| h.trim()),
        Some(bounced.name()),
        "{}",
        tail.transcript()
    );
    // The other host was never disconnected.
    assert!(
        !tail
            .seen
            .iter()
            .any(|(_, l)| l.starts_with(&format!("drover: {}:", steady.name()))),
        "{}",
        tail.transcript()
    );

    tail.interrupt();
    let status = tail.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "drover tail:\n{}", tail.transcript());
    for h in fleet.hosts() {
        assert_eq!(running(h, "tail"), 0, "{}: a tail is left behind", h.name());
    }
}

#[test]
fn watch_says_once_that_a_host_is_unreachable_and_when_it_is_back_and_ends_on_sigint() {
    let (fleet, site, inventory) = setup(3);
    for h in fleet.hosts() {
        write_home(h, "state.txt", "ok\n");
    }
    let mut watch = Follower::spawn(site.drover().arg("watch").arg(&inventory).args([
        "--interval",
        "1s",
        "--timeout",
        "5s",
        "--",
        "cat",
        "state.txt",
    ]));
    watch.until(Out::Stdout, Duration::from_secs(30), "first round", |l| l == "    ok");
    let down = fleet.host(2);
    down.stop().expect("stop the host");
    let gone = format!("==> {} unreachable at ", down.name());
    watch.until(Out::Stdout, Duration::from_secs(30), "unreachable", |l| {
        l.starts_with(&gone)
    });
    // Three more rounds while it is down: nothing more is said of it.
    let quiet = watch.drain(Out::Stdout, Duration::from_secs(3));
    assert!(quiet.is_empty(), "{}", watch.transcript());
    down.start().expect("start the host again");
    let back = format!("==> {} reachable again at ", down.name());
    let said = watch.until(Out::Stdout, Duration::from_secs(30), "reachable again", |l| {
        l.starts_with(&back)
    });
    assert!(
        said.last().is_some_and(|l| l.ends_with(": exit 0")),
        "{}",
        watch.transcript()
    );
    watch.interrupt();
    let status = watch.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "drover watch:\n{}", watch.transcript());
    let stdout: Vec<&String> = watch
        .seen
        .iter()
        .filter(|(w, _)| *w == Out::Stdout)
        .map(|(_, l)| l)
        .collect();
    assert_eq!(
        stdout.iter().filter(|l| l.starts_with(&gone)).count(),
        1,
        "{}",
        watch.transcript()
    );
    // The others never changed: the first round, the loss and the return.
    assert_eq!(
        stdout.iter().filter(|l| l.starts_with("==> ")).count(),
        3,
        "{}",
        watch.transcript()
    );
}

#[test]
fn tail_ends_quietly_when_its_stdout_is_closed() {
    let (fleet, site, inventory) = setup(1);
    let host = fleet.host(0);
    write_home(host, "app.log", "");
    let mut child = site
        .drover()
        .args(["tail", "-n", "1"])
        .arg(&inventory)
        .arg("app.log")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drover tail");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    while running(host, "tail") == 0 {
        assert!(Instant::now() < deadline, "tail did not start on the host");
        std::thread::sleep(Duration::from_millis(50));
    }
    append_home(host, "app.log", "first");
    let first = lines.next().expect("a line").expect("read");
    assert!(first.ends_with(": first"), "{first:?}");
    // `| head -1`: the reader goes away; the next line cannot be written.
    drop(lines);
    append_home(host, "app.log", "second");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("drover tail did not end after its stdout was closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr);
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert_eq!(stderr, "", "a closed stdout is not an error");
    assert_eq!(running(host, "tail"), 0, "a tail is left behind");
}
