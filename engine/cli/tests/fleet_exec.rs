//! `drover exec` and `drover history` on real SSH hosts, through the
//! `drover` binary.
//!
//! Every host is an OpenSSH sshd the test starts (drover-testkit), reached
//! as an operator reaches an existing fleet (see existing_hosts.rs). What
//! each host answers is set by files the test writes into its login
//! user's home before the command runs; what happened is read from the
//! output, the journal and the files the command leaves on the hosts.

#[path = "existing_hosts/support.rs"]
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use drover_state::{Event, RunStatus, Store};
use drover_testkit::{Host, TestFleet};
use support::*;

/// What every exec of the first test runs: two lines, the first one
/// from `answer` when the host has it; a host with `broken` says so on
/// stderr and exits 3.
const ANSWER: &str = "if [ -f answer ]; then cat answer; else echo standard; fi; echo line-two; if [ -f broken ]; then echo broken >&2; exit 3; fi";

/// A fleet of `n` hosts as an operator has it, and a site whose inventory
/// lists them all (each tagged `web`); the inventory's path.
fn site_for(fleet: &TestFleet) -> (Site, PathBuf) {
    let site = Site::new();
    site.trust(fleet);
    let ssh = Ssh::operator(fleet);
    let servers: Vec<Srv> = fleet
        .hosts()
        .iter()
        .map(|h| {
            let mut s = Srv::on(h, &ssh);
            s.tags = vec!["web".into()];
            s
        })
        .collect();
    let inventory = site.inventory(&servers, "");
    (site, inventory)
}

