//! The sidecar's layout stays acyclic: its top-level modules (the folders under `src/` and the few
//! single-file leaves) may depend on each other only one way. A cycle between folders means no
//! folder can be read, tested or changed without the others, which is how the flat layout this
//! replaced ended up with thirteen modules in one loop.
//!
//! The check reads `src/**/*.rs`, takes every `crate::<module>` path (in `use` items and in
//! expressions, comments skipped), builds the graph of top-level modules and fails naming the
//! cycle it finds. `make lint` runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Which top-level module each reference in `source` names: `crate::a::b` and
/// `crate::{a::X, b}` give `a` (and `b`). Comments are skipped, so prose and doc links do not
/// count.
fn references(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        // `infermesh_crate::x` or `my_crate::x` is another path.
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest_trim = rest.trim_start();
        if let Some(group) = rest_trim.strip_prefix('{') {
            // One level of braces: the first segment of each item.
            let mut depth = 0;
            let mut item_start = true;
            let mut ident = String::new();
            for c in group.chars() {
                if item_start && (c.is_alphanumeric() || c == '_') {
                    ident.push(c);
                    continue;
                }
                if !ident.is_empty() {
                    out.insert(std::mem::take(&mut ident));
                    item_start = false;
                }
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    _ => {}
                }
            }
            if !ident.is_empty() {
                out.insert(ident);
            }
        } else {
            let ident: String = rest_trim
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                out.insert(ident);
            }
        }
    }
    out
}

/// The top-level module a file under `src/` belongs to (`request/attempts.rs` → `request`);
/// `None` for the crate roots, which wire everything together.
fn owner(relative: &Path) -> Option<String> {
    let mut parts = relative.components();
    let first = parts.next()?.as_os_str().to_str()?;
    if parts.next().is_some() {
        return Some(first.to_owned());
    }
    match first.strip_suffix(".rs")? {
        "lib" | "main" => None,
        m => Some(m.to_owned()),
    }
}

/// A cycle in `graph` as the path that closes it (`a -> b -> a`), if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| n == node)?;
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut marks, &mut Vec::new()))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The graph of the crate's top-level modules: which ones each refers to.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(from) = owner(file.strip_prefix(src).unwrap()) else {
            continue;
        };
        let source = std::fs::read_to_string(&file).unwrap();
        let to = graph.entry(from.clone()).or_default();
        to.extend(references(&source).into_iter().filter(|m| *m != from));
    }
    graph
}

#[test]
fn the_modules_of_the_sidecar_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(graph.len() > 5, "read too few modules: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "the sidecar's modules depend on each other in a cycle: {}\n\
             move the type both sides need down to the lower module; graph: {graph:#?}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn a_synthetic_cycle_is_found_and_named() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry((*a).into()).or_default().insert((*b).into());
            g.entry((*b).into()).or_default();
        }
        g
    };
    let acyclic = graph(&[
        ("request", "config"),
        ("config", "routing"),
        ("request", "routing"),
    ]);
    assert_eq!(find_cycle(&acyclic), None);
    let cyclic = graph(&[
        ("request", "config"),
        ("config", "routing"),
        ("routing", "request"),
        ("server", "request"),
    ]);
    assert_eq!(
        find_cycle(&cyclic).unwrap(),
        ["config", "routing", "request", "config"]
    );
    assert_eq!(find_cycle(&graph(&[("a", "a")])).unwrap(), ["a", "a"]);
}

#[test]
fn references_are_read_from_paths_and_grouped_uses_but_not_comments() {
    let src = "use crate::config::table::Service;\n\
               use crate::{detach, upstream::body::{Prepared, RequestBody}};\n\
               use infermesh_crds::mesh::Protocol;\n\
               // crate::server is only mentioned here\n\
               /// [`crate::options`] in a doc\n\
               fn f() { crate::metrics::Metrics::new(); let _ = my_crate::x; }\n";
    let got: Vec<String> = references(src).into_iter().collect();
    assert_eq!(got, ["config", "detach", "metrics", "upstream"]);
    assert_eq!(
        owner(Path::new("request/attempts.rs")).as_deref(),
        Some("request")
    );
    assert_eq!(owner(Path::new("hash.rs")).as_deref(), Some("hash"));
    assert_eq!(owner(Path::new("lib.rs")), None);
}

#[test]
fn a_cycle_written_in_source_fails_the_check() {
    // The whole pipeline, files to verdict, on a synthetic crate with a cycle between folders.
    let dir = std::env::temp_dir().join(format!("infermesh-layout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("low")).unwrap();
    std::fs::create_dir_all(dir.join("high")).unwrap();
    std::fs::write(dir.join("lib.rs"), "mod low; mod high;").unwrap();
    std::fs::write(dir.join("low/mod.rs"), "use crate::high::Thing;").unwrap();
    std::fs::write(dir.join("high/mod.rs"), "pub struct Thing; use crate::low;").unwrap();
    let cycle = find_cycle(&module_graph(&dir));
    std::fs::write(dir.join("low/mod.rs"), "pub struct Below;").unwrap();
    let fixed = find_cycle(&module_graph(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(cycle.unwrap(), ["high", "low", "high"]);
    assert_eq!(fixed, None);
}
