#!/usr/bin/env python3
"""drover's benchmarks, side by side in one run, and BENCHMARKS.md from them.

    python3 scripts/bench.py run      # what `make bench` does
    python3 scripts/bench.py run --quick --profile debug --out target/bench-quick
    python3 scripts/bench.py report   # BENCHMARKS.md again from the JSON (`make bench-report`)

`run` goes through the stages in order, each timed, its output shown and
kept in OUT/<stage>.log: setup (`make setup`: Debian packages, the venv
with kcl-lib and ansible-core), the build of drover and the benchmarks,
then every benchmark with `--json OUT/<bench>.json`: plan, exec, api,
kcl, resume, cluster (it needs PostgreSQL), and last fleet (it needs root: it makes real hosts), which gets
whatever is left of the time limit (`--minutes`, 30) as its `--deadline`.
Then `report`. OUT/run.json records the machine, the commit, the stages
and their times.

`report` reads OUT/run.json and OUT/<bench>.json (see
engine/bench/src/figures.rs for their layout) and writes the report: the
top table (one row per measured figure: drover, each peer and the ratio,
the physical limit, the target), then a section per benchmark with its
detailed tables, the exact commands and what each figure means.

Standard library only: it runs before the venv exists.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "engine/bench/results"
BENCHES = ["plan", "exec", "api", "kcl", "resume", "cluster", "fleet"]

# The arguments of each benchmark: the full run, and the quick one (a
# check of the pipeline and the format, in a couple of minutes).
FULL = {
    "plan": ["--servers", "1000", "--runs", "5"],
    "exec": ["--servers", "1000", "--runs", "5"],
    "api": ["--runs", "200", "--max-running", "8", "--max-pending", "50"],
    "kcl": ["--seconds", "20"],
    "resume": ["--servers", "200", "--runs", "3"],
    # 1, 2 and 3 instances on PostgreSQL and 1 on SQLite, 2 rounds, then 3
    # takeovers of each kind: about 3 minutes on 2 cores.
    "cluster": [
        "--clients", "16", "--submissions", "80", "--workflows", "8", "--servers", "20",
        "--rounds", "2", "--takeovers", "3", "--lease-ttl", "3",
    ],
    # Two fleets (local, existing) at each size, every peer with drover's
    # key exchange and with OpenSSH's default: sizes up to 100 keep the
    # stage within the 30 minutes on 2 cores (see TEXT["fleet"]). Then
    # 1,000 hosts on the existing fleet: one command, drover, pdsh and the
    # floor, one run each (about 2 minutes with the fleet's start).
    "fleet": ["--sizes", "10,50,100", "--runs", "3", "--budget", "100", "--max-run", "60", "--large", "1000"],
}
QUICK = {
    "plan": ["--servers", "100", "--runs", "2"],
    "exec": ["--servers", "100", "--runs", "2"],
    "api": ["--runs", "10"],
    "kcl": ["--seconds", "3"],
    "resume": ["--servers", "20", "--runs", "1"],
    "cluster": ["--submissions", "10", "--workflows", "2", "--servers", "3", "--rounds", "1", "--takeovers", "1"],
    "fleet": ["--sizes", "3,5", "--runs", "1", "--budget", "20", "--max-run", "10", "--large", "10"],
}
# Kept free at the end of the time limit: deleting the last fleet, the report.
FLEET_MARGIN_S = 60


# ---------------------------------------------------------------- run


def machine():
    """What the figures were measured on."""
    info = {"cores": os.cpu_count(), "kernel": platform.release(), "arch": platform.machine()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        pass
    return info


def output_of(cmd):
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def stage(name, cmd, out, timeout=None, env=None):
    """Runs one stage, its output shown and kept in OUT/<name>.log. Past
    `timeout` seconds it gets SIGINT (the fleet benchmark then deletes its
    hosts), two minutes later SIGKILL."""
    print(f"\n=== stage {name}: {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    log = out / f"{name}.log"
    started = time.monotonic()
    timed_out = threading.Event()
    with open(log, "w") as f:
        try:
            p = subprocess.Popen(
                cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
            )
        except OSError as e:
            print(f"cannot run {cmd[0]}: {e}", flush=True)
            f.write(f"cannot run {cmd[0]}: {e}\n")
            return {"name": name, "command": cmd, "seconds": 0.0, "status": "failed", "exit": None}

        def watchdog():
            timed_out.set()
            p.send_signal(signal.SIGINT)
            try:
                p.wait(120)
            except subprocess.TimeoutExpired:
                p.kill()

        timer = threading.Timer(timeout, watchdog) if timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            for line in p.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                f.write(line)
            code = p.wait()
        except KeyboardInterrupt:
            p.send_signal(signal.SIGINT)
            p.wait()
            raise
        finally:
            if timer:
                timer.cancel()
    seconds = time.monotonic() - started
    status = "timed out" if timed_out.is_set() else ("ok" if code == 0 else "failed")
    print(f"=== stage {name}: {status} in {seconds:.0f} s ({seconds / 60:.1f} min)", flush=True)
    return {"name": name, "command": cmd, "seconds": seconds, "status": status, "exit": code, "log": log.name}


def postgres_installed():
    """Whether PostgreSQL's server programs are there (the cluster benchmark starts its own cluster)."""
    return any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


