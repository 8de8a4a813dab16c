//! The secret value type: zeroized on drop, never printed by `Debug`.

use std::fmt;
use zeroize::Zeroizing;

/// A resolved secret value. Its memory is wiped on drop and `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        SecretValue(Zeroizing::new(value.into()))
    }

    /// The plaintext; callers must not log or format it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl From<String> for SecretValue {
    fn from(s: String) -> Self {
        SecretValue::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_value() {
        let v = SecretValue::new("hunter2-very-secret");
        let shown = format!("{v:?} {:?}", Some(v.clone()));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(v.expose(), "hunter2-very-secret");
    }
}
