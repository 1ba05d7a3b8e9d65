//! Validation of a workflow against the catalog: every reference resolves,
//! every server can carry what it is given. Collects every problem.
//!
//! What the planner needs to expand (selections, dependency targets,
//! cycles through tasks) is checked by the planner; this module checks what
//! can be seen from the declarations alone.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use crate::diagnostic::{Diagnostic, known};
use crate::inventory::Inventory;
use crate::model::{Catalog, Condition, OperationType, Script, Server, Source, Target, WorkflowType};

/// Check `source` against `catalog`; an empty result means valid.
pub fn validate(source: &Source, catalog: &Catalog) -> Vec<Diagnostic> {
    let mut v = Validator {
        file: &source.file,
        catalog,
        diags: Vec::new(),
        inventory: false,
    };
    v.workflow(source);
    v.diags
}

/// Check the servers and groups of `source` (an inventory, or the
/// inventory part of a workflow) against `catalog`: what `drover
/// inventory` and `drover ping` need; operations are not looked at.
pub fn validate_inventory(source: &Source, catalog: &Catalog) -> Vec<Diagnostic> {
    let mut v = Validator {
        file: &source.file,
        catalog,
        diags: Vec::new(),
        inventory: true,
    };
    v.workflow(source);
    v.diags
}

/// The longest cooldown a notification target may have (a day): a longer
/// window holds messages back for longer than anyone would wait for them.
pub const MAX_COOLDOWN_SECS: u64 = 86_400;

/// Check notification targets (a workflow's `notifications`, or the
/// server-wide list of `drover serve --notifications`): URLs are http(s)
/// or `secret:PATH`, event names exist, each kind has what it needs and
/// nothing it cannot use, cooldowns are within bounds. `field` prefixes
/// each diagnostic's field (`notifications`).
pub fn validate_notifications(file: &Path, field: &str, defs: &[crate::model::NotificationDef]) -> Vec<Diagnostic> {
    use crate::model::{NotificationEvent, NotificationKind};
    let mut diags = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, n) in defs.iter().enumerate() {
        let at = |f: &str| format!("{field}[{i}].{f}");
        let kind = n.kind.as_str();
        if let Some(j) = seen.insert(&n.name, i) {
            diags.push(
                Diagnostic::new(
                    file,
                    at("name"),
                    format!(
                        "duplicate notification name \"{}\" (first declared at {field}[{j}])",
                        n.name
                    ),
                )
                .at(&n.name),
            );
        }
        match n.kind {
            NotificationKind::Webhook | NotificationKind::Slack => match n.url.as_deref() {
                None => diags.push(
                    Diagnostic::new(
                        file,
                        at("url"),
                        format!("notification {}: a {kind} target needs a url", n.name),
                    )
                    .help("url = \"https://...\" or \"secret:PATH\" (a value of the workflow's secrets)"),
                ),
                Some(u) if u.starts_with("secret:") => {
                    if u.len() == "secret:".len() {
                        diags.push(
                            Diagnostic::new(
                                file,
                                at("url"),
                                format!("notification {}: \"secret:\" names no secret", n.name),
                            )
                            .help("write secret:PATH, e.g. secret:slack.webhook")
                            .at(u),
                        );
                    }
                }
                Some(u) => {
                    let lower = u.to_ascii_lowercase();
                    let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
                    if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                        diags.push(
                            Diagnostic::new(
                                file,
                                at("url"),
                                format!(
                                    "notification {}: url \"{u}\" is not an http:// or https:// URL with a host",
                                    n.name
                                ),
                            )
                            .help("give http(s)://HOST/PATH, or secret:PATH for a URL kept in the workflow's secrets")
                            .at(u),
                        );
                    }
                }
            },
            NotificationKind::Script => {
                if n.script.as_deref().is_none_or(|s| s.trim().is_empty()) {
                    diags.push(
                        Diagnostic::new(
                            file,
                            at("script"),
                            format!(
                                "notification {}: a script target needs the path of its program in `script`",
                                n.name
                            ),
                        )
                        .help("script = \"/usr/local/bin/notify-oncall\""),
                    );
                }
                if let Some(u) = &n.url {
                    diags.push(
                        Diagnostic::new(
                            file,
                            at("url"),
                            format!("notification {}: a script target has no url", n.name),
                        )
                        .help("remove url, or make the target a webhook")
                        .at(u),
                    );
                }
            }
        }
        if n.kind != NotificationKind::Script
            && let Some(s) = &n.script
        {
            diags.push(
                Diagnostic::new(
                    file,
                    at("script"),
                    format!("notification {}: script is only for type script, not {kind}", n.name),
                )
                .at(s),
            );
        }
        if n.kind != NotificationKind::Webhook && n.secret.is_some() {
            diags.push(
                Diagnostic::new(
                    file,
                    at("secret"),
                    format!(
                        "notification {}: a {kind} target cannot be signed; secret is only for webhooks",
                        n.name
                    ),
                )
                .help("remove secret (a Slack webhook URL is its own secret: keep it as url = \"secret:PATH\")"),
            );
        }
        if n.secret.as_deref() == Some("") || n.secret.as_deref() == Some("secret:") {
            diags.push(Diagnostic::new(
                file,
                at("secret"),
                format!("notification {}: the webhook secret is empty", n.name),
            ));
        }
        for (k, e) in n.events.iter().enumerate() {
            if NotificationEvent::parse(e).is_none() {
                diags.push(
                    Diagnostic::new(
                        file,
                        at(&format!("events[{k}]")),
                        format!("notification {}: unknown event \"{e}\"", n.name),
                    )
                    .help(format!(
                        "events: {}",
                        known(NotificationEvent::ALL.iter().map(|e| e.as_str()))
                    ))
                    .at(e),
                );
            }
        }
        if n.cooldown > MAX_COOLDOWN_SECS {
            diags.push(Diagnostic::new(
                file,
                at("cooldown"),
                format!(
                    "notification {}: cooldown {} s is more than the {MAX_COOLDOWN_SECS} s (a day) allowed",
                    n.name, n.cooldown
                ),
            ));
        }
    }
    diags
}