def run(args):
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Every figure of the report comes from this run: none of an earlier one.
    for b in BENCHES:
        (out / f"{b}.json").unlink(missing_ok=True)
    limit_s = args.minutes * 60
    started = time.monotonic()
    record = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "started_unix": time.time(),
        "quick": args.quick,
        "profile": args.profile,
        "limit_minutes": args.minutes,
        "machine": machine(),
        "commit": output_of(["git", "rev-parse", "--short=12", "HEAD"]),
        "dirty": bool(output_of(["git", "status", "--porcelain", "--untracked-files=no"])),
        "rustc": output_of(["rustc", "--version"]),
        "root": os.geteuid() == 0,
        "stages": [],
    }
    load = record["machine"].get("loadavg_at_start", ["0"])[0]
    print(
        f"drover benchmarks{' (QUICK)' if args.quick else ''}: {record['machine'].get('cores')} cores, "
        f"{record['machine'].get('ram_gib')} GiB, load average {load}; results in {out}; time limit {args.minutes} min"
    )
    if float(load) > 0.5:
        print(f"warning: the load average is {load}: other work on this machine slows every figure")

    def save():
        record["seconds"] = time.monotonic() - started
        (out / "run.json").write_text(json.dumps(record, indent=2) + "\n")

    def add(s):
        record["stages"].append(s)
        save()

    sets = QUICK if args.quick else FULL
    only = set(args.only.split(",")) if args.only else set(BENCHES)
    if not args.no_setup:
        make = os.environ.get("MAKE", "make")
        add(stage("setup", [make, "--no-print-directory", "setup"], out))
    build = ["cargo", "build", "-p", "drover-bench", "-p", "drover-cli"]
    if args.profile == "release":
        build.insert(2, "--release")
    add(stage("build", build, out))
    if record["stages"][-1]["status"] != "ok":
        save()
        print("the build failed: no benchmark can run", file=sys.stderr)
        return 1
    bin_dir = ROOT / "target" / args.profile
    timeouts = {"plan": 900, "exec": 900, "api": 1200, "kcl": 600, "resume": 1200, "cluster": 600}
    for b in BENCHES:
        if b not in only:
            continue
        json_path = os.path.relpath(out / f"{b}.json", ROOT)
        cmd = [str((bin_dir / f"drover-bench-{b}").relative_to(ROOT))] + sets[b] + ["--json", json_path]
        if b == "fleet":
            if os.geteuid() != 0:
                print("\n=== stage fleet: skipped: it makes real hosts (sshd in namespaces) and needs root")
                add({"name": "fleet", "command": cmd, "seconds": 0.0, "status": "skipped: needs root", "exit": None})
                continue
            left = limit_s - (time.monotonic() - started) - FLEET_MARGIN_S
            if left < 60:
                print(f"\n=== stage fleet: skipped: {left:.0f} s left of the {args.minutes} min limit")
                add({"name": "fleet", "command": cmd, "seconds": 0.0, "status": "skipped: no time left", "exit": None})
                continue
            cmd += ["--deadline", str(int(left))]
            add(stage(b, cmd, out, timeout=left + 600))
        elif b == "cluster" and not postgres_installed():
            print("\n=== stage cluster: skipped: it needs PostgreSQL's server programs (`make setup` installs them)")
            add({"name": "cluster", "command": cmd, "seconds": 0.0, "status": "skipped: needs PostgreSQL", "exit": None})
        else:
            add(stage(b, cmd, out, timeout=timeouts[b]))
    save()
    if args.only:
        # The run record of a benchmark measured in a run of its own, kept
        # beside its JSON: the report shows it with this run's date, commit
        # and load once OUT/run.json is a full run's again.
        for b in BENCHES:
            if b in only and (out / f"{b}.json").is_file():
                (out / f"{b}.run.json").write_text(json.dumps(record, indent=2) + "\n")
    t = time.monotonic()
    code = report(args)
    record["report_seconds"] = time.monotonic() - t
    save()
    total = record["seconds"]
    print(f"\n=== stage times (limit {args.minutes} min):")
    for s in record["stages"]:
        print(f"  {s['name']:<8} {s['seconds']:7.0f} s  {s['status']}")
    print(f"  {'total':<8} {total:7.0f} s  ({total / 60:.1f} min)")
    failed = [s["name"] for s in record["stages"] if s["status"] not in ("ok",) and not s["status"].startswith("skipped")]
    if failed:
        print(f"failed: {', '.join(failed)} (see their logs in {out})", file=sys.stderr)
        return 1
    return code


# ---------------------------------------------------------------- formatting


def fmt(v, unit=""):
    """A figure with as many digits as it deserves."""
    if v is None:
        return "–"
    a = abs(v)
    if a >= 1000 or (a >= 10 and float(v).is_integer()):
        s = f"{v:,.0f}"
    elif float(v).is_integer():
        s = f"{v:.0f}"
    elif a >= 100:
        s = f"{v:.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    elif a >= 1:
        s = f"{v:.2f}"
    else:
        s = f"{v:.3f}"
    return f"{s} {unit}" if unit else s


def walls_stat(v):
    """A Stat (median, min, max, n) of a list of seconds."""
    v = sorted(v)
    n = len(v)
    mid = v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
    return {"median": mid, "min": v[0], "max": v[-1], "n": n}


def spread(st, unit="", bold=False):
    """`median unit (min–max, n=k)` of a Stat."""
    if not st:
        return "–"
    m = fmt(st["median"], unit)
    if bold:
        m = f"**{m}**"
    if st["n"] > 1:
        return f"{m} ({fmt(st['min'])}–{fmt(st['max'])}, n={st['n']})"
    return f"{m} (n=1)"


def figure(fig, bold=False):
    """A headline figure: measured (median, min–max, n) or estimated."""
    if fig is None or fig.get("value") is None:
        return "–"
    v = fmt(fig["value"])
    if fig.get("estimate"):
        return f"≈{v} ({fig['estimate']})"
    if bold:
        v = f"**{v}**"
    if fig.get("n", 1) > 1 and fig.get("min") is not None:
        return f"{v} ({fmt(fig['min'])}–{fmt(fig['max'])}, n={fig['n']})"
    if fig.get("n") == 1 and fig.get("min") is not None:
        return f"{v} (n=1)"
    return v


def ratio(r, estimate=False):
    if r is None:
        return "–"
    return f"{'≈' if estimate else ''}{r:.2f}×" if r < 10 else f"{'≈' if estimate else ''}{r:.1f}×"


def load(out, name):
    p = out / f"{name}.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def cell(s):
    """Text safe inside a table cell."""
    return str(s).replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------- report


def verdict(met):
    """A target's verdict: met and missed only from figures measured in this run."""
    if met is None:
        return "not measured"
    return "met" if met else "NOT MET"


def peer_figure(p):
    """A peer's figure and its ratio; a projection (not run) gets no ratio."""
    est = p["figure"].get("estimate") or ""
    if est.startswith("not run"):
        return f"{est}; ~{fmt(p['figure']['value'])} projected from a smaller fleet"
    return f"{figure(p['figure'])} → {ratio(p['ratio'], bool(est))}"


def summary_rows(benches):
    rows, notes = [], []
    order = ["fleet", "exec", "plan", "api", "kcl", "resume", "cluster"]
    for b_name in order:
        d = benches.get(b_name)
        if not d:
            continue
        heads = d["headline"]
        # The local fleet's rows, then the existing fleet's, then the memory rows.
        for h in sorted(heads, key=lambda h: (h["id"].startswith("memory"), "-existing-" in h["id"])):
            unit = h["unit"]
            peers = []
            for p in h["peers"]:
                text = f"{cell(p['name'])}: {peer_figure(p)}"
                b = p.get("beside")
                if b:
                    text += f" (with {cell(b['what'])}: {peer_figure(b)})"
                peers.append(text)
            lim = "–"
            if h.get("limit"):
                l = h["limit"]
                share = l.get("share")
                lim = f"{fmt(l['figure']['value'])} {unit}: {cell(l['what'])}"
                if share is not None:
                    lim += f" (drover at {share * 100:.0f}%)"
            tgt = "none set"
            if h["id"].startswith("fleet-") and b_name == "fleet":
                judged = d["params"].get("large_target_hosts" if h["id"].endswith("-large") else "target_hosts")
                if judged:
                    tgt = f"judged at {judged:,} hosts"
            if h.get("target"):
                t = h["target"]
                tgt = f"{cell(t['what'])}: **{verdict(t['met'])}**"
            rows.append(
                [
                    f"{cell(h['what'])}, {unit}",
                    figure(h["drover"], bold=True),
                    "<br>".join(peers) if peers else "– (no peer does this)",
                    lim,
                    tgt,
                ]
            )
            if h.get("note"):
                notes.append(f"- {cell(h['what'])}: {h['note']}.")
    return rows, notes


