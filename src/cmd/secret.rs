//! `kz secret set|get|list|rm|keygen`: the embedded local store.

use std::io::{IsTerminal, Read, Write};

use zeroize::Zeroizing;

use super::{CommandResult, Failure, EXIT_FAIL};
use crate::cli::{SecretCommand, StoreArg};
use crate::config::{self, LocalConfig};
use crate::env::{Env, ProcessEnv};
use crate::provider::local::{self, StoreError, StoreKey, StorePaths};
use crate::secret::SecretValue;

fn paths(arg: &StoreArg, env: &dyn Env) -> Result<StorePaths, Failure> {
    let local_cfg = match &arg.config {
        Some(p) => {
            config::load(p)
                .map_err(|e| {
                    Failure::many(EXIT_FAIL, e.to_string().lines().map(String::from).collect())
                })?
                .providers
                .local
        }
        None => LocalConfig::default(),
    };
    StorePaths::resolve(&local_cfg, arg.store.as_deref(), env)
        .map_err(|e| Failure::new(EXIT_FAIL, e))
}

fn fail(e: StoreError) -> Failure {
    Failure::new(EXIT_FAIL, e.to_string())
}

fn check_name(name: &str) -> Result<(), Failure> {
    if local::valid_name(name) {
        Ok(())
    } else {
        Err(Failure::new(
            2,
            StoreError::BadName(name.into()).to_string(),
        ))
    }
}

pub fn secret(cmd: SecretCommand) -> CommandResult {
    let env = ProcessEnv;
    match cmd {
        SecretCommand::Set { name, store } => {
            check_name(&name)?;
            let paths = paths(&store, &env)?;
            let value = read_value(&name)?;
            if value.is_empty() {
                return Err(Failure::new(
                    EXIT_FAIL,
                    format!("{name}: empty value, nothing stored"),
                ));
            }
            let existed = local::update(&paths, |s| {
                Ok(s.secrets.insert(name.clone(), value).is_some())
            })
            .map_err(fail)?;
            eprintln!(
                "kz: {} {name} in {}",
                if existed { "updated" } else { "stored" },
                paths.store.display()
            );
            Ok(0)
        }
        SecretCommand::Get { name, store } => {
            let paths = paths(&store, &env)?;
            let s = local::read_only(&paths).map_err(fail)?;
            let v = s
                .secrets
                .get(&name)
                .ok_or_else(|| fail(StoreError::NotFound(name.clone())))?;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(v.expose().as_bytes());
            let _ = out.write_all(b"\n");
            Ok(0)
        }
        SecretCommand::List { store } => {
            let paths = paths(&store, &env)?;
            let s = local::read_only(&paths).map_err(fail)?;
            let mut out = std::io::stdout().lock();
            for name in s.secrets.keys() {
                let _ = writeln!(out, "{name}");
            }
            Ok(0)
        }
        SecretCommand::Rm { name, store } => {
            let paths = paths(&store, &env)?;
            local::update(&paths, |s| {
                s.secrets
                    .remove(&name)
                    .map(|_| ())
                    .ok_or(StoreError::NotFound(name.clone()))
            })
            .map_err(fail)?;
            eprintln!("kz: removed {name} from {}", paths.store.display());
            Ok(0)
        }
        SecretCommand::Keygen => {
            println!("{}", StoreKey::generate_encoded().as_str());
            Ok(0)
        }
    }
}

/// Reads the value: from a terminal without echo, else all of stdin minus one trailing newline.
fn read_value(name: &str) -> Result<SecretValue, Failure> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("value for {name} (input hidden): ");
        let _ = std::io::stderr().flush();
        let line = read_hidden_line()
            .map_err(|e| Failure::new(EXIT_FAIL, format!("reading value: {e}")))?;
        eprintln!();
        return Ok(SecretValue::new(line.as_str()));
    }
    let mut buf = Zeroizing::new(Vec::new());
    stdin
        .lock()
        .read_to_end(&mut buf)
        .map_err(|e| Failure::new(EXIT_FAIL, format!("reading stdin: {e}")))?;
    let text = std::str::from_utf8(&buf)
        .map_err(|_| Failure::new(EXIT_FAIL, format!("{name}: value is not utf-8 text")))?;
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    Ok(SecretValue::new(text))
}

/// One line from the terminal with echo turned off, restored afterwards even on error.
fn read_hidden_line() -> std::io::Result<Zeroizing<String>> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).map_err(std::io::Error::from)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(std::io::Error::from)?;
    let mut line = Zeroizing::new(String::new());
    let r = stdin.read_line(&mut line);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    r?;
    let trimmed = line.trim_end_matches(['\n', '\r']).to_string();
    Ok(Zeroizing::new(trimmed))
}
