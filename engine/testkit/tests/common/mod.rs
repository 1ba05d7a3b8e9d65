//! The real OpenSSH client, as the tests run it.

#![allow(dead_code)] // Not every test binary uses every helper.

use std::path::Path;
use std::process::Command;

use drover_testkit::Host;

/// `ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes
/// -o UserKnownHostsFile=<known_hosts> -i <key> -p <port> <user>@<address>`:
/// no configuration but these options, strict host key checking.
pub fn ssh(key: Option<&Path>, known_hosts: &Path, host: &Host) -> Command {
    ssh_as(key, known_hosts, host, host.user())
}

/// [`ssh`] logging in as `user`.
pub fn ssh_as(key: Option<&Path>, known_hosts: &Path, host: &Host, user: &str) -> Command {
    let mut command = Command::new("ssh");
    command.args([
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
    ]);
    command
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()));
    command.args(["-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10"]);
    if let Some(key) = key {
        command.args(["-o", "IdentitiesOnly=yes", "-i"]).arg(key);
    }
    command.arg("-p").arg(host.port().to_string());
    command.arg(format!("{user}@{}", host.address()));
    command
}

/// What a command did: success, stdout, stderr.
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` (with `args` appended) to completion.
pub fn run(command: &mut Command, args: &[&str]) -> Outcome {
    let out = command
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

/// Runs `command` and insists it succeeds; its stdout.
pub fn ok(command: &mut Command, args: &[&str]) -> String {
    let outcome = run(command, args);
    assert!(outcome.ok, "{command:?} failed: {}", outcome.stderr);
    outcome.stdout
}

/// Whether a process with this pid exists (zombies included: a zombie
/// is still a leftover of someone's).
pub fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}