struct Validator<'a> {
    file: &'a Path,
    catalog: &'a Catalog,
    diags: Vec<Diagnostic>,
    /// Only the inventory (servers, groups) is checked.
    inventory: bool,
}

impl Validator<'_> {
    fn push(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// The group hierarchy: known children and members, no cycle, valid
    /// criteria.
    fn groups(&mut self, wf: &crate::model::Workflow, inventory: &Inventory<'_>) {
        let hosts: BTreeSet<&str> = wf.servers.iter().map(|s| s.hostname.as_str()).collect();
        for (i, g) in wf.groups.iter().enumerate() {
            for (k, child) in g.groups.iter().enumerate() {
                if !inventory.has_group(child) {
                    self.push(
                        Diagnostic::new(
                            self.file,
                            format!("groups[{i}].groups[{k}]"),
                            format!("group {} contains unknown group \"{child}\"", g.name),
                        )
                        .help(format!("groups: {}", known(inventory.group_names())))
                        .at(child)
                        .within(&g.name),
                    );
                }
            }
            for (k, m) in g.members.iter().enumerate() {
                if !hosts.contains(m.as_str()) {
                    self.push(
                        Diagnostic::new(
                            self.file,
                            format!("groups[{i}].members[{k}]"),
                            format!("group {} lists unknown server \"{m}\"", g.name),
                        )
                        .help(format!("servers of this workflow: {}", known(hosts.iter().copied())))
                        .at(m)
                        .within(&g.name),
                    );
                }
            }
            self.criteria(&format!("groups[{i}]"), &g.criteria, &g.name);
        }
        for (i, op) in wf.operations.iter().enumerate() {
            if let Some(sel) = &op.selector {
                self.criteria(&format!("operations[{i}].selector"), &sel.criteria, &op.id);
            }
        }
        let names: Vec<&str> = wf.groups.iter().map(|g| g.name.as_str()).collect();
        let children = |n: &str| -> Vec<&str> {
            wf.groups
                .iter()
                .find(|g| g.name == n)
                .map(|g| g.groups.iter().map(String::as_str).collect())
                .unwrap_or_default()
        };
        for cycle in crate::graph::cycles(&names, children) {
            let first = cycle[0];
            let i = wf.groups.iter().position(|g| g.name == first).unwrap_or(0);
            let mut path = cycle.clone();
            path.push(first);
            self.push(
                Diagnostic::new(
                    self.file,
                    format!("groups[{i}].groups"),
                    format!(
                        "groups contain each other in a cycle: {} (each contains the next)",
                        path.join(" → ")
                    ),
                )
                .help("a group hierarchy must be a tree; remove one of these entries")
                .at(first),
            );
        }
    }

    fn criteria(&mut self, at: &str, criteria: &[crate::model::Criterion], anchor: &str) {
        use crate::model::CriterionOp;
        for (k, c) in criteria.iter().enumerate() {
            if c.op == CriterionOp::Matches
                && let Some(p) = &c.value
                && let Err(e) = regex::Regex::new(p)
            {
                let first = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .trim_start_matches("error: ")
                    .to_string();
                self.push(
                    Diagnostic::new(
                        self.file,
                        format!("{at}.criteria[{k}].value"),
                        format!("\"{p}\" is not a valid regular expression: {first}"),
                    )
                    .at(p)
                    .within(anchor),
                );
            }
        }
    }

    /// Diagnostics pushed since `before` are about the item named `anchor`.
    fn anchor_since(&mut self, before: usize, anchor: &str) {
        for d in &mut self.diags[before..] {
            if d.anchor.is_none() {
                d.anchor = Some(anchor.to_string());
            }
        }
    }

    fn workflow(&mut self, source: &Source) {
        let wf = &source.workflow;
        if wf.name.trim().is_empty() {
            self.push(Diagnostic::new(self.file, "name", "the workflow has no name"));
        }
        if wf.operations.is_empty() && !self.inventory {
            self.push(
                Diagnostic::new(
                    self.file,
                    "operations",
                    format!("workflow {} has no operations", wf.name),
                )
                .help("add at least one OperationDef"),
            );
        }
        if !self.inventory {
            let notes = validate_notifications(self.file, "notifications", &wf.notifications);
            self.diags.extend(notes);
        }
        if wf.max_parallel == 0 {
            self.push(Diagnostic::new(
                self.file,
                "max_parallel",
                "max_parallel must be at least 1",
            ));
        }

        let mut first_server: HashMap<&str, usize> = HashMap::new();
        for (i, s) in wf.servers.iter().enumerate() {
            if let Some(j) = first_server.insert(&s.hostname, i) {
                first_server.insert(&s.hostname, j);
                self.push(
                    Diagnostic::new(
                        self.file,
                        format!("servers[{i}].hostname"),
                        format!(
                            "duplicate server hostname \"{}\" (first declared at servers[{j}])",
                            s.hostname
                        ),
                    )
                    .at(&s.hostname),
                );
            }
            let before = self.diags.len();
            self.server(i, s);
            self.anchor_since(before, &s.hostname);
        }

        let mut first_op: HashMap<&str, usize> = HashMap::new();
        for (i, op) in wf.operations.iter().enumerate() {
            let before = self.diags.len();
            if op.id.trim().is_empty() {
                self.push(Diagnostic::new(
                    self.file,
                    format!("operations[{i}].id"),
                    "operation id is empty",
                ));
            }
            if let Some(j) = first_op.insert(&op.id, i) {
                first_op.insert(&op.id, j);
                self.push(
                    Diagnostic::new(
                        self.file,
                        format!("operations[{i}].id"),
                        format!(
                            "duplicate operation id \"{}\" (first declared at operations[{j}])",
                            op.id
                        ),
                    )
                    .at(&op.id),
                );
            }
            self.anchor_since(before, &op.id);
        }

        let servers: BTreeMap<&str, &Server> = wf.servers.iter().map(|s| (s.hostname.as_str(), s)).collect();
        let inventory = Inventory::new(wf);
        let groups: BTreeSet<&str> = inventory.group_names();
        self.groups(wf, &inventory);
        let tags: BTreeSet<&str> = wf
            .servers
            .iter()
            .flat_map(|s| s.tags.iter().map(String::as_str))
            .collect();
        let op_ids: Vec<&str> = wf.operations.iter().map(|o| o.id.as_str()).collect();

        for (i, op) in wf.operations.iter().enumerate() {
            let before = self.diags.len();
            let at = |field: &str| format!("operations[{i}].{field}");
            for (k, dep) in op.depends_on.iter().enumerate() {
                if !first_op.contains_key(dep.as_str()) {
                    self.push(
                        Diagnostic::new(
                            self.file,
                            at(&format!("depends_on[{k}]")),
                            format!("operation {} depends on unknown operation \"{dep}\"", op.id),
                        )
                        .help(format!("known operations: {}", known(op_ids.iter().copied())))
                        .at(dep),
                    );
                }
            }
            for (k, p) in op.providers.iter().enumerate() {
                if !self.catalog.providers.contains_key(p) {
                    self.push(
                        Diagnostic::new(
                            self.file,
                            at(&format!("providers[{k}]")),
                            format!("operation {} names unknown provider \"{p}\"", op.id),
                        )
                        .help(format!(
                            "known providers: {}",
                            known(self.catalog.providers.keys().map(String::as_str))
                        ))
                        .at(p),
                    );
                }
            }
            if let Some(sel) = &op.selector {
                for (k, name) in sel.servers.iter().enumerate() {
                    if !servers.contains_key(name.as_str()) {
                        self.push(
                            Diagnostic::new(
                                self.file,
                                at(&format!("selector.servers[{k}]")),
                                format!("operation {} selects unknown server \"{name}\"", op.id),
                            )
                            .help(format!("servers of this workflow: {}", known(servers.keys().copied())))
                            .at(name),
                        );
                    }
                }
                for (k, g) in sel.groups.iter().enumerate() {
                    if !groups.contains(g.as_str()) {
                        self.push(
                            Diagnostic::new(
                                self.file,
                                at(&format!("selector.groups[{k}]")),
                                format!("operation {} selects group \"{g}\", which is neither declared nor named by a server", op.id),
                            )
                            .help(format!("groups in use: {}", known(groups.iter().copied())))
                            .at(g),
                        );
                    }
                }
                for (k, t) in sel.tags.iter().enumerate() {
                    let bare = t.strip_prefix('!').unwrap_or(t);
                    if !tags.contains(bare) {
                        self.push(
                            Diagnostic::new(
                                self.file,
                                at(&format!("selector.tags[{k}]")),
                                format!("operation {} selects tag \"{bare}\", which no server carries", op.id),
                            )
                            .help(format!("tags in use: {}", known(tags.iter().copied())))
                            .at(t),
                        );
                    }
                }
            }
            match op.target {
                Target::Server => {
                    for (k, item) in op.items.iter().enumerate() {
                        if !servers.contains_key(item.as_str()) {
                            self.push(
                                Diagnostic::new(
                                    self.file,
                                    at(&format!("items[{k}]")),
                                    format!("operation {} targets unknown server \"{item}\"", op.id),
                                )
                                .help(format!("servers of this workflow: {}", known(servers.keys().copied())))
                                .at(item),
                            );
                        }
                    }
                }
                Target::Command => {}
                Target::Taskserv | Target::Cluster => {
                    for (k, item) in op.items.iter().enumerate() {
                        match self.catalog.taskservs.get(item) {
                            None => self.push(
                                Diagnostic::new(
                                    self.file,
                                    at(&format!("items[{k}]")),
                                    format!("operation {} names unknown taskserv \"{item}\"", op.id),
                                )
                                .help(format!(
                                    "known taskservs: {}",
                                    known(self.catalog.taskservs.keys().map(String::as_str))
                                ))
                                .at(item),
                            ),
                            Some(decl) => {
                                let script = script_for(op.kind);
                                if !decl.scripts.contains(&script) {
                                    self.push(
                                        Diagnostic::new(
                                            self.file,
                                            at(&format!("items[{k}]")),
                                            format!(
                                                "operation {} needs the {} script of taskserv {item}, which it does not ship",
                                                op.id,
                                                script.file_name()
                                            ),
                                        )
                                        .help(format!(
                                            "add {}",
                                            decl.origin
                                                .parent()
                                                .and_then(Path::parent)
                                                .unwrap_or(Path::new("."))
                                                .join("scripts")
                                                .join(script.file_name())
                                                .display()
                                        ))
                                        .at(item),
                                    );
                                }
                            }
                        }
                    }
                }
            }
            match (&op.target, &op.command) {
                (Target::Command, None) => self.push(
                    Diagnostic::new(
                        self.file,
                        at("command"),
                        format!("operation {} runs a command but names none", op.id),
                    )
                    .help("give the command to run on each selected server")
                    .at(&op.id),
                ),
                (Target::Command, Some(c)) if c.trim().is_empty() || c.contains('\0') => self.push(
                    Diagnostic::new(
                        self.file,
                        at("command"),
                        format!("operation {}: the command is empty or holds a NUL byte", op.id),
                    )
                    .help("give a shell command, e.g. \"uptime\"")
                    .at(&op.id),
                ),
                (Target::Command, Some(_)) if !op.items.is_empty() => self.push(
                    Diagnostic::new(
                        self.file,
                        at("items"),
                        format!("operation {} runs a command: it takes a selector, not items", op.id),
                    )
                    .at(&op.id),
                ),
                (Target::Server | Target::Taskserv | Target::Cluster, Some(_)) => self.push(
                    Diagnostic::new(
                        self.file,
                        at("command"),
                        format!("operation {} has a command but its target is not \"command\"", op.id),
                    )
                    .at(&op.id),
                ),
                _ => {}
            }
            if op.condition != Condition::OnSuccess && op.depends_on.is_empty() && wf.kind != WorkflowType::Sequential {
                self.push(
                    Diagnostic::new(
                        self.file,
                        at("condition"),
                        format!(
                            "operation {} has a condition but depends on no operation, so it has nothing to test",
                            op.id
                        ),
                    )
                    .help("add depends_on with the operations whose outcome decides whether it runs")
                    .at(&op.id),
                );
            }
            if let Some(run_on) = &op.run_on
                && !servers.contains_key(run_on.as_str())
            {
                self.push(
                    Diagnostic::new(
                        self.file,
                        at("run_on"),
                        format!("operation {} runs on unknown server \"{run_on}\"", op.id),
                    )
                    .help(format!("servers of this workflow: {}", known(servers.keys().copied())))
                    .at(run_on),
                );
            }
            self.anchor_since(before, &op.id);
        }

        for (k, dep) in wf.dependencies.iter().enumerate() {
            if let Some(wc) = &dep.wait_condition
                && let Some(s) = &wc.server
                && !servers.contains_key(s.as_str())
            {
                self.push(
                    Diagnostic::new(
                        self.file,
                        format!("dependencies[{k}].wait_condition.server"),
                        format!("wait condition runs on unknown server \"{s}\""),
                    )
                    .help(format!("servers of this workflow: {}", known(servers.keys().copied())))
                    .at(s),
                );
            }
        }

        self.taskserv_catalog(wf.servers.iter().flat_map(|s| s.taskservs.iter().map(String::as_str)));
    }

    fn server(&mut self, i: usize, s: &Server) {
        let file = self.file;
        let provider = self.catalog.providers.get(&s.provider);
        match provider {
            None => self.push(
                Diagnostic::new(
                    file,
                    format!("servers[{i}].provider"),
                    format!("server {} uses unknown provider \"{}\"", s.hostname, s.provider),
                )
                .help(format!(
                    "known providers: {}",
                    known(self.catalog.providers.keys().map(String::as_str))
                ))
                .at(&s.provider),
            ),
            Some(p) if !p.plans.contains_key(&s.plan) => self.push(
                Diagnostic::new(
                    file,
                    format!("servers[{i}].plan"),
                    format!(
                        "server {}: provider {} has no plan \"{}\"",
                        s.hostname, s.provider, s.plan
                    ),
                )
                .help(format!(
                    "plans of {}: {}",
                    s.provider,
                    known(p.plans.keys().map(String::as_str))
                ))
                .at(&s.plan),
            ),
            Some(_) => {}
        }
        let plan = provider.and_then(|p| p.plans.get(&s.plan));

        let carried: HashSet<&str> = s.taskservs.iter().map(String::as_str).collect();
        for (k, name) in s.taskservs.iter().enumerate() {
            let field = format!("servers[{i}].taskservs[{k}]");
            let Some(decl) = self.catalog.taskservs.get(name) else {
                self.push(
                    Diagnostic::new(
                        file,
                        field,
                        format!("server {} carries unknown taskserv \"{name}\"", s.hostname),
                    )
                    .help(format!(
                        "known taskservs: {}",
                        known(self.catalog.taskservs.keys().map(String::as_str))
                    ))
                    .at(name),
                );
                continue;
            };
            for r in &decl.requires {
                if !carried.contains(r.as_str()) {
                    self.push(
                        Diagnostic::new(
                            file,
                            field.clone(),
                            format!(
                                "server {} carries {name}, which requires {r}, but does not carry {r}",
                                s.hostname
                            ),
                        )
                        .help(format!("add \"{r}\" to the taskservs of {}", s.hostname))
                        .at(name),
                    );
                }
            }
            for c in &decl.conflicts_with {
                // Report each conflicting pair once, from the first of the two.
                if carried.contains(c.as_str()) && s.taskservs.iter().position(|t| t == c) > Some(k) {
                    self.push(
                        Diagnostic::new(
                            file,
                            field.clone(),
                            format!("server {} carries {name} and {c}, which conflict", s.hostname),
                        )
                        .help(format!(
                            "{name} declares conflicts_with {c} in {}; keep one of them on this server",
                            decl.origin.display()
                        ))
                        .at(name),
                    );
                }
            }
            if let Some(plan) = plan {
                let need = decl.minimum_resources;
                let mut short = Vec::new();
                if plan.cpu < need.cpu {
                    short.push(format!("cpu {} < {}", plan.cpu, need.cpu));
                }
                if plan.memory < need.memory {
                    short.push(format!("memory {} MiB < {} MiB", plan.memory, need.memory));
                }
                if plan.disk < need.disk {
                    short.push(format!("disk {} GiB < {} GiB", plan.disk, need.disk));
                }
                if !short.is_empty() {
                    self.push(
                        Diagnostic::new(
                            file,
                            format!("servers[{i}].plan"),
                            format!(
                                "server {}: plan {} does not meet the minimum resources of {name}: {}",
                                s.hostname,
                                s.plan,
                                short.join(", ")
                            ),
                        )
                        .help("choose a larger plan or move the taskserv to another server")
                        .at(&s.plan),
                    );
                }
            }
        }
    }

    /// Check the declarations of the taskservs in use: their references
    /// resolve and `requires` has no cycle.
    fn taskserv_catalog<'a>(&mut self, used: impl Iterator<Item = &'a str>) {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut stack: Vec<&str> = used.collect();
        while let Some(name) = stack.pop() {
            if !seen.insert(name) {
                continue;
            }
            let Some(decl) = self.catalog.taskservs.get(name) else {
                continue;
            };
            for (field, list) in [("requires", &decl.requires), ("conflicts_with", &decl.conflicts_with)] {
                for (k, r) in list.iter().enumerate() {
                    if self.catalog.taskservs.contains_key(r) {
                        if field == "requires" {
                            stack.push(r);
                        }
                    } else {
                        self.push(
                            Diagnostic::new(
                                &decl.origin,
                                format!("dependencies.{field}[{k}]"),
                                format!("taskserv {name} names unknown taskserv \"{r}\" in {field}"),
                            )
                            .help(format!(
                                "known taskservs: {}",
                                known(self.catalog.taskservs.keys().map(String::as_str))
                            ))
                            .at(r),
                        );
                    }
                }
            }
        }
        for cycle in requires_cycles(self.catalog, &seen) {
            let first = cycle[0];
            let origin = self
                .catalog
                .taskservs
                .get(first)
                .map(|d| d.origin.clone())
                .unwrap_or_default();
            let mut path = cycle.clone();
            path.push(first);
            self.push(
                Diagnostic::new(
                    origin,
                    "dependencies.requires",
                    format!(
                        "taskservs require each other in a cycle: {} (each requires the next)",
                        path.join(" → ")
                    ),
                )
                .help("remove one of these requires")
                .at(first),
            );
        }
    }
}

