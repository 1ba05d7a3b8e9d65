//! `drover snapshot` and `drover drift` on real servers: OpenSSH sshd
//! hosts the test starts itself (drover-testkit), reached as an operator
//! reaches them, through the `drover` binary. Each test writes the files
//! it snapshots into the hosts' homes, changes some, and reads what
//! drover says changed: on which server, which item, the unified diff,
//! the exit status (0 no changes, 6 changes found).

// Shared with existing_hosts.rs, whose journal and report helpers this
// file does not use.
#[allow(dead_code)]
#[path = "existing_hosts/support.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_testkit::{Host, TestFleet};
use support::*;

/// Exit status of `drover diff`/`drift` when something changed.
const DRIFT: i32 = 6;

/// Each command ends well within this.
const LIMIT: Duration = Duration::from_secs(50);

/// A site with an inventory of every host of `fleet`, its host keys
/// trusted; the inventory's path.
fn site_of(fleet: &TestFleet) -> (Site, PathBuf) {
    let site = Site::new();
    site.trust(fleet);
    let ssh = Ssh::operator(fleet);
    let servers: Vec<Srv> = fleet.hosts().iter().map(|h| Srv::on(h, &ssh)).collect();
    let inv = site.inventory(&servers, "");
    (site, inv)
}

/// Writes `content` to `name` in the login user's home on `host`,
/// readable by that user.
fn put(host: &Host, name: &str, content: &[u8]) {
    let path = host.home().join(name);
    std::fs::write(&path, content).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
}

