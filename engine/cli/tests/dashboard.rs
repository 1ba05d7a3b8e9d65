//! The web dashboard (`drover serve` at `/`) in a real headless Chromium,
//! driven over WebDriver (chromedriver; Debian's chromium and
//! chromium-driver): the quickstart watched until every node is green, a
//! failing task turning red with its output, pause, cancel and rollback
//! from the page landing in the journal, a wrong token refused, a viewer
//! offered no actions, and a plan of 1,250 tasks rendered within a bound.
//! The quickstart test also takes the screenshots shown in README.md: into
//! the test's scratch directory, and, with DROVER_UPDATE_SCREENSHOTS=1,
//! over docs/dashboard-runs.png and docs/dashboard-run.png (a test run
//! leaves the source tree as it found it otherwise).

mod common;

/// Where the screenshots go: docs/ when DROVER_UPDATE_SCREENSHOTS=1 (to
/// commit them), else the test's scratch directory.
fn screenshots_dir() -> std::path::PathBuf {
    if std::env::var_os("DROVER_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        repo().join("docs")
    } else {
        let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
        std::fs::create_dir_all(&d).expect("screenshot directory");
        d
    }
}

use std::path::Path;
use std::time::{Duration, Instant};

use common::server::{Server, control, tempdir, workflow};
use common::webdriver::{Browser, pids_naming};
use common::{repo, test_home};
use reqwest::StatusCode;
use serde_json::json;

const TOKEN: &str = "dashboard-admin-token";
const WAIT: Duration = Duration::from_secs(60);

/// The bound on showing a plan of 1,250 tasks: from the start of the page
/// load to every node in the page (stated in README.md too).
const BIG_PLAN_BOUND: Duration = Duration::from_secs(5);

fn server(dir: &Path, home: &Path) -> Server {
    Server::start_with(dir, &[], &[("DROVER_TOKEN", TOKEN)], home)
}

/// Open the dashboard and sign in with `token`; then go to `route`.
async fn sign_in(b: &Browser, s: &Server, token: &str, route: &str) {
    b.goto(&s.url("/")).await;
    let input = b.wait_for("[data-testid=token-input]", WAIT).await;
    b.send_keys(&input, token).await;
    b.click_css("[data-testid=token-submit]", WAIT).await;
    b.wait_js(
        "signed in",
        "const w = document.querySelector('[data-testid=whoami]'); return w && w.offsetParent !== null && w.textContent",
        WAIT,
    )
    .await;
    go(b, route).await;
}

/// Go to a route of the page (the token stays in the tab's session).
async fn go(b: &Browser, route: &str) {
    b.script("location.hash = arguments[0]", json!([route])).await;
}

/// Every task node's state, as the page draws it.
async fn node_states(b: &Browser) -> Vec<(String, String)> {
    let v = b
        .script(
            "return [...document.querySelectorAll('g.task')].map(e => [e.dataset.task, e.dataset.state])",
            json!([]),
        )
        .await;
    serde_json::from_value(v).expect("states")
}

/// The journal events' names, from the API.
async fn journal_kinds(s: &Server, id: &str) -> Vec<String> {
    s.journal(id).await.iter().map(|e| e.kind().to_string()).collect()
}

