//! `kz scan [PATH...] [--stdin] [--binary]`: finds where a resolved value already leaked —
//! transcripts, logs, generated code — in any form the scrubber knows (raw, base64 and its
//! URL-safe and unaligned variants, percent-encoded, JSON-escaped, hex). Reports
//! `path:line: NAME (form)`, never the value. Walks like ripgrep (the `ignore` crate: `.gitignore`
//! honoured, hidden files skipped); binary files are skipped unless `--binary`.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use aho_corasick::{AhoCorasick, MatchKind};
use zeroize::Zeroizing;

use super::{load_config, process_env, resolve_config, runtime, CommandResult, Failure};
use crate::cli::ScanArgs;

/// Line, secret name, form.
type Finding = (usize, String, &'static str);
/// A file's shown path and its findings.
type FileFindings = (String, Vec<Finding>);

/// Every form of `value` kz looks for, each with its name. Forms shorter than the masking
/// minimum are left out (they would match ordinary text).
pub fn labelled_forms(value: &str) -> Vec<(&'static str, Zeroizing<Vec<u8>>)> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine;
    let z = |b: Vec<u8>| Zeroizing::new(b);
    let mut out: Vec<(&'static str, Zeroizing<Vec<u8>>)> =
        vec![("raw", z(value.as_bytes().to_vec()))];
    for (label, engine) in [
        ("base64", &STANDARD),
        ("base64", &STANDARD_NO_PAD),
        ("base64url", &URL_SAFE),
        ("base64url", &URL_SAFE_NO_PAD),
    ] {
        out.push((label, z(engine.encode(value).into_bytes())));
    }
    // Inside a longer base64 text, at each byte alignment: the characters the value alone
    // determines.
    if value.len() >= crate::conceal::forms::MIN_UNALIGNED_LEN {
        for (label, engine) in [
            ("base64", &STANDARD_NO_PAD),
            ("base64url", &URL_SAFE_NO_PAD),
        ] {
            for f in crate::conceal::forms::base64_fragments(engine, value) {
                out.push((label, f));
            }
        }
    }
    for set in [
        crate::conceal::forms::URL_ENCODE_SET,
        percent_encoding::NON_ALPHANUMERIC,
    ] {
        let upper = percent_encoding::utf8_percent_encode(value, set).to_string();
        out.push((
            "percent-encoded",
            z(upper.to_ascii_lowercase().into_bytes()),
        ));
        out.push(("percent-encoded", z(upper.into_bytes())));
    }
    let json = serde_json::to_string(value).expect("strings serialise");
    let json = &json[1..json.len() - 1];
    out.push(("json-escaped", z(json.as_bytes().to_vec())));
    out.push(("json-escaped", z(json.replace('/', "\\/").into_bytes())));
    let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
    out.push(("hex", z(hex.to_ascii_uppercase().into_bytes())));
    out.push(("hex", z(hex.into_bytes())));
    // Percent-encoding of a plain value is the value itself, and so on: the first label wins.
    let mut seen = std::collections::HashSet::new();
    out.retain(|(_, f)| f.len() >= crate::conceal::forms::MIN_MASK_LEN && seen.insert(f.to_vec()));
    out
}

/// The compiled patterns: which secret and which form each one is.
pub struct Scanner {
    ac: AhoCorasick,
    labels: Vec<(String, &'static str)>,
}

impl Scanner {
    pub fn new(values: &[(String, Zeroizing<String>)]) -> Option<Scanner> {
        let mut patterns: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        let mut labels = Vec::new();
        for (name, v) in values {
            for (label, f) in labelled_forms(v) {
                patterns.push(f);
                labels.push((name.clone(), label));
            }
        }
        if patterns.is_empty() {
            return None;
        }
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(patterns.iter().map(|p| &p[..]))
            .ok()?;
        Some(Scanner { ac, labels })
    }

    /// `(line, name, form)` of every finding in `data`, in order, each once per line.
    pub fn scan(&self, data: &[u8]) -> Vec<(usize, &str, &'static str)> {
        let mut out: Vec<(usize, &str, &'static str)> = Vec::new();
        let mut seen = BTreeSet::new();
        let (mut line, mut counted) = (1usize, 0usize);
        for m in self.ac.find_iter(data) {
            line += memchr_count(&data[counted..m.start()]);
            counted = m.start();
            let (name, form) = &self.labels[m.pattern().as_usize()];
            if seen.insert((line, name.as_str(), *form)) {
                out.push((line, name.as_str(), *form));
            }
        }
        out
    }
}

fn memchr_count(data: &[u8]) -> usize {
    data.iter().filter(|b| **b == b'\n').count()
}

fn looks_binary(data: &[u8]) -> bool {
    data[..data.len().min(8192)].contains(&0)
}

fn report(path: &str, findings: &[(usize, &str, &'static str)]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for (line, name, form) in findings {
        let _ = writeln!(out, "{path}:{line}: {name} ({form})");
    }
}

pub fn scan(a: ScanArgs) -> CommandResult {
    let env = process_env();
    let cfg = load_config(a.config.config.as_deref(), &*env, crate::exit::EXIT_FAIL)?;
    let audit = crate::audit::Audit::disabled();
    let rt = runtime()?;
    let results = rt.block_on(resolve_config(&cfg, env, &audit));
    let mut values = Vec::new();
    let mut problems = Vec::new();
    for r in results {
        if let Some(line) = r.error_line() {
            problems.push(line);
        }
        if let Ok(Some(v)) = r.outcome {
            values.push((r.spec.name, Zeroizing::new(v.expose().to_string())));
        }
    }
    for p in &problems {
        eprintln!("kz: {p}");
    }
    let Some(scanner) = Scanner::new(&values) else {
        return Err(Failure::new(
            crate::exit::EXIT_FAIL,
            "no resolved value is long enough to look for",
        ));
    };
    let mut found = 0usize;
    if a.stdin {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(|e| Failure::new(crate::exit::EXIT_FAIL, format!("stdin: {e}")))?;
        let f = scanner.scan(&data);
        found += f.len();
        report("<stdin>", &f);
    } else {
        let roots: Vec<PathBuf> = if a.paths.is_empty() {
            vec![PathBuf::from(".")]
        } else {
            a.paths.clone()
        };
        let mut walk = ignore::WalkBuilder::new(&roots[0]);
        // .gitignore files count in any directory, as in a fresh checkout or an export.
        walk.require_git(false);
        for r in &roots[1..] {
            walk.add(r);
        }
        // Files are read and scanned on every core; findings are printed sorted by path.
        let results: std::sync::Mutex<Vec<FileFindings>> = std::sync::Mutex::new(Vec::new());
        let scanner = &scanner;
        let binary = a.binary;
        walk.build_parallel().run(|| {
            let results = &results;
            Box::new(move |entry| {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        eprintln!("kz: {e}");
                        return ignore::WalkState::Continue;
                    }
                };
                if !entry.file_type().is_some_and(|t| t.is_file()) {
                    return ignore::WalkState::Continue;
                }
                let path = entry.path();
                let data = match std::fs::read(path) {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("kz: {}: {}", path.display(), crate::config::io_reason(&e));
                        return ignore::WalkState::Continue;
                    }
                };
                if !binary && looks_binary(&data) {
                    return ignore::WalkState::Continue;
                }
                let f: Vec<Finding> = scanner
                    .scan(&data)
                    .into_iter()
                    .map(|(l, n, form)| (l, n.to_string(), form))
                    .collect();
                if !f.is_empty() {
                    results.lock().unwrap().push((shown(path), f));
                }
                ignore::WalkState::Continue
            })
        });
        let mut results = results.into_inner().unwrap();
        results.sort_by(|a, b| a.0.cmp(&b.0));
        for (path, f) in &results {
            found += f.len();
            let f: Vec<(usize, &str, &'static str)> = f
                .iter()
                .map(|(l, n, form)| (*l, n.as_str(), *form))
                .collect();
            report(path, &f);
        }
    }
    if found > 0 {
        eprintln!("kz: {found} finding(s); values not shown");
        Ok(crate::exit::EXIT_FAIL)
    } else if !problems.is_empty() {
        Ok(crate::exit::EXIT_FAIL)
    } else {
        Ok(0)
    }
}

fn shown(p: &Path) -> String {
    p.strip_prefix("./").unwrap_or(p).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_is_found_and_named_never_shown() {
        use base64::Engine;
        let v = "sk-scan/Value+0123456789";
        let s = Scanner::new(&[("KEY".into(), Zeroizing::new(v.into()))]).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("user:{v}"));
        let hex: String = v.bytes().map(|b| format!("{b:02x}")).collect();
        let text = format!(
            "clean line\nraw {v}\nbasic {b64}\nurl sk-scan%2FValue%2B0123456789\njson {}\nhex {hex}\n",
            serde_json::to_string(v).unwrap()
        );
        let got: Vec<(usize, &str)> = s
            .scan(text.as_bytes())
            .into_iter()
            .map(|(l, _, f)| (l, f))
            .collect();
        assert_eq!(
            got,
            [
                (2, "raw"),
                (3, "base64"),
                (4, "percent-encoded"),
                (5, "raw"),
                (6, "hex")
            ],
            "(JSON of this value is the value itself)"
        );
        assert!(s.scan(b"nothing here\n").is_empty());
        // A value whose base64 differs between the alphabets is named by the one found.
        let odd = "key?>?>?>?>value";
        let s = Scanner::new(&[("ODD".into(), Zeroizing::new(odd.into()))]).unwrap();
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(odd);
        let std = base64::engine::general_purpose::STANDARD.encode(odd);
        assert_ne!(url, std);
        let forms: Vec<&str> = s
            .scan(format!("{url}\n{std}\n").as_bytes())
            .into_iter()
            .map(|(_, _, f)| f)
            .collect();
        assert_eq!(forms, ["base64url", "base64"]);
    }
}
