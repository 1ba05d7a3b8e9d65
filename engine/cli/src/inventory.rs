//! `drover inventory list|groups FILE` and `drover ping FILE`: the servers
//! of an inventory file (or of a workflow) and the groups they resolve to
//! (hierarchy and criteria evaluated now).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use drover_core::inventory::Inventory;
use drover_core::model::Server;

use crate::{ReportFormat, load_inventory, report_failure};

/// `drover inventory list FILE [--tag T] [--group G]`.
pub fn list(file: &Path, tags: &[String], groups: &[String], out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let inputs = match load_inventory(file) {
        Ok(i) => i,
        Err(f) => return report_failure(f, ReportFormat::Text, out),
    };
    let wf = &inputs.source.workflow;
    let inv = Inventory::new(wf);
    for g in groups {
        if !inv.has_group(g) {
            let names: Vec<&str> = inv.group_names().into_iter().collect();
            eprintln!(
                "drover: no group {g} in {}; groups: {}",
                file.display(),
                names.join(", ")
            );
            return Ok(ExitCode::from(1));
        }
    }
    let picked = select(&inv, &wf.servers, tags, groups);
    let all_groups = inv.group_names();
    let rows: Vec<[String; 7]> = picked
        .iter()
        .map(|s| {
            let member_of: Vec<&str> = all_groups.iter().copied().filter(|g| inv.in_group(s, g)).collect();
            [
                s.hostname.clone(),
                s.provider.clone(),
                s.plan.clone(),
                s.zone.clone().unwrap_or_else(|| "-".into()),
                s.address.clone().unwrap_or_else(|| "-".into()),
                if s.tags.is_empty() {
                    "-".into()
                } else {
                    s.tags.join(",")
                },
                if member_of.is_empty() {
                    "-".into()
                } else {
                    member_of.join(",")
                },
            ]
        })
        .collect();
    write_table(
        out,
        &["server", "provider", "plan", "zone", "address", "tags", "groups"],
        &rows,
    )?;
    writeln!(out, "{} of {} servers", picked.len(), wf.servers.len())?;
    Ok(ExitCode::SUCCESS)
}

/// The servers with every tag and in every group.
fn select<'a>(inv: &Inventory<'a>, servers: &'a [Server], tags: &[String], groups: &[String]) -> Vec<&'a Server> {
    servers
        .iter()
        .filter(|s| groups.iter().all(|g| inv.in_group(s, g)))
        .filter(|s| {
            tags.iter().all(|t| match t.strip_prefix('!') {
                Some(neg) => !s.tags.iter().any(|x| x == neg),
                None => s.tags.contains(t),
            })
        })
        .collect()
}

/// `drover ping FILE [--tag T] [--group G]`: a parallel reachability check,
/// one OK/FAIL line per server with its latency (connect, handshake with
/// host key verification, `true`).
pub fn ping(
    file: &Path,
    tags: &[String],
    groups: &[String],
    target: &crate::runs::Target,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let inputs = match load_inventory(file) {
        Ok(i) => i,
        Err(f) => return report_failure(f, ReportFormat::Text, out),
    };
    let wf = &inputs.source.workflow;
    let inv = Inventory::new(wf);
    for g in groups {
        if !inv.has_group(g) {
            eprintln!("drover: no group {g} in {}", file.display());
            return Ok(ExitCode::from(1));
        }
    }
    let picked: Vec<Server> = select(&inv, &wf.servers, tags, groups).into_iter().cloned().collect();
    if picked.is_empty() {
        eprintln!(
            "drover: no server of {} matches the given --tag and --group",
            file.display()
        );
        return Ok(ExitCode::from(1));
    }
    let opts = drover_exec::Options::for_state(&target.state, drover_registry::providers());
    let base_dir = inputs.source.file.parent().map(Path::to_path_buf).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut results = rt.block_on(drover_exec::ping::ping(picked, base_dir, &opts));
    results.sort_by(|a, b| a.server.cmp(&b.server));
    let width = results.iter().map(|p| p.server.len()).max().unwrap_or(0);
    let mut ok = 0;
    for p in &results {
        match &p.result {
            Ok(d) => {
                ok += 1;
                writeln!(
                    out,
                    "OK    {:<width$}  {:<15}  {:.1} ms",
                    p.server,
                    p.address,
                    d.as_secs_f64() * 1e3
                )?;
            }
            Err(e) => writeln!(out, "FAIL  {:<width$}  {:<15}  {e}", p.server, p.address)?,
        }
    }
    writeln!(out, "{ok} of {} reachable", results.len())?;
    Ok(if ok == results.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::runs::RUN_FAILED)
    })
}

/// `drover inventory groups FILE`.
pub fn groups(file: &Path, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let inputs = match load_inventory(file) {
        Ok(i) => i,
        Err(f) => return report_failure(f, ReportFormat::Text, out),
    };
    let wf = &inputs.source.workflow;
    let inv = Inventory::new(wf);
    let rows: Vec<[String; 3]> = inv
        .group_names()
        .into_iter()
        .map(|g| {
            let how = match inv.group(g) {
                None => "named by servers".to_string(),
                Some(def) => {
                    let mut parts = Vec::new();
                    if !def.members.is_empty() {
                        parts.push(format!("members {}", def.members.join(",")));
                    }
                    if !def.groups.is_empty() {
                        parts.push(format!("contains {}", def.groups.join(",")));
                    }
                    if !def.criteria.is_empty() {
                        parts.push(format!("{} criteria", def.criteria.len()));
                    }
                    if parts.is_empty() {
                        "declared".to_string()
                    } else {
                        parts.join("; ")
                    }
                }
            };
            let members: Vec<&str> = inv.members(g).into_iter().map(|s| s.hostname.as_str()).collect();
            [
                g.to_string(),
                how,
                if members.is_empty() {
                    "-".into()
                } else {
                    members.join(",")
                },
            ]
        })
        .collect();
    write_table(out, &["group", "defined by", "servers"], &rows)?;
    Ok(ExitCode::SUCCESS)
}

fn write_table<const N: usize>(out: &mut impl Write, header: &[&str; N], rows: &[[String; N]]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}