TEXT = {
    "fleet": """\
Per size N, the benchmark makes two fleets of N real hosts on this machine
and measures the same work on each: **drover's local hosts**, made with
drover's local provider backend (`HostFleet`: each an sshd in its own
namespaces on its own loopback address), reached as root on port 22, drover's
servers of provider `local`; and **existing hosts**, started by the benchmark
itself with drover-testkit (real OpenSSH sshd processes, each in namespaces of
its own), reached as the non-root user `fleet` on port 2222, drover's servers
of provider `static` (`ssh = drover.SshAccess {user, port, key_file,
known_hosts}`; the command needs no root, so no `become`). On each it times
side by side, in interleaved rounds: one command (`true`) on every host, and
a 10-step sequence on every host, with `drover run` (a workflow of one
taskserv operation; 10 taskservs in a `requires` chain for 10 steps), `pdsh
-R ssh -f N`, `parallel-ssh -p N`, and `ansible -m shell -f N` /
`ansible-playbook` with 10 shell tasks (forks = N). Every peer runs each step
as its own invocation; drover keeps one SSH connection per host for all
steps. Same hosts, user, port, key, known_hosts checked strictly, N hosts at
once; every command must succeed (for drover: every task succeeded in its
journal).

Key exchange, like for like: drover's SSH client (russh) and OpenSSH's
client do not choose the same key exchange, and on 2 cores the handshake is
most of a one-command run. Before the fleets, a probe host (drover-testkit,
its sshd at LogLevel DEBUG1) logs which key exchange one connection of each
tool negotiates (table below); the peers are then made to use drover's
(`-o KexAlgorithms=...`: pdsh through `PDSH_SSH_ARGS_APPEND`, parallel-ssh
`-O`, ansible `ANSIBLE_SSH_EXTRA_ARGS`), and the benchmark fails if a peer
negotiates anything else. Every ratio and target is judged on that
like-for-like figure; the peers with OpenSSH's default key exchange are
measured too and shown beside it. Both fleets' sshd run with OpenSSH's
default algorithms (no KexAlgorithms, Ciphers or MACs line, checked).

The physical limit is one SSH handshake per host: bare `ssh host true` to
one host and to all N at once, with drover's key exchange (the limit shown)
and with OpenSSH's default. On 2 cores the hosts' sshd processes and the
client share the CPU, so a large fleet is CPU-bound for every tool: see the
machine CPU column.

Time is bounded (`make bench` must finish within 30 minutes on 2 cores, and
this stage is most of it): sizes 10, 50 and 100 on both fleets (at 250 the
two fleets with every peer in both key exchanges would not fit); drover
gets 3 runs of every case; a peer's further runs only while the fleet and
size are within `--budget`; a measurement whose one run is projected
(linearly from the previous size) beyond `--max-run` is not run; for pdsh and
parallel-ssh, whose ten steps are ten identical invocations, ten times one
invocation is then shown instead (≈, an estimate: never used for a target).
`--deadline` (the rest of the 30 minutes) bounds the whole, by priority:
drover's runs and the physical limit first, then the peers with drover's key
exchange, then the peers with OpenSSH's default.

Then 1,000 hosts (`--large 1000`), on the existing fleet only: one command,
with drover, pdsh (`-f 1000`, drover's key exchange) and the floor (`ssh
host true` to all 1,000 at once, drover's key exchange), one run each; no
10 steps, no other peer, no OpenSSH default key exchange there. The
benchmark raises its open-files limit (inherited by every tool) so that a
pipe or socket per host fits.

Targets (issue 15), judged at 100 hosts on each fleet, peers with drover's
key exchange: 1 command, drover at most 1.15× the floor (`ssh host true` to
all 100 at once) and faster than pdsh and parallel-ssh; 10 steps, drover at
most 2.5× the same floor and at least 4× faster than pdsh; both, at least
5× faster than ansible; memory, drover's RSS per open connection (next
section) at most pdsh's tree PSS per host at the largest size; 1,000 hosts,
1 command, drover faster than pdsh. A target reads met or NOT MET only when
every figure it names was measured in this run; otherwise it reads not
measured.""",
    "memory": """\
`drover run` holds one SSH connection per host for the whole run; pdsh and
parallel-ssh hold one `ssh` process per host, ansible a forked worker and an
`ssh` ControlPersist master per host. drover's figure is its peak RSS (from
wait4: exact; every page it maps counted in full, even pages shared with
other processes, so any bias is against drover). A peer's figure is the peak
of the PSS (proportional set size: a page shared by k processes counts 1/k)
summed over its whole process tree, sampled at 0.1, 0.3 and 0.7 s, then every
second (a sample reads /proc of every process in the tree, ~0.1 ms of CPU
each, ~25 ms at 250 hosts: about 1% of this machine), including
ansible's daemonized ControlPersist masters (the benchmark is their
subreaper). Per connection: drover's RSS at the largest size minus its RSS at
the smallest, per added host; a peer's tree PSS divided by the hosts.""",
    "exec": """\
A generated DAG of 1,000 servers × (create + a 10-taskserv pipeline) plus a
DependencyDef gate: 11,000 tasks run by the real scheduler with the real
journal (SQLite, WAL, `synchronous=FULL`, one transaction per scheduler
turn) on disk (/var/tmp), global limit 50, tasks done by an executor that
returns at once. It measures drover's own cost per task: scheduling, durable
journaling of every transition, the report. No peer schedules a DAG with a
journal, so the comparison is with the obvious design, one durable commit
per journal entry (measured on a sample of entries, each its own
transaction), and with the physical limit: the run's whole journal inserted
in one transaction (the least any journaling engine must write).""",
    "plan": """\
Planning: a generated workflow, 1,000 servers written as one KCL list
comprehension, each carrying ten taskservs in a `requires` chain; a create
operation, an install operation behind it and a DependencyDef. KCL
evaluation and validation + planning are timed apart.

KCL evaluation of the full deployment (workflows/wuji.k, with every provider
and taskserv declaration of the home): drover loads the official engine
in-process (its C API); the peer is the obvious alternative, a Python
process evaluating the same files with kcl_lib (the same engine). The Python
process's start and `import kcl_lib` are measured on their own: they are
what the subprocess route adds.""",
    "api": """\
A real `drover serve` on loopback with a fresh state store and its queue
(`--max-running`, `--max-pending`): N clients submit
workflows/examples/sequential.k at the same time (`POST /workflows/batch`);
a client refused with 429 waits for Retry-After and submits again, so every
submission is eventually accepted. Meanwhile a prober times `GET` of a run's
status, the run list and `/healthz`, back to back. Then every run must have
finished, succeeded, none lost, none duplicated. Submissions/s counts
accepted runs over the time until the last was accepted: once the queue is
full, it is bounded by how fast runs finish.

Physical limits: the server evaluates every submitted workflow with KCL (the
declarations are cached), one evaluation at a time per KCL worker process, so
at most (workers) / (one evaluation, measured in-process by `drover plan
--timings`) submissions get in per second (the next section measures the
workers); API latency cannot beat the same requests on the idle server.""",
    "kcl": """\
Submitted workflows are evaluated in KCL worker processes (`drover
kcl-worker`, one engine each, confined), not in the server. Measured in one
run: one in-process engine evaluating workflows/examples/sequential.k and
planning it, one after the other, for the set time (what the server did per
`validate_only` submission before the workers: one engine, one call at a
time, without HTTP); then a real `drover serve` with `--kcl-workers 1` and
with `--kcl-workers N` (N: the number of CPUs), where clients send
`POST /workflows/batch {"path": ..., "validate_only": true}` back to back.
Every answer must be 200. The limit is N × the in-process rate: N engines on
N cores, nothing else on the machine (the server, its HTTP and planning, and
the clients share the same cores).""",
    "resume": """\
A 1,000-task run (200 servers × (create + installs of the test taskservs a →
b, c → d) with `connection = "local"`, every install a `sleep 0.01` of the
deterministic test taskserv `behave.sh`) is killed with SIGKILL once half of
its install scripts ran, then `drover run --resume ID` finishes it. The peer
is what an operator without a journal does: run everything again from
scratch. Recovery overhead: from the resume process's start to its first
task (from the journal's timestamps); its floor is a process start
(`drover --version`) plus reading the run's journal from SQLite. The floor of
resume-to-finish is what the run from scratch took for the same remaining
tasks (from the moment it had as many tasks succeeded as the killed run),
plus that recovery floor. Every journal is checked: no task succeeded twice,
none started again after it succeeded; the benchmark fails otherwise.""",
    "cluster": """\
Several `drover serve` instances sharing one PostgreSQL database (they divide
the runs between them under leases), against the embedded default: one
instance on SQLite. The benchmark starts its own PostgreSQL cluster
(drover-testkit: initdb on a free loopback port, fsync and synchronous commit
**on**, as durable as SQLite's synchronous=FULL) and real `drover serve`
processes on loopback, each with its own data directory, logs and port,
sharing one admin token. Every server has the same `--max-running` and
`--max-pending` (on PostgreSQL, limits across the instances). Tasks are the
deterministic test taskservs of engine/exec/tests/home (`behave.sh`) on
`connection = "local"` servers. Four configurations, each on a fresh store,
in interleaved rounds: SQLite with 1 instance (the baseline every ratio is
against), PostgreSQL with 1, 2 and 3 instances.

- **Submissions per second**: N clients at once submit a small workflow (one
  server: create + one install) by path, `POST /workflows/batch`, the i-th
  submission to instance i mod n; accepted runs over the time until the last
  was accepted. Every run must then finish, succeeded, none lost. Each
  submission is a KCL evaluation in one of the receiving server's KCL worker
  processes (one per CPU, per instance), and the runs execute meanwhile.
- **Tasks per second**: workflows of many servers × 5 no-op tasks (create,
  installs a → b, c → d) submitted at once, round-robin; tasks over the time
  from the first submission until every run finished, succeeded, and every
  install script ran exactly once.
- **Takeover**: two instances on PostgreSQL with `--lease-ttl T`; a run of 6
  servers × 4 installs of `sleep 1` (max_parallel 4) executes on instance A
  (its status names A), B is up; after 8 installs A is killed with SIGKILL.
  From the kill, in the run's journal read from B: the resumed `run_started`
  (B took the run over), B's first task, the run's end. A dead instance's
  lease expires T after its last renewal (renewed every T/4, so 0.75 T to T
  after the kill), and the others look for runs to claim every T/4 (at most
  1 s): the takeover is expected near T. The two instances share the local
  provider's directory (`<data-dir>/providers`, where it keeps the hosts it
  made): instances that take over each other's runs must (README, Several
  orchestrators). Baseline: the same run on SQLite, killed, and `drover
  serve` started again at once on the same file (an operator's restart; it
  takes the run up from its journal). Every journal is checked: every task
  succeeded exactly once, none started again after it succeeded.""",
}