/// Runs drover with `args` on the site: exit status, stdout, stderr.
fn drover(site: &Site, args: &[&str]) -> (Option<i32>, String, String) {
    let o = wait_output(site.drover().args(args), LIMIT);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn drift_names_the_one_host_whose_file_was_edited_with_a_unified_diff() {
    let fleet = operator_fleet(4);
    let (site, inv) = site_of(&fleet);
    let inv = path_str(&inv);
    for h in fleet.hosts() {
        put(h, "app.conf", b"# app\nport=8080\nworkers=4\nlog=info\n");
    }
    let (code, out, err) = drover(
        &site,
        &[
            "snapshot",
            "take",
            inv,
            "--files",
            "~/app.conf",
            "--commands",
            "uname -s",
            "--name",
            "base",
        ],
    );
    assert_eq!(code, Some(0), "snapshot take:\n{out}{err}");
    assert!(
        out.contains("(base): 4 of 4 server(s) read, 1 file(s) and 1 command(s) each"),
        "{out}"
    );

    // `~` is the login user's home, though commands run as root (the
    // servers declare `become`).
    let (_, shown, _) = drover(&site, &["snapshot", "show", "base", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&shown).expect("show --format json");
    for s in doc["servers"].as_array().expect("servers") {
        assert_eq!(
            s["files"]["~/app.conf"]["text"], "# app\nport=8080\nworkers=4\nlog=info\n",
            "{s:#}"
        );
        assert_eq!(s["commands"]["uname -s"]["stdout"], "Linux\n", "{s:#}");
    }
    // Nothing changed yet.
    let (code, out, err) = drover(&site, &["drift", inv, "--against", "base"]);
    assert_eq!(code, Some(0), "drift with no change:\n{out}{err}");
    assert_eq!(out, "no changes (4 server(s) compared)\n");

    let edited = fleet.host(1);
    put(edited, "app.conf", b"# app\nport=9090\nworkers=4\nlog=info\n");
    let (code, out, err) = drover(&site, &["drift", inv, "--against", "base"]);
    assert_eq!(code, Some(DRIFT), "drift after an edit:\n{out}{err}");
    let name = edited.name();
    assert_eq!(
        out,
        format!(
            "{name}: 1 change(s)
  file ~/app.conf: content changed
    --- {name}:~/app.conf (base)
    +++ {name}:~/app.conf (now)
    @@ -1,4 +1,4 @@
     # app
    -port=8080
    +port=9090
     workers=4
     log=info
1 change(s) on 1 of 4 server(s)
"
        ),
        "stderr: {err}"
    );
    for other in fleet.hosts().iter().filter(|h| h.name() != name) {
        assert!(
            !out.contains(other.name()),
            "{} is named but did not change:\n{out}",
            other.name()
        );
    }

    // The same as JSON, for programs.
    let (code, out, _) = drover(&site, &["drift", inv, "--against", "base", "--format", "json"]);
    assert_eq!(code, Some(DRIFT));
    let doc: serde_json::Value = serde_json::from_str(&out).expect("drift --format json");
    assert_eq!(doc["servers_changed"], serde_json::json!([name]));
    assert_eq!(doc["changes"].as_array().map(Vec::len), Some(1), "{doc:#}");
    assert_eq!(doc["changes"][0]["kind"], "file");
    assert_eq!(doc["changes"][0]["item"], "~/app.conf");
    assert_eq!(doc["before"]["name"], "base");

    // A selection compares only what it selects: another host, no drift.
    let other = fleet.host(2).name();
    let (code, out, err) = drover(&site, &["drift", inv, "--server", other, "--against", "base"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out, "no changes (1 server(s) compared)\n");

    // --save stores what was read now; diffing it with the first is the
    // drift seen above.
    let (code, _, err) = drover(&site, &["drift", inv, "--against", "base", "--save", "later"]);
    assert_eq!(code, Some(DRIFT), "{err}");
    assert!(err.contains("(later)"), "{err}");
    let (code, out, _) = drover(&site, &["snapshot", "diff", "base", "later"]);
    assert_eq!(code, Some(DRIFT));
    assert!(out.starts_with(&format!("{name}: 1 change(s)\n")), "{out}");
    assert!(out.contains("    -port=8080\n    +port=9090\n"), "{out}");
}

#[test]
fn snapshot_diff_shows_files_that_appear_and_disappear_binary_files_and_an_unreachable_host() {
    let fleet = operator_fleet(3);
    let (site, inv) = site_of(&fleet);
    let inv = path_str(&inv);
    let (h1, h2, h3) = (fleet.host(0), fleet.host(1), fleet.host(2));
    for h in fleet.hosts() {
        put(h, "app.conf", b"port=8080\n");
        put(h, "blob.bin", &[0, 1, 2, 255, 254, 0, 7]);
    }
    put(h1, "gone.txt", b"temporary\nfile\n");
    let files = "~/app.conf,~/gone.txt,~/new.txt,~/blob.bin";
    let (code, out, err) = drover(
        &site,
        &[
            "snapshot",
            "take",
            inv,
            "--files",
            files,
            "--command",
            "wc -l < app.conf",
            "--name",
            "one",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");

    // A name is given once.
    let (code, _, err) = drover(&site, &["snapshot", "take", inv, "--files", files, "--name", "one"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("a snapshot named \"one\" exists already"), "{err}");

    std::fs::remove_file(h1.home().join("gone.txt")).expect("rm gone.txt");
    put(h1, "blob.bin", &[0, 1, 2, 255, 254, 0, 8]);
    put(h2, "new.txt", b"fresh\n");
    put(h2, "app.conf", b"port=8080\nport=8081\n");
    h3.stop().expect("stop the third host");
    let (code, out, err) = drover(
        &site,
        &[
            "snapshot",
            "take",
            inv,
            "--files",
            files,
            "--command",
            "wc -l < app.conf",
            "--name",
            "two",
        ],
    );
    assert_eq!(code, Some(4), "a host could not be read:\n{out}{err}");
    assert!(out.contains("(two): 2 of 3 server(s) read"), "{out}");
    assert!(out.contains(&format!("unreachable: {}: ", h3.name())), "{out}");

    let (code, out, err) = drover(&site, &["snapshot", "diff", "one", "two"]);
    assert_eq!(code, Some(DRIFT), "{out}{err}");
    let (n1, n2, n3) = (h1.name(), h2.name(), h3.name());
    let expected_start = format!(
        "{n1}: 2 change(s)
  file ~/blob.bin: content changed (binary, 7 -> 7 bytes, sha256 "
    );
    assert!(out.starts_with(&expected_start), "{out}");
    for part in [
        format!(
            "  file ~/gone.txt: removed
    --- {n1}:~/gone.txt (one)
    +++ {n1}:~/gone.txt (two)
    @@ -1,2 +0,0 @@
    -temporary
    -file
"
        ),
        format!(
            "{n2}: 3 change(s)
  file ~/app.conf: content changed
"
        ),
        format!(
            "  file ~/new.txt: appeared
    --- {n2}:~/new.txt (one)
    +++ {n2}:~/new.txt (two)
    @@ -0,0 +1 @@
    +fresh
"
        ),
        "  command wc -l < app.conf: output changed\n".to_string(),
        "    -1\n    +2\n".to_string(),
        format!("{n3}: 1 change(s)\n  unreachable: "),
        "6 change(s) on 3 of 3 server(s)\n".to_string(),
    ] {
        assert!(out.contains(&part), "missing {part:?} in:\n{out}");
    }
    // No text of a binary file is shown.
    assert!(!out.contains("blob.bin (one)"), "{out}");

    let (code, out, _) = drover(&site, &["snapshot", "diff", "one", "two", "--format", "json"]);
    assert_eq!(code, Some(DRIFT));
    let doc: serde_json::Value = serde_json::from_str(&out).expect("diff --format json");
    let rows: Vec<(String, String, String)> = doc["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["server"].as_str().unwrap_or_default().to_string(),
                c["kind"].as_str().unwrap_or_default().to_string(),
                c["item"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let row = |s: &str, k: &str, i: &str| (s.to_string(), k.to_string(), i.to_string());
    assert_eq!(
        rows,
        [
            row(n1, "file", "~/blob.bin"),
            row(n1, "file", "~/gone.txt"),
            row(n2, "file", "~/app.conf"),
            row(n2, "file", "~/new.txt"),
            row(n2, "command", "wc -l < app.conf"),
            row(n3, "server", n3),
        ]
    );

    // A snapshot compared with itself: nothing changed.
    let (code, out, _) = drover(&site, &["snapshot", "diff", "one", "one"]);
    assert_eq!((code, out.as_str()), (Some(0), "no changes (3 server(s) compared)\n"));

    // The list, newest first; a snapshot shown with what it recorded.
    let (code, out, _) = drover(&site, &["snapshot", "list"]);
    assert_eq!(code, Some(0));
    let names: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(names, ["two", "one"], "{out}");
    let (code, out, _) = drover(&site, &["snapshot", "show", "two"]);
    assert_eq!(code, Some(0));
    assert!(out.contains(&format!("{n3}: unreachable: ")), "{out}");
    assert!(out.contains("  file ~/gone.txt: absent\n"), "{out}");
    assert!(out.contains("  file ~/blob.bin: 7 bytes, binary, sha256 "), "{out}");
    let (code, out, _) = drover(&site, &["snapshot", "show", "one", "--format", "json"]);
    assert_eq!(code, Some(0));
    let doc: serde_json::Value = serde_json::from_str(&out).expect("show --format json");
    assert_eq!(doc["servers"][0]["files"]["~/gone.txt"]["text"], "temporary\nfile\n");
    assert_eq!(doc["servers"][0]["commands"]["wc -l < app.conf"]["stdout"], "1\n");
    assert!(doc["servers"][0]["files"]["~/blob.bin"]["text"].is_null());
}

#[test]
fn unknown_snapshots_missing_items_and_an_owned_store_are_refused_with_what_to_do() {
    let site = Site::new();
    let inv = site.dir().join("inv.k");
    std::fs::write(&inv, "import drover\n\ninventory = drover.Inventory {servers = []}\n").expect("inv.k");
    let inv = path_str(&inv);

    // No store yet.
    let (code, _, err) = drover(&site, &["snapshot", "show", "base"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no snapshot \"base\"") && err.contains("does not exist yet"),
        "{err}"
    );

    // A store without that snapshot.
    drop(drover_state::Store::open(&site.state()).expect("the state store"));
    let (code, _, err) = drover(&site, &["snapshot", "diff", "base", "later"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no snapshot \"base\" in the state store") && err.contains("drover snapshot list"),
        "{err}"
    );
    let (code, _, err) = drover(&site, &["drift", inv, "--against", "base"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no snapshot \"base\""), "{err}");

    // Nothing to record.
    let (code, _, err) = drover(&site, &["snapshot", "take", inv]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--files") && err.contains("--commands"), "{err}");
    let (code, _, err) = drover(&site, &["snapshot", "take", inv, "--files", "x", "--name", "a b"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is not a snapshot name"), "{err}");

    // Taking a snapshot writes the store: refused while another process
    // owns it, as `drover run` is; reading it is not.
    let owner = drover_state::Store::open(&site.state()).expect("own the store");
    let (code, _, err) = drover(&site, &["snapshot", "take", inv, "--files", "x"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("is in use by"), "{err}");
    let (code, out, err) = drover(&site, &["snapshot", "list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("no snapshots in "), "{out}");
    drop(owner);
}
