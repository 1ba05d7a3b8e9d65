//! The official KCL engine, loaded in-process.
//!
//! The `kcl-lib` package on PyPI carries the engine as a shared object that
//! exports the engine's C API (`kcl_service_new`,
//! `kcl_service_call_with_length`, `kcl_service_free_string`). We load that
//! object with `dlopen` and call the `KclService.ExecProgram` method with a
//! protobuf-encoded request, exactly as the engine's own Go and C bindings
//! do. The object is built as a Python extension module, so it has
//! unresolved references to libpython for its (unused here) Python entry
//! point; libpython is loaded first with `RTLD_GLOBAL` to satisfy them. The
//! interpreter is never initialised and no Python code runs.
//!
//! At load the engine is asked its version (`KclService.GetVersion`); the
//! messages here are declared by hand for [`EXPECTED_VERSION`] only, so any
//! other version is refused ([`KclError::Version`]).
//!
//! When the engine panics (an unknown method, arguments it cannot decode, a
//! bug) it returns `ERROR:<message>` without writing the reply length; that
//! is read as text and reported as [`KclError::Engine`] with the method
//! name. A method's own error (`ERROR:` with its length written) is, for
//! `ExecProgram`, the program's errors ([`KclError::Eval`]).
//!
//! Why in-process: a `python -c` subprocess costs ~200 ms per evaluation
//! (interpreter start and module import), the C API ~5 ms (see
//! BENCHMARKS.md). The server evaluates every submitted workflow, so that
//! difference is the submission throughput.

use std::ffi::{CStr, CString, c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_LAZY, RTLD_LOCAL, Symbol};
use prost::Message;

use crate::diagnostics::{KclDiagnostic, parse_kcl_errors};
use crate::locate::EngineLocation;

/// The kcl-lib version the messages below (and the rendered error text
/// that `diagnostics` parses) were written and checked against; the
/// project's requirements.txt pins it and `make setup` installs it. The pin
/// is exact: the C API and the error rendering have changed between kcl-lib
/// releases (0.10 renamed `kclvm_*` to `kcl_*` and added the argument
/// length), and no other release has been checked.
pub const EXPECTED_VERSION: &str = "0.13.2";

/// What to do about an engine that is missing, broken or of another version.
pub(crate) const SETUP_HINT: &str = "run `make setup` (it installs kcl-lib==0.13.2 into .venv), or set DROVER_KCL_LIB to the _kcl_lib*.so of kcl-lib 0.13.2";

/// Errors of the KCL bridge.
#[derive(Debug, thiserror::Error)]
pub enum KclError {
    /// Drover's home (the directory holding `schemas/`) was not found.
    #[error("{0}; set DROVER_HOME to the directory holding schemas/")]
    Home(String),
    /// kcl-lib is not installed where the engine was looked for.
    #[error("kcl-lib is not installed in {}; {SETUP_HINT}", .venv.display())]
    NotInstalled {
        /// The venv that was searched.
        venv: PathBuf,
    },
    /// The engine library exists but cannot be loaded (not a shared object,
    /// unreadable, wrong architecture).
    #[error("cannot load the KCL engine library {}: {reason}; {SETUP_HINT}", .library.display())]
    Library {
        /// The file given as the engine library.
        library: PathBuf,
        /// The loader's reason.
        reason: String,
    },
    /// libpython, which the engine library references, was not found or
    /// cannot be loaded.
    #[error("{}; run `make setup` (it makes .venv from a Python with a shared libpython), or set DROVER_LIBPYTHON to the libpython3.X.so.1.0 of the interpreter .venv was made from", libpython_problem(.libpython.as_deref(), .library, .reason))]
    LibPython {
        /// The libpython tried, when one was found.
        libpython: Option<PathBuf>,
        /// The engine library that needs it.
        library: PathBuf,
        /// The loader's reason.
        reason: String,
    },
    /// The library loads but does not export a function of the engine's C
    /// API: it is not kcl-lib's engine library.
    #[error("{} does not export `{symbol}` of the KCL engine's C API, so it is not kcl-lib's engine library; {SETUP_HINT}", .library.display())]
    MissingSymbol {
        /// The missing function.
        symbol: String,
        /// The library that lacks it.
        library: PathBuf,
    },
    /// The engine is not the version the bridge was written against.
    #[error("the KCL engine {} is version {found}, but drover is written against kcl-lib {expected}; {SETUP_HINT}", .library.display())]
    Version {
        /// The version drover needs.
        expected: String,
        /// The version the engine reported (or why it reported none).
        found: String,
        /// The engine library.
        library: PathBuf,
    },
    /// The engine failed inside a call (it panicked, or answered nothing):
    /// a fault of the engine, not of the KCL program.
    #[error("{}", engine_problem(.call, .said.as_deref()))]
    Engine {
        /// The method called, e.g. `KclService.ExecProgram`.
        call: String,
        /// What the engine said, without its `ERROR:` prefix; `None` when
        /// it returned nothing.
        said: Option<String>,
    },
    /// The engine evaluated the program and reported errors.
    #[error("KCL evaluation failed")]
    Eval(Vec<KclDiagnostic>),
    /// The engine answered something this bridge does not understand.
    #[error("unexpected answer from the KCL engine to {call}: {problem}; {SETUP_HINT}")]
    Protocol {
        /// The method called.
        call: String,
        /// What is wrong with the answer.
        problem: String,
    },
}

