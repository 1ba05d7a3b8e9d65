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
//! Why in-process: a `python -c` subprocess costs ~200 ms per evaluation
//! (interpreter start and module import), the C API ~5 ms (see
//! BENCHMARKS.md). The server evaluates every submitted workflow, so that
//! difference is the submission throughput.

use std::ffi::{CString, c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_LAZY, RTLD_LOCAL, Symbol};
use prost::Message;

use crate::diagnostics::{KclDiagnostic, parse_kcl_errors};
use crate::locate::EngineLocation;

/// Errors of the KCL bridge.
#[derive(Debug, thiserror::Error)]
pub enum KclError {
    /// The engine library could not be found or loaded.
    #[error("cannot load the KCL engine: {0}")]
    Load(String),
    /// The engine evaluated the program and reported errors.
    #[error("KCL evaluation failed")]
    Eval(Vec<KclDiagnostic>),
    /// The engine answered something this bridge does not understand.
    #[error("unexpected answer from the KCL engine: {0}")]
    Protocol(String),
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
    // Kept alive for as long as `call` and `free` may be used; dropped last.
    _library: Library,
    _libpython: Option<Library>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

// SAFETY: the service handle is only used under CALL_LOCK.
unsafe impl Send for Engine {}
// SAFETY: as above; &Engine only ever calls through CALL_LOCK.
unsafe impl Sync for Engine {}

impl Engine {
    /// Load the engine found at `location`.
    pub fn load(location: &EngineLocation) -> Result<Engine, KclError> {
        let libpython = match &location.libpython {
            Some(path) => Some(open(path, RTLD_LAZY | RTLD_GLOBAL)?),
            None => None,
        };
        let library = open(&location.library, RTLD_LAZY | RTLD_LOCAL)?;
        // SAFETY: the symbols are the engine's exported C API with these
        // signatures (kcl-lang/lib, crates/api/src/service/capi.rs).
        let (new, call, free, delete) = unsafe {
            let new: Symbol<ServiceNew> = symbol(&library, b"kcl_service_new\0")?;
            let call: Symbol<ServiceCall> = symbol(&library, b"kcl_service_call_with_length\0")?;
            let free: Symbol<FreeString> = symbol(&library, b"kcl_service_free_string\0")?;
            let delete: Symbol<ServiceDelete> = symbol(&library, b"kcl_service_delete\0")?;
            (*new, *call, *free, *delete)
        };
        // SAFETY: 0 = no plugin agent.
        let service = unsafe { new(0) };
        if service.is_null() {
            return Err(KclError::Load("kcl_service_new returned null".into()));
        }
        Ok(Engine {
            service,
            call,
            free,
            delete,
            _library: library,
            _libpython: libpython,
        })
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
        let reply = self.call("KclService.ExecProgram", &args.encode_to_vec())?;
        let result = ExecProgramResult::decode(reply.as_slice())
            .map_err(|e| KclError::Protocol(format!("cannot decode ExecProgramResult: {e}")))?;
        if !result.err_message.is_empty() {
            return Err(KclError::Eval(parse_kcl_errors(&result.err_message)));
        }
        serde_json::from_str(&result.json_result)
            .map_err(|e| KclError::Protocol(format!("the engine's JSON does not parse: {e}")))
    }

    fn call(&self, method: &str, args: &[u8]) -> Result<Vec<u8>, KclError> {
        let method = CString::new(method).map_err(|e| KclError::Protocol(e.to_string()))?;
        let _guard = CALL_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut len: usize = 0;
        // SAFETY: `service` came from kcl_service_new; `args` is a valid
        // buffer of args.len() bytes; the engine writes the reply length to
        // `len` and returns a buffer we own until kcl_service_free_string.
        let reply = unsafe {
            let ptr = (self.call)(
                self.service,
                method.as_ptr(),
                args.as_ptr().cast(),
                args.len(),
                &mut len,
            );
            if ptr.is_null() {
                return Err(KclError::Protocol("the engine returned no reply".into()));
            }
            let bytes = std::slice::from_raw_parts(ptr.cast::<u8>(), len).to_vec();
            (self.free)(ptr);
            bytes
        };
        // Failures that happen before evaluation (parse errors, missing
        // files) come back as "ERROR:" followed by the engine's text.
        if let Some(text) = reply.strip_prefix(b"ERROR:") {
            return Err(KclError::Eval(parse_kcl_errors(&String::from_utf8_lossy(text))));
        }
        Ok(reply)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _guard = CALL_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: `service` came from kcl_service_new and is not used again;
        // the library is still loaded (fields drop after this body).
        unsafe { (self.delete)(self.service) };
    }
}

fn open(path: &Path, flags: i32) -> Result<Library, KclError> {
    // SAFETY: loading a shared object runs its initialisers; these are the
    // engine's and libpython's, which have no initialisers with side effects
    // beyond their own state.
    unsafe { Library::open(Some(path), flags) }.map_err(|e| KclError::Load(format!("{}: {e}", path.display())))
}

/// # Safety
/// `T` must be the symbol's real type.
unsafe fn symbol<T>(library: &Library, name: &[u8]) -> Result<Symbol<T>, KclError> {
    // SAFETY: forwarded to the caller.
    unsafe { library.get(name) }.map_err(|e| {
        KclError::Load(format!(
            "{} is missing from the engine library: {e}",
            String::from_utf8_lossy(name.strip_suffix(b"\0").unwrap_or(name))
        ))
    })
}
