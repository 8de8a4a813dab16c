//! Linux-only privileged code for `kz run --isolate` and the Kubernetes sidecar: the only crate
//! of KeyZero allowed to contain `unsafe`.
//!
//! `rules` generates the redirect rules (pure); `sandbox` is the helper side of `--isolate`;
//! `contain` keeps kz itself out of its child's reach.

#[cfg(target_os = "linux")]
pub mod contain;
pub mod rules;
#[cfg(target_os = "linux")]
pub mod sandbox;

use thiserror::Error;

/// Errors from privileged operations; each names the kernel facility that refused.
#[derive(Debug, Error)]
pub enum NetnsError {
    /// The platform cannot provide network namespaces at all.
    #[error("network isolation needs linux network namespaces, which this platform does not have")]
    Unsupported,
    /// A setup step failed; the message names the step.
    #[error("isolation: {0}")]
    Setup(String),
    /// The command could not be started.
    #[error("{0}: {1}")]
    Exec(String, std::io::Error),
}

/// Whether this build can isolate a child in its own network namespace.
pub fn supported() -> bool {
    cfg!(target_os = "linux")
}

#[cfg(test)]
mod tests {
    #[test]
    fn linux_is_supported() {
        assert_eq!(super::supported(), cfg!(target_os = "linux"));
    }
}
