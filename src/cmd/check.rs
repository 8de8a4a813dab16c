//! `kz check`: resolve every secret and print a table of NAME, PROVIDER, REF, STATUS.

use super::{
    load_config, open_audit, process_env, resolve_config, runtime, CommandResult, EXIT_KZ,
};
use crate::cli::CheckArgs;
use crate::provider::display_ref;

pub fn check(args: CheckArgs) -> CommandResult {
    let env = process_env();
    let cfg = load_config(args.config.config.as_deref(), &*env, EXIT_KZ)?;
    let audit = open_audit(&cfg, args.audit.as_deref())?;
    let results = runtime()?.block_on(resolve_config(&cfg, env, &audit));
    let rows: Vec<[String; 4]> = results
        .iter()
        .map(|r| {
            let status = match &r.outcome {
                Ok(Some(_)) => "ok".to_string(),
                Ok(None) => "missing (optional)".to_string(),
                Err(e) => format!("error: {e}"),
            };
            [
                r.spec.name.clone(),
                r.spec.provider.to_string(),
                display_ref(&r.spec),
                status,
            ]
        })
        .collect();
    print!("{}", table(["NAME", "PROVIDER", "REF", "STATUS"], &rows));
    let failed = results.iter().filter(|r| r.outcome.is_err()).count();
    if failed > 0 {
        eprintln!(
            "kz: {failed} of {} secrets failed to resolve",
            results.len()
        );
        return Ok(EXIT_KZ);
    }
    Ok(0)
}

/// Left-aligned columns separated by two spaces.
pub fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}
