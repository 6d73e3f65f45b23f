//! The layering of `src/` (README, "Layout"): the format core (`src/core/`) uses nothing
//! else in the crate, the compressed container (`zst`) uses only the core and the low
//! helpers, and no module uses, directly or not, one that uses it back.
//!
//! Every `.rs` file under `src/` is read except `src/cli/` and `src/main.rs`, which sit on
//! top. Comments (including doc comments) and string literals are dropped; what is left is
//! scanned for paths that start at the crate root: `crate::X`, `$crate::X` and `super::`
//! chains (resolved from the file's module and the inline modules around them). `X` is
//! mapped through the root's re-exports in `src/lib.rs` (`crate::format` and
//! `crate::DiffReader` are the core), and the first segment of the result is the module
//! used. Inside the core, its modules (`core::slice`, ...) are told apart, so that a cycle
//! among them is found too.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The low helpers: small modules that use at most the core and each other.
const HELPERS: &[&str] = &[
    "extent",
    "parallel",
    "positioned",
    "progress",
    "rate",
    "size",
    "smallfile",
    "utc",
];

/// The compressed container; see [`HELPERS`] for what else it may use.
const CONTAINER: &str = "zst";

/// The format core's directory and module.
const CORE: &str = "core";

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// The tokens of Rust source that matter for paths: identifiers, `::` and punctuation.
/// Comments (line, block, doc), string, raw string, byte string and char literals are
/// dropped; lifetimes are dropped with their quote.
fn tokens(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if ch == '\'' {
            if at(i + 1) == '\\' {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1; // a lifetime or label: its name follows as an identifier
            }
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            if matches!(word.as_str(), "r" | "br" | "cr") && matches!(at(i), '#' | '"') {
                let mut hashes = 0;
                while at(i + hashes) == '#' {
                    hashes += 1;
                }
                if at(i + hashes) == '"' {
                    // A raw string: ends at `"` and as many `#`.
                    i += hashes + 1;
                    while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#')) {
                        i += 1;
                    }
                    i += hashes + 1;
                    continue;
                }
                if hashes == 1 {
                    i += 1; // a raw identifier, `r#name`: the name follows
                    continue;
                }
            }
            if word.chars().next().is_some_and(|f| f.is_ascii_digit()) {
                continue; // a number
            }
            out.push(Tok::Ident(word));
        } else if ch == ':' && at(i + 1) == ':' {
            out.push(Tok::Path);
            i += 2;
        } else {
            out.push(Tok::Punct(ch));
            i += 1;
        }
    }
    out
}

fn ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

/// Parses the path or use tree at `toks[i]` (after its root: `crate::`, `self::`, ...);
/// returns its paths, each with the name it binds (the last segment or its `as` alias).
/// Generic arguments and what follows a path are not part of it.
fn tree(toks: &[Tok], mut i: usize) -> Vec<(Vec<String>, String)> {
    let mut prefix = Vec::new();
    loop {
        match toks.get(i) {
            Some(Tok::Ident(s)) => {
                prefix.push(s.clone());
                if toks.get(i + 1) == Some(&Tok::Path) {
                    i += 2;
                    continue;
                }
                let mut name = s.clone();
                if ident(toks.get(i + 1)) == Some("as") {
                    if let Some(alias) = ident(toks.get(i + 2)) {
                        name = alias.to_string();
                    }
                }
                if name == "self" {
                    prefix.pop();
                    name = prefix.last().cloned().unwrap_or_default();
                }
                return vec![(prefix, name)];
            }
            Some(Tok::Punct('{')) => {
                // A group: each entry is a tree of its own.
                let mut out = Vec::new();
                let mut depth = 0;
                let mut entry = true;
                for (k, t) in toks.iter().enumerate().skip(i) {
                    match t {
                        Tok::Punct('{') => {
                            depth += 1;
                            if depth > 1 {
                                continue;
                            }
                        }
                        Tok::Punct('}') => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                            continue;
                        }
                        Tok::Punct(',') if depth == 1 => {
                            entry = true;
                            continue;
                        }
                        _ => {}
                    }
                    if depth == 1 && entry && k > i {
                        entry = false;
                        for (mut p, name) in tree(toks, k) {
                            let mut full = prefix.clone();
                            let name = if p.is_empty() {
                                full.last().cloned()
                            } else {
                                None
                            }
                            .unwrap_or(name);
                            full.append(&mut p);
                            out.push((full, name));
                        }
                    }
                }
                return out;
            }
            _ => return Vec::new(), // `*`, or the path ended on `::`
        }
    }
}

