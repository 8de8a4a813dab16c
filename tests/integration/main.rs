//! kz's integration tests: one binary, one module per area. Every test runs the real `kz`
//! binary against real components (moto, real TLS) or stand-ins that follow the documented wire
//! contract where the real thing cannot be installed (Vault, 1Password).

mod attacks;
mod aws;
mod blind;
mod clients;
mod containment;
mod deploy;
mod helm;
mod inject;
mod isolate;
mod load;
mod local;
mod mcp;
mod onepassword;
mod openbao;
mod pod;
mod policy;
mod run;
mod sigv4;
mod structure;
mod tokens;
mod tools;
mod upstream;
mod util;
mod vault;
mod wire;
