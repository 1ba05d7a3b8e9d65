//! The inventory: which servers are in which group, and which servers a
//! selector picks. Group membership is resolved at every call (criteria are
//! dynamic), through the group hierarchy.
//!
//! A server is in group G when it names G in its `groups`, when G lists it
//! in `members`, when it is in one of G's child groups, or, when G has
//! criteria, when it matches all of them. Cycles in the hierarchy are
//! reported by validation; resolution itself stops at a group it has
//! already visited, so it terminates on any input.

use std::collections::{BTreeSet, HashMap, HashSet};

use regex::Regex;

use crate::model::{Criterion, CriterionField, CriterionOp, GroupDef, Selector, Server, Workflow};

/// Group and selector resolution over one workflow's servers.
#[derive(Debug)]
pub struct Inventory<'a> {
    wf: &'a Workflow,
    groups: HashMap<&'a str, &'a GroupDef>,
    // Compiled `matches` patterns; an invalid one never matches (and is
    // reported by validation).
    patterns: HashMap<String, Option<Regex>>,
}

impl<'a> Inventory<'a> {
    /// The inventory of `wf`.
    pub fn new(wf: &'a Workflow) -> Inventory<'a> {
        let groups = wf.groups.iter().map(|g| (g.name.as_str(), g)).collect();
        let mut patterns = HashMap::new();
        let criteria = wf.groups.iter().flat_map(|g| g.criteria.iter()).chain(
            wf.operations
                .iter()
                .filter_map(|o| o.selector.as_ref())
                .flat_map(|s| s.criteria.iter()),
        );
        for c in criteria {
            if c.op == CriterionOp::Matches
                && let Some(p) = &c.value
            {
                patterns.entry(p.clone()).or_insert_with(|| Regex::new(p).ok());
            }
        }
        Inventory { wf, groups, patterns }
    }

    /// Every group name: declared ones and those servers name.
    pub fn group_names(&self) -> BTreeSet<&'a str> {
        self.wf
            .groups
            .iter()
            .map(|g| g.name.as_str())
            .chain(self.wf.servers.iter().flat_map(|s| s.groups.iter().map(String::as_str)))
            .collect()
    }

    /// Whether the group exists (declared, or named by a server).
    pub fn has_group(&self, name: &str) -> bool {
        self.groups.contains_key(name) || self.wf.servers.iter().any(|s| s.groups.iter().any(|g| g == name))
    }

