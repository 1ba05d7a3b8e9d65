//! The bridge against the real engine (the kcl-lib of the project venv,
//! made by `make setup`), and against libraries that are not the engine.
//!
//! Loading is process-wide (`dlopen`, libpython `RTLD_GLOBAL`); these tests
//! are run by cargo nextest, one process per test.

use std::path::{Path, PathBuf};

use super::*;
use crate::locate::Home;

fn real_location() -> EngineLocation {
    let home = Home::discover().expect("drover home");
    EngineLocation::discover(&home).expect("the KCL engine: run `make setup`")
}

fn real_engine() -> Engine {
    Engine::load(&real_location()).expect("the project's engine loads")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn the_engine_is_the_expected_version() {
    let engine = real_engine();
    assert_eq!(engine.version().expect("version"), EXPECTED_VERSION);
    // The hint is a literal; it must name the same version.
    assert!(SETUP_HINT.contains(&format!("kcl-lib=={EXPECTED_VERSION}")));
}

#[test]
fn a_wrong_engine_version_is_an_environment_error() {
    let location = real_location();
    let err = Engine::load_expecting(&location, "0.9.9").expect_err("0.9.9 is not the engine's version");
    let KclError::Version {
        expected,
        found,
        library,
    } = &err
    else {
        panic!("expected a version error, got {err:?}");
    };
    assert_eq!(expected, "0.9.9");
    // What the real engine answered to KclService.GetVersion.
    assert_eq!(found, EXPECTED_VERSION);
    assert_eq!(library, &location.library);
    let message = err.to_string();
    for part in [
        "0.9.9",
        EXPECTED_VERSION,
        &location.library.display().to_string(),
        "make setup",
    ] {
        assert!(message.contains(part), "{part:?} not in: {message}");
    }
}

#[test]
fn a_file_that_is_not_a_shared_object_is_a_library_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = write(dir.path(), "_kcl_lib.so", "not an ELF object\n");
    let err = Engine::load(&EngineLocation {
        library: fake.clone(),
        libpython: None,
    })
    .expect_err("a text file does not load");
    assert!(
        matches!(&err, KclError::Library { library, .. } if *library == fake),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(&fake.display().to_string()), "{message}");
    assert!(message.contains("make setup"), "{message}");
}

#[test]
fn a_library_without_the_c_api_is_a_missing_symbol_error() {
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
        "/usr/lib/aarch64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
        "/usr/lib64/libc.so.6",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .expect("libc.so.6");
    let err = Engine::load(&EngineLocation {
        library: libc.clone(),
        libpython: None,
    })
    .expect_err("libc is not the engine");
    assert!(
        matches!(&err, KclError::MissingSymbol { symbol, library } if symbol == "kcl_service_new" && *library == libc),
        "{err:?}"
    );
    let message = err.to_string();
    for part in ["kcl_service_new", &libc.display().to_string(), "make setup"] {
        assert!(message.contains(part), "{part:?} not in: {message}");
    }
}

#[test]
fn a_libpython_that_does_not_load_carries_the_setup_hint() {
    let location = EngineLocation {
        libpython: Some(PathBuf::from("/nonexistent/libpython3.11.so.1.0")),
        ..real_location()
    };
    let err = Engine::load(&location).expect_err("no such libpython");
    assert!(
        matches!(&err, KclError::LibPython { libpython: Some(p), .. } if p == Path::new("/nonexistent/libpython3.11.so.1.0")),
        "{err:?}"
    );
    let message = err.to_string();
    for part in ["/nonexistent/libpython3.11.so.1.0", "make setup", "DROVER_LIBPYTHON"] {
        assert!(message.contains(part), "{part:?} not in: {message}");
    }
}

