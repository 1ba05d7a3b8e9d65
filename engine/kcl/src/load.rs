//! Loading a workflow: evaluate the file and the provider and taskserv
//! declarations with the KCL engine, then deserialise them into the typed
//! model.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drover_core::Diagnostic;
use drover_core::model::{Catalog, InventoryDef, ProviderDecl, Script, Source, TaskservDecl, Workflow};
use serde::de::DeserializeOwned;

use crate::diagnostics::KclDiagnostic;
use crate::engine::{Engine, ExternalPackage, KclError};
use crate::locate::{EngineLocation, Home};

/// Why a workflow could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The engine could not be found or started: an installation problem,
    /// not a problem with the input.
    #[error(transparent)]
    Engine(KclError),
    /// The KCL engine rejected a file (syntax, type, check errors).
    #[error("{} KCL error(s)", .0.len())]
    Kcl(Vec<KclDiagnostic>),
    /// The evaluated values do not fit the model.
    #[error("{} problem(s) in the evaluated configuration", .0.len())]
    Model(Vec<Diagnostic>),
}

/// Time spent in each part of loading.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadTimings {
    /// Evaluating the workflow file.
    pub workflow: Duration,
    /// Evaluating the provider and taskserv declarations.
    pub catalog: Duration,
}

/// Loads workflows with one engine and one home.
#[derive(Debug)]
pub struct Loader {
    engine: Engine,
    home: Home,
    location: EngineLocation,
}

impl Loader {
    /// Discover the home and the engine (see [`Home::discover`],
    /// [`EngineLocation::discover`]).
    pub fn discover() -> Result<Loader, LoadError> {
        let home = Home::discover().map_err(LoadError::Engine)?;
        Loader::new(home)
    }

    /// A loader for `home`, with the engine found from it.
    pub fn new(home: Home) -> Result<Loader, LoadError> {
        let location = EngineLocation::discover(&home).map_err(LoadError::Engine)?;
        let engine = Engine::load(&location).map_err(LoadError::Engine)?;
        Ok(Loader { engine, home, location })
    }

    /// A loader for `home` with the engine at `location` (e.g. a test home
    /// using the project's engine).
    pub fn with_engine(home: Home, location: &EngineLocation) -> Result<Loader, LoadError> {
        let engine = Engine::load(location).map_err(LoadError::Engine)?;
        Ok(Loader {
            engine,
            home,
            location: location.clone(),
        })
    }

    /// The home in use.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// Where the engine in use was loaded from (for worker processes that
    /// load the same one).
    pub fn engine_location(&self) -> &EngineLocation {
        &self.location
    }

    fn packages(&self) -> Vec<ExternalPackage> {
        vec![ExternalPackage {
            name: "drover".into(),
            path: self.home.schemas(),
        }]
    }

    /// Evaluate `file` and the whole catalog.
    pub fn load(&self, file: &Path) -> Result<(Source, Catalog, LoadTimings), LoadError> {
        let started = Instant::now();
        let source = self.load_workflow(file)?;
        let workflow = started.elapsed();
        let started = Instant::now();
        let catalog = self.load_catalog()?;
        let timings = LoadTimings {
            workflow,
            catalog: started.elapsed(),
        };
        Ok((source, catalog, timings))
    }

    /// Evaluate a workflow file; its `workflow` value becomes the model.
    pub fn load_workflow(&self, file: &Path) -> Result<Source, LoadError> {
        if !file.is_file() {
            return Err(LoadError::Model(vec![
                Diagnostic::new(file, "-", "no such workflow file")
                    .help("give the path of a .k file, e.g. workflows/quickstart.k"),
            ]));
        }
        let absolute = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
        source_of(self.eval(&absolute)?, file)
    }