async fn wait_journal(s: &Server, id: &str, kind: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let kinds = journal_kinds(s, id).await;
        if kinds.iter().any(|k| k == kind) {
            return;
        }
        assert!(Instant::now() < deadline, "no {kind} in the journal of {id}: {kinds:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Click an action button once it is enabled, and accept its confirm().
async fn act(b: &Browser, action: &str) -> String {
    let css = format!("[data-testid=action-{action}]:not([disabled])");
    b.click_css(&css, WAIT).await;
    b.accept_alert(WAIT).await
}

/// Processes naming `dir` on their command line (the quickstart's sshd
/// hosts, the server) are killed when this is dropped: a failed test
/// leaves no host running. They are this test's own: `dir` is its
/// temporary directory.
struct Reaper(std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in pids_naming(&self.0.display().to_string()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The quickstart for real (three sshd hosts on 127.0.10.1-3: root), sent
/// from the test and watched in the page until every node is green and the
/// counters say 100 %. Also takes the screenshots of README.md. Named
/// "quickstart": nextest runs such tests one at a time (.config/nextest.toml).
#[tokio::test(flavor = "multi_thread")]
async fn the_quickstart_is_watched_in_the_page_until_every_node_is_green() {
    let dir = tempdir();
    let _reaper = Reaper(dir.path().to_path_buf());
    let s = server(dir.path(), &repo());
    let b = Browser::start().await;
    sign_in(&b, &s, TOKEN, "#/runs").await;
    let id = s.submit(&repo().join("workflows/quickstart.k")).await;
    go(&b, &format!("#/runs/{id}")).await;
    b.wait_js(
        "the graph",
        "return document.querySelectorAll('g.task').length === 15",
        WAIT,
    )
    .await;
    let first = node_states(&b).await;
    assert_eq!(first.len(), 15, "{first:?}");

    // Live: states change in the page without a reload, up to all green.
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut seen_not_green = first.iter().any(|(_, st)| st != "succeeded");
    loop {
        let states = node_states(&b).await;
        if states.iter().all(|(_, st)| st == "succeeded") {
            break;
        }
        seen_not_green = true;
        assert!(
            states.iter().all(|(_, st)| st != "failed"),
            "a task failed: {states:?}\n{:#}",
            s.status(&id).await
        );
        assert!(Instant::now() < deadline, "not all green: {states:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen_not_green, "the run was over before the page showed it");
    b.wait_js(
        "100 %",
        "const c = document.querySelector('[data-testid=counters]'); return c.dataset.percent === '100' && c.dataset.succeeded === '15' && document.querySelector('[data-testid=run-status]').dataset.status === 'succeeded'",
        WAIT,
    )
    .await;
    assert_eq!(s.status(&id).await["status"], "succeeded");

    // A task selected: its attempts and its output.
    let task = "install/webhello@quick-1";
    b.click_css(&format!("g.task[data-task=\"{task}\"]"), WAIT).await;
    b.wait_js(
        "the output",
        "const o = document.querySelector('[data-testid=task-output]'); return o && o.dataset.ended === 'true' && o.textContent.length > 0 && o.textContent !== '(no output)'",
        WAIT,
    )
    .await;
    let attempts = b
        .script(
            "return document.querySelector('[data-testid=task-attempts]').textContent",
            json!([]),
        )
        .await;
    assert!(
        attempts.as_str().unwrap_or("").contains("attempt 1 succeeded"),
        "{attempts}"
    );
    let docs = screenshots_dir();
    b.screenshot(&docs.join("dashboard-run.png")).await;

    go(&b, "#/runs").await;
    b.wait_js(
        "the run listed",
        &format!(
            "return !!document.querySelector('[data-testid=run-row][data-run-id=\"{id}\"][data-status=succeeded]')"
        ),
        WAIT,
    )
    .await;
    let row = b
        .script(
            "return document.querySelector('[data-testid=run-row]').innerText",
            json!([]),
        )
        .await;
    let row = row.as_str().unwrap_or("");
    assert!(row.contains("quickstart") && row.contains("succeeded"), "{row}");
    b.screenshot(&docs.join("dashboard-runs.png")).await;
    b.quit().await;

    // The hosts go: rolled back through the API.
    s.wait_idle().await;
    let (code, body) = s.command(&id, "rollback").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let end = s.wait_end(&id).await;
    assert_eq!(end["status"], "rolled_back", "{end:#}");
    s.wait_idle().await;
}

/// A task told to fail turns red in the page, and selecting it shows its
/// error and its output (behave.sh's stderr line).
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_task_turns_red_and_its_output_is_visible() {
    let dir = tempdir();
    let s = server(dir.path(), &test_home());
    let (file, ctl) = workflow(dir.path(), "failing", 2, &["a", "b"], "");
    control(&ctl, "install.a@failing-1", "fail");
    control(&ctl, "install", "sleep 0.3");
    let b = Browser::start().await;
    sign_in(&b, &s, TOKEN, "#/runs").await;
    let id = s.submit(&file).await;
    go(&b, &format!("#/runs/{id}")).await;
    let task = "install/a@failing-1";
    let node = format!("g.task[data-task=\"{task}\"]");
    b.wait_for(&node, WAIT).await;
    b.wait_js(
        "the task red",
        &format!("const n = document.querySelector('{node}'); return n && n.dataset.state === 'failed' && getComputedStyle(n.querySelector('rect')).fill"),
        WAIT,
    )
    .await;
    let fill = b
        .script(
            &format!("return getComputedStyle(document.querySelector('{node} rect')).fill"),
            json!([]),
        )
        .await;
    assert_eq!(fill, "rgb(185, 28, 28)", "failed is red");
    let label = b
        .script(
            &format!("return document.querySelector('{node}').getAttribute('aria-label')"),
            json!([]),
        )
        .await;
    assert!(
        label.as_str().unwrap_or("").contains("failed"),
        "not by colour alone: {label}"
    );
    b.click_css(&node, WAIT).await;
    b.wait_js(
        "its output",
        "const o = document.querySelector('[data-testid=task-output]'); return o && o.textContent.includes('a@failing-1: install told to fail')",
        WAIT,
    )
    .await;
    b.wait_js(
        "its error",
        "const e = document.querySelector('[data-testid=task-error]'); return e && e.textContent.length > 0",
        WAIT,
    )
    .await;
    let end = s.wait_end(&id).await;
    assert_eq!(end["status"], "failed", "{end:#}");
    b.wait_js(
        "the run failed in the page",
        "const c = document.querySelector('[data-testid=counters]'); return document.querySelector('[data-testid=run-status]').dataset.status === 'failed' && c.dataset.failed === '1'",
        WAIT,
    )
    .await;
    b.quit().await;
}

/// Pause and cancel from the page (each confirmed) land in the journal;
/// then rollback of a failed run, shown as it happens, ends rolled back.
#[tokio::test(flavor = "multi_thread")]
async fn pause_cancel_and_rollback_from_the_page_take_effect_in_the_journal() {
    let dir = tempdir();
    let s = server(dir.path(), &test_home());
    let (slow, ctl) = workflow(dir.path(), "slow", 4, &["a", "b", "c", "d"], "max_parallel = 2");
    control(&ctl, "install", "sleep 0.5");
    let b = Browser::start().await;
    sign_in(&b, &s, TOKEN, "#/runs").await;
    let id = s.submit(&slow).await;
    go(&b, &format!("#/runs/{id}")).await;
    b.wait_js(
        "running in the page",
        "const r = document.querySelector('[data-testid=run-status]'); return r && r.dataset.status === 'running'",
        WAIT,
    )
    .await;
    let asked = act(&b, "pause").await;
    assert!(asked.contains("Pause run"), "{asked}");
    wait_journal(&s, &id, "run_paused").await;
    b.wait_js(
        "paused in the page",
        "return document.querySelector('[data-testid=run-status]').dataset.status === 'paused' && document.querySelector('[data-testid=timeline]').textContent.includes('run paused')",
        WAIT,
    )
    .await;
    act(&b, "cancel").await;
    wait_journal(&s, &id, "cancel_requested").await;
    assert_eq!(s.wait_end(&id).await["status"], "cancelled");
    s.wait_idle().await;

    // A failed run rolled back from its page.
    let (broken, ctl) = workflow(dir.path(), "broken", 2, &["a", "b"], "");
    control(&ctl, "install.b", "fail");
    let id = s.submit(&broken).await;
    assert_eq!(s.wait_end(&id).await["status"], "failed");
    s.wait_idle().await;
    go(&b, &format!("#/runs/{id}")).await;
    b.wait_js(
        "failed in the page",
        "const r = document.querySelector('[data-testid=run-status]'); return r && r.dataset.status === 'failed'",
        WAIT,
    )
    .await;
    let asked = act(&b, "rollback").await;
    assert!(asked.contains("Roll back run"), "{asked}");
    wait_journal(&s, &id, "rollback_started").await;
    assert_eq!(s.wait_end(&id).await["status"], "rolled_back");
    b.wait_js(
        "rolled back in the page",
        "return document.querySelector('[data-testid=run-status]').dataset.status === 'rolled_back' && document.querySelector('[data-testid=timeline]').textContent.includes('rollback started') && document.querySelectorAll('g.task[data-rollback=undone]').length > 0",
        WAIT,
    )
    .await;
    b.quit().await;
}

/// A wrong token: the page says it was refused and stays on the form; no
/// token is kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_is_refused() {
    let dir = tempdir();
    let s = server(dir.path(), &test_home());
    let b = Browser::start().await;
    b.goto(&s.url("/#/runs")).await;
    let input = b.wait_for("[data-testid=token-input]", WAIT).await;
    b.send_keys(&input, "not-the-token").await;
    b.click_css("[data-testid=token-submit]", WAIT).await;
    let said = b
        .wait_js(
            "the refusal",
            "const e = document.querySelector('[data-testid=token-error]'); return e && e.textContent.includes('refused') && e.textContent",
            WAIT,
        )
        .await;
    assert!(said.as_str().unwrap_or("").contains("Token refused"), "{said}");
    let state = b
        .script(
            "return [document.querySelector('#login').hidden, document.querySelector('#nav').hidden, sessionStorage.length, !!document.querySelector('[data-testid=runs-table]')]",
            json!([]),
        )
        .await;
    assert_eq!(
        state,
        json!([false, true, 0, false]),
        "still on the token form, nothing kept"
    );
    b.quit().await;
}

/// A viewer's token reads runs but is offered no action.
#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_token_gets_no_action_buttons() {
    let dir = tempdir();
    let s = server(dir.path(), &test_home());
    let (code, body) = s.post("/tokens", json!({"name": "watcher", "role": "viewer"})).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let viewer = body["token"].as_str().expect("token").to_string();
    let (file, _) = workflow(dir.path(), "watched", 1, &["a"], "");
    let id = s.submit(&file).await;
    s.wait_end(&id).await;
    let b = Browser::start().await;
    sign_in(&b, &s, &viewer, &format!("#/runs/{id}")).await;
    b.wait_for("g.task", WAIT).await;
    b.wait_for("[data-testid=read-only]", WAIT).await;
    assert_eq!(b.count("[data-testid^=action-]").await, 0, "a viewer sees no action");
    let who = b
        .script(
            "return document.querySelector('[data-testid=whoami]').textContent",
            json!([]),
        )
        .await;
    assert_eq!(who, "watcher (viewer)");

    // A phone's width: the panels stack, nothing is wider than the screen
    // (the graph scrolls in its own box).
    b.set_window(390, 844).await;
    let fits = b
        .wait_js(
            "the page fitting a phone",
            "const w = document.documentElement.clientWidth; const g = document.querySelector('[data-testid=graph]').getBoundingClientRect(); const p = document.querySelector('[data-testid=task-panel]').getBoundingClientRect(); return w < 500 && document.documentElement.scrollWidth <= w && p.top >= g.bottom && [w, document.documentElement.scrollWidth]",
            WAIT,
        )
        .await;
    eprintln!("phone width: {fits}");
    go(&b, "#/schedules").await;
    b.wait_for("[data-testid=schedules-table]", WAIT).await;
    b.quit().await;
}

/// 250 servers × 4 taskservs: 1,250 tasks (250 server creations, 1,000
/// installs). Every node is in the page
/// within BIG_PLAN_BOUND of the start of the page load; search finds a
/// task; an operation collapses to one summary and opens again.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_of_1250_tasks_renders_within_the_bound_with_search_and_collapse() {
    let dir = tempdir();
    let s = server(dir.path(), &test_home());
    let (file, ctl) = workflow(dir.path(), "big", 250, &["a", "b", "c", "d"], "");
    control(&ctl, "install", "sleep 0.2");
    let id = s.submit(&file).await;
    s.wait_running(1).await;
    let (code, body) = s.command(&id, "pause").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    s.wait_status(&id, "paused").await;
    let b = Browser::start().await;
    sign_in(&b, &s, TOKEN, "#/runs").await;
    // The page loaded anew (the token is in the tab's session).
    let t0 = Instant::now();
    b.goto(&s.url(&format!("/#/runs/{id}"))).await;
    b.wait_js(
        "1,250 nodes",
        "return document.querySelectorAll('g.task').length === 1250",
        BIG_PLAN_BOUND * 4,
    )
    .await;
    let took = t0.elapsed();
    let in_page = b.script("return window.droverRenderMs", json!([])).await;
    eprintln!(
        "1,250 tasks: every node in the page {took:?} after navigation (graph built in {in_page} ms in the page)"
    );
    assert!(
        took <= BIG_PLAN_BOUND,
        "1,250 nodes took {took:?} (bound {BIG_PLAN_BOUND:?})"
    );

    // Search: highlights and reports the one match.
    let search = b.wait_for("[data-testid=task-search]", WAIT).await;
    b.send_keys(&search, "b@big-137").await;
    b.wait_js(
        "a match",
        "return document.querySelector('[data-testid=search-count]').textContent === '1 match'",
        WAIT,
    )
    .await;
    let hits = b
        .script(
            "return [...document.querySelectorAll('g.task.match')].map(e => e.dataset.task)",
            json!([]),
        )
        .await;
    assert_eq!(hits, json!(["install/b@big-137"]));
    b.send_keys(&search, "\u{E007}").await; // Enter selects it
    b.wait_js(
        "selected",
        "const p = document.querySelector('[data-testid=task-panel] h2'); return p && p.textContent === 'install/b@big-137'",
        WAIT,
    )
    .await;

    // Collapse the install operation: one summary in place of 1,000 nodes.
    b.click_css("g.op[data-op=install] g.op-head", WAIT).await;
    b.wait_js(
        "collapsed",
        "return document.querySelector('g.op[data-op=install]').dataset.collapsed === 'true' && document.querySelectorAll('g.task').length === 250 && !!document.querySelector('g.op[data-op=install] [data-testid=op-summary]')",
        WAIT,
    )
    .await;
    b.click_css("g.op[data-op=install] g.op-head", WAIT).await;
    b.wait_js(
        "expanded",
        "return document.querySelectorAll('g.task').length === 1250",
        WAIT,
    )
    .await;
    b.click_css("[data-testid=zoom-out]", WAIT).await;
    let zoom = b
        .script(
            "return document.querySelector('[data-testid=zoom-level]').textContent",
            json!([]),
        )
        .await;
    assert_eq!(zoom, "80 %");
    b.quit().await;
    let (code, body) = s.command(&id, "cancel").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    s.wait_end(&id).await;
}