FLEET_LABELS = {"local": "drover's local hosts", "existing": "existing hosts"}


def kex_section(k, lines):
    """The probe's table: what each tool negotiated, in each mode."""
    if not k:
        lines.append("Key exchange: not probed in this run (the figures of other runs are not shown here).")
        lines.append("")
        return
    lines.append(
        f"Key exchange, as the probe host's sshd logged it (`kex: algorithm:` at LogLevel DEBUG1, one connection "
        f"per tool and mode): drover negotiates **{k['drover']}**; the peers' like-for-like runs add "
        f"`-o {k['peers_option']}`."
    )
    lines.append("")
    rows = []
    order = sorted(k.get("tools", {}).items(), key=lambda x: (x[0] != "drover", x[0] != "ssh", x[0]))
    for tool, modes in order:
        for mode, label in (("own", "its own choice"), ("default", "OpenSSH's default"), ("drover", f"`-o {k['peers_option']}`")):
            x = modes.get(mode)
            if x:
                rows.append([tool, label, f"`{x.get('kex') or '?'}`", f"`{x.get('cipher') or '?'}`"])
    lines.append(table(["client", "run with", "key exchange negotiated", "cipher"], rows))
    lines.append("")


def fleet_targets(r, lines):
    """The targets of the run (issue 15): each judged, or why not."""
    ts = r.get("targets")
    if not ts:
        return
    rows = []
    for t in ts:
        if "parts" in t:
            figs = "; ".join(
                f"{cell(p['what'])}: {ratio(p['ratio']) if p.get('ratio') is not None else 'not measured'}"
                for p in t["parts"]
            )
        else:
            figs = (
                f"{cell(t.get('what', ''))}: drover {fmt(t.get('drover_kib'))} KiB per connection, "
                f"pdsh {fmt(t.get('pdsh_kib'))} KiB per host"
            )
        v = f"**{verdict(t.get('met'))}**"
        if t.get("reason"):
            v += f" ({cell(t['reason'])})"
        rows.append([cell(t.get("target", "?")), figs, v])
    lines.append(
        "Targets (issue 15), peers with drover's key exchange; the floor is `ssh host true` to every host at "
        "once with drover's key exchange; a ratio is peer time ÷ drover time, or drover time ÷ floor:"
    )
    lines.append("")
    lines.append(table(["target", "criteria: figure", "verdict"], rows))
    lines.append("")


