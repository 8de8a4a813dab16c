//! Policy decisions for the policy server (pure): ref canonicalisation, path globs, and the
//! deny-overrides combination of rule outcomes. JWT verification, CEL and the HTTP API build on
//! these.

pub mod cel;
pub mod decide;
pub mod glob;
pub mod jwt;
