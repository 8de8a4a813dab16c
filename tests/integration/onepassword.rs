//! 1Password provider: `op read` through a stand-in `op` that follows its contract, and Connect
//! through a stand-in server that follows the Connect REST API's shapes.

use serde_json::json;

use crate::util::{fixture, run, start_script, Sandbox};

fn data() -> serde_json::Value {
    json!({
        "token": "ops_service_account",
        "vaults": {
            "Dev": {
                "OpenAI": {"fields": {"api-key": "sk-op-1a2b3c", "username": "bot"}},
                "DB": {"fields": {}, "sections": {"conn": {"password": "op-db-pw-4d5e"}}}
            }
        }
    })
}

const SECRETS: &str = r#"
[secrets]
OPENAI_API_KEY = { provider = "1password", ref = "op://Dev/OpenAI/api-key" }
USERNAME = "op://Dev/OpenAI/username"
DB = "op://Dev/DB/conn/password"
"#;

#[test]
fn op_read_contract() {
    let sb = Sandbox::new();
    let data_file = sb.write("op.json", &data().to_string());
    let log = sb.path().join("op.log");
    sb.config(&format!(
        "{SECRETS}[providers.1password]\nop_path = {:?}\n",
        fixture("op").to_str().unwrap()
    ));
    let (code, out, err) = run(sb
        .kz()
        .env("OP_STANDIN_DATA", &data_file)
        .env("OP_STANDIN_LOG", &log)
        .env("OP_SERVICE_ACCOUNT_TOKEN", "ops_service_account")
        .args([
            "run",
            "--no-mask",
            "--",
            "sh",
            "-c",
            "echo \"$OPENAI_API_KEY|$USERNAME|$DB|$OP_SERVICE_ACCOUNT_TOKEN\"",
        ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out, "sk-op-1a2b3c|bot|op-db-pw-4d5e|\n",
        "exact values, no trailing newline, token not inherited"
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    assert!(calls.lines().all(|l| l.contains("--no-newline")), "{calls}");

    sb.config(&format!(
        "[secrets]\nA = \"op://Nope/OpenAI/api-key\"\nB = \"op://Dev/Nope/api-key\"\nC = \"op://Dev/OpenAI/nope\"\n[providers.1password]\nop_path = {:?}\n",
        fixture("op").to_str().unwrap()
    ));
    let (code, _, err) = run(sb
        .kz()
        .env("OP_STANDIN_DATA", &data_file)
        .env("OP_SERVICE_ACCOUNT_TOKEN", "ops_service_account")
        .arg("check"));
    assert_eq!(code, 125);
    assert!(err.is_empty() || err.contains("failed"), "{err}");
    let (_, out, _) = run(sb
        .kz()
        .env("OP_STANDIN_DATA", &data_file)
        .env("OP_SERVICE_ACCOUNT_TOKEN", "ops_service_account")
        .arg("check"));
    assert!(
        out.contains("\"nope\" isn't a vault") || out.contains("isn't a vault"),
        "{out}"
    );
    assert!(out.contains("isn't an item"), "{out}");
    assert!(out.contains("does not have a field"), "{out}");
    let (code, _, err) = run(sb
        .kz()
        .env("OP_STANDIN_DATA", &data_file)
        .args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(
        err.contains(
            "kz: A: 1password: op://Nope/OpenAI/api-key: op read: you are not currently signed in"
        ),
        "{err}"
    );
}

#[test]
fn op_missing_is_a_clear_error() {
    let sb = Sandbox::new();
    sb.config("[secrets]\nK = \"op://Dev/OpenAI/api-key\"\n[providers.1password]\nop_path = \"/nonexistent/op\"\n");
    let (code, _, err) = run(sb.kz().args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(
        err.contains("/nonexistent/op not found (install the 1password cli"),
        "{err}"
    );
}

#[test]
fn connect_looks_ids_up_once() {
    let sb = Sandbox::new();
    let mut cfg = data();
    cfg["token"] = json!("connect-token");
    let path = sb.write("connect.json", &cfg.to_string());
    let server = start_script("connect_server.py", &[&path]);
    sb.config(SECRETS);
    let (code, out, err) = run(sb
        .kz()
        .env("OP_CONNECT_HOST", server.url())
        .env("OP_CONNECT_TOKEN", "connect-token")
        .args([
            "run",
            "--no-mask",
            "--",
            "sh",
            "-c",
            "echo \"$OPENAI_API_KEY|$USERNAME|$DB|$OP_CONNECT_TOKEN\"",
        ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "sk-op-1a2b3c|bot|op-db-pw-4d5e|");
    let stats = server.get_json("/__stats");
    assert_eq!(stats["vault_lookups"], 1, "{stats}");
    assert_eq!(stats["item_lookups"], 2, "{stats}");
    assert_eq!(stats["item_gets"], 2, "{stats}");
    let (code, _, err) = run(sb
        .kz()
        .env("OP_CONNECT_HOST", server.url())
        .env("OP_CONNECT_TOKEN", "wrong")
        .args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(err.contains("connect: invalid token (401)"), "{err}");
    let (code, _, err) = run(sb
        .kz()
        .env("OP_CONNECT_HOST", server.url())
        .args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(err.contains("needs a token in OP_CONNECT_TOKEN"), "{err}");
}