def fleet_section(d, lines):
    r = d["results"]
    lines.append(TEXT["fleet"])
    lines.append("")
    lines.append(f"Command: `{d['command']}` ({d['duration_s'] / 60:.1f} min).")
    v = r.get("versions", {})
    if v:
        lines.append("Versions: " + "; ".join(f"{k}: {cell(x)}" for k, x in v.items()) + ".")
    lines.append("")
    kex = r.get("kex") or {}
    kex_section(kex, lines)
    lines.append(
        "Fleets: "
        + "; ".join(f"**{f['fleet']}**, {f['description']}" for f in r.get("fleets", []))
        + "."
    )
    lines.append("")
    fleet_targets(r, lines)
    drover_kex = kex.get("drover", "drover's")
    default_kex = kex.get("openssh_default", "OpenSSH's default")
    tools = d["params"]["tools"]
    for s in r["sizes"]:
        n = s["hosts"]
        fl = s.get("fleet", "local")
        title = f"{n:,} hosts, {FLEET_LABELS.get(fl, fl)}"
        if s.get("large"):
            runs = s.get("runs") or d["params"].get("large_runs", 1)
            title += f" (--large: 1 command only; drover, pdsh and the floor; {runs} run{'s' if runs != 1 else ''} each)"
        if s["status"] != "measured":
            lines.append(f"**{title}**: {s['status']}: {cell(s.get('reason', ''))}")
            lines.append("")
            continue
        lines.append(f"### {title}")
        lines.append("")
        desc = s.get("fleet_description", "")
        lines.append(f"{desc[:1].upper()}{desc[1:]}.")
        lines.append("")
        rows = []
        for t in tools:
            variants = [(s["tools"].get(t), t if t == "drover" else f"{t}, kex {drover_kex}")]
            if t != "drover":
                variants.append((s.get("tools_default_kex", {}).get(t), f"{t}, kex {default_kex} (default)"))
            for cs, label in variants:
                if not cs:
                    continue

                def wall(c, t=t, cs=cs):
                    x = cs[c]
                    if x["wall"]:
                        return spread(x["wall"], bold=(t == "drover"))
                    if x.get("failed"):
                        last = [l for l in x["failed"].splitlines() if l.strip()][-2:]
                        return "failed: " + cell(" / ".join(last))
                    if x.get("estimate_s") is not None:
                        return f"≈{fmt(x['estimate_s'])} (10 × 1 command, not run)"
                    if x.get("skipped"):
                        return f"not run ({x['skipped']['reason']}: ~{fmt(x['skipped']['projected_s'])} projected)"
                    return "–"

                def pair(key, conv=lambda v: fmt(v), cs=cs):
                    vals = []
                    for c in ("one", "ten"):
                        x = cs[c].get(key)
                        if isinstance(x, dict):
                            x = x.get("median")
                        vals.append(conv(x) if x is not None else "–")
                    return " / ".join(vals)

                rss = [cs[c]["maxrss_kib"] for c in ("one", "ten") if cs[c].get("maxrss_kib")]
                rows.append(
                    [
                        label,
                        wall("one"),
                        wall("ten"),
                        pair("cpu"),
                        pair("machine_cpu"),
                        fmt(max(rss) / 1024) if rss else "–",
                        pair("tree_pss_kib", lambda k: fmt(k / 1024)),
                        pair("tree_procs", lambda k: str(k)),
                    ]
                )
        lines.append(
            table(
                [
                    "tool",
                    "1 command, s",
                    "10 steps, s",
                    "client CPU, s (1 / 10)",
                    "machine CPU, core-s (1 / 10)",
                    "largest process, MiB",
                    "tree PSS, MiB (1 / 10)",
                    "processes (1 / 10)",
                ],
                rows,
            )
        )
        lines.append("")
        if s.get("ratios"):
            rr = []
            for t, x in s["ratios"].items():

                def rc(key, x=x):
                    y = x.get(key)
                    return ratio(y["ratio"], y["estimate"]) if y else "–"

                rr.append([t, rc("one"), rc("ten"), rc("one_default_kex"), rc("ten_default_kex")])
            fr = s.get("floor_ratio") or {}
            if fr.get("floor_s") is not None:
                rr.append(
                    [
                        f"drover time ÷ floor ({fmt(fr['floor_s'])} s: `ssh host true` to all {n:,} at once)",
                        ratio(fr.get("one")),
                        ratio(fr.get("ten")),
                        "",
                        "",
                    ]
                )
            lines.append(
                table(
                    [
                        "peer time ÷ drover time",
                        f"1 command, kex {drover_kex}",
                        f"10 steps, kex {drover_kex}",
                        "1 command, default kex",
                        "10 steps, default kex",
                    ],
                    rr,
                )
            )
            lines.append("")
        ex = s.get("exec")
        if ex:
            peers = "; ".join(
                f"{t} {fmt(x['median_s'])} s (÷ drover exec: {ratio(x['ratio'])})" for t, x in ex.get("peers", {}).items()
            )
            floor_text = f"; drover exec ÷ floor {ratio(ex['floor_ratio'])}" if ex.get("floor_ratio") is not None else ""
            lines.append(
                f"`drover exec FILE --parallel {n} -- true` (issue 16: one command without a workflow, every host at once; "
                f"checked from its journal: every server's `true` exited 0): {spread(walls_stat(ex['walls_s']), 's', bold=True)}; "
                f"beside it, the peers' 1 command above (the same `true` on the same hosts, kex {drover_kex}, this run): "
                f"{peers or 'not measured'}{floor_text}."
            )
            lines.append("")
        if s.get("targets"):
            parts = []
            for t in s["targets"]:
                case = "1 command" if t["case"] == "one" else "10 steps"
                if t.get("measured", True) and t.get("ratio") is not None:
                    parts.append(f"{case} {t['what']}: {t['ratio']:.2f}× ({'met' if t['met'] else 'NOT MET'})")
                else:
                    parts.append(f"{case} {t['what']}: not measured in this run")
            lines.append(f"Targets at {n:,} hosts (issue 15; peers with kex {drover_kex}): " + "; ".join(parts) + ".")
        p = s["physical"]
        if p.get("ssh_all_default"):
            lines.append(
                f"Physical limit, `ssh host true`: one host {spread(p['ssh_one_drover_kex'], 's')} with kex {drover_kex}, "
                f"{spread(p['ssh_one_default'], 's')} with the default ({default_kex}); all {n} at once "
                f"{spread(p['ssh_all_drover_kex'], 's')} / {spread(p['ssh_all_default'], 's')} "
                f"(machine CPU {fmt(p['machine_cpu_all_drover_kex']['median'])} / "
                f"{fmt(p['machine_cpu_all_default']['median'])} core-s)."
            )
        elif p.get("ssh_all_drover_kex"):
            lines.append(
                f"Physical limit (the floor), `ssh host true` with kex {drover_kex}: one host "
                f"{spread(p['ssh_one_drover_kex'], 's')}; all {n:,} at once {spread(p['ssh_all_drover_kex'], 's')} "
                f"(machine CPU {fmt(p['machine_cpu_all_drover_kex']['median'])} core-s)."
            )
        for c, label in (("one", "1 command"), ("ten", "10 steps")):
            b = s.get("drover_breakdown_ms", {}).get(c)
            if b:
                later = b["later_task"]
                later_text = f", each later task {fmt(later)} ms over the open connection" if later is not None else ""
                lines.append(
                    f"drover, {label}, from its journal (median, ms): start-up (exec, KCL, plan, store) "
                    f"{fmt(b['startup'])}, to the first task {fmt(b['to_first_task'])}, tasks {fmt(b['tasks'])}, "
                    f"finish (cleanup, report, exit) {fmt(b['finish'])}; a host's first task {fmt(b['first_task'])} "
                    f"(with its SSH connection){later_text}."
                )
        lines.append(
            f"Fleet: created in {fmt(s.get('create_s'))} s, deleted in {fmt(s.get('delete_s'))} s; "
            f"an idle host's sshd: RSS {fmt((s.get('sshd_idle_rss_kib') or 0) / 1024)} MiB, "
            f"PSS {fmt((s.get('sshd_idle_pss_kib') or 0) / 1024)} MiB; measured in {fmt(s.get('measure_s'))} s."
        )
        lines.append("")


def memory_section(d, lines):
    m = d["results"].get("memory")
    lines.append(TEXT["memory"])
    lines.append("")
    if not m:
        lines.append("Not measured (drover's one-command run was measured at no size).")
        lines.append("")
        return
    fl = m.get("fleet", "local")
    lines.append(f"Measured on {FLEET_LABELS.get(fl, fl)}; the peers with drover's key exchange.")
    lines.append("")
    tools = d["params"]["tools"]
    rows = []
    for s in m["by_size"]:
        tree = s["tree_pss_kib"]
        rows.append(
            [s["hosts"], f"**{fmt(s['drover_maxrss_kib'] / 1024)}**"]
            + [fmt(tree[t] / 1024) if t in tree else "–" for t in tools]
        )
    lines.append(
        table(["hosts, 1 command", "drover peak RSS, MiB"] + [f"{t} tree PSS, MiB" for t in tools], rows)
    )
    lines.append("")
    pc = m.get("drover_kib_per_connection")
    if pc is not None:
        lines.append(
            f"drover per connection: (RSS at {m['hosts']} hosts {fmt(m['drover_maxrss_kib']['largest'] / 1024)} MiB − "
            f"at {m['smallest_hosts']} hosts {fmt(m['drover_maxrss_kib']['smallest'] / 1024)} MiB) / "
            f"{m['hosts'] - m['smallest_hosts']} = **{fmt(pc)} KiB**"
            + (" (within noise at these sizes)" if pc <= 0 else "")
            + "; the peers at "
            + f"{m['hosts']} hosts: "
            + ", ".join(
                f"{t} {fmt(k / m['hosts'])} KiB" for t, k in m["tree_pss_kib"].items() if t != "drover"
            )
            + " per host."
        )
        lines.append("")
    t = m.get("target")
    if t:
        why = f" ({cell(t['reason'])})" if t.get("reason") else ""
        lines.append(f"Target (issue 15): {cell(t['what'])}: **{verdict(t.get('met'))}**{why}.")
        lines.append("")


