//! Environment access behind a trait, so configuration and providers can be tested with a map
//! instead of the process environment (which the project never mutates).

use std::collections::HashMap;
use std::path::PathBuf;

/// Read-only view of environment variables.
pub trait Env: Send + Sync {
    fn var(&self, key: &str) -> Option<String>;

    /// A variable that is set and not empty.
    fn nonempty(&self, key: &str) -> Option<String> {
        self.var(key).filter(|v| !v.is_empty())
    }

    fn home(&self) -> Option<PathBuf> {
        self.nonempty("HOME").map(PathBuf::from)
    }
}

/// The real process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

/// A fixed map, for tests.
#[derive(Debug, Default, Clone)]
pub struct MapEnv(pub HashMap<String, String>);

impl MapEnv {
    pub fn from_pairs<const N: usize>(pairs: [(&str, &str); N]) -> Self {
        MapEnv(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

impl Env for MapEnv {
    fn var(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}