    /// The declared group, if any.
    pub fn group(&self, name: &str) -> Option<&'a GroupDef> {
        self.groups.get(name).copied()
    }

    /// The servers of `group`, in declaration order.
    pub fn members(&self, group: &str) -> Vec<&'a Server> {
        self.wf.servers.iter().filter(|s| self.in_group(s, group)).collect()
    }

    /// Whether `s` is in `group`.
    pub fn in_group(&self, s: &Server, group: &str) -> bool {
        self.in_group_visiting(s, group, &mut HashSet::new())
    }

    fn in_group_visiting<'g>(&'g self, s: &Server, group: &'g str, seen: &mut HashSet<&'g str>) -> bool {
        if !seen.insert(group) {
            return false;
        }
        if s.groups.iter().any(|g| g == group) {
            return true;
        }
        let Some(def) = self.groups.get(group) else {
            return false;
        };
        if def.members.contains(&s.hostname) {
            return true;
        }
        if !def.criteria.is_empty() && def.criteria.iter().all(|c| self.matches(c, s)) {
            return true;
        }
        def.groups.iter().any(|child| self.in_group_visiting(s, child, seen))
    }

    /// Whether `s` satisfies criterion `c`.
    pub fn matches(&self, c: &Criterion, s: &Server) -> bool {
        let values: Vec<&str> = match c.field {
            CriterionField::Hostname => vec![s.hostname.as_str()],
            CriterionField::Provider => vec![s.provider.as_str()],
            CriterionField::Plan => vec![s.plan.as_str()],
            CriterionField::Zone => s.zone.as_deref().into_iter().collect(),
            CriterionField::Address => s.address.as_deref().into_iter().collect(),
            CriterionField::Tag => s.tags.iter().map(String::as_str).collect(),
            // A server's own groups; criteria on declared groups would
            // recurse and are expressed with child groups instead.
            CriterionField::Group => s.groups.iter().map(String::as_str).collect(),
        };
        let want = c.value.as_deref().unwrap_or_default();
        values.iter().any(|v| match c.op {
            CriterionOp::Equals => *v == want,
            CriterionOp::Contains => v.contains(want),
            CriterionOp::In => c.values.iter().any(|x| x == v),
            CriterionOp::Matches => self
                .patterns
                .get(want)
                .and_then(Option::as_ref)
                .is_some_and(|r| r.is_match(v)),
        })
    }

    /// Whether `sel` picks `s`: any name or group (when names or groups are
    /// given), every tag ("!t": not tagged t), every criterion.
    pub fn selects(&self, sel: &Selector, s: &Server) -> bool {
        let by_name = sel.servers.is_empty() && sel.groups.is_empty()
            || sel.servers.contains(&s.hostname)
            || sel.groups.iter().any(|g| self.in_group(s, g));
        by_name
            && sel.tags.iter().all(|t| match t.strip_prefix('!') {
                Some(neg) => !s.tags.iter().any(|x| x == neg),
                None => s.tags.contains(t),
            })
            && sel.criteria.iter().all(|c| self.matches(c, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wf() -> Workflow {
        serde_json::from_value(serde_json::json!({
            "name": "inv",
            "servers": [
                {"hostname": "web-0", "provider": "local", "plan": "small", "tags": ["web", "canary"], "groups": ["front"], "zone": "fi-hel1"},
                {"hostname": "web-1", "provider": "local", "plan": "small", "tags": ["web"], "groups": ["front"], "zone": "de-fra1"},
                {"hostname": "db-0", "provider": "aws", "plan": "big", "tags": ["db"], "zone": "eu-central-1a"},
                {"hostname": "cache-0", "provider": "aws", "plan": "small", "tags": ["cache"]},
            ],
            "groups": [
                {"name": "backend", "members": ["db-0"], "criteria": []},
                {"name": "all", "groups": ["front", "backend", "caches"]},
                {"name": "caches", "criteria": [{"field": "hostname", "op": "matches", "value": "^cache-"}]},
                {"name": "europe", "criteria": [{"field": "zone", "op": "in", "values": ["de-fra1", "eu-central-1a"]}]},
                {"name": "loop-a", "groups": ["loop-b"]},
                {"name": "loop-b", "groups": ["loop-a"], "members": ["web-1"]},
            ],
            "operations": [{"id": "x", "type": "check", "target": "server"}],
        }))
        .expect("workflow")
    }

    fn names(v: Vec<&Server>) -> Vec<&str> {
        v.into_iter().map(|s| s.hostname.as_str()).collect()
    }

    #[test]
    fn groups_resolve_through_members_server_groups_children_and_criteria() {
        let w = wf();
        let inv = Inventory::new(&w);
        assert_eq!(names(inv.members("front")), ["web-0", "web-1"]);
        assert_eq!(names(inv.members("backend")), ["db-0"]);
        assert_eq!(names(inv.members("caches")), ["cache-0"]);
        assert_eq!(names(inv.members("all")), ["web-0", "web-1", "db-0", "cache-0"]);
        assert_eq!(names(inv.members("europe")), ["web-1", "db-0"]);
        // A cycle terminates (validation reports it).
        assert_eq!(names(inv.members("loop-a")), ["web-1"]);
        assert!(inv.has_group("front") && inv.has_group("all") && !inv.has_group("nope"));
    }

    #[test]
    fn selectors_combine_names_groups_tags_and_criteria() {
        let w = wf();
        let inv = Inventory::new(&w);
        let pick = |sel: serde_json::Value| -> Vec<String> {
            let sel: Selector = serde_json::from_value(sel).expect("selector");
            w.servers
                .iter()
                .filter(|s| inv.selects(&sel, s))
                .map(|s| s.hostname.clone())
                .collect()
        };
        assert_eq!(
            pick(serde_json::json!({"groups": ["all"], "tags": ["web", "!canary"]})),
            ["web-1"]
        );
        assert_eq!(
            pick(
                serde_json::json!({"criteria": [{"field": "provider", "op": "equals", "value": "aws"}, {"field": "plan", "op": "contains", "value": "sma"}]})
            ),
            ["cache-0"]
        );
        assert_eq!(
            pick(serde_json::json!({"servers": ["db-0"], "groups": ["front"]})),
            ["web-0", "web-1", "db-0"]
        );
    }
}
