//! A generated drover home for benchmarks: the real schemas, a provider
//! `bench` with limits far above any task rate, ten taskservs bench-0..9 where each requires the previous one,
//! and a workflow of N servers carrying all ten.

use std::path::{Path, PathBuf};

use anyhow::Result;

/// Taskservs per server.
pub const TASKSERVS: usize = 10;

/// A home with the real schemas and local provider, and ten generated
/// taskservs bench-0..9 where each requires the previous one.
pub fn generate_home(real: &Path, dir: &Path, servers: usize) -> Result<PathBuf> {
    let home = dir.to_path_buf();
    std::os::unix::fs::symlink(real.join("schemas"), home.join("schemas"))?;
    // A provider declaration with limits far above the task rate, so the
    // benchmark measures the engine, not the provider's declared throttle.
    std::fs::create_dir_all(home.join("providers/bench/kcl"))?;
    std::fs::write(
        home.join("providers/bench/kcl/dependencies.k"),
        "import drover\n\ndependencies = drover.ProviderDependencies {\n    name = \"bench\"\n    api_rate_limit = 1000000.0\n    batch_size = 100000\n    plans = {small = drover.Resources {cpu = 1, memory = 512, disk = 1}}\n}\n",
    )?;
    for i in 0..TASKSERVS {
        let ts = home.join(format!("taskservs/bench-{i}"));
        std::fs::create_dir_all(ts.join("kcl"))?;
        std::fs::create_dir_all(ts.join("scripts"))?;
        let requires = if i == 0 {
            String::new()
        } else {
            format!("\"bench-{}\"", i - 1)
        };
        std::fs::write(
            ts.join("kcl/dependencies.k"),
            format!(
                "import drover\n\ndependencies = drover.TaskservDependencies {{\n    name = \"bench-{i}\"\n    requires = [{requires}]\n}}\n"
            ),
        )?;
        for s in ["install.sh", "remove.sh", "check.sh"] {
            std::fs::write(ts.join("scripts").join(s), "#!/bin/sh\nexit 0\n")?;
        }
    }
    let names: Vec<String> = (0..TASKSERVS).map(|i| format!("\"bench-{i}\"")).collect();
    let workflow = |n: usize| {
        format!(
            r#"import drover

workflow = drover.WorkflowDef {{
    name = "bench"
    servers = [drover.ServerDef {{
        hostname = "node-${{i}}"
        provider = "bench"
        plan = "small"
        tags = ["bench", "rack-${{i % 20}}"]
        groups = ["group-${{i % 10}}"]
        taskservs = [{names}]
    }} for i in range({n})]
    operations = [
        drover.OperationDef {{id = "create", type = "create", target = "server", on_failure = "rollback"}}
        drover.OperationDef {{id = "install", type = "create", target = "taskserv", depends_on = ["create"], max_parallel = 50}}
    ]
    dependencies = [drover.DependencyDef {{source = "taskserv.bench-5", target = "taskserv.bench-0", type = "soft"}}]
}}
"#,
            names = names.join(", ")
        )
    };
    std::fs::write(home.join("bench.k"), workflow(servers))?;
    std::fs::write(home.join("small.k"), workflow(3))?;
    Ok(home)
}

/// Scripts of the deterministic test taskservs (behave.sh) that ran more
/// than once: their executions.log in `control`, by idempotency key.
pub fn reruns(control: &Path) -> Result<usize> {
    let log = std::fs::read_to_string(control.join("executions.log"))?;
    let mut by_key: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for line in log.lines() {
        if let Some(key) = line.split(' ').nth(4) {
            *by_key.entry(key).or_default() += 1;
        }
    }
    Ok(by_key.values().filter(|n| **n > 1).count())
}
