//! `kz token mint`: an HS256 identity token for development.

use serde_json::Value;

use super::{now, CommandResult, Failure, EXIT_FAIL};
use crate::cli::TokenCommand;

pub fn token(cmd: TokenCommand) -> CommandResult {
    let TokenCommand::Mint {
        issuer,
        audience,
        claims,
        ttl,
    } = cmd;
    let secret = std::env::var("KZ_JWT_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Failure::new(EXIT_FAIL, "KZ_JWT_SECRET is not set (the HS256 key)"))?;
    let ttl = humantime::parse_duration(&ttl).map_err(|_| {
        Failure::new(
            2,
            format!("--ttl {ttl:?}: invalid duration (examples: 15m, 1h)"),
        )
    })?;
    let mut c: Value = serde_json::from_str(&claims).map_err(|e| {
        Failure::new(
            crate::exit::EXIT_USAGE,
            format!("--claims: invalid json: {e}"),
        )
    })?;
    let Some(obj) = c.as_object_mut() else {
        return Err(Failure::new(
            crate::exit::EXIT_USAGE,
            "--claims must be a json object",
        ));
    };
    let now = now();
    obj.insert("iss".into(), issuer.into());
    obj.insert("aud".into(), audience.into());
    obj.insert("iat".into(), now.into());
    obj.insert("exp".into(), (now + ttl.as_secs() as i64).into());
    println!("{}", crate::policy::jwt::sign_hs256(&c, secret.as_bytes()));
    Ok(0)
}
