//! Templates: a taskserv's `templates/*.j2` rendered per server (Jinja2
//! syntax, minijinja), strict about undefined values.
//!
//! In scope: `vars` (workflow variables), `server` (hostname, address,
//! provider, plan, zone, tags, groups, taskservs), `secrets` (the decrypted
//! SOPS tree) and `taskserv` (its name). Every template of a run is
//! rendered once before the run starts, so a mistake in any of them stops
//! the run before anything changes; the files a task sees are rendered
//! again, in memory, when it runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use drover_core::model::Server;
use minijinja::{Environment, UndefinedBehavior, Value};

/// A template that does not render.
#[derive(Debug, Clone, thiserror::Error)]
#[error("template {}{}: {message}", template.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct TemplateError {
    /// The template file.
    pub template: PathBuf,
    /// The line, when the engine knows it.
    pub line: Option<usize>,
    /// What is wrong (names the undefined variable or the syntax error).
    pub message: String,
}

/// A rendered template: the file name without `.j2`, and its content.
#[derive(Clone)]
pub struct Rendered {
    /// File name, e.g. `app.conf`.
    pub name: String,
    /// Content; may hold secrets, so no Debug of it.
    pub content: String,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The `templates/` directory of a taskserv whose declaration is `origin`
/// (`<taskserv>/kcl/dependencies.k`).
pub fn templates_dir(origin: &Path) -> Option<PathBuf> {
    let dir = origin.parent()?.parent()?.join("templates");
    dir.is_dir().then_some(dir)
}

/// What templates of `taskserv` on `server` see.
pub fn context(
    taskserv: &str,
    server: &Server,
    variables: &BTreeMap<String, String>,
    secrets: &serde_json::Value,
) -> Value {
    let server = serde_json::json!({
        "hostname": server.hostname,
        "address": server.address.clone().unwrap_or_default(),
        "provider": server.provider,
        "plan": server.plan,
        "zone": server.zone.clone().unwrap_or_default(),
        "tags": server.tags,
        "groups": server.groups,
        "taskservs": server.taskservs,
    });
    Value::from_serialize(serde_json::json!({
        "taskserv": taskserv,
        "server": server,
        "vars": variables,
        "secrets": secrets,
    }))
}

/// Render every `*.j2` of `dir`, in name order.
pub fn render_dir(dir: &Path, ctx: &Value) -> Result<Vec<Rendered>, TemplateError> {
    let read_err = |e: std::io::Error| TemplateError {
        template: dir.to_path_buf(),
        line: None,
        message: format!("cannot read: {e}"),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "j2"))
        .collect();
    files.sort();
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        let source = std::fs::read_to_string(&file).map_err(|e| TemplateError {
            template: file.clone(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let content = render(&file, &source, ctx)?;
        out.push(Rendered { name, content });
    }
    Ok(out)
}

/// Render one template source.
pub fn render(file: &Path, source: &str, ctx: &Value) -> Result<String, TemplateError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Keep the file's last newline: configuration files end with one.
    env.set_keep_trailing_newline(true);
    let name = file.display().to_string();
    let to_error = |e: minijinja::Error| TemplateError {
        template: file.to_path_buf(),
        line: e.line(),
        message: match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        },
    };
    env.add_template(&name, source).map_err(to_error)?;
    let tmpl = env.get_template(&name).map_err(to_error)?;
    tmpl.render(ctx).map_err(|e| {
        // The engine's message says "undefined value" without the name;
        // the span of the failing expression has it.
        let expr = e.range().and_then(|r| source.get(r)).map(str::trim).map(str::to_string);
        let mut err = to_error(e);
        if let Some(expr) = expr.filter(|x| !x.is_empty()) {
            err.message = format!("{} in `{expr}`", err.message);
        }
        if err.message.contains("undefined") {
            err.message = format!("{} (in scope: taskserv, server.*, vars.*, secrets.*)", err.message);
        }
        err
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Server {
        serde_json::from_value(serde_json::json!({
            "hostname": "web-0", "provider": "local", "plan": "small", "address": "127.0.0.5", "tags": ["web"]
        }))
        .expect("server")
    }

    #[test]
    fn renders_facts_variables_and_secrets() {
        let vars = BTreeMap::from([("PORT".to_string(), "8080".to_string())]);
        let ctx = context("app", &server(), &vars, &serde_json::json!({"db": {"password": "pw"}}));
        let out = render(
            Path::new("app.conf.j2"),
            "host={{ server.hostname }} addr={{ server.address }} port={{ vars.PORT }} pw={{ secrets.db.password }}\n",
            &ctx,
        )
        .expect("renders");
        assert_eq!(out, "host=web-0 addr=127.0.0.5 port=8080 pw=pw\n");
    }

    #[test]
    fn an_undefined_variable_names_template_line_and_variable() {
        let ctx = context("app", &server(), &BTreeMap::new(), &serde_json::json!({}));
        let err = render(Path::new("t/app.conf.j2"), "a\nb={{ vars.MISSING }}\n", &ctx).expect_err("undefined");
        let text = err.to_string();
        assert_eq!(err.line, Some(2), "{text}");
        assert!(text.contains("t/app.conf.j2:2") && text.contains("undefined"), "{text}");
        assert!(text.contains("vars.MISSING"), "the variable is named: {text}");
    }

    #[test]
    fn a_syntax_error_names_template_and_line() {
        let ctx = context("app", &server(), &BTreeMap::new(), &serde_json::json!({}));
        let err = render(Path::new("x.j2"), "ok\n{% if %}\n", &ctx).expect_err("syntax");
        assert_eq!(err.line, Some(2), "{err}");
        assert!(err.to_string().contains("syntax"), "{err}");
    }
}