    /// Evaluate an inventory file (its `inventory` value: servers and
    /// groups) or a workflow file (its servers and groups), as a source
    /// whose workflow has no operations: what `drover inventory` and
    /// `drover ping` work on.
    pub fn load_inventory(&self, file: &Path) -> Result<Source, LoadError> {
        if !file.is_file() {
            return Err(LoadError::Model(vec![Diagnostic::new(file, "-", "no such file").help(
                "give the path of an inventory or workflow .k file, e.g. workflows/inventory/fleet.k",
            )]));
        }
        let absolute = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
        let value = self.eval(&absolute)?;
        if value.get("inventory").is_none() && value.get("workflow").is_some() {
            return Ok(Source {
                file: file.to_path_buf(),
                workflow: workflow_of(value, file)?,
            });
        }
        let inventory: InventoryDef = take(
            value,
            "inventory",
            file,
            "Inventory",
            "inventory = drover.Inventory { servers = [...], groups = [...] } (or a workflow file)",
        )?;
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "inventory".into());
        let workflow: Workflow = serde_json::from_value(serde_json::json!({
            "name": name,
            "operations": [],
            "servers": inventory.servers,
            "groups": inventory.groups,
        }))
        .map_err(|e| LoadError::Model(vec![Diagnostic::new(file, "inventory", e.to_string())]))?;
        Ok(Source {
            file: file.to_path_buf(),
            workflow,
        })
    }

    /// Evaluate every provider and taskserv declaration of the home.
    pub fn load_catalog(&self) -> Result<Catalog, LoadError> {
        let mut catalog = Catalog::default();
        let mut kcl = Vec::new();
        let mut model = Vec::new();
        for (name, decl_file) in declarations(&self.home.providers()) {
            match self.load_decl::<ProviderDecl>(&name, &decl_file, "ProviderDependencies") {
                Ok(mut p) => {
                    p.origin = decl_file;
                    catalog.providers.insert(name, p);
                }
                Err(LoadError::Kcl(d)) => kcl.extend(d),
                Err(LoadError::Model(d)) => model.extend(d),
                Err(e) => return Err(e),
            }
        }
        for (name, decl_file) in declarations(&self.home.taskservs()) {
            match self.load_decl::<TaskservDecl>(&name, &decl_file, "TaskservDependencies") {
                Ok(mut t) => {
                    let dir = self.home.taskservs().join(&name).join("scripts");
                    t.scripts = Script::ALL
                        .into_iter()
                        .filter(|s| dir.join(s.file_name()).is_file())
                        .collect();
                    t.origin = decl_file;
                    catalog.taskservs.insert(name, t);
                }
                Err(LoadError::Kcl(d)) => kcl.extend(d),
                Err(LoadError::Model(d)) => model.extend(d),
                Err(e) => return Err(e),
            }
        }
        if !kcl.is_empty() {
            return Err(LoadError::Kcl(kcl));
        }
        if !model.is_empty() {
            return Err(LoadError::Model(model));
        }
        Ok(catalog)
    }

    fn load_decl<T: DeserializeOwned + Named>(&self, folder: &str, file: &Path, schema: &str) -> Result<T, LoadError> {
        let value = self.eval(file)?;
        let decl: T = take(
            value,
            "dependencies",
            file,
            schema,
            &format!("dependencies = drover.{schema} {{ ... }}"),
        )?;
        if decl.name() != folder {
            return Err(LoadError::Model(vec![
                Diagnostic::new(
                    file,
                    "dependencies.name",
                    format!("declares name \"{}\" in folder \"{folder}\"", decl.name()),
                )
                .help(format!("set name = \"{folder}\" or rename the folder"))
                .at(decl.name()),
            ]));
        }
        Ok(decl)
    }

    /// Evaluate any `.k` file (with the home's schemas as `drover`) to its
    /// value, the engine's type markers removed: what `drover serve
    /// --notifications FILE.k` reads.
    pub fn load_value(&self, file: &Path) -> Result<serde_json::Value, LoadError> {
        if !file.is_file() {
            return Err(LoadError::Model(vec![Diagnostic::new(file, "-", "no such file")]));
        }
        let absolute = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
        let mut value = self.eval(&absolute)?;
        strip_types(&mut value);
        Ok(value)
    }

    fn eval(&self, file: &Path) -> Result<serde_json::Value, LoadError> {
        self.engine.eval_file(file, &self.packages()).map_err(|e| match e {
            KclError::Eval(d) => LoadError::Kcl(d),
            other => LoadError::Engine(other),
        })
    }
}

/// Remove the engine's "_type" markers before deserialising.
fn strip_types(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("_type");
            map.values_mut().for_each(strip_types);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_types),
        _ => {}
    }
}

