//! Finding and reading the config file: `-c`, `KZ_CONFIG`, or the nearest `.keyzero.toml`
//! upwards; every problem of a file in one error.

use super::*;

pub const FILE_NAME: &str = ".keyzero.toml";

/// Every problem in one file; `Display` prints one per line, prefixed with the file name.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {p}", self.file)?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub(super) fn one(file: &str, msg: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            problems: vec![msg.into()],
        }
    }
}

/// Finds the config: `-c`, then `KZ_CONFIG`, then the nearest `.keyzero.toml` from `cwd` up.
pub fn discover(
    explicit: Option<&Path>,
    env: &dyn Env,
    cwd: &Path,
) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = env.nonempty("KZ_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let mut dir = Some(cwd);
    while let Some(d) = dir {
        let candidate = d.join(FILE_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    Err(ConfigError::one(
        FILE_NAME,
        format!(
            "not found in {} or any parent directory (create one, or pass -c FILE / set KZ_CONFIG)",
            cwd.display()
        ),
    ))
}

/// Reads and validates a config file; relative paths inside it are resolved against its directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(&shown, format!("cannot read: {}", io_reason(&e))))?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut cfg = parse_str(&text, &shown, &base)?;
    cfg.path = Some(path.to_path_buf());
    Ok(cfg)
}

pub use crate::fs::io_reason;
