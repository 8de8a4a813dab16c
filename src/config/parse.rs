//! Validating a parsed table into a `Config`, every problem with its key path: the top level
//! and `[secrets]`.

use super::*;

/// Parses and validates config text. `file` names it in errors; `base` anchors relative paths.
pub fn parse_str(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let msg = e.message().to_lowercase();
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: ")
            })
            .unwrap_or_default();
        ConfigError::one(file, format!("{at}invalid toml: {msg}"))
    })?;
    let mut p = Problems::default();
    let cfg = parse_table(&table, base, &mut p);
    if p.0.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError {
            file: file.to_string(),
            problems: p.0,
        })
    }
}

/// Validates a parsed config table, adding every problem to `p` (also used for the
/// `providers`, `network` and `secrets` sections of a policy bundle).
pub fn parse_table(table: &toml::Table, base: &Path, p: &mut Problems) -> Config {
    let mut root = Reader::new("", table);
    let mut cfg = Config::default();

    if let Some(t) = root.table("providers", p) {
        cfg.providers = parse_providers(t, base, p);
    }
    if let Some(t) = root.table("secrets", p) {
        for (name, value) in t {
            if let Some(spec) = parse_secret(name, value, p) {
                cfg.secrets.push(spec);
            }
        }
    }
    if let Some(t) = root.table("network", p) {
        cfg.network = parse_network(t, base, p);
    }
    if let Some(t) = root.table("server", p) {
        cfg.server = parse_server(t, base, p);
    }
    if let Some(t) = root.table("isolate", p) {
        let mut r = Reader::new("isolate", t);
        cfg.isolate.hide = r.string_list("hide", p).unwrap_or_default();
        cfg.isolate.expose = r.string_list("expose", p).unwrap_or_default();
        r.finish(p);
    }
    if let Some(t) = root.table("blind", p) {
        let mut r = Reader::new("blind", t);
        match r.nonempty_string("tokens", p).as_deref() {
            None | Some("per-run") => {}
            Some("stable") => cfg.blind.tokens = TokenKind::Stable,
            Some(other) => p.push(
                "blind.tokens",
                format!("unknown mode {other:?} (expected \"per-run\" or \"stable\")"),
            ),
        }
        r.finish(p);
    }
    if let Some(t) = root.table("audit", p) {
        let mut r = Reader::new("audit", t);
        if let Some(path) = r.nonempty_string("path", p) {
            cfg.audit = Some(AuditConfig {
                path: base.join(path),
            });
        } else if !t.contains_key("path") {
            p.push("audit.path", "missing (the file to append audit lines to)");
        }
        r.finish(p);
    }
    root.finish(p);
    cfg
}

fn t_has(v: &toml::Value, key: &str) -> bool {
    v.as_table().is_some_and(|t| t.contains_key(key))
}

fn parse_secret(name: &str, value: &toml::Value, p: &mut Problems) -> Option<SecretSpec> {
    let path = join("secrets", name);
    if !valid_env_name(name) {
        p.push(
            &path,
            "not a valid environment variable name (letters, digits and '_', not starting with a digit)",
        );
    }
    let table = match value {
        toml::Value::String(s) => {
            let parsed = uri::parse_shorthand(s).and_then(|parts| {
                let r = crate::refs::parse(
                    parts.provider,
                    &parts.reference,
                    parts.key.as_deref(),
                    parts.version.as_deref(),
                )?;
                Ok((r, parts.optional))
            });
            return match parsed {
                Ok((r, optional)) => Some(SecretSpec {
                    name: name.to_string(),
                    provider: r.provider,
                    reference: r.reference,
                    key: r.key,
                    version: r.version,
                    optional,
                    hosts: Vec::new(),
                    swap: Swap::default(),
                }),
                Err(e) => {
                    p.push(&path, e);
                    None
                }
            };
        }
        toml::Value::Table(t) => t,
        other => {
            p.push(
                &path,
                format!(
                    "expected a table {{ provider = ..., ref = ... }} or a uri string, found {}",
                    type_name(other)
                ),
            );
            return None;
        }
    };
    let mut r = Reader::new(path.clone(), table);
    let before = p.0.len();
    let provider = match r.string("provider", p) {
        Some(s) => match ProviderKind::parse(&s) {
            Some(k) => Some(k),
            None => {
                let names: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.name()).collect();
                let hint = match reader::suggest(&s, names.iter().copied()) {
                    Some(m) => format!(" (did you mean {m:?}?)"),
                    None => format!(" (expected one of: {})", names.join(", ")),
                };
                p.push(
                    &r.key_path("provider"),
                    format!("unknown provider {s:?}{hint}"),
                );
                None
            }
        },
        None => {
            if !table.contains_key("provider") {
                p.push(&r.key_path("provider"), "missing");
            }
            None
        }
    };
    let reference = r.nonempty_string("ref", p);
    if reference.is_none() && !table.contains_key("ref") {
        p.push(&r.key_path("ref"), "missing");
    }
    let key = r.nonempty_string("key", p);
    let version = match r.raw("version") {
        Some(toml::Value::Integer(n)) => Some(n.to_string()),
        Some(toml::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(other) => {
            p.push(
                &r.key_path("version"),
                format!("expected a string or integer, found {}", type_name(other)),
            );
            None
        }
        None => None,
    };
    let optional = r.bool("optional", p).unwrap_or(false);
    let mut hosts = Vec::new();
    if let Some(list) = r.string_list("hosts", p) {
        for (i, h) in list.iter().enumerate() {
            match HostPattern::parse(h) {
                Ok(h) => hosts.push(h),
                Err(e) => p.push(&format!("{}[{i}]", r.key_path("hosts")), e),
            }
        }
    }
    let mut swap = Swap::default();
    if let Some(list) = r.string_list("swap", p) {
        swap = Swap::none();
        for (i, w) in list.iter().enumerate() {
            if !swap.set(w) {
                let hint = match reader::suggest(w, Swap::WORDS.iter().copied()) {
                    Some(m) => format!(" (did you mean {m:?}?)"),
                    None => format!(" (expected any of: {})", Swap::WORDS.join(", ")),
                };
                p.push(
                    &format!("{}[{i}]", r.key_path("swap")),
                    format!("unknown place {w:?}{hint}"),
                );
            }
        }
    }
    match r.nonempty_string("sign", p).as_deref() {
        None => {}
        Some("aws-sigv4") => {
            if t_has(value, "swap") {
                p.push(
                    &r.key_path("sign"),
                    "sign replaces swap (a signing key is never swapped as text); remove swap",
                );
            }
            swap = Swap::none();
            swap.aws_sigv4 = true;
        }
        Some(other) => p.push(
            &r.key_path("sign"),
            format!("unknown signing scheme {other:?} (expected \"aws-sigv4\")"),
        ),
    }
    r.finish(p);
    let parsed = match (provider, &reference) {
        (Some(kind), Some(reference)) => {
            match crate::refs::parse(kind, reference, key.as_deref(), version.as_deref()) {
                Ok(r) => Some(r),
                Err(e) => {
                    p.push(&path, e);
                    None
                }
            }
        }
        _ => None,
    };
    if p.0.len() > before {
        return None;
    }
    let parsed = parsed?;
    Some(SecretSpec {
        name: name.to_string(),
        provider: parsed.provider,
        reference: parsed.reference,
        key: parsed.key,
        version: parsed.version,
        optional,
        hosts,
        swap,
    })
}
