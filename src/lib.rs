//! KeyZero (`kz`): keeps real credentials out of AI agents' reach.
//!
//! Every module is private to the crate (so rustc reports what nothing uses); the binary calls
//! [`parse`] and [`dispatch`], benchmarks and integration tests use [`api`].
//!
//! Modules, from the outside in:
//! - `cli`: clap types for every command; `cmd`: one module per subcommand (`run`, `check`,
//!   `secret`, `server`, `mcp`, `policy`, `token`, `init_network`, `sidecar`, `import`, `doctor`,
//!   `scan`; `isolate` for `--isolate`); `exit`: the exit codes.
//! - `config`: `.keyzero.toml` model, discovery, parsing and whole-file validation; `refs`: one
//!   parser per provider for secret refs, and the paths policies match.
//! - `provider`: the `Provider` trait, one module per backend, concurrent resolution.
//! - `conceal`: the streaming byte replacer and the encoded forms of a value, under both `mask`
//!   (output masking) and `blind` (tokens, swap and scrub sets).
//! - `proxy`: the swap engine (`decide` without I/O, `intercept::{prepare, respond}` with it;
//!   `express` carries HTTP/1.1 itself, hyper the rest), its `Refusal` answers, and its front
//!   doors (explicit, transparent); `serve`: the serving skeleton every listener uses.
//! - `policy`: the policy server's pure core (globs, CEL, decisions, JWT); `server`: the policy
//!   decision point (API, engine, metrics, reload, decision log, MCP, injector).
//! - `child`: spawning the child, forwarding signals; `audit`: JSON-lines audit records;
//!   `secret`: the zeroizing value type; `env`: environment access behind a trait; `http`: the
//!   small HTTPS client the providers share; `time`; `lru`; `net`: listeners, kz's uid and ports.
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
mod fs;
mod http;
mod lru;
mod mask;
mod net;
mod policy;
mod provider;
mod proxy;
mod refs;
mod roots;
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
