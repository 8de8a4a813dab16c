//! `.keyzero.toml`: discovery, the data model, and validation that reports every problem at
//! once with its key path. Parsing is pure (`parse_str`); `load` adds the file system.

pub mod bundle;
pub mod egress;
pub mod host;
pub mod reader;
pub mod uri;

mod discovery;
mod model;
mod parse;
mod sections;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::env::Env;
pub use crate::refs::{valid_env_name, ProviderKind};
pub use host::HostPattern;
use reader::{join, type_name, unknown_key_message, Problems, Reader};

pub use discovery::*;
pub use model::*;
pub use parse::*;
use sections::*;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_str(text, ".keyzero.toml", Path::new("/proj"))
    }

    #[test]
    fn the_seed_form_parses_verbatim() {
        let cfg = parse(
            r#"
[secrets]
OPENAI_API_KEY  = { provider = "1password", ref = "op://Dev/OpenAI/api-key" }
GITHUB_TOKEN    = { provider = "vault",     ref = "secret/data/prod/github/token", hosts = ["api.github.com", "github.com"] }
SLACK_BOT_TOKEN = { provider = "aws-sm",    ref = "prod/slack-bot-token", hosts = ["slack.com", "*.slack.com"] }
LOCAL_KEY       = { provider = "local",     ref = "openai" }
FROM_ENV        = { provider = "env",       ref = "CI_OPENAI_KEY" }
FROM_FILE       = { provider = "file",      ref = "/run/secrets/db.json", key = "/password" }
SHORT           = "vault://secret/data/prod/github#token"

[providers.vault]
address = "https://vault.internal:8200"
auth = { method = "token" }

[providers.aws-sm]
region = "eu-west-1"
endpoint = "http://127.0.0.1:5000"

[providers.1password]

[network]
allow = ["api.openai.com", "*.github.com"]
hosts = { "api.kz.test" = "127.0.0.1" }
allow_private = false
upstream_ca = "certs/corp-ca.pem"

[server]
url = "https://keyzero.internal:8787"
token_file = "/var/run/secrets/tokens/keyzero"

[audit]
path = "kz-audit.jsonl"
"#,
        )
        .unwrap();
        assert_eq!(cfg.secrets.len(), 7);
        let gh = cfg
            .secrets
            .iter()
            .find(|s| s.name == "GITHUB_TOKEN")
            .unwrap();
        assert_eq!(gh.provider, ProviderKind::Vault);
        assert_eq!(gh.hosts.len(), 2);
        let short = cfg.secrets.iter().find(|s| s.name == "SHORT").unwrap();
        assert_eq!(short.reference, "secret/data/prod/github");
        assert_eq!(short.key.as_deref(), Some("token"));
        assert_eq!(cfg.providers.aws.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            cfg.network.upstream_ca,
            Some(PathBuf::from("/proj/certs/corp-ca.pem"))
        );
        assert_eq!(
            cfg.audit.unwrap().path,
            PathBuf::from("/proj/kz-audit.jsonl")
        );
        assert_eq!(cfg.network.hosts["api.kz.test"].to_string(), "127.0.0.1");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let err = parse(
            r#"
[secrets]
A = { provider = "vualt", ref = "x" }
B = { provider = "env", ref = "X", hostz = ["a.com"] }
C = { provider = "local" }
"1BAD" = "env://X"
D = { provider = "aws-sm", ref = "x", hosts = ["https://x.com"] }

[providers.vault]
adress = "https://v"

[netwrk]
"#,
        )
        .unwrap_err();
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() >= 6, "{text}");
        for want in [
            ".keyzero.toml: secrets.A.provider: unknown provider \"vualt\" (did you mean \"vault\"?)",
            ".keyzero.toml: secrets.B.hostz: unknown key (did you mean \"hosts\"?)",
            ".keyzero.toml: secrets.C.ref: missing",
            ".keyzero.toml: secrets.1BAD: not a valid environment variable name",
            ".keyzero.toml: secrets.D.hosts[0]: invalid host pattern",
            ".keyzero.toml: providers.vault.adress: unknown key (did you mean \"address\"?)",
            ".keyzero.toml: netwrk: unknown key (did you mean \"network\"?)",
        ] {
            assert!(lines.iter().any(|l| l.starts_with(want)), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = parse("[secrets]\nA = { provider = \n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with(".keyzero.toml: line 2: invalid toml"),
            "{err}"
        );
    }

    #[test]
    fn every_table_with_credentials_names_its_variables_and_files() {
        let cfg = parse(
            "[providers.vault]\nauth = { method = \"jwt\", role = \"r\", jwt_env = \"VJWT\", jwt_file = \"/t/jwt\" }\n\
             [providers.1password]\nconnect_host = \"https://op.test\"\nconnect_token_env = \"OPC\"\n\
             [server]\nurl = \"https://pdp.test\"\ntoken_env = \"KZT\"\n\
             [secrets]\nDB = { provider = \"file\", ref = \"/run/db\" }\n",
        );
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(cfg.credential_variables(), ["VJWT", "OPC", "KZT"]);
        let files = cfg.credential_files();
        assert!(files.contains(&PathBuf::from("/run/db")), "{files:?}");
        assert!(files.contains(&PathBuf::from("/t/jwt")), "{files:?}");
    }

    #[test]
    fn vault_auth_methods() {
        let cfg = parse(
            "[providers.vault]\nauth = { method = \"approle\", role_id = \"r\", secret_id_env = \"SID\" }\n",
        )
        .unwrap();
        assert!(
            matches!(cfg.providers.vault.auth, VaultAuth::AppRole { ref mount, .. } if mount == "approle")
        );
        let err = parse("[providers.vault]\nauth = { method = \"kubernetes\" }\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("providers.vault.auth.role: missing"),
            "{err}"
        );
        let err = parse("[providers.vault]\nauth = { method = \"aprole\" }\n").unwrap_err();
        assert!(
            err.to_string().contains("did you mean \"approle\""),
            "{err}"
        );
    }

    #[test]
    fn discovery_walks_up() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "").unwrap();
        let env = crate::env::MapEnv::default();
        assert_eq!(
            discover(None, &env, &nested).unwrap(),
            dir.path().join(FILE_NAME)
        );
        let env = crate::env::MapEnv::from_pairs([("KZ_CONFIG", "/x.toml")]);
        assert_eq!(
            discover(None, &env, &nested).unwrap(),
            PathBuf::from("/x.toml")
        );
        assert_eq!(
            discover(Some(Path::new("/y.toml")), &env, &nested).unwrap(),
            PathBuf::from("/y.toml")
        );
    }
}

#[cfg(test)]
mod swap_tests {
    use super::*;

    #[test]
    fn swap_defaults_to_headers_and_names_unknown_words() {
        let cfg = parse_str(
            "[secrets]\nA = { provider = \"env\", ref = \"X\" }\nB = { provider = \"env\", ref = \"X\", swap = [\"headers\", \"query\", \"body\"] }\n",
            ".keyzero.toml",
            Path::new("/p"),
        )
        .unwrap();
        assert_eq!(cfg.secrets[0].swap, Swap::default());
        assert!(cfg.secrets[0].swap.headers && !cfg.secrets[0].swap.body);
        let b = cfg.secrets[1].swap;
        assert!(b.headers && b.query && b.body && !b.path);
        let err = parse_str(
            "[secrets]\nA = { provider = \"env\", ref = \"X\", swap = [\"bodyy\", \"cookies\"] }\n",
            ".keyzero.toml",
            Path::new("/p"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("secrets.A.swap[0]: unknown place \"bodyy\" (did you mean \"body\"?)"),
            "{err}"
        );
        assert!(
            err.contains("secrets.A.swap[1]: unknown place \"cookies\""),
            "{err}"
        );
    }
}