/// The absolute paths (from the crate root) a file's code names, by token: `crate::...`,
/// `$crate::...`, and `super::` chains climbing out of `module` (the file's module path,
/// e.g. `["zst", "index"]`) or out of the inline modules it declares.
fn absolute_paths(toks: &[Tok], module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut braces: Vec<Option<String>> = Vec::new(); // Some(name) for `mod name {`
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Punct('{') => {
                let inline = match i.checked_sub(2).map(|k| (&toks[k], &toks[k + 1])) {
                    Some((Tok::Ident(m), Tok::Ident(name))) if m == "mod" => Some(name.clone()),
                    _ => None,
                };
                braces.push(inline);
            }
            Tok::Punct('}') => {
                braces.pop();
            }
            Tok::Ident(s) if toks.get(i + 1) == Some(&Tok::Path) => {
                if i > 0 && toks[i - 1] == Tok::Path {
                    continue; // not the start of a path
                }
                let mut here: Vec<String> = module.to_vec();
                here.extend(braces.iter().flatten().cloned());
                let (base, start) = match s.as_str() {
                    "crate" => (Vec::new(), i + 2),
                    "super" => {
                        let mut k = i;
                        let mut up = 0;
                        while ident(toks.get(k)) == Some("super")
                            && toks.get(k + 1) == Some(&Tok::Path)
                        {
                            up += 1;
                            k += 2;
                        }
                        if up > here.len() {
                            continue;
                        }
                        (here[..here.len() - up].to_vec(), k)
                    }
                    _ => continue,
                };
                for (p, _) in tree(toks, start) {
                    let mut full = base.clone();
                    full.extend(p);
                    if !full.is_empty() {
                        out.push(full);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// What the crate root's `use` declarations bind: name -> the path it stands for.
fn root_names(lib: &str) -> BTreeMap<String, Vec<String>> {
    let toks = tokens(lib);
    let mut names = BTreeMap::new();
    for (i, t) in toks.iter().enumerate() {
        if ident(Some(t)) != Some("use") {
            continue;
        }
        let mut start = i + 1;
        while matches!(ident(toks.get(start)), Some("self" | "crate"))
            && toks.get(start + 1) == Some(&Tok::Path)
        {
            start += 2;
        }
        for (path, name) in tree(&toks, start) {
            names.insert(name, path);
        }
    }
    names
}

/// The module (top-level, or `core::x` inside the core) an absolute path lands in, after
/// following the root's re-exports.
fn resolve(mut path: Vec<String>, names: &BTreeMap<String, Vec<String>>) -> String {
    for _ in 0..16 {
        match names.get(&path[0]) {
            Some(to) if to.len() > 1 || to[0] != path[0] => {
                let mut p = to.clone();
                p.extend(path.drain(1..));
                path = p;
            }
            _ => break,
        }
    }
    if path[0] == CORE && path.len() > 1 {
        format!("{CORE}::{}", path[1])
    } else {
        path[0].clone()
    }
}

fn part(module: &str) -> &str {
    module.split("::").next().unwrap()
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// module -> module it uses -> the files (relative to `src/`) where it does.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// The use graph of `src/`, by module; the core's modules are `core::x`.
fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let names = root_names(&fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let mut g = Graph::new();
    for f in files {
        let rel = f
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel == "lib.rs" || rel == "main.rs" || rel.starts_with("cli/") {
            continue;
        }
        let mut module: Vec<String> = rel
            .trim_end_matches(".rs")
            .split('/')
            .map(String::from)
            .collect();
        if module.last().is_some_and(|m| m == "mod") {
            module.pop();
        }
        let me = if module[0] == CORE && module.len() > 1 {
            format!("{CORE}::{}", module[1])
        } else {
            module[0].clone()
        };
        let uses = g.entry(me.clone()).or_default();
        for path in absolute_paths(&tokens(&fs::read_to_string(&f).unwrap()), &module) {
            let used = resolve(path, &names);
            if used != me {
                uses.entry(used).or_default().insert(format!("src/{rel}"));
            }
        }
    }
    g
}

/// The graph with the core as one node.
fn by_part(g: &Graph) -> Graph {
    let mut out = Graph::new();
    for (m, uses) in g {
        let node = out.entry(part(m).to_string()).or_default();
        for (u, files) in uses {
            if part(u) != part(m) {
                node.entry(part(u).to_string())
                    .or_default()
                    .extend(files.iter().cloned());
            }
        }
    }
    out
}

fn show(uses: &BTreeMap<String, BTreeSet<String>>) -> String {
    uses.iter()
        .map(|(u, files)| {
            format!(
                "{u} (in {})",
                files.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A cycle of `g`, as the modules along it (the first repeated at the end).
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        m: &str,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(k) = stack.iter().position(|s| s == m) {
            let mut c = stack[k..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if !done.insert(m.to_string()) {
            return None;
        }
        stack.push(m.to_string());
        for u in g.get(m).into_iter().flat_map(|u| u.keys()) {
            if let Some(c) = visit(g, u, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|m| visit(g, m, &mut done, &mut Vec::new()))
}

fn explain(g: &Graph, c: &[String]) -> String {
    let edges: Vec<String> = c
        .windows(2)
        .map(|w| {
            let files = &g[&w[0]][&w[1]];
            format!(
                "{} uses {} in {}",
                w[0],
                w[1],
                files.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    format!("{}\n  {}", c.join(" -> "), edges.join("\n  "))
}

#[test]
fn the_scan_sees_known_uses() {
    // Guards the scanner itself: if it found nothing, every check below would pass.
    let g = by_part(&graph());
    for (m, u) in [
        ("input", CONTAINER),
        ("input", CORE),
        ("sums", "output"),
        ("merge", "sweep"),
    ] {
        assert!(
            g.get(m).is_some_and(|x| x.contains_key(u)),
            "the scan missed {m} -> {u}"
        );
    }
    let full = graph();
    assert!(
        full["core::slice"].contains_key("core::parse"),
        "{:?}",
        full["core::slice"]
    );
}

#[test]
fn the_core_uses_nothing_outside_itself() {
    let g = by_part(&graph());
    let uses = &g[CORE];
    assert!(
        uses.is_empty(),
        "the format core (src/core/) uses {}",
        show(uses)
    );
}

#[test]
fn the_container_uses_only_the_core_and_low_helpers() {
    let g = by_part(&graph());
    let allowed = |u: &str| u == CORE || HELPERS.contains(&u);
    for m in HELPERS.iter().copied().chain([CONTAINER]) {
        let bad: BTreeMap<_, _> = g[m]
            .iter()
            .filter(|(u, _)| !allowed(u))
            .map(|(u, f)| (u.clone(), f.clone()))
            .collect();
        assert!(
            bad.is_empty(),
            "{m} may use only the core and the low helpers ({}), but uses {}",
            HELPERS.join(", "),
            show(&bad)
        );
    }
}

#[test]
fn no_module_uses_itself_through_others() {
    let full = graph();
    if let Some(c) = cycle(&by_part(&full)) {
        panic!("a cycle between modules: {}", explain(&by_part(&full), &c));
    }
    if let Some(c) = cycle(&full) {
        panic!("a cycle inside the core: {}", explain(&full, &c));
    }
}

#[test]
fn the_scanner_reads_paths_not_comments_or_strings() {
    let src = r##"
        //! [`crate::doc_only`]
        /* crate::block /* nested crate::inner */ still crate::comment */
        use crate::{a::{X, Y}, b as bee, c::self};
        use super::*;
        const S: &str = "crate::in_string \" crate::escaped";
        const R: &str = r#"crate::raw " crate::raw_quote"#;
        const C: char = '"';
        fn f<'a>(x: &'a u8) -> crate::d::T<'a> { super::super::e::g(); crate::format::X }
        mod tests { use super::*; use super::super::h; }
    "##;
    let module = vec!["zst".to_string(), "index".to_string()];
    let firsts: Vec<String> = absolute_paths(&tokens(src), &module)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(
        firsts,
        [
            "a::X",
            "a::Y",
            "b",
            "c",
            "d::T",
            "e::g",
            "format::X",
            "zst::h"
        ],
    );
}
