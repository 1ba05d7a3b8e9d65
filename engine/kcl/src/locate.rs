//! Finding drover's home (schemas, providers, taskservs) and the KCL engine.

use std::path::{Path, PathBuf};

use crate::engine::KclError;

/// The directory holding `schemas/`, `providers/` and `taskservs/`.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `DROVER_HOME` when set, else the source tree this binary was built
    /// from (so a `cargo build` works without configuration).
    pub fn discover() -> Result<Home, KclError> {
        let root = match std::env::var_os("DROVER_HOME") {
            Some(p) => PathBuf::from(p),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
        };
        Home::at(&root)
    }

    /// The home at `root`, which must hold schemas/kcl.mod.
    pub fn at(root: &Path) -> Result<Home, KclError> {
        let root = root
            .canonicalize()
            .map_err(|e| KclError::Home(format!("drover home {} is not readable: {e}", root.display())))?;
        if !root.join("schemas/kcl.mod").is_file() {
            return Err(KclError::Home(format!("{} has no schemas/kcl.mod", root.display())));
        }
        Ok(Home { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The KCL schemas package.
    pub fn schemas(&self) -> PathBuf {
        self.root.join("schemas")
    }

    /// Where provider folders live.
    pub fn providers(&self) -> PathBuf {
        self.root.join("providers")
    }

    /// Where taskserv folders live.
    pub fn taskservs(&self) -> PathBuf {
        self.root.join("taskservs")
    }
}

/// Where the engine library (and the libpython it links against) are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineLocation {
    /// kcl_lib's `_kcl_lib*.so`.
    pub library: PathBuf,
    /// libpython, loaded first to satisfy the library's Python symbols.
    pub libpython: Option<PathBuf>,
}

impl EngineLocation {
    /// `DROVER_KCL_LIB` (and `DROVER_LIBPYTHON`) when set; else the
    /// kcl-lib package of the project venv (`DROVER_VENV`, default
    /// `<home>/.venv`).
    pub fn discover(home: &Home) -> Result<EngineLocation, KclError> {
        let libpython_env = std::env::var_os("DROVER_LIBPYTHON").map(PathBuf::from);
        if let Some(lib) = std::env::var_os("DROVER_KCL_LIB") {
            let library = PathBuf::from(lib);
            let libpython = match libpython_env {
                Some(p) => Some(p),
                None => python_of_library(&library).and_then(|(venv, minor)| libpython(&venv, &minor)),
            };
            return Ok(EngineLocation { library, libpython });
        }
        let venv = std::env::var_os("DROVER_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.root().join(".venv"));
        let (library, minor) = find_library(&venv).ok_or_else(|| KclError::NotInstalled { venv: venv.clone() })?;
        let libpython = libpython_env.or_else(|| libpython(&venv, &minor));
        Ok(EngineLocation { library, libpython })
    }
}

/// `<venv>/lib/python3.X/site-packages/kcl_lib/_kcl_lib*.so` and "3.X".
fn find_library(venv: &Path) -> Option<(PathBuf, String)> {
    let lib = venv.join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python3"))
        })
        .collect();
    pythons.sort();
    for py in pythons {
        let pkg = py.join("site-packages/kcl_lib");
        let Ok(entries) = std::fs::read_dir(&pkg) else { continue };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("_kcl_lib") && name.ends_with(".so") {
                let minor = py
                    .file_name()?
                    .to_string_lossy()
                    .trim_start_matches("python")
                    .to_string();
                return Some((e.path(), minor));
            }
        }
    }
    None
}

/// For a library inside a venv, the venv and its Python version.
fn python_of_library(library: &Path) -> Option<(PathBuf, String)> {
    // .../<venv>/lib/python3.X/site-packages/kcl_lib/_kcl_lib.so
    let py = library.ancestors().nth(3)?;
    let minor = py
        .file_name()?
        .to_string_lossy()
        .trim_start_matches("python")
        .to_string();
    Some((py.parent()?.parent()?.to_path_buf(), minor))
}

/// The shared libpython of the interpreter a venv was made from: its
/// pyvenv.cfg names the interpreter's bin directory, whose sibling lib/
/// holds it (pyenv, python.org builds); Debian keeps it in the multiarch
/// directory.
fn libpython(venv: &Path, minor: &str) -> Option<PathBuf> {
    let soname = format!("libpython{minor}.so.1.0");
    let mut candidates = Vec::new();
    if let Ok(cfg) = std::fs::read_to_string(venv.join("pyvenv.cfg")) {
        for line in cfg.lines() {
            if let Some((key, value)) = line.split_once('=')
                && key.trim() == "home"
            {
                let bin = Path::new(value.trim());
                if let Some(prefix) = bin.parent() {
                    candidates.push(prefix.join("lib").join(&soname));
                }
            }
        }
    }
    for dir in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
        "/usr/local/lib",
    ] {
        candidates.push(Path::new(dir).join(&soname));
    }
    candidates.into_iter().find(|p| p.is_file())
}