/// The script an operation type runs on a taskserv.
pub fn script_for(kind: OperationType) -> Script {
    match kind {
        OperationType::Create => Script::Install,
        OperationType::Update => Script::Update,
        OperationType::Delete => Script::Remove,
        OperationType::Check => Script::Check,
    }
}

/// Every elementary cycle's node list (one per strongly connected set) in
/// the `requires` graph restricted to `names`.
fn requires_cycles<'a>(catalog: &'a Catalog, names: &BTreeSet<&'a str>) -> Vec<Vec<&'a str>> {
    let edges = |n: &str| -> Vec<&'a str> {
        catalog
            .taskservs
            .get(n)
            .map(|d| {
                d.requires
                    .iter()
                    .map(String::as_str)
                    .filter(|r| names.contains(r))
                    .collect()
            })
            .unwrap_or_default()
    };
    let nodes: Vec<&str> = names.iter().copied().collect();
    crate::graph::cycles(&nodes, edges)
}

#[cfg(test)]
mod notification_tests {
    use super::validate_notifications;
    use crate::model::NotificationDef;

    fn def(json: serde_json::Value) -> NotificationDef {
        serde_json::from_value(json).expect("a NotificationDef")
    }

    fn fields(defs: &[NotificationDef]) -> Vec<(String, String)> {
        validate_notifications(std::path::Path::new("wf.k"), "notifications", defs)
            .into_iter()
            .map(|d| (d.field, d.message))
            .collect()
    }

