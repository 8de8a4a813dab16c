//! `kz import [FILE] [--remove]`: moves a `.env` file's values into the local store and adds an
//! entry per key to `.keyzero.toml`. Values never reach stdout, stderr or argv; existing entries
//! are never overwritten; a failure part-way leaves the store and the config as they were.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{CommandResult, Failure, EXIT_FAIL};
use crate::cli::ImportArgs;
use crate::config;
use crate::env::ProcessEnv;
use crate::provider::local::{self, StorePaths};
use crate::secret::SecretValue;

/// One `KEY=VALUE` of a dotenv file.
pub struct Entry {
    pub key: String,
    pub value: Zeroizing<String>,
    pub line: usize,
}

/// Parses dotenv text: `KEY=VALUE`, `export KEY=VALUE`, `#` comments, single quotes
/// (literal), double quotes (`\n`, `\t`, `\"`, `\\` escapes; may span lines), unquoted values
/// up to a ` #` comment. Errors name the line, never the value.
pub fn parse_dotenv(text: &str) -> Result<Vec<Entry>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let no = i + 1;
        let line = lines[i].trim_start();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let Some((key, rest)) = line.split_once('=') else {
            errors.push(format!("line {no}: expected KEY=VALUE"));
            continue;
        };
        let key = key.trim();
        if !config::valid_env_name(key) {
            errors.push(format!("line {no}: {key:?} is not a valid variable name"));
            continue;
        }
        let rest = rest.trim_start();
        let value = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => {
                // Gather lines until the closing quote.
                let mut body = rest[1..].to_string();
                let mut value = Zeroizing::new(String::new());
                let mut closed = false;
                loop {
                    let mut chars = body.chars().peekable();
                    let mut consumed = 0;
                    while let Some(c) = chars.next() {
                        consumed += c.len_utf8();
                        if c == q {
                            closed = true;
                            break;
                        }
                        if q == '"' && c == '\\' {
                            if let Some(n) = chars.next() {
                                consumed += n.len_utf8();
                                value.push(match n {
                                    'n' => '\n',
                                    'r' => '\r',
                                    't' => '\t',
                                    other => other,
                                });
                                continue;
                            }
                        }
                        value.push(c);
                    }
                    if closed {
                        let after = body[consumed..].trim();
                        if !after.is_empty() && !after.starts_with('#') {
                            errors.push(format!("line {no}: text after the closing quote"));
                        }
                        break;
                    }
                    if i >= lines.len() {
                        break;
                    }
                    value.push('\n');
                    body = lines[i].to_string();
                    i += 1;
                }
                if !closed {
                    errors.push(format!(
                        "line {no}: {key}: the quoted value is never closed"
                    ));
                    continue;
                }
                value
            }
            _ => {
                let v = match rest.find(" #") {
                    Some(c) => &rest[..c],
                    None => rest,
                };
                Zeroizing::new(v.trim_end().to_string())
            }
        };
        out.push(Entry {
            key: key.to_string(),
            value,
            line: no,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// `text` with `lines` added to its `[secrets]` table (created at the end when missing).
fn with_entries(text: &str, lines: &[String]) -> String {
    let block: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let mut out = String::with_capacity(text.len() + block.len() + 16);
    let mut done = false;
    for l in text.split_inclusive('\n') {
        out.push_str(l);
        if !done && l.trim() == "[secrets]" {
            if !l.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&block);
            done = true;
        }
    }
    if !done {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("[secrets]\n");
        out.push_str(&block);
    }
    out
}

fn io(path: &Path, e: std::io::Error) -> Failure {
    Failure::new(
        EXIT_FAIL,
        format!("{}: {}", path.display(), config::io_reason(&e)),
    )
}

pub fn import(a: ImportArgs) -> CommandResult {
    let env = ProcessEnv;
    let file = a.file.unwrap_or_else(|| PathBuf::from(".env"));
    let text = Zeroizing::new(std::fs::read_to_string(&file).map_err(|e| io(&file, e))?);
    let entries = parse_dotenv(&text).map_err(|errs| {
        Failure::many(
            EXIT_FAIL,
            errs.into_iter()
                .map(|e| format!("{}: {e}", file.display()))
                .collect(),
        )
    })?;
    // The config: the one given or found, else a new .keyzero.toml here.
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let cfg_path = match &a.config.config {
        Some(p) => p.clone(),
        None => config::discover(None, &env, &cwd).unwrap_or_else(|_| cwd.join(".keyzero.toml")),
    };
    let (cfg_text, cfg) = if cfg_path.exists() {
        let t = std::fs::read_to_string(&cfg_path).map_err(|e| io(&cfg_path, e))?;
        let c = config::load(&cfg_path).map_err(|e| {
            Failure::many(EXIT_FAIL, e.to_string().lines().map(String::from).collect())
        })?;
        (t, c)
    } else {
        (String::new(), config::Config::default())
    };
    let paths = StorePaths::resolve(&cfg.providers.local, None, &env)
        .map_err(|e| Failure::new(EXIT_FAIL, e))?;
    let stored = local::read_only(&paths).map_err(|e| Failure::new(EXIT_FAIL, e.to_string()))?;
    let mut conflicts = Vec::new();
    let mut take: Vec<&Entry> = Vec::new();
    for e in &entries {
        if e.value.is_empty() {
            conflicts.push(format!(
                "{}: empty value (line {}), not imported",
                e.key, e.line
            ));
        } else if cfg.secrets.iter().any(|s| s.name == e.key) {
            conflicts.push(format!(
                "{}: already in {}, left as it is",
                e.key,
                cfg_path.display()
            ));
        } else if stored
            .secrets
            .get(&e.key)
            .is_some_and(|v| v.expose() != e.value.as_str())
        {
            conflicts.push(format!(
                "{}: the local store already holds another value under this name, left as it is",
                e.key
            ));
        } else if let Some(i) = take.iter().position(|t| t.key == e.key) {
            // A later line wins, as in a shell.
            take[i] = e;
        } else {
            take.push(e);
        }
    }
    for c in &conflicts {
        eprintln!("kz: {c}");
    }
    if take.is_empty() {
        return Err(Failure::new(
            EXIT_FAIL,
            format!("{}: nothing to import", file.display()),
        ));
    }
    // Store first (one atomic write), then the config; a failure of the second puts the
    // store's previous bytes back.
    let before = std::fs::read(&paths.store).ok();
    local::update(&paths, |s| {
        for e in &take {
            s.secrets
                .insert(e.key.clone(), SecretValue::new(e.value.as_str()));
        }
        Ok(())
    })
    .map_err(|e| Failure::new(EXIT_FAIL, e.to_string()))?;
    let restore = || match &before {
        Some(b) => {
            let _ = local::atomic_write(&paths.store, b);
        }
        None => {
            let _ = std::fs::remove_file(&paths.store);
        }
    };
    let lines: Vec<String> = take
        .iter()
        .map(|e| {
            format!(
                "{} = {{ provider = \"local\", ref = \"{}\" }}",
                e.key, e.key
            )
        })
        .collect();
    let new_text = with_entries(&cfg_text, &lines);
    let written = (|| -> Result<(), Failure> {
        let dir = cfg_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".keyzero.toml.")
            .tempfile_in(dir)
            .map_err(|e| io(dir, e))?;
        std::fs::write(tmp.path(), &new_text).map_err(|e| io(tmp.path(), e))?;
        // The result must still be a valid config before it replaces the old one.
        config::load(tmp.path()).map_err(|e| {
            Failure::many(EXIT_FAIL, e.to_string().lines().map(String::from).collect())
        })?;
        tmp.as_file().sync_all().map_err(|e| io(tmp.path(), e))?;
        tmp.persist(&cfg_path).map_err(|e| io(&cfg_path, e.error))?;
        Ok(())
    })();
    if let Err(e) = written {
        restore();
        return Err(e);
    }
    // Verify by reading every value back.
    let check = local::read_only(&paths).map_err(|e| Failure::new(EXIT_FAIL, e.to_string()))?;
    let bad: Vec<String> = take
        .iter()
        .filter(|e| {
            check
                .secrets
                .get(&e.key)
                .map_or(true, |v| v.expose() != e.value.as_str())
        })
        .map(|e| format!("{}: did not read back as stored", e.key))
        .collect();
    if !bad.is_empty() {
        return Err(Failure::many(EXIT_FAIL, bad));
    }
    let names: Vec<&str> = take.iter().map(|e| e.key.as_str()).collect();
    println!(
        "imported {} secret{} into the local store and {}: {}",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        cfg_path.display(),
        names.join(", ")
    );
    if a.remove {
        if !conflicts.is_empty() {
            eprintln!(
                "kz: note: {} kept: some entries were not imported (above)",
                file.display()
            );
        } else {
            std::fs::remove_file(&file).map_err(|e| io(&file, e))?;
            println!("removed {}", file.display());
        }
    } else {
        eprintln!(
            "kz: note: {} still holds the values in plaintext; delete it (or run kz import --remove)",
            file.display()
        );
    }
    Ok(if conflicts.is_empty() { 0 } else { EXIT_FAIL })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_forms() {
        let text = "# comment\nexport A=plain value # note\nB='single # kept'\nC=\"two\\nlines \\\"q\\\"\"\nD=\"multi\nline\"\nE=\n  F = spaced\n";
        let e = parse_dotenv(text).unwrap();
        let got: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("A", "plain value"),
                ("B", "single # kept"),
                ("C", "two\nlines \"q\""),
                ("D", "multi\nline"),
                ("E", ""),
                ("F", "spaced"),
            ]
        );
        let Err(errs) = parse_dotenv("GOOD=1\nnot a line\n1BAD=x\nQ=\"open-secret-value\n") else {
            panic!("accepted")
        };
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs.iter().all(|e| !e.contains("open-secret-value")),
            "{errs:?}"
        );
    }

    #[test]
    fn entries_go_into_the_secrets_table() {
        let lines = vec!["K = { provider = \"local\", ref = \"K\" }".to_string()];
        assert_eq!(
            with_entries("[secrets]\nA = \"x\"\n\n[audit]\npath = \"a\"\n", &lines),
            "[secrets]\nK = { provider = \"local\", ref = \"K\" }\nA = \"x\"\n\n[audit]\npath = \"a\"\n"
        );
        assert_eq!(
            with_entries("[audit]\npath = \"a\"", &lines),
            "[audit]\npath = \"a\"\n\n[secrets]\nK = { provider = \"local\", ref = \"K\" }\n"
        );
        assert_eq!(
            with_entries("", &lines),
            "[secrets]\nK = { provider = \"local\", ref = \"K\" }\n"
        );
    }
}
