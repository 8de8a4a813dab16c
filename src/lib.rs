//! KeyZero (`kz`): keeps real credentials out of AI agents' reach.
//!
//! Modules, from the outside in:
//! - [`cli`]: clap types for every command.
//! - [`cmd`]: one module per subcommand (`run`, `check`, `secret`, `server`, `mcp`, `policy`,
//!   `token`, `init_network`, `sidecar`, `import`, `doctor`, `scan`; `isolate` for `--isolate`).
//! - [`config`]: `.keyzero.toml` discovery, parsing and whole-file validation.
//! - [`provider`]: the `Provider` trait, one module per backend, concurrent resolution.
//! - [`conceal`]: the streaming byte replacer and the encoded forms of a value, under both
//!   [`mask`] and [`blind`].
//! - [`mask`]: the streaming masker that conceals secret values in a child's output.
//! - [`child`]: spawning the child, forwarding signals, mapping exit statuses.
//! - [`audit`]: JSON-lines audit log.
//! - [`secret`]: the zeroizing secret value type.
//! - [`env`]: environment access behind a trait so tests can pass a map.
//! - [`http`]: the small HTTPS client the providers share.
//! - [`time`]: timestamps for audit lines and request signing.
//! - [`lru`]: the bounded cache behind every per-host cache.
//! - [`blind`], [`proxy`]: blind mode (tokens, swap/scrub engine, the proxy and its front doors).
//! - [`refs`]: one parser per provider for secret refs, and the paths policies match.
//! - [`policy`]: the policy server's pure core (ref canonicalisation, globs, decisions).
#![forbid(unsafe_code)]

mod audit;
mod blind;
mod child;
mod cli;
mod cmd;
mod conceal;
mod config;
mod env;
mod exit;
mod http;
mod lru;
mod mask;
mod net;
mod policy;
mod provider;
mod proxy;
mod refs;
mod secret;
mod serve;
mod server;
mod time;

pub use cli::{parse, Cli};
pub use cmd::{dispatch, Failure};

/// What the benchmarks and the integration tests use, under short paths. Everything else is
/// private to the crate, so rustc reports what nothing uses.
pub mod api {
    pub use crate::blind::{is_token, token::Finder, token::KNOWN_PREFIXES};
    pub use crate::config::{bundle::load as load_bundle, ProviderKind};
    pub use crate::env::{Env, MapEnv};
    pub use crate::refs::parse as parse_ref;
    pub use crate::server::engine::{Engine, Subject};
    pub use crate::server::inject::{review, InjectConfig, ServerIdentity};
    /// Signing and verifying the policy server's JWTs.
    pub mod jwt {
        pub use crate::policy::jwt::{sign_hs256, verify, Alg, IssuerKeys, Key};
    }
}
