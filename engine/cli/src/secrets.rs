//! `drover secrets check`: does a SOPS file decrypt with the configured age
//! identities? Prints key paths, types and recipients, never values.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use drover_kcl::Loader;
use drover_secrets::{Identities, check_file};

/// Check FILE: a SOPS file (identities from `identity`, else
/// SOPS_AGE_KEY_FILE / SOPS_AGE_KEY), or a workflow (.k), whose every
/// secrets file is checked with the workflow's own age key.
pub fn check(file: &Path, identity: Option<&Path>, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let (files, ids) = if file.extension().is_some_and(|e| e == "k") {
        let loader = match Loader::discover() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("drover: {e}");
                return Ok(ExitCode::from(3));
            }
        };
        let source = match loader.load_workflow(file) {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "drover: {file}: {e} (run `drover validate {file}` for details)",
                    file = file.display()
                );
                return Ok(ExitCode::from(1));
            }
        };
        let Some(sp) = source.workflow.secrets else {
            writeln!(out, "{}: the workflow declares no secrets", file.display())?;
            return Ok(ExitCode::SUCCESS);
        };
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let ids = match (identity, &sp.age_key_file) {
            (Some(i), _) => Identities::from_file(i),
            (None, Some(k)) => Identities::from_file(&base.join(k)),
            (None, None) => Identities::from_env(),
        };
        (sp.files.iter().map(|f| base.join(f)).collect::<Vec<PathBuf>>(), ids)
    } else {
        let ids = match identity {
            Some(i) => Identities::from_file(i),
            None => Identities::from_env(),
        };
        (vec![file.to_path_buf()], ids)
    };
    let ids = match ids {
        Ok(ids) => ids,
        Err(e) => {
            eprintln!("drover: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let mut failed = false;
    for f in files {
        match check_file(&f, &ids) {
            Ok(report) => write!(out, "{report}")?,
            Err(e) => {
                eprintln!("drover: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
