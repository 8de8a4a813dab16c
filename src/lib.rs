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

pub mod audit;
pub mod blind;
pub mod child;
pub mod cli;
pub mod cmd;
pub mod conceal;
pub mod config;
pub mod env;
pub mod http;
pub mod lru;
pub mod mask;
pub mod net;
pub mod policy;
pub mod provider;
pub mod proxy;
pub mod refs;
pub mod secret;
pub mod server;
pub mod time;