fn libpython_problem(libpython: Option<&Path>, library: &Path, reason: &str) -> String {
    match libpython {
        Some(path) => format!(
            "cannot load libpython {} (the KCL engine {} needs its symbols): {reason}",
            path.display(),
            library.display()
        ),
        None => format!(
            "libpython was not found (looked for the venv's pyvenv.cfg `home`, then the system library directories), and the KCL engine {} needs its symbols: {reason}",
            library.display()
        ),
    }
}

fn engine_problem(call: &str, said: Option<&str>) -> String {
    let what = match said {
        Some(text) => format!("the KCL engine failed in {call} and said: {text}"),
        None => format!("the KCL engine returned nothing from {call}"),
    };
    format!(
        "{what}; this is a fault of the engine, not of the KCL program: run `make setup` to reinstall kcl-lib {EXPECTED_VERSION}, and if that does not help, report it with the file being evaluated"
    )
}

/// A package the program may `import` by name, resolved to a directory.
#[derive(Debug, Clone)]
pub struct ExternalPackage {
    /// The name used in `import NAME`.
    pub name: String,
    /// The directory holding the package's kcl.mod.
    pub path: PathBuf,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExternalPkg {
    #[prost(string, tag = "1")]
    pkg_name: String,
    #[prost(string, tag = "2")]
    pkg_path: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExecProgramArgs {
    #[prost(string, tag = "1")]
    work_dir: String,
    #[prost(string, repeated, tag = "2")]
    k_filename_list: Vec<String>,
    #[prost(bool, tag = "6")]
    disable_yaml_result: bool,
    #[prost(bool, tag = "14")]
    include_schema_type_path: bool,
    #[prost(message, repeated, tag = "13")]
    external_pkgs: Vec<ExternalPkg>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExecProgramResult {
    #[prost(string, tag = "1")]
    json_result: String,
    #[prost(string, tag = "4")]
    err_message: String,
}

/// `GetVersionArgs`: no fields.
#[derive(Clone, PartialEq, prost::Message)]
struct GetVersionArgs {}

/// `GetVersionResult` (version, checksum, git_sha, version_info; only the
/// version is used).
#[derive(Clone, PartialEq, prost::Message)]
struct GetVersionResult {
    #[prost(string, tag = "1")]
    version: String,
}

const EXEC_PROGRAM: &str = "KclService.ExecProgram";
const GET_VERSION: &str = "KclService.GetVersion";

type ServiceNew = unsafe extern "C" fn(u64) -> *mut c_void;
type ServiceCall = unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char, usize, *mut usize) -> *const c_char;
type FreeString = unsafe extern "C" fn(*const c_char);
type ServiceDelete = unsafe extern "C" fn(*mut c_void);

/// The engine's own documentation says its C API is not thread safe; every
/// call in the process goes through this lock.
static CALL_LOCK: Mutex<()> = Mutex::new(());

/// A loaded KCL engine.
pub struct Engine {
    service: *mut c_void,
    call: ServiceCall,
    free: FreeString,
    delete: ServiceDelete,
    library_path: PathBuf,
    // Kept alive for as long as `call` and `free` may be used; dropped last.
    _library: Library,
    _libpython: Option<Library>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("library", &self.library_path)
            .finish_non_exhaustive()
    }
}

// SAFETY: the service handle is only used under CALL_LOCK.
unsafe impl Send for Engine {}
// SAFETY: as above; &Engine only ever calls through CALL_LOCK.
unsafe impl Sync for Engine {}

/// What a call returned.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// The protobuf-encoded result.
    Message(Vec<u8>),
    /// The method's own error (for ExecProgram: the program's errors), the
    /// engine's rendered text without its `ERROR:` prefix.
    Error(String),
}

impl Engine {
    /// Load the engine found at `location` and check that it is kcl-lib
    /// [`EXPECTED_VERSION`].
    pub fn load(location: &EngineLocation) -> Result<Engine, KclError> {
        Engine::load_expecting(location, EXPECTED_VERSION)
    }

