//! Cycle finding shared by validation and the planner.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

/// One cycle per strongly connected set of nodes, each as the list of nodes
/// on it in order (the first node is not repeated at the end). Deterministic
/// for a deterministic `nodes` order and `succ`.
pub fn cycles<N, F>(nodes: &[N], succ: F) -> Vec<Vec<N>>
where
    N: Copy + Eq + Hash,
    F: Fn(N) -> Vec<N>,
{
    let mut g: DiGraph<N, ()> = DiGraph::with_capacity(nodes.len(), nodes.len());
    let mut index: HashMap<N, NodeIndex> = HashMap::with_capacity(nodes.len());
    for &n in nodes {
        index.entry(n).or_insert_with(|| g.add_node(n));
    }
    for &n in nodes {
        for m in succ(n) {
            if let (Some(&a), Some(&b)) = (index.get(&n), index.get(&m)) {
                g.update_edge(a, b, ());
            }
        }
    }
    cycles_in(&g)
        .into_iter()
        .map(|c| c.into_iter().map(|i| g[i]).collect())
        .collect()
}

/// One cycle per strongly connected component of `g`, as node indices.
pub fn cycles_in<N, E>(g: &DiGraph<N, E>) -> Vec<Vec<NodeIndex>> {
    let mut out = Vec::new();
    let mut sccs = tarjan_scc(g);
    for scc in &mut sccs {
        scc.sort();
    }
    sccs.sort();
    for scc in sccs {
        let start = scc[0];
        if scc.len() == 1 && !g.contains_edge(start, start) {
            continue;
        }
        out.push(shortest_cycle_through(g, start, &scc));
    }
    out
}

/// Breadth-first search from `start` back to itself inside `members`.
fn shortest_cycle_through<N, E>(g: &DiGraph<N, E>, start: NodeIndex, members: &[NodeIndex]) -> Vec<NodeIndex> {
    if g.contains_edge(start, start) {
        return vec![start];
    }
    let inside = |n: NodeIndex| members.binary_search(&n).is_ok();
    let mut parent: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        let mut next: Vec<NodeIndex> = g.neighbors(n).filter(|&m| inside(m)).collect();
        next.sort();
        for m in next {
            if m == start {
                let mut path = vec![n];
                let mut cur = n;
                while cur != start {
                    cur = parent[&cur];
                    path.push(cur);
                }
                path.reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(m) {
                e.insert(n);
                queue.push_back(m);
            }
        }
    }
    // Unreachable for a real strongly connected component; fall back to
    // naming its members.
    members.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_cycle_once_with_every_node() {
        let edges: HashMap<&str, Vec<&str>> = HashMap::from([
            ("a", vec!["b"]),
            ("b", vec!["c"]),
            ("c", vec!["a"]),
            ("d", vec!["d"]),
            ("e", vec!["a"]),
        ]);
        let nodes = ["a", "b", "c", "d", "e"];
        let found = cycles(&nodes, |n| edges.get(n).cloned().unwrap_or_default());
        assert_eq!(found, vec![vec!["a", "b", "c"], vec!["d"]]);
    }

    #[test]
    fn acyclic_graph_has_no_cycles() {
        let nodes = [1, 2, 3];
        assert!(cycles(&nodes, |n| if n < 3 { vec![n + 1] } else { vec![] }).is_empty());
    }
}