/// Writes `content` into `name` in the login user's home of `host`.
fn put(host: &Host, name: &str, content: &str) {
    let path = host.home().join(name);
    std::fs::write(&path, content).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// `drover exec INVENTORY ARGS -- COMMAND`, waited for (60 s at most).
fn exec(site: &Site, inventory: &Path, args: &[&str], command: &str) -> Output {
    let mut c = site.drover();
    c.arg("exec").arg(inventory).args(args).arg("--").arg(command);
    wait_output(&mut c, Duration::from_secs(60))
}

/// `drover ARGS`, waited for (60 s at most).
fn drover(site: &Site, args: &[&str]) -> Output {
    let mut c = site.drover();
    c.args(args);
    wait_output(&mut c, Duration::from_secs(60))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The runs in the store, newest first (none when it does not exist).
fn run_ids(site: &Site) -> Vec<String> {
    if !site.state().exists() {
        return Vec::new();
    }
    let mut runs = Store::open_read_only(&site.state())
        .expect("the state store")
        .runs()
        .expect("runs");
    runs.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then_with(|| b.id.cmp(&a.id)));
    runs.into_iter().map(|r| r.id).collect()
}

/// Test 1: twenty servers, three of which answer otherwise: the grouped
/// text (whole, exact), the same with --diff, as JSON; history lists,
/// filters, shows and compares them; --diff-last after one host's answer
/// changed.
#[test]
fn twenty_servers_answer_in_groups_and_history_shows_and_compares_them() {
    let started = Instant::now();
    let fleet = operator_fleet(20);
    let (site, inventory) = site_for(&fleet);
    for i in [3, 10] {
        put(fleet.host(i), "answer", "changed\n");
    }
    put(fleet.host(16), "broken", "");
    let majority = "host-[001-003,005-010,012-016,018-020]";

    // Plain text: each group once, the largest first.
    let o = exec(&site, &inventory, &[], ANSWER);
    assert_eq!(o.status.code(), Some(4), "host-017 exited 3:\n{}", text(&o));
    let first = site.latest_run();
    let expected = format!(
        "==> {majority} (17 servers): exit 0
    standard
    line-two
==> host-[004,011] (2 servers): exit 0
    changed
    line-two
==> host-017 (1 server): exit 3
    standard
    line-two
    stderr| broken
20 servers: 19 ok, 1 failed (1 exit 3)
run {first} failed: 1 task(s) failed: exec/host-017
"
    );
    assert_eq!(stdout(&o), expected);
    // No live view without a terminal.
    assert_eq!(stderr(&o), "", "stderr is not a terminal: nothing on it");
    assert_eq!(site.status(&first), RunStatus::Failed);
    assert!(site.report(&first).contains("exec/host-017"), "report.txt is written");

    // --diff: the other groups as diffs against the largest.
    let o = exec(&site, &inventory, &["--diff"], ANSWER);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let second = site.latest_run();
    let expected_diff = format!(
        "==> {majority} (17 servers): exit 0
    standard
    line-two
==> host-[004,011] (2 servers): exit 0
    --- {majority}
    +++ host-[004,011]
    @@ -1,2 +1,2 @@
    -standard
    +changed
     line-two
==> host-017 (1 server): exit 3
    -exit 0
    +exit 3
    --- {majority}
    +++ host-017
    @@ -1,2 +1,3 @@
     standard
     line-two
    +stderr| broken
20 servers: 19 ok, 1 failed (1 exit 3)
run {second} failed: 1 task(s) failed: exec/host-017
"
    );
    assert_eq!(stdout(&o), expected_diff);

    // history show prints them exactly as exec did.
    let o = drover(&site, &["history", "show", &first]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(stdout(&o), expected);
    let o = drover(&site, &["history", "show", &second, "--diff"]);
    assert_eq!(stdout(&o), expected_diff);

    // JSON: one object with the run, the progress, the groups, every server.
    let o = exec(&site, &inventory, &["--format", "json"], ANSWER);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let third = site.latest_run();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("exec --format json is JSON");
    assert_eq!(v["run_id"], third.as_str());
    assert_eq!(v["command"], ANSWER);
    assert_eq!(v["status"], "failed");
    assert_eq!(
        v["progress"],
        serde_json::json!({"total": 20, "done": 20, "failed": 1, "percent": 100})
    );
    let groups = v["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 3);
    assert_eq!(groups[0]["hosts"], majority);
    assert_eq!(groups[0]["servers"].as_array().map(Vec::len), Some(17));
    assert_eq!(groups[0]["outcome"], "exit 0");
    assert_eq!(groups[0]["stdout"], "standard\nline-two\n");
    assert_eq!(groups[2]["servers"], serde_json::json!(["host-017"]));
    assert_eq!(groups[2]["stderr"], "broken\n");
    let servers = v["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 20);
    assert_eq!(servers[16]["server"], "host-017");
    assert_eq!(servers[16]["exit_code"], 3);
    assert_eq!(servers[16]["status"], "failed");
    assert_eq!(servers[3]["stdout"], "changed\nline-two\n");
    // JSON lines: one answer per line.
    let o = drover(&site, &["history", "show", &third, "--format", "jsonl"]);
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 20);
    assert!(lines.iter().all(|l| l["run_id"] == third.as_str()));
    assert_eq!(lines[16]["outcome"], "exit 3");

    // host-004 now answers as the majority: --diff-last names it alone.
    std::fs::remove_file(fleet.host(3).home().join("answer")).expect("rm answer");
    let o = exec(&site, &inventory, &["--diff-last"], ANSWER);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let fourth = site.latest_run();
    let changes = format!(
        "changes from run {third} to run {fourth}:
==> host-004: exit 0, output changed
    --- host-004 in run {third}
    +++ host-004 in run {fourth}
    @@ -1,2 +1,2 @@
    -changed
    +standard
     line-two
1 server of 20 servers changed
"
    );
    let out = stdout(&o);
    let (groups_text, compared) = out.split_once("\n\n").expect("a blank line before the comparison");
    assert!(
        groups_text.starts_with("==> host-[001-010,012-016,018-020] (18 servers): exit 0\n"),
        "{out}"
    );
    assert_eq!(compared, changes);
    // history diff says the same.
    let o = drover(&site, &["history", "diff", &third, &fourth]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(stdout(&o), changes);
    let o = drover(&site, &["history", "diff", &first, &second]);
    assert_eq!(
        stdout(&o),
        format!(
            "changes from run {first} to run {second}:\nno server's exit status or output changed (20 servers in both)\n"
        )
    );

    // Another command on one server; then the list and its filters.
    let o = exec(&site, &inventory, &["--server", "host-001"], "echo solo");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let solo = site.latest_run();
    assert_eq!(
        stdout(&o),
        format!("==> host-001 (1 server): exit 0\n    solo\n1 server: 1 ok\nrun {solo} succeeded\n")
    );
    let listed = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["history"];
        a.extend_from_slice(args);
        let o = drover(&site, &a);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let out = stdout(&o);
        let mut lines = out.lines();
        assert!(lines.next().is_some_and(|h| h.starts_with("run ")), "a header:\n{out}");
        lines
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
            .collect()
    };
    let all = vec![
        solo.clone(),
        fourth.clone(),
        third.clone(),
        second.clone(),
        first.clone(),
    ];
    assert_eq!(listed(&[]), all, "newest first");
    assert_eq!(run_ids(&site), all);
    assert_eq!(listed(&["--limit", "2"]), all[..2].to_vec());
    assert_eq!(listed(&["--grep", "solo"]), vec![solo.clone()]);
    // In the output of some server, not in the command.
    assert_eq!(listed(&["--grep", "changed"]), all[1..].to_vec());
    assert_eq!(listed(&["--server", "host-002"]), all[1..].to_vec());
    assert_eq!(listed(&["--status", "succeeded"]), vec![solo.clone()]);
    assert_eq!(listed(&["--status", "failed", "--limit", "1"]), vec![fourth.clone()]);
    let o = drover(&site, &["history"]);
    let row = stdout(&o)
        .lines()
        .find(|l| l.starts_with(&first))
        .map(str::to_string)
        .expect("a row");
    assert!(
        row.contains("failed") && row.contains("20: 19 ok, 1 failed") && row.ends_with(ANSWER),
        "{row}"
    );
    let o = drover(&site, &["history", "--status", "finished"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        stderr(&o).contains("\"finished\"") && stderr(&o).contains("succeeded, failed, cancelled"),
        "the valid statuses are listed:\n{}",
        text(&o)
    );

    // Execs of different commands: refused, unless forced.
    let o = drover(&site, &["history", "diff", &first, &solo]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("--force"), "{}", text(&o));
    let o = drover(&site, &["history", "diff", &first, &solo, "--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(stderr(&o).contains("warning"), "{}", text(&o));
    assert!(
        stdout(&o).contains(&format!("only in run {first}: host-[002-020] (19 servers)\n")),
        "{}",
        text(&o)
    );
    // Unknown runs.
    let o = drover(&site, &["history", "show", "20200101-000000-dead"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("no run 20200101-000000-dead"), "{}", text(&o));
    let o = drover(&site, &["exec", "--resume", "20200101-000000-dead"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("no run 20200101-000000-dead"), "{}", text(&o));
    println!("groups and history: {:.1} s", started.elapsed().as_secs_f64());
}

/// Test 2: a rolling exec, two servers at a time, one failure tolerated:
/// both servers of the second batch fail, the roll halts, and the four
/// servers after them never run the command.
#[test]
fn a_rolling_exec_halts_after_too_many_failures_and_the_rest_never_runs() {
    let fleet = operator_fleet(8);
    let (site, inventory) = site_for(&fleet);
    for i in [2, 3] {
        put(fleet.host(i), "fail", "");
    }
    let command = "echo ran >> ran; if [ -f fail ]; then echo failing; exit 1; fi; echo fine";
    let o = exec(&site, &inventory, &["--rolling", "2", "--max-fail", "1"], command);
    assert_eq!(o.status.code(), Some(4), "the roll halted:\n{}", text(&o));
    let id = site.only_run();
    let out = stdout(&o);
    let halt = "rolling update of exec halted: 2 of 8 servers failed";
    // The halt is said once, by the servers it left out.
    assert!(
        out.starts_with(&format!(
            "==> host-[005-008] (4 servers): skipped: {halt} (25%), more than the 1 tolerated (threshold 18.75%)\n    (no output)\n"
        )),
        "{out}"
    );
    assert!(
        out.contains(
            "==> host-[001-002] (2 servers): exit 0\n    fine\n==> host-[003-004] (2 servers): exit 1\n    failing\n"
        ),
        "{out}"
    );
    assert!(
        out.ends_with(&format!(
            "8 servers: 2 ok, 2 failed (2 exit 1), 4 skipped\nrun {id} failed: {halt} (25%), more than the 1 tolerated (threshold 18.75%); 2 task(s) failed: exec/host-003, exec/host-004\n"
        )),
        "{out}"
    );
    let journal = site.journal(&id);
    for (i, host) in fleet.hosts().iter().enumerate() {
        let node = format!("exec/{}", host.name());
        let ran = std::fs::read_to_string(host.home().join("ran")).unwrap_or_default();
        if i < 4 {
            assert_eq!(attempts(&journal, &node), 1, "{node}");
            assert_eq!(ran, "ran\n", "{node}");
        } else {
            assert_eq!(attempts(&journal, &node), 0, "{node} must never start");
            assert!(
                events_of(&journal, &node)
                    .iter()
                    .any(|e| matches!(e, Event::TaskSkipped { reason } if reason.contains(halt))),
                "{node}: {:?}",
                events_of(&journal, &node)
            );
            assert_eq!(ran, "", "{node} ran the command");
        }
    }
    // The answers, from the journal, say the same.
    let o = drover(&site, &["history", "show", &id, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let statuses: Vec<&str> = v["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        statuses,
        [
            "succeeded",
            "succeeded",
            "failed",
            "failed",
            "skipped",
            "skipped",
            "skipped",
            "skipped"
        ]
    );
    assert_eq!(v["progress"]["failed"], 2);
}

/// Test 3: Ctrl-C while two servers are still in a slow command; `drover
/// exec --resume` finishes it without running the command again on the
/// servers that had answered.
#[test]
fn an_interrupted_exec_resumes_without_running_again_where_it_had_answered() {
    let fleet = operator_fleet(6);
    let (site, inventory) = site_for(&fleet);
    for i in [4, 5] {
        put(fleet.host(i), "slow", "");
    }
    // Each execution appends a line to `ran`; a slow host sleeps only the
    // first time.
    let command = "echo once >> ran; if [ -f slow ]; then rm slow; sleep 30; fi; echo done";
    let child = site
        .drover()
        .arg("exec")
        .arg(&inventory)
        .arg("--")
        .arg(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drover exec");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    // Wait until the fast four answered and the slow two are running.
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        assert!(Instant::now() < deadline, "the fast servers did not answer in 30 s");
        std::thread::sleep(Duration::from_millis(200));
        let Some(id) = run_ids(&site).into_iter().next() else {
            continue;
        };
        let journal = site.journal(&id);
        let done = journal
            .iter()
            .filter(|e| matches!(e.event, Event::TaskSucceeded { .. }))
            .count();
        // The slow ones removed their marker: they are in their sleep.
        let slow_started = fleet.hosts()[4..]
            .iter()
            .all(|h| attempts(&journal, &format!("exec/{}", h.name())) == 1 && !h.home().join("slow").exists());
        if done == 4 && slow_started {
            break id;
        }
    };
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let o = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("drover exec did not stop within 20 s of Ctrl-C")
        })
        .expect("output");
    assert_eq!(o.status.code(), Some(5), "interrupted:\n{}", text(&o));
    assert_eq!(site.status(&id), RunStatus::Aborted);
    let out = stdout(&o);
    assert!(
        out.starts_with("==> host-[001-004] (4 servers): exit 0\n    done\n"),
        "the answers so far:\n{out}"
    );
    assert!(
        out.ends_with(&format!(
            "not every server has answered: continue with `drover exec --resume {id}`\n"
        )),
        "{out}"
    );

    let o = drover(&site, &["exec", "--resume", &id]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        stdout(&o),
        format!("==> host-[001-006] (6 servers): exit 0\n    done\n6 servers: 6 ok\nrun {id} succeeded\n")
    );
    let journal = site.journal(&id);
    for (i, host) in fleet.hosts().iter().enumerate() {
        let node = format!("exec/{}", host.name());
        let ran = std::fs::read_to_string(host.home().join("ran")).expect("ran");
        if i < 4 {
            assert_eq!(attempts(&journal, &node), 1, "{node} ran again");
            assert_eq!(ran, "once\n", "{node} ran again");
        } else {
            // Interrupted in flight: run again by the resume.
            assert_eq!(attempts(&journal, &node), 2, "{node}");
            assert_eq!(ran, "once\nonce\n", "{node}");
        }
    }
    assert!(site.report(&id).contains("succeeded"), "report.txt rewritten");
}

/// Test 4: what is refused before anything runs (an unknown tag or
/// group, no command, --max-fail without --rolling), with nothing
/// recorded; a host that is down is a group of its own and the others
/// answer.
#[test]
fn bad_input_records_nothing_and_a_host_down_is_its_own_group() {
    let fleet = operator_fleet(5);
    let (site, inventory) = site_for(&fleet);
    let o = exec(&site, &inventory, &["--tag", "nosuchtag"], "true");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("nosuchtag"), "{}", text(&o));
    let o = exec(&site, &inventory, &["--group", "nosuchgroup"], "true");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(stderr(&o).contains("nosuchgroup"), "{}", text(&o));
    let o = exec(&site, &inventory, &[], "  ");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr(&o).contains("no command"), "{}", text(&o));
    let o = exec(&site, &inventory, &["--max-fail", "1"], "true");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(stderr(&o).contains("--rolling"), "{}", text(&o));
    assert_eq!(run_ids(&site), Vec::<String>::new(), "nothing may be recorded");

    let down = fleet.host(2);
    down.stop().expect("stop a host");
    let o = exec(&site, &inventory, &["--tag", "web"], "echo up");
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let id = site.only_run();
    let out = stdout(&o);
    assert!(
        out.starts_with("==> host-[001-002,004-005] (4 servers): exit 0\n    up\n==> host-003 (1 server): failed: "),
        "{out}"
    );
    let header = out.lines().nth(2).unwrap_or_default();
    assert!(
        header.contains(&format!("{}:{PORT}", down.address()))
            && header.contains("refused")
            && !header.contains("<server>"),
        "the reason: {header}"
    );
    assert!(
        out.ends_with(&format!(
            "5 servers: 4 ok, 1 failed (1 no answer)\nrun {id} failed: 1 task(s) failed: exec/host-003\n"
        )),
        "{out}"
    );

    // A workflow's run is not an exec: --resume and history refuse it,
    // and the list leaves it out.
    let workflow = site.workflow("hostinfo", 5, RETRY_3);
    let o = drover(&site, &["run", &workflow.display().to_string()]);
    assert_eq!(o.status.code(), Some(4), "host-003 is down:\n{}", text(&o));
    let run = site.latest_run();
    assert_ne!(run, id);
    let o = drover(&site, &["exec", "--resume", &run]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr(&o).contains(&format!("run {run} is a run of workflow hostinfo, not an exec")),
        "{}",
        text(&o)
    );
    let o = drover(&site, &["history", "show", &run]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = drover(&site, &["history"]);
    assert!(stdout(&o).contains(&id) && !stdout(&o).contains(&run), "{}", text(&o));
}