    /// [`Engine::load`], requiring the engine to report version `expected`.
    pub(crate) fn load_expecting(location: &EngineLocation, expected: &str) -> Result<Engine, KclError> {
        let libpython = match &location.libpython {
            Some(path) => Some(
                open(path, RTLD_LAZY | RTLD_GLOBAL).map_err(|reason| KclError::LibPython {
                    libpython: Some(path.clone()),
                    library: location.library.clone(),
                    reason,
                })?,
            ),
            None => None,
        };
        let library = open(&location.library, RTLD_LAZY | RTLD_LOCAL).map_err(|reason| {
            // The engine is a Python extension module: without libpython its
            // references to Python's symbols (e.g. _Py_Dealloc) cannot be bound.
            if location.libpython.is_none() && lacks_python(&reason) {
                KclError::LibPython {
                    libpython: None,
                    library: location.library.clone(),
                    reason,
                }
            } else {
                KclError::Library {
                    library: location.library.clone(),
                    reason,
                }
            }
        })?;
        let path = &location.library;
        // SAFETY: the symbols are the engine's exported C API with these
        // signatures (kcl-lang/kcl, crates/api/src/service/capi.rs).
        let (new, call, free, delete) = unsafe {
            let new: Symbol<ServiceNew> = symbol(&library, path, "kcl_service_new")?;
            let call: Symbol<ServiceCall> = symbol(&library, path, "kcl_service_call_with_length")?;
            let free: Symbol<FreeString> = symbol(&library, path, "kcl_service_free_string")?;
            let delete: Symbol<ServiceDelete> = symbol(&library, path, "kcl_service_delete")?;
            (*new, *call, *free, *delete)
        };
        // SAFETY: 0 = no plugin agent.
        let service = unsafe { new(0) };
        if service.is_null() {
            return Err(KclError::Engine {
                call: "kcl_service_new".into(),
                said: None,
            });
        }
        let engine = Engine {
            service,
            call,
            free,
            delete,
            library_path: location.library.clone(),
            _library: library,
            _libpython: libpython,
        };
        let found = match engine.version() {
            Ok(found) => found,
            // An engine without GetVersion (it panics on an unknown method)
            // is not the expected one either.
            Err(KclError::Engine { said: Some(said), .. }) => format!("unknown ({GET_VERSION} failed: {said})"),
            Err(e) => return Err(e),
        };
        if found != expected {
            return Err(KclError::Version {
                expected: expected.to_string(),
                found,
                library: location.library.clone(),
            });
        }
        Ok(engine)
    }

    /// The version the engine reports (`KclService.GetVersion`), e.g.
    /// "0.13.2".
    pub fn version(&self) -> Result<String, KclError> {
        let bytes = self.call_ok(GET_VERSION, &GetVersionArgs {}.encode_to_vec())?;
        let result = GetVersionResult::decode(bytes.as_slice()).map_err(|e| KclError::Protocol {
            call: GET_VERSION.into(),
            problem: format!("cannot decode GetVersionResult: {e}"),
        })?;
        if result.version.is_empty() {
            return Err(KclError::Engine {
                call: GET_VERSION.into(),
                said: None,
            });
        }
        Ok(result.version)
    }

    /// Evaluate `file` and return the program's top-level values as JSON.
    pub fn eval_file(&self, file: &Path, packages: &[ExternalPackage]) -> Result<serde_json::Value, KclError> {
        let work_dir = file.parent().map(|p| p.display().to_string()).unwrap_or_default();
        let args = ExecProgramArgs {
            work_dir,
            k_filename_list: vec![file.display().to_string()],
            disable_yaml_result: true,
            // Schema instances carry "_type": the loader uses it to refuse a
            // plain dict where a schema (and so its checks) is required.
            include_schema_type_path: true,
            external_pkgs: packages
                .iter()
                .map(|p| ExternalPkg {
                    pkg_name: p.name.clone(),
                    pkg_path: p.path.display().to_string(),
                })
                .collect(),
        };
        let bytes = match self.call(EXEC_PROGRAM, &args.encode_to_vec())? {
            Reply::Message(bytes) => bytes,
            // Failures before evaluation (parse errors, missing files,
            // imports) are the program's errors.
            Reply::Error(text) => return Err(KclError::Eval(parse_kcl_errors(&text))),
        };
        let result = ExecProgramResult::decode(bytes.as_slice()).map_err(|e| KclError::Protocol {
            call: EXEC_PROGRAM.into(),
            problem: format!("cannot decode ExecProgramResult: {e}"),
        })?;
        if !result.err_message.is_empty() {
            return Err(KclError::Eval(parse_kcl_errors(&result.err_message)));
        }
        if result.json_result.is_empty() {
            // Even an empty program evaluates to "{}".
            return Err(KclError::Engine {
                call: EXEC_PROGRAM.into(),
                said: None,
            });
        }
        serde_json::from_str(&result.json_result).map_err(|e| KclError::Protocol {
            call: EXEC_PROGRAM.into(),
            problem: format!("its JSON result does not parse: {e}"),
        })
    }

