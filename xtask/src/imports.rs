//! `cargo xtask imports`: the modules of the `weir` crate must not import each other in a
//! circle. A circle means neither side can be understood, tested or moved into a crate of
//! its own without the other; the check reads every `crate::<module>` path outside
//! comments and fails naming each circle found.

use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → the modules it names, both by their top-level name under `src/`.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Read `src` (a crate's source directory) into its module graph; `main.rs`, `lib.rs` and
/// the `cli` binary are roots, not modules.
pub fn graph(src: &Path) -> Result<Graph> {
    let mut graph = Graph::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src)?;
            let top = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .unwrap_or_default()
                .trim_end_matches(".rs")
                .to_owned();
            if matches!(top.as_str(), "lib" | "main" | "cli") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let named = graph.entry(top.clone()).or_default();
            for m in crate_paths(&text) {
                if m != top {
                    named.insert(m);
                }
            }
        }
    }
    Ok(graph)
}

/// The first segment of every `crate::x` path and of every `use crate::{x, …}` group in
/// `text`, with `//` comments removed.
pub fn crate_paths(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| l.split_once("//").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Only the first segment of each item of the group: `a::{b, c}` names `a`.
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        start = false;
                        let name = ident(&group[j..]);
                        if !name.is_empty() && name != "self" {
                            out.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The circles of `graph`: its strongly connected parts of more than one module.
pub fn circles(graph: &Graph) -> Vec<Vec<String>> {
    // Kosaraju: order by finish time, then walk the reversed graph in that order.
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for start in graph.keys() {
        finish(graph, start, &mut seen, &mut order);
    }
    let mut reversed = Graph::new();
    for (a, bs) in graph {
        for b in bs {
            reversed.entry(b.clone()).or_default().insert(a.clone());
        }
    }
    let mut placed = BTreeSet::new();
    let mut out = Vec::new();
    for v in order.iter().rev() {
        let mut part = Vec::new();
        finish(&reversed, v, &mut placed, &mut part);
        if part.len() > 1 {
            part.sort();
            out.push(part);
        }
    }
    out
}

/// Depth-first from `v`, appending each module after everything it reaches.
fn finish(graph: &Graph, v: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
    if !seen.insert(v.to_owned()) {
        return;
    }
    let mut stack = vec![(
        v.to_owned(),
        graph
            .get(v)
            .map(|s| s.iter().cloned().collect::<Vec<_>>())
            .unwrap_or_default(),
    )];
    while let Some((node, next)) = stack.last_mut() {
        match next.pop() {
            Some(w) => {
                if seen.insert(w.clone()) {
                    let more = graph
                        .get(&w)
                        .map(|s| s.iter().cloned().collect())
                        .unwrap_or_default();
                    stack.push((w, more));
                }
            }
            None => {
                order.push(node.clone());
                stack.pop();
            }
        }
    }
}

/// The check `cargo xtask imports` runs on `runtime/src`.
pub fn check(src: &Path) -> Result<()> {
    let graph = graph(src)?;
    let found = circles(&graph);
    if found.is_empty() {
        println!("imports: {} modules, no circle", graph.len());
        return Ok(());
    }
    for part in &found {
        eprintln!("import circle in {}: {}", src.display(), part.join(" ↔ "));
        for a in part {
            let into: Vec<&str> = graph[a]
                .iter()
                .filter(|b| part.contains(b))
                .map(String::as_str)
                .collect();
            eprintln!("  {a} uses crate::{}", into.join(", crate::"));
        }
    }
    eprintln!(
        "{} import circle(s): move what they share to the module both depend on, or into weir-core",
        found.len()
    );
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_groups_name_their_first_segment_and_comments_do_not_count() {
        let text = "use crate::a::B;\nuse crate::{b::{C, D}, c, self};\n// see crate::d\nfn f() { crate::e::g() }";
        let got: Vec<String> = crate_paths(text).into_iter().collect();
        assert_eq!(got, ["a", "b", "c", "e"]);
    }

    #[test]
    fn a_circle_is_found_and_a_chain_is_not() {
        let g = |edges: &[(&str, &str)]| {
            let mut g = Graph::new();
            for (a, b) in edges {
                g.entry(a.to_string()).or_default().insert(b.to_string());
                g.entry(b.to_string()).or_default();
            }
            g
        };
        assert!(circles(&g(&[("a", "b"), ("b", "c")])).is_empty());
        assert_eq!(
            circles(&g(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])),
            vec![vec!["a".to_string(), "b".into(), "c".into()]]
        );
    }
}