def exec_section(d, lines):
    r = d["results"]
    lines.append(TEXT["exec"])
    lines.append("")
    lines.append(f"Command: `{d['command']}`.")
    lines.append("")
    lines.append(
        table(
            ["measure", "figure"],
            [
                [f"tasks per second, end to end ({r['tasks']:,} tasks)", spread(r["tasks_per_s"], bold=True)],
                [f"journal entries per second ({r['journal_entries']:,} entries, each durable)", spread(r["entries_per_s"])],
                ["wall time of a run, s", spread(r["wall"])],
                ["peak resident memory of the process (incl. the KCL engine), MiB", fmt(r["peak_rss_mib"])],
                [
                    "physical limit: the whole journal in one transaction, ms",
                    f"{spread(r['limit_one_transaction_ms'])} → {fmt(r['limit_tasks_per_s'])} tasks/s",
                ],
                [
                    "baseline: one durable commit per entry, ms each",
                    f"{spread(r['single_commit_ms'])} → {fmt(r['baseline_tasks_per_s'])} tasks/s",
                ],
            ],
        )
    )
    lines.append("")


def plan_section(d, lines):
    r = d["results"]
    g, f, b = r["generated"], r["full"], r["bridge"]
    lines.append(TEXT["plan"])
    lines.append("")
    lines.append(f"Command: `{d['command']}`.")
    lines.append("")
    lines.append(
        table(
            [f"generated workflow, {r['tasks']:,} tasks", "ms"],
            [
                ["KCL evaluation of the workflow (in-process)", spread(g["workflow_eval"])],
                ["KCL evaluation of the declarations", spread(g["declarations_eval"])],
                ["validation + planning", spread(g["plan"], bold=True)],
                ["planning throughput, tasks/s", fmt(g["plan_tasks_per_s"])],
            ],
        )
    )
    lines.append("")
    lines.append(
        table(
            [f"full deployment: {f['file']} + {f['declarations']} declarations ({f['tasks']} tasks)", "ms"],
            [
                ["KCL evaluation, in-process", spread(f["eval_inprocess"], bold=True)],
                ["validation + planning", spread(f["plan"])],
                ["the same files, a Python process with kcl_lib", spread(f["eval_python"])],
                ["of which the Python start and `import kcl_lib`", spread(f["python_start_import"])],
                ["ratio", f"in-process is {f['ratio']:.1f}× faster"],
            ],
        )
    )
    lines.append("")
    lines.append(
        table(
            ["the bridge, one 3-server workflow", "ms"],
            [
                ["in-process (the engine's C API)", spread(b["inprocess"], bold=True)],
                ["a Python subprocess per evaluation", spread(b["python_subprocess"])],
                ["ratio", f"in-process is {b['ratio']:.0f}× faster"],
            ],
        )
    )
    lines.append("")


def api_section(d, lines):
    r = d["results"]
    lines.append(TEXT["api"])
    lines.append("")
    lines.append(f"Command: `{d['command']}`.")
    lines.append("")

    def lat(x):
        return f"p50 {fmt(x['p50'])}, p99 {fmt(x['p99'])}, max {fmt(x['max'])} (n={x['n']})"

    by = r.get("api_latency_by_request_ms", {})
    lines.append(
        table(
            ["measure", "figure"],
            [
                [
                    f"{r['runs']} submissions at once, accepted per second",
                    f"**{fmt(r['submissions_per_s'])}** ({fmt(r['accept_s'])} s until the last; "
                    f"{r['refusals_429']} refusals with 429 on the way)",
                ],
                ["every run finished (succeeded, none lost), s after the first submission", fmt(r["all_finished_s"])],
                ["runs finished per second", fmt(r["runs_per_s"])],
                ["submission latency, ms", lat(r["submit_latency_ms"])],
                ["API latency under load, ms", lat(r["api_latency_ms"])],
            ]
            + [[f"… `{k}`, ms", lat(v)] for k, v in by.items()]
            + [
                ["the same requests on the idle server, ms", lat(r["idle_latency_ms"])],
                ["server peak RSS, MiB", fmt(r["server_peak_rss_mib"])],
                [
                    "limit: one KCL evaluation of the workflow, in-process, ms",
                    f"{spread(r['workflow_eval_ms'])} → at most {fmt(r['limit_submissions_per_s'])} submissions/s",
                ],
                ["`drover validate` of it, the whole process, ms", spread(r["validate_ms"])],
            ],
        )
    )
    lines.append("")


def kcl_section(d, lines):
    r = d["results"]
    lines.append(TEXT["kcl"])
    lines.append("")
    lines.append(f"Command: `{d['command']}`.")
    lines.append("")

    def lat(x):
        return f"p50 {fmt(x['p50'])}, p99 {fmt(x['p99'])}, max {fmt(x['max'])} (n={x['n']})"

    one, pool = r["one_worker"], r["pool"]
    lines.append(
        table(
            ["measure", "figure"],
            [
                [
                    "one in-process engine: evaluations (evaluate + plan) per second",
                    f"{fmt(r['in_process_per_s'])} ({spread(r['in_process_eval_ms'])} ms each)",
                ],
                ["`drover serve --kcl-workers 1`: validate_only submissions per second", fmt(one["per_s"])],
                [
                    f"`drover serve --kcl-workers {r['workers']}`: validate_only submissions per second",
                    f"**{fmt(pool['per_s'])}**",
                ],
                [f"… latency with {r['clients']} clients, 1 worker, ms", lat(one["latency_ms"])],
                [f"… latency with {r['clients']} clients, {r['workers']} workers, ms", lat(pool["latency_ms"])],
                ["server peak RSS (1 worker; N workers), MiB", f"{fmt(one['server_peak_rss_mib'])}; {fmt(pool['server_peak_rss_mib'])}"],
                [f"limit: {r['workers']} × the in-process rate", fmt(r["limit_per_s"])],
            ],
        )
    )
    lines.append("")


def resume_section(d, lines):
    r = d["results"]
    p = d["params"]
    lines.append(TEXT["resume"])
    lines.append("")
    lines.append(f"Command: `{d['command']}`.")
    lines.append("")
    lines.append(
        table(
            ["measure", "figure"],
            [
                ["killed (SIGKILL) after, s", spread(r["killed_after_s"])],
                [f"tasks succeeded at the kill, of {r['tasks']}", spread(r["done_at_kill"])],
                ["recovery: resume start to its first task, ms", spread(r["recovery_ms"], bold=True)],
                ["… to the resumed run's start in the journal, ms", spread(r["resume_to_run_started_ms"])],
                [
                    "floor: process start + journal read, ms",
                    f"{fmt(r['process_start_ms']['median'])} + {fmt(r['journal_read_ms']['median'])}",
                ],
                ["resume to finish, s", spread(r["resume_wall_s"], bold=True)],
                [
                    "floor: the run from scratch's time for the tasks left, + recovery floor, s",
                    f"{spread(r['scratch_tail_s'])} → {fmt(r['ideal_resume_s'])}",
                ],
                ["rerun from scratch (no journal), s", spread(r["scratch_wall_s"])],
                ["a fresh run: process start to its first task, ms", spread(r["scratch_first_task_ms"])],
                ["ratio", f"resume finishes {r['ratio']:.2f}× sooner than a rerun"],
                [
                    "scripts in flight at the kill, run again (same idempotency key)",
                    ", ".join(str(x) for x in r["rerun_scripts"]),
                ],
                ["no task succeeded twice, none started again after it succeeded", "checked in every journal"],
            ],
        )
    )
    lines.append("")
    lines.append(f"Parameters: {p['servers']} servers, max_parallel {p['parallel']}, killed after {p['kill_after_scripts']} install scripts.")
    lines.append("")