    #[test]
    fn good_targets_pass() {
        let defs = [
            def(
                serde_json::json!({"name": "ops", "type": "webhook", "url": "https://hooks.example/x", "secret": "k3y!", "events": ["run_failed"], "cooldown": 60}),
            ),
            def(serde_json::json!({"name": "chat", "type": "slack", "url": "secret:slack.webhook"})),
            def(
                serde_json::json!({"name": "pager", "type": "script", "script": "/bin/true", "events": ["drift_found"]}),
            ),
        ];
        assert_eq!(fields(&defs), Vec::<(String, String)>::new());
    }

    #[test]
    fn each_problem_names_its_field() {
        let defs = [
            def(serde_json::json!({"name": "a", "type": "webhook", "url": "ftp://x", "events": ["run_exploded"]})),
            def(
                serde_json::json!({"name": "b", "type": "slack", "url": "https://x", "secret": "nope", "cooldown": 100000}),
            ),
            def(serde_json::json!({"name": "c", "type": "script"})),
            def(serde_json::json!({"name": "a", "type": "webhook"})),
        ];
        let got: Vec<String> = fields(&defs).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            got,
            [
                "notifications[0].url",
                "notifications[0].events[0]",
                "notifications[1].secret",
                "notifications[1].cooldown",
                "notifications[2].script",
                "notifications[3].name",
                "notifications[3].url",
            ]
        );
        let msgs = fields(&defs);
        assert!(msgs[1].1.contains("unknown event \"run_exploded\""), "{msgs:?}");
        assert!(msgs[0].1.contains("not an http:// or https:// URL"), "{msgs:?}");
    }
}