/// Declarations have a `name` that must match their folder.
trait Named {
    fn name(&self) -> &str;
}

impl Named for ProviderDecl {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for TaskservDecl {
    fn name(&self) -> &str {
        &self.name
    }
}

/// The model of an evaluated workflow file: its top-level values
/// (`value`, as the engine gives them, or as a KCL worker hands them back:
/// `{"workflow": ...}`) as the workflow of `file`, whose secrets files
/// and age key must exist (relative to `file`).
pub fn source_of(value: serde_json::Value, file: &Path) -> Result<Source, LoadError> {
    let workflow = workflow_of(value, file)?;
    let missing = missing_secrets(file, &workflow);
    if !missing.is_empty() {
        return Err(LoadError::Model(missing));
    }
    Ok(Source {
        file: file.to_path_buf(),
        workflow,
    })
}

/// The `workflow` value of an evaluated workflow file.
fn workflow_of(value: serde_json::Value, file: &Path) -> Result<Workflow, LoadError> {
    take(
        value,
        "workflow",
        file,
        "WorkflowDef",
        "workflow = drover.WorkflowDef { ... }",
    )
}

/// The secrets files and age key a workflow names that do not exist
/// (relative to the workflow file): a run could not decrypt them, so the
/// workflow is not valid.
fn missing_secrets(file: &Path, workflow: &Workflow) -> Vec<Diagnostic> {
    let Some(sp) = &workflow.secrets else {
        return Vec::new();
    };
    let base = file.parent().unwrap_or(Path::new(""));
    let mut out = Vec::new();
    for (i, f) in sp.files.iter().enumerate() {
        if !base.join(f).is_file() {
            out.push(
                Diagnostic::new(
                    file,
                    format!("secrets.files[{i}]"),
                    format!(
                        "secrets file {f} does not exist (looked for {})",
                        base.join(f).display()
                    ),
                )
                .help("paths are relative to the workflow file; create it with `sops --encrypt --age <recipient>`")
                .at(f),
            );
        }
    }
    if let Some(k) = &sp.age_key_file
        && !base.join(k).is_file()
    {
        out.push(
            Diagnostic::new(
                file,
                "secrets.age_key_file",
                format!(
                    "age key file {k} does not exist (looked for {})",
                    base.join(k).display()
                ),
            )
            .help("paths are relative to the workflow file; make one with `age-keygen -o <file>`")
            .at(k),
        );
    }
    out
}

/// `<dir>/<name>/kcl/dependencies.k` for every folder of `dir`, by name.
fn declarations(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: BTreeSet<(String, PathBuf)> = BTreeSet::new();
    for e in entries.flatten() {
        let decl = e.path().join("kcl/dependencies.k");
        if decl.is_file() {
            found.insert((e.file_name().to_string_lossy().into_owned(), decl));
        }
    }
    found.into_iter().collect()
}

/// Deserialise the top-level value `key` of an evaluated file, reporting
/// the exact field that does not fit.
fn take<T: DeserializeOwned>(
    mut value: serde_json::Value,
    key: &str,
    file: &Path,
    schema: &str,
    example: &str,
) -> Result<T, LoadError> {
    let Some(mut v) = value.get_mut(key).map(serde_json::Value::take) else {
        return Err(LoadError::Model(vec![
            Diagnostic::new(file, key, format!("the file defines no top-level `{key}` value"))
                .help(format!("write {example}")),
        ]));
    };
    // A plain dict would skip every check: block of the schemas.
    let ty = v
        .get("_type")
        .and_then(|t| t.as_str())
        .unwrap_or("a plain dict")
        .to_string();
    if ty != format!("drover.{schema}") {
        return Err(LoadError::Model(vec![
            Diagnostic::new(
                file,
                key,
                format!("`{key}` is {ty}, not a drover.{schema}, so the schema's checks do not apply"),
            )
            .help(format!("write {example}"))
            .at(key),
        ]));
    }
    strip_types(&mut v);
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            key.to_string()
        } else {
            format!("{key}.{path}")
        };
        let inner = e.into_inner().to_string();
        LoadError::Model(vec![
            Diagnostic::new(file, field, inner).help(format!("the value must be written as {example}")),
        ])
    })
}