def cluster_section(d, lines):
    r = d["results"]
    p = d["params"]
    lines.append(TEXT["cluster"])
    lines.append("")
    lines.append(f"Command: `{d['command']}`; to reproduce: `python3 scripts/bench.py run --only cluster`.")
    lines.append("")
    pg = r.get("postgres", {})
    lines.append(
        f"PostgreSQL {pg.get('server_version', '?')} (fsync {pg.get('fsync', '?')}, synchronous_commit "
        f"{pg.get('synchronous_commit', '?')}, full_page_writes {pg.get('full_page_writes', '?')}); SQLite "
        f"{r.get('sqlite', '')}. Every server: `--max-running {p['max_running']} --max-pending {p['max_pending']}`. "
        f"Median (min–max, n) of {p['rounds']} rounds; ratio: against SQLite with 1 instance (above 1: faster)."
    )
    lines.append("")

    def lat(x):
        return f"p50 {fmt(x['p50'])}, p99 {fmt(x['p99'])}" if x and x.get("n") else "–"

    def times(v):
        return f"{v:.2f}×" if v is not None else "–"

    rows = []
    for c in r["configs"]:
        rows.append(
            [
                c["label"] + (" (baseline)" if c["key"] == "sqlite" else ""),
                spread(c["submissions_per_s"], bold=True),
                times(c.get("submissions_ratio")),
                lat(c.get("submit_latency_ms")),
                spread(c["tasks_per_s"], bold=True),
                times(c.get("tasks_ratio")),
                spread(c["tasks_wall_s"]),
            ]
        )
    lines.append(
        table(
            [
                "configuration",
                f"submissions/s ({p['clients']} clients, {p['submissions']} submissions)",
                "ratio",
                "submission latency, ms",
                f"tasks/s ({r['tasks']:,} tasks in {p['workflows']} runs of {p['servers']} servers)",
                "ratio",
                "those runs: first submission to the last one's end, s",
            ],
            rows,
        )
    )
    lines.append("")
    t = r["takeover"]
    pgt, sq = t["postgres"], t["sqlite_restart"]
    lines.append(
        f"Takeover of a SIGKILLed instance's run ({t['tasks']} tasks; {p['takeovers']} rounds), seconds after the kill:"
    )
    lines.append("")
    lines.append(
        table(
            ["measure", f"PostgreSQL, 2 instances, lease TTL {fmt(t['ttl_s'])} s", "SQLite, `drover serve` restarted at once"],
            [
                ["the run resumed (its resumed `run_started`)", spread(pgt["resumed_s"], bold=True), spread(sq["resumed_s"], bold=True)],
                ["… its excess over the lease TTL", spread(pgt["excess_over_ttl_s"]), "–"],
                ["the restarted server listening", "– (the other instance was up)", spread(sq["listening_s"])],
                ["its first task after the resume", spread(pgt["first_task_s"]), spread(sq["first_task_s"])],
                ["the run finished", spread(pgt["finished_s"]), spread(sq["finished_s"])],
                [
                    "installs in flight at the kill that ran again (same idempotency key)",
                    ", ".join(str(x) for x in pgt["runs"]["rerun_scripts"]),
                    ", ".join(str(x) for x in sq["runs"]["rerun_scripts"]),
                ],
                ["every task succeeded exactly once, none started again after it succeeded", "checked", "checked"],
            ],
        )
    )
    lines.append("")
    lines.append(
        "On SQLite the run waits for someone (an operator, a supervisor) to start `drover serve` again: the SQLite "
        "column is the restart's own time, without the time to notice the crash. On PostgreSQL nobody acts: the "
        "takeover costs the lease TTL."
    )
    lines.append("")


SECTIONS = [
    ("fleet", "Fleet fan-out: drover against pdsh, parallel-ssh and ansible", fleet_section),
    ("fleet", "Orchestrator memory holding a connection to every host", memory_section),
    ("exec", "Engine overhead: {tasks} no-op tasks with journaling", exec_section),
    ("plan", "Planning {tasks} tasks and KCL evaluation of the full deployment", plan_section),
    ("api", "Submission throughput and API latency under load", api_section),
    ("kcl", "KCL evaluation: worker processes against the in-process engine", kcl_section),
    ("resume", "Crash-resume of a {tasks}-task run", resume_section),
    ("cluster", "Several orchestrators on PostgreSQL against one on SQLite", cluster_section),
]


