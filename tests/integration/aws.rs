//! AWS Secrets Manager provider against a real moto server on loopback: SigV4 signatures are
//! verified by moto when IAM enforcement is on.

use crate::util::{python_json, run, start_moto, Sandbox};

fn config(sb: &Sandbox, endpoint: &str, secrets: &str) {
    sb.config(&format!("[secrets]\n{secrets}\n[providers.aws-sm]\nregion = \"eu-west-1\"\nendpoint = \"{endpoint}\"\n"));
}

#[test]
fn whole_secret_json_key_stage_version_id_binary_and_not_found() {
    let moto = start_moto(&[]);
    let seeded = python_json("aws_setup.py", &[&moto.url(), "open"]);
    let prev = seeded["previous_version_id"].as_str().unwrap();
    let sb = Sandbox::new();
    config(
        &sb,
        &moto.url(),
        &format!(
            r#"SLACK_BOT_TOKEN = {{ provider = "aws-sm", ref = "prod/slack-bot-token", hosts = ["slack.com", "*.slack.com"] }}
PREV = {{ provider = "aws-sm", ref = "prod/slack-bot-token", version = "AWSPREVIOUS" }}
BYID = {{ provider = "aws-sm", ref = "prod/slack-bot-token", version = "{prev}" }}
DB_PASSWORD = "aws-sm://prod/db#password"
DB_PORT = {{ provider = "aws-sm", ref = "prod/db", key = "/port" }}
BIN = "aws-sm://prod/binary""#
        ),
    );
    let (code, out, err) = run(sb
        .kz()
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .args(["run", "--no-mask", "--", "sh", "-c", "echo \"$SLACK_BOT_TOKEN $PREV $BYID $DB_PASSWORD $DB_PORT $BIN [$AWS_SECRET_ACCESS_KEY]\""]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "xoxb-slack-new-2222 xoxb-slack-old-1111 xoxb-slack-old-1111 db-pass-3333 5432 binary-secret-4444 []");

    config(
        &sb,
        &moto.url(),
        "GONE = \"aws-sm://prod/nope\"\nNOKEY = \"aws-sm://prod/db#user\"",
    );
    let (code, _, err) = run(sb
        .kz()
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(
        err.contains("kz: GONE: aws-sm: prod/nope: not found (ResourceNotFoundException)"),
        "{err}"
    );
    assert!(err.contains("kz: NOKEY: aws-sm: prod/db#user: key \"user\" not found (keys: password, port, username)"), "{err}");
    assert!(!err.contains("db-pass-3333"));
}

#[test]
fn access_denied_and_bad_signature() {
    let moto = start_moto(&[("INITIAL_NO_AUTH_ACTION_COUNT", "7")]);
    let keys = python_json("aws_setup.py", &[&moto.url(), "auth"]);
    let sb = Sandbox::new();
    config(&sb, &moto.url(), "G = \"aws-sm://prod/guarded\"");
    let agent = &keys["agent"];
    let (code, out, err) = run(sb
        .kz()
        .env(
            "AWS_ACCESS_KEY_ID",
            agent["access_key_id"].as_str().unwrap(),
        )
        .env(
            "AWS_SECRET_ACCESS_KEY",
            agent["secret_access_key"].as_str().unwrap(),
        )
        .args(["run", "--no-mask", "--", "sh", "-c", "echo $G"]));
    assert_eq!(
        (code, out.trim()),
        (0, "guarded-value-5555"),
        "signature accepted by moto: {err}"
    );
    let intruder = &keys["intruder"];
    let (code, _, err) = run(sb
        .kz()
        .env(
            "AWS_ACCESS_KEY_ID",
            intruder["access_key_id"].as_str().unwrap(),
        )
        .env(
            "AWS_SECRET_ACCESS_KEY",
            intruder["secret_access_key"].as_str().unwrap(),
        )
        .args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(
        err.contains("kz: G: aws-sm: prod/guarded: access denied (403 AccessDenied)"),
        "{err}"
    );
    let (code, _, err) = run(sb
        .kz()
        .env(
            "AWS_ACCESS_KEY_ID",
            agent["access_key_id"].as_str().unwrap(),
        )
        .env("AWS_SECRET_ACCESS_KEY", "not-the-right-secret-key")
        .args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(
        err.contains("kz: G: aws-sm: prod/guarded: access denied"),
        "{err}"
    );
    assert!(!err.contains("guarded-value"));
}

#[test]
fn credential_chain_profiles_and_web_identity() {
    let moto = start_moto(&[]);
    python_json("aws_setup.py", &[&moto.url(), "open"]);
    let sb = Sandbox::new();
    // Region and endpoint from the environment and the profile, credentials from the shared file.
    sb.config("[secrets]\nS = \"aws-sm://prod/slack-bot-token\"\n");
    sb.write(
        "home/.aws/credentials",
        "[dev]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    );
    sb.write("home/.aws/config", "[profile dev]\nregion = eu-west-1\n");
    let (code, out, err) = run(sb
        .kz()
        .env("AWS_PROFILE", "dev")
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.url())
        .args(["run", "--no-mask", "--", "sh", "-c", "echo $S"]));
    assert_eq!((code, out.trim()), (0, "xoxb-slack-new-2222"), "{err}");
    // Web identity: a token file and a role, exchanged at STS (moto) for temporary credentials.
    let token = sb.write(
        "token.jwt",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2ln",
    );
    let (code, out, err) = run(sb
        .kz()
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ENDPOINT_URL", moto.url())
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token)
        .env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/agent")
        .args(["run", "--no-mask", "--", "sh", "-c", "echo $S"]));
    assert_eq!((code, out.trim()), (0, "xoxb-slack-new-2222"), "{err}");
    let (code, _, err) = run(sb
        .kz()
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ENDPOINT_URL", moto.url())
        .args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(err.contains("no aws credentials"), "{err}");
    let (code, _, err) = run(sb.kz().args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(err.contains("no aws region"), "{err}");
}
