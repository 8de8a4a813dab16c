//! Linux-only privileged code for `kz run --isolate` and the Kubernetes sidecar: the only crate
//! of KeyZero allowed to contain `unsafe`.
//!
//! It holds the redirect rule generation (`rules`, pure) today; namespace creation, netlink
//! configuration and applying the rules land with the isolation work.

pub mod rules;

use thiserror::Error;

/// Errors from privileged operations; each names the kernel facility that refused.
#[derive(Debug, Error)]
pub enum NetnsError {
    /// The platform cannot provide network namespaces at all.
    #[error("network isolation needs linux network namespaces, which this platform does not have")]
    Unsupported,
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
