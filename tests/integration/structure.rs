//! The source tree's shape, checked so it does not drift back: no module imports a sibling
//! that imports it back (at any depth, through `crate::` or `super::` paths), and a file
//! longer than about 400 lines (tests not counted) says in its `//!` comment why it stays whole.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/proxy/mod.rs` -> `proxy`, `src/proxy/intercept.rs` -> `proxy::intercept`.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: ModPath = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts
}

/// The code before the file's unit tests, comment lines left out.
fn code(text: &str) -> String {
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or("");
    before_tests
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path written after `prefix` (`crate::` or `super::`), as its segments.
fn paths_after(code: &str, prefix: &str) -> Vec<ModPath> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let boundary =
            !matches!(rest[..i].chars().last(), Some(c) if c.is_alphanumeric() || c == '_');
        rest = &rest[i + prefix.len()..];
        if !boundary {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let segs: ModPath = rest[..end]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if !segs.is_empty() {
            out.push(segs);
        }
    }
    out
}

#[test]
fn no_module_imports_a_sibling_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut uses: BTreeMap<ModPath, Vec<ModPath>> = BTreeMap::new();
    for f in files.iter().filter(|f| !f.ends_with("main.rs")) {
        let m = module_of(&src, f);
        let c = code(&std::fs::read_to_string(f).unwrap());
        let mut targets = paths_after(&c, "crate::");
        let parent = m[..m.len().saturating_sub(1)].to_vec();
        for p in paths_after(&c, "super::") {
            targets.push(parent.iter().cloned().chain(p).collect());
        }
        uses.entry(m).or_default().extend(targets);
    }
    let mut modules: BTreeSet<ModPath> = BTreeSet::new();
    for m in uses.keys() {
        for i in 1..=m.len() {
            modules.insert(m[..i].to_vec());
        }
    }
    let refers = |a: &ModPath, b: &ModPath| {
        uses.iter()
            .any(|(m, ts)| m.starts_with(a) && ts.iter().any(|t| t.starts_with(b)))
    };
    let mut cycles = Vec::new();
    for a in &modules {
        for b in &modules {
            let siblings = a < b && a.len() == b.len() && a[..a.len() - 1] == b[..b.len() - 1];
            if siblings && refers(a, b) && refers(b, a) {
                cycles.push(format!("{} <-> {}", a.join("::"), b.join("::")));
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:?}");
    assert!(
        modules.len() > 40,
        "the scan saw the tree: {}",
        modules.len()
    );
}

#[test]
fn a_long_file_says_why_it_stays_whole() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut unexplained = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .count();
        let header: String = text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join(" ");
        if lines > 420 && !header.contains("Longer than 400 lines because") {
            unexplained.push(format!("{} ({lines} lines)", f.display()));
        }
    }
    assert!(
        unexplained.is_empty(),
        "long files without a reason: {unexplained:?}"
    );
}

#[test]
fn the_scanner_finds_a_cycle_when_there_is_one() {
    // The checks above must be able to fail: two sibling modules naming each other.
    let a = paths_after("use super::b::x; let y = crate::m::b::f();", "super::");
    assert_eq!(a, vec![vec!["b".to_string(), "x".to_string()]]);
    let c = paths_after("not_super::x; (super::y)", "super::");
    assert_eq!(c, vec![vec!["y".to_string()]]);
    assert_eq!(
        code("//! doc\nuse crate::a;\n#[cfg(test)]\nuse crate::b;"),
        "use crate::a;"
    );
}