def report(args):
    out = (ROOT / args.out).resolve()
    target = (ROOT / args.report).resolve()
    run_path = out / "run.json"
    if not run_path.is_file():
        print(f"{run_path} not found: run `make bench` first", file=sys.stderr)
        return 1
    rec = json.loads(run_path.read_text())
    benches = {b: load(out, b) for b in BENCHES}
    # Only figures of this run: a file from another run is left out, said so.
    t0 = rec["started_unix"]
    t1 = t0 + rec.get("seconds", 1e9) + 60
    stale = [b for b, d in benches.items() if d and not (t0 - 1 <= d["started_unix"] <= t1)]
    # A benchmark measured in a run of its own (`bench.py run --only B`),
    # whose run record is kept beside it as B.run.json: shown in its
    # section with that run's date, commit and load, never in the top
    # table (which is one run's).
    separate = {}
    for b in list(stale):
        side = out / f"{b}.run.json"
        if side.is_file():
            r = json.loads(side.read_text())
            s0 = r.get("started_unix", 0)
            if s0 - 1 <= benches[b]["started_unix"] <= s0 + r.get("seconds", 1e9) + 60:
                separate[b] = (benches[b], r)
                stale.remove(b)
    # A fleet JSON without the key exchange probe predates the like-for-like
    # measurement (its ratios mixed engine speed with key-exchange cost, its
    # targets were judged on estimates): left out, said so.
    outdated = [b for b, d in benches.items() if b == "fleet" and d and not d.get("results", {}).get("kex")]
    for b in stale + outdated + list(separate):
        benches[b] = None
    stages = {s["name"]: s for s in rec["stages"]}
    m = rec["machine"]
    try:
        rel_out = out.relative_to(ROOT)
    except ValueError:
        rel_out = out
    quick = rec.get("quick")
    make_cmd = "make bench-quick" if quick else "make bench"
    lines = ["# Benchmarks", ""]
    lines.append(
        f"<!-- Generated by scripts/bench.py from {rel_out}/*.json: edit the script, not this file. "
        f"Regenerate with `make bench` (measure) or `make bench-report` (from the JSON). -->"
    )
    lines.append("")
    if quick:
        lines += [
            "> **QUICK RUN**: tiny sizes"
            + (", debug build" if rec.get("profile") == "debug" else "")
            + ", to check the pipeline and the format. These are not drover's figures; `make bench` measures them.",
            "",
        ]
    lines.append(
        f"drover against its peers and its own targets, every figure from one run of `{make_cmd}` "
        f"({rec['started'].replace('T', ' ').replace('+00:00', ' UTC')}, commit `{rec.get('commit') or '?'}`"
        f"{' with local changes' if rec.get('dirty') else ''}, {rec.get('profile', 'release')} build, "
        f"{rec.get('rustc', '')}) on this machine: {m.get('cores')} cores ({m.get('cpu', '?')}), "
        f"{m.get('ram_gib')} GiB RAM, {m.get('os', '?')}, Linux {m.get('kernel')}; load average at the start "
        f"{' '.join(m.get('loadavg_at_start', []))}. The whole run took {rec.get('seconds', 0) / 60:.1f} min "
        f"(limit {rec.get('limit_minutes')} min; stages below)."
    )
    lines.append("")
    lines.append(
        "How to read it: drover's figure is the median of n runs (min–max); each peer's figure comes from the "
        "same run, and its ratio says how many times better drover is (peer ÷ drover for times and memory, "
        "drover ÷ peer for rates; above 1: drover is better). In the fleet rows the peers' figure and ratio are with "
        "drover's key exchange (like for like); in parentheses the same peer with OpenSSH's default key exchange. "
        "A target is met or NOT MET only from figures measured in this run, otherwise it is not measured. "
        "≈ marks an estimate, with how it was made. "
        "The physical limit is what this machine allows at best, measured in the same run; the percentage "
        "says how close drover gets (100%: at the limit). Every figure, with every sample, is in "
        f"`{rel_out}/*.json`; each benchmark's output is in `{rel_out}/*.log`."
    )
    lines.append("")
    rows, notes = summary_rows(benches)
    lines.append(table(["benchmark", "drover", "peers: figure → ratio", "physical limit (drover's share)", "target"], rows))
    lines.append("")
    for b in BENCHES:
        s = stages.get(b)
        d = benches.get(b)
        if d is not None and s and s["status"] != "ok":
            lines.append(
                f"- {b}: **{s['status']}**; its figures are those measured before it stopped "
                f"(see `{rel_out}/{s.get('log', b + '.log')}`)."
            )
        if b in separate:
            lines.append(f"- {b}: measured in a run of its own (its section below says when), not in this table.")
            continue
        if d is None:
            s = stages.get(b)
            why = "not run" if not s else s["status"]
            if b in stale:
                why = "its JSON is from another run, left out"
            elif b in outdated:
                why = "its JSON predates the like-for-like measurement (no key exchange probe), left out: run `make bench`"
            lines.append(f"- {b}: **{why}**" + (f" (see `{rel_out}/{s['log']}`)" if s and s.get("log") else "") + ".")
    lines += notes
    lines.append("")
    lines.append("## The run")
    lines.append("")
    srows = [
        [s["name"], f"`{cell(' '.join(s['command']))}`", f"{s['seconds']:.0f} s ({s['seconds'] / 60:.1f} min)", s["status"]]
        for s in rec["stages"]
    ]
    srows.append(["total", "", f"**{rec.get('seconds', 0):.0f} s ({rec.get('seconds', 0) / 60:.1f} min)**", ""])
    lines.append(table(["stage", "command", "time", "status"], srows))
    lines.append("")
    for b, title, section in SECTIONS:
        d = benches.get(b)
        tasks = (d or {}).get("results", {}).get("tasks")
        title = title.replace("{tasks}", f"{tasks:,}" if tasks else "N")
        if b in separate:
            d, r = separate[b]
            tasks = d.get("results", {}).get("tasks")
            title = next(t for x, t, _ in SECTIONS if x == b).replace("{tasks}", f"{tasks:,}" if tasks else "N")
            lines.append(f"## {title}")
            lines.append("")
            lines.append(
                f"Measured in a run of its own, `python3 scripts/bench.py run --only {b}` "
                f"({r['started'].replace('T', ' ').replace('+00:00', ' UTC')}, commit `{r.get('commit') or '?'}`"
                f"{' with local changes' if r.get('dirty') else ''}, {r.get('profile', 'release')} build; load "
                f"average at its start {' '.join(r.get('machine', {}).get('loadavg_at_start', []))}), not in the "
                f"run above; its record is `{rel_out}/{b}.run.json`."
            )
            lines.append("")
            section(d, lines)
            continue
        lines.append(f"## {title}")
        lines.append("")
        if d is None:
            s = stages.get(b)
            if b in stale:
                lines.append("Not shown: its JSON is from another run.")
            elif b in outdated:
                lines.append(
                    "Not shown: its JSON predates the like-for-like measurement (no key exchange probe); "
                    "`make bench` measures it again."
                )
            elif s and s["status"].startswith("skipped"):
                lines.append(f"Not run: {s['status'][len('skipped: '):] if ': ' in s['status'] else s['status']}.")
            elif s:
                lines.append(f"Failed ({s['status']}): see `{rel_out}/{s.get('log', b + '.log')}`.")
            else:
                lines.append("Not run.")
            lines.append("")
            lines.append(TEXT["memory" if section is memory_section else b])
            lines.append("")
            continue
        section(d, lines)
    lines.append("## Reproduce")
    lines.append("")
    lines.append(
        "`make bench` from a fresh clone: `make setup` (as root it installs pdsh, pssh and openssh-server; the "
        "venv gets kcl-lib and ansible-core), the release build, every benchmark with `--json`, this file. "
        "The fleet benchmark needs root (it creates hosts: sshd in namespaces); without root it is skipped. "
        "`make bench-report` writes this file again from the JSON without measuring; `make bench-quick` runs "
        "everything at tiny sizes into target/bench-quick/ (its report is target/bench-quick/BENCHMARKS.md). "
        "Each benchmark also runs alone, `target/release/drover-bench-<name> [options] [--json FILE]`; its "
        "options are in the doc comment at the top of engine/bench/src/<name>.rs."
    )
    lines.append("")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines))
    print(f"wrote {target}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="set up, build, run every benchmark, write the report")
    r.add_argument("--quick", action="store_true", help="tiny sizes: checks the pipeline in a few minutes")
    r.add_argument("--profile", choices=["release", "debug"], default="release")
    r.add_argument("--out", default=None, help=f"where the JSON and logs go (default {RESULTS}, quick: target/bench-quick)")
    r.add_argument("--report", default=None, help="the report (default BENCHMARKS.md, quick: OUT/BENCHMARKS.md)")
    r.add_argument("--minutes", type=float, default=30, help="the time limit of the whole run (default 30)")
    r.add_argument("--only", default=None, help="comma-separated benchmarks to run (plan,exec,api,kcl,resume,cluster,fleet)")
    r.add_argument("--no-setup", action="store_true", help="skip `make setup`")
    g = sub.add_parser("report", help="write the report from the JSON of the last run")
    g.add_argument("--out", default=RESULTS)
    g.add_argument("--report", default="BENCHMARKS.md")
    args = ap.parse_args()
    if args.command == "run":
        if args.out is None:
            args.out = "target/bench-quick" if args.quick else RESULTS
        if args.report is None:
            args.report = str(Path(args.out) / "BENCHMARKS.md") if args.quick else "BENCHMARKS.md"
        return run(args)
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