    /// Call `method`, taking a method error as the engine's failure.
    fn call_ok(&self, method: &str, args: &[u8]) -> Result<Vec<u8>, KclError> {
        match self.call(method, args)? {
            Reply::Message(bytes) => Ok(bytes),
            Reply::Error(text) => Err(KclError::Engine {
                call: method.into(),
                said: Some(text),
            }),
        }
    }

    /// Call `method` with the protobuf-encoded `args`.
    ///
    /// The engine answers in one of three ways (capi.rs):
    /// - the result message, with its length written to `len`;
    /// - the method's error as `ERROR:<text>`, length written;
    /// - when the engine panics (unknown method, undecodable arguments, a
    ///   bug), `ERROR:<panic message>` as a NUL-terminated string with the
    ///   length left untouched, so 0 here. That is an [`KclError::Engine`].
    fn call(&self, method: &str, args: &[u8]) -> Result<Reply, KclError> {
        let c_method = CString::new(method).map_err(|e| KclError::Protocol {
            call: method.into(),
            problem: format!("the method name is not a C string: {e}"),
        })?;
        let _guard = CALL_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut len: usize = 0;
        // SAFETY: `service` came from kcl_service_new; `args` is a valid
        // buffer of args.len() bytes; the engine writes the reply length to
        // `len` (or leaves it at 0 after a panic) and returns a
        // NUL-terminated buffer (CString::into_raw) that we own until
        // kcl_service_free_string.
        let (bytes, written) = unsafe {
            let ptr = (self.call)(
                self.service,
                c_method.as_ptr(),
                args.as_ptr().cast(),
                args.len(),
                &mut len,
            );
            if ptr.is_null() {
                return Err(KclError::Engine {
                    call: method.into(),
                    said: None,
                });
            }
            let bytes = if len == 0 {
                CStr::from_ptr(ptr).to_bytes().to_vec()
            } else {
                std::slice::from_raw_parts(ptr.cast::<u8>(), len).to_vec()
            };
            (self.free)(ptr);
            (bytes, len)
        };
        read_reply(method, bytes, written != 0)
    }
}

/// Classify a reply: `bytes` as returned, `length_written` whether the
/// engine wrote the reply length (it does not after a panic).
fn read_reply(method: &str, bytes: Vec<u8>, length_written: bool) -> Result<Reply, KclError> {
    let error_text = bytes
        .strip_prefix(b"ERROR:")
        .map(|text| String::from_utf8_lossy(text).trim().to_string());
    if !length_written {
        let said = error_text.or_else(|| {
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            (!text.is_empty()).then_some(text)
        });
        return Err(KclError::Engine {
            call: method.into(),
            said: said.filter(|s| !s.is_empty()),
        });
    }
    Ok(match error_text {
        Some(text) => Reply::Error(text),
        None => Reply::Message(bytes),
    })
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _guard = CALL_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: `service` came from kcl_service_new and is not used again;
        // the library is still loaded (fields drop after this body).
        unsafe { (self.delete)(self.service) };
    }
}

/// Whether a loader message is about an undefined Python symbol.
fn lacks_python(reason: &str) -> bool {
    reason
        .split_once("undefined symbol: ")
        .is_some_and(|(_, name)| name.trim_start_matches('_').starts_with("Py"))
}

/// `dlopen` `path`; the loader's own message (`dlerror`) on failure.
fn open(path: &Path, flags: i32) -> Result<Library, String> {
    // SAFETY: loading a shared object runs its initialisers; these are the
    // engine's and libpython's, which have no initialisers with side effects
    // beyond their own state.
    unsafe { Library::open(Some(path), flags) }.map_err(|e| match std::error::Error::source(&e) {
        // libloading's own text is only "dlopen failed".
        Some(source) => source.to_string(),
        None => e.to_string(),
    })
}

/// # Safety
/// `T` must be the symbol's real type.
unsafe fn symbol<T>(library: &Library, path: &Path, name: &str) -> Result<Symbol<T>, KclError> {
    // SAFETY: forwarded to the caller.
    unsafe { library.get(name.as_bytes()) }.map_err(|_| KclError::MissingSymbol {
        symbol: name.to_string(),
        library: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests;
