//! `drover run workflows/cloud-aws.k` for real against moto: killed with
//! SIGKILL while it creates the instances, resumed, then rolled back. What
//! exists is listed through the EC2 API each time.
//!
//! The drover binary is built by this test (`cargo build -p drover-cli`,
//! into the target directory the test runs from): a test of one crate has
//! no other crate's binaries.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use drover_state::{RunStatus, Store};

use crate::common::*;

/// `target/<profile>/drover`, built now if needed.
fn drover_binary() -> Result<PathBuf> {
    // <target>/<profile>/deps/run-<hash>
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary is not in <target>/<profile>/deps")?;
    let target = profile_dir.parent().context("no target directory")?;
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(repo())
        .args(["build", "--quiet", "-p", "drover-cli", "--bin", "drover"])
        .env("CARGO_TARGET_DIR", target);
    if profile != "debug" {
        build.args(["--profile", profile]);
    }
    let out = build.output().context("running cargo build -p drover-cli")?;
    if !out.status.success() {
        bail!(
            "cargo build -p drover-cli failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(profile_dir.join("drover"))
}

struct Setup {
    dir: tempfile::TempDir,
    bin: PathBuf,
    state: PathBuf,
    moto: Moto,
}

impl Setup {
    /// drover with a private state store and home, its AWS settings from
    /// its environment (the standard chain: AWS_ENDPOINT_URL is moto) and
    /// no profile files of the machine.
    fn drover(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new(&self.bin);
        c.current_dir(repo())
            .env("HOME", d)
            .env("DROVER_STATE", &self.state)
            .env("DROVER_HOME", repo())
            .env("DROVER_VENV", repo().join(".venv"))
            .env("AWS_ENDPOINT_URL", &self.moto.url)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", REGION)
            .env("AWS_IMAGE_ID", IMAGE)
            .env("AWS_CONFIG_FILE", d.join("no-aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", d.join("no-aws-credentials"))
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run_id(&self) -> Result<String> {
        let store = Store::open_read_only(&self.state)?;
        let runs = store.runs()?;
        if runs.len() != 1 {
            bail!("expected one run, found {runs:?}");
        }
        Ok(runs[0].id.clone())
    }

    fn status(&self, id: &str) -> Result<RunStatus> {
        let store = Store::open_read_only(&self.state)?;
        store
            .runs()?
            .into_iter()
            .find(|r| r.id == id)
            .map(|r| r.status)
            .context("the run is gone")
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_creates_then_resumed_makes_exactly_five_then_rollback_removes_all() -> Result<()> {
    let bin = drover_binary()?;
    let dir = tempfile::tempdir()?;
    let moto = Moto::start(dir.path(), &[])?;
    let ec2 = moto.ec2();
    let setup = Setup {
        state: dir.path().join("state.db"),
        dir,
        bin,
        moto,
    };
    let workflow = repo().join("workflows/cloud-aws.k");
    let log = setup.dir.path().join("first-run.log");
    let out = std::fs::File::create(&log)?;
    let mut first = setup
        .drover(&["run", &workflow.display().to_string()])
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;

    // SIGKILL as soon as the first instance exists: its create task is
    // then waiting for it to run, its success not journaled yet.
    let deadline = Instant::now() + Duration::from_secs(180);
    let at_kill = loop {
        let live = live_instances(&ec2).await?;
        if !live.is_empty() {
            first.kill()?;
            break live.len();
        }
        if let Some(status) = first.try_wait()? {
            bail!(
                "drover run ended ({status}) before any instance existed:\n{}",
                std::fs::read_to_string(&log)?
            );
        }
        if Instant::now() > deadline {
            let _ = first.kill();
            bail!("no instance after 180 s:\n{}", std::fs::read_to_string(&log)?);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let status = first.wait()?;
    assert!(
        std::os::unix::process::ExitStatusExt::signal(&status) == Some(9),
        "drover was killed: {status}"
    );
    assert!(at_kill < 5, "killed during the creates ({at_kill} instances)");
    let id = setup.run_id()?;
    assert_ne!(setup.status(&id)?, RunStatus::Succeeded);

    let resumed = setup.drover(&["run", "--resume", &id]).output()?;
    assert!(resumed.status.success(), "the resume succeeds:\n{}", text(&resumed));
    assert_eq!(setup.status(&id)?, RunStatus::Succeeded);

    let live = live_instances(&ec2).await?;
    let expected: Vec<(String, String, String)> = (0..5)
        .map(|i| {
            (
                format!("aws-node-{i}"),
                ["us-east-1a", "us-east-1b"][i % 2].to_string(),
                "running".to_string(),
            )
        })
        .collect();
    assert_eq!(live, expected, "exactly one instance per server");
    let (vpcs, mut zones, groups) = run_network(&ec2, &id).await?;
    zones.sort();
    assert_eq!((vpcs.len(), groups.len()), (1, 1));
    assert_eq!(zones, ["us-east-1a", "us-east-1b"]);

    let rollback = setup.drover(&["rollback", &id]).output()?;
    assert_eq!(
        setup.status(&id)?,
        RunStatus::RolledBack,
        "drover rollback:\n{}",
        text(&rollback)
    );
    assert_eq!(live_instances(&ec2).await?, vec![], "{}", text(&rollback));
    assert_eq!(
        run_network(&ec2, &id).await?,
        (vec![], vec![], vec![]),
        "the VPC, subnets and security group are deleted:\n{}",
        text(&rollback)
    );
    Ok(())
}