#[test]
fn a_libpython_that_was_not_found_carries_the_setup_hint() {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    assert!(
        !maps.contains("libpython"),
        "libpython is already loaded in this process: run the tests with cargo nextest (one process per test)"
    );
    let location = EngineLocation {
        libpython: None,
        ..real_location()
    };
    let err = Engine::load(&location).expect_err("the engine needs libpython");
    assert!(
        matches!(&err, KclError::LibPython { libpython: None, library, .. } if *library == location.library),
        "{err:?}"
    );
    let message = err.to_string();
    for part in ["libpython was not found", "make setup", "DROVER_LIBPYTHON"] {
        assert!(message.contains(part), "{part:?} not in: {message}");
    }
}

#[test]
fn an_engine_panic_on_an_unknown_method_is_an_engine_error_naming_the_call() {
    let engine = real_engine();
    // The engine panics on a method it does not know; it answers
    // "ERROR:<panic message>" without writing the length.
    let err = engine.call("KclService.NoSuchMethod", &[]).expect_err("unknown method");
    let KclError::Engine { call, said } = &err else {
        panic!("expected an engine error, got {err:?}");
    };
    assert_eq!(call, "KclService.NoSuchMethod");
    let said = said.as_deref().expect("the engine said something");
    assert!(said.contains("unknown method name"), "{said}");
    assert!(!said.starts_with("ERROR:"), "{said}");
    let message = err.to_string();
    assert!(message.contains("KclService.NoSuchMethod"), "{message}");
    assert!(message.contains("unknown method name"), "{message}");
}

#[test]
fn an_engine_panic_in_exec_program_is_an_engine_error_not_a_json_error() {
    let engine = real_engine();
    // Arguments that are not an ExecProgramArgs: the engine panics while
    // decoding them.
    let err = engine.call(EXEC_PROGRAM, &[0xff, 0xff, 0xff]).expect_err("undecodable");
    let KclError::Engine { call, said } = &err else {
        panic!("expected an engine error, got {err:?}");
    };
    assert_eq!(call, EXEC_PROGRAM);
    assert!(said.as_deref().is_some_and(|s| s.contains("DecodeError")), "{said:?}");
    assert!(!err.to_string().contains("EOF"), "{err}");

    // The engine still works afterwards.
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = write(dir.path(), "ok.k", "a = {b = 1}\n");
    let value = engine.eval_file(&ok, &[]).expect("evaluates");
    assert_eq!(value["a"]["b"], 1);
}

#[test]
fn a_syntax_error_is_an_eval_error_with_its_location() {
    let engine = real_engine();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "syntax.k", "a = 1 +\n");
    let err = engine.eval_file(&file, &[]).expect_err("syntax error");
    let KclError::Eval(diagnostics) = &err else {
        panic!("expected evaluation errors, got {err:?}");
    };
    let first = &diagnostics[0];
    assert_eq!(first.kind, "InvalidSyntax");
    let location = first.location.as_ref().expect("located");
    assert!(location.file.ends_with("syntax.k"), "{location}");
    assert_eq!((location.line, location.column), (1, 7));
}

#[test]
fn a_failed_check_is_an_eval_error_with_its_message() {
    let engine = real_engine();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "check.k",
        "schema S:\n    x: int\n    check:\n        x > 1, \"x too small\"\ns = S {x = 0}\n",
    );
    let err = engine.eval_file(&file, &[]).expect_err("check fails");
    let KclError::Eval(diagnostics) = &err else {
        panic!("expected evaluation errors, got {err:?}");
    };
    let text = diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("x too small"), "{text}");
}

#[test]
fn a_reply_without_length_or_text_says_the_engine_returned_nothing() {
    // The classification of what the engine returned; the real engine
    // always says something when it panics (tests above).
    let err = read_reply(GET_VERSION, Vec::new(), false).expect_err("nothing");
    assert!(
        matches!(&err, KclError::Engine { call, said: None } if call == GET_VERSION),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("returned nothing from KclService.GetVersion"),
        "{message}"
    );
    assert_eq!(
        read_reply(EXEC_PROGRAM, b"ERROR:bad".to_vec(), true).expect("a method error"),
        Reply::Error("bad".into())
    );
}
