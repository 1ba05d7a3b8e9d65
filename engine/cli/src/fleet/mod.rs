//! Day-to-day fleet operations without a workflow: `drover exec`,
//! `history`, `watch`, `tail`, `snapshot` and `drift`.
//!
//! Each picks its servers the same way ([`Selection`]: an inventory or
//! workflow file, then `--tag`, `--group`, `--server`, `--criteria`, the
//! fields of a workflow operation's `selector`), and reaches them the way
//! a run does (providers, the SSH transport, host keys verified).

pub mod exec;
pub mod history;
pub mod snapshot;
pub mod tail;
pub mod watch;

use std::path::{Path, PathBuf};

use drover_core::model::{Criterion, CriterionField, CriterionOp, Selector, Server};
use drover_exec::Inputs;

use crate::{Failure, load_inventory};

/// Which servers: those of FILE that match every filter given.
#[derive(Debug, Clone, clap::Args)]
pub struct Selection {
    /// An inventory file or a workflow file (.k): the servers to choose from.
    pub file: PathBuf,
    /// Only servers with every one of these tags ("!t": without t);
    /// repeatable or comma-separated.
    #[arg(long = "tag", value_name = "T", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Only servers in one of these groups (hierarchy and criteria
    /// resolved); repeatable or comma-separated.
    #[arg(long = "group", value_name = "G", value_delimiter = ',')]
    pub groups: Vec<String>,
    /// Only these servers (by hostname); repeatable or comma-separated.
    /// With --group: servers named here or in one of the groups.
    #[arg(long = "server", value_name = "S", value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Only servers meeting every one of these conditions, on hostname,
    /// provider, plan, zone, address, tag or group: FIELD=VALUE (equals),
    /// FIELD=A|B (one of), FIELD~TEXT (contains), FIELD=~REGEX (matches).
    /// Repeatable.
    #[arg(long = "criteria", value_name = "COND", value_parser = criterion)]
    pub criteria: Vec<Criterion>,
}

impl Selection {
    /// The selector these filters make.
    pub fn selector(&self) -> Selector {
        Selector {
            servers: self.servers.clone(),
            groups: self.groups.clone(),
            tags: self.tags.clone(),
            criteria: self.criteria.clone(),
        }
    }

    /// The file's servers and declarations, and the servers selected; or
    /// what is wrong (the file, or a filter naming what does not exist or
    /// selecting nothing), reported on stderr, with the exit status to
    /// end with.
    pub fn load(&self) -> Result<(Inputs, Vec<Server>), Refusal> {
        let inputs = load_inventory(&self.file).map_err(Refusal::File)?;
        match drover_exec::fleet::select(&inputs, &self.selector()) {
            Ok(servers) => Ok((inputs, servers)),
            Err(diags) => Err(Refusal::Selector(
                diags
                    .iter()
                    .map(|d| match &d.help {
                        Some(help) => format!("{} ({help})", selector_message(&d.message)),
                        None => selector_message(&d.message),
                    })
                    .collect(),
            )),
        }
    }

    /// The directory the file's relative paths (keys, known_hosts) are
    /// relative to.
    pub fn base_dir(&self) -> PathBuf {
        self.file.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

/// The planner speaks of "operation exec"; on the command line it is the
/// filters that select.
fn selector_message(m: &str) -> String {
    m.replace("operation exec selects", "the selection names")
        .replace("operation exec", "the selection")
}

/// Why a selection cannot be used.
pub enum Refusal {
    /// The file does not load (evaluation, validation).
    File(Failure),
    /// The filters are wrong: each problem, in a sentence.
    Selector(Vec<String>),
}

impl Refusal {
    /// Report on stderr (and `out` for a file's problems) and return the
    /// exit status (1: invalid input; 3: environment).
    pub fn report(self, file: &Path, out: &mut impl std::io::Write) -> anyhow::Result<std::process::ExitCode> {
        match self {
            Refusal::File(f) => crate::report_failure(f, crate::ReportFormat::Text, out),
            Refusal::Selector(problems) => {
                for p in &problems {
                    eprintln!("drover: {}: {p}", file.display());
                }
                Ok(std::process::ExitCode::from(1))
            }
        }
    }
}

/// A `--criteria` condition: FIELD=VALUE, FIELD=A|B, FIELD~TEXT, FIELD=~REGEX.
pub fn criterion(s: &str) -> Result<Criterion, String> {
    let usage = "give FIELD=VALUE, FIELD=A|B, FIELD~TEXT or FIELD=~REGEX, FIELD one of hostname, provider, plan, zone, address, tag, group";
    let at = s.find(['=', '~']).ok_or_else(|| format!("{s:?}: {usage}"))?;
    let (name, rest) = s.split_at(at);
    let field = match name.trim() {
        "hostname" => CriterionField::Hostname,
        "provider" => CriterionField::Provider,
        "plan" => CriterionField::Plan,
        "zone" => CriterionField::Zone,
        "address" => CriterionField::Address,
        "tag" => CriterionField::Tag,
        "group" => CriterionField::Group,
        other => return Err(format!("{s:?}: unknown field {other:?}; {usage}")),
    };
    let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
        regex::Regex::new(v).map_err(|e| format!("{s:?}: not a regular expression: {e}"))?;
        (CriterionOp::Matches, v)
    } else if let Some(v) = rest.strip_prefix('~') {
        (CriterionOp::Contains, v)
    } else {
        (CriterionOp::Equals, &rest[1..])
    };
    if value.is_empty() {
        return Err(format!("{s:?}: no value; {usage}"));
    }
    Ok(if op == CriterionOp::Equals && value.contains('|') {
        Criterion {
            field,
            op: CriterionOp::In,
            value: None,
            values: value.split('|').map(str::to_string).collect(),
        }
    } else {
        Criterion {
            field,
            op,
            value: Some(value.to_string()),
            values: Vec::new(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criteria_read_every_operator() {
        let c = criterion("zone=fi-hel1").expect("equals");
        assert_eq!(
            (c.field, c.op, c.value.as_deref()),
            (CriterionField::Zone, CriterionOp::Equals, Some("fi-hel1"))
        );
        let c = criterion("plan=small|medium").expect("in");
        assert_eq!((c.op, c.values.len()), (CriterionOp::In, 2));
        let c = criterion("hostname~web").expect("contains");
        assert_eq!(c.op, CriterionOp::Contains);
        let c = criterion("hostname=~^web-[0-9]+$").expect("matches");
        assert_eq!((c.op, c.value.as_deref()), (CriterionOp::Matches, Some("^web-[0-9]+$")));
        assert!(
            criterion("colour=red")
                .expect_err("an unknown field")
                .contains("unknown field \"colour\"")
        );
        assert!(criterion("zone").is_err());
        assert!(
            criterion("hostname=~(")
                .expect_err("a bad regex")
                .contains("regular expression")
        );
    }
}
