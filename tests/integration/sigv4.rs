//! AWS SDKs blind: with the secret access key as a `sign = "aws-sigv4"` secret, boto3 and the
//! AWS CLI sign with the token, and kz checks that signature and signs again with the real
//! key. Against moto behind TLS with signature checking on (a call signed with the token
//! straight to moto fails), through `kz run --blind`: S3 put/get, a multipart upload, a
//! presigned GET fetched with curl, Secrets Manager, STS; a request signed with another key is
//! refused with the reason.

use std::process::{Command, Stdio};

use crate::util::{fixture, free_port, python, run, wait_for_port, Sandbox};

struct Moto(std::process::Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn boto3_and_the_aws_cli_work_blind_with_re_signed_requests() {
    let sb = Sandbox::new();
    let port = free_port();
    let _moto = Moto(
        Command::new(python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .arg("--ssl-cert")
            .arg(fixture("tls/server.pem"))
            .arg("--ssl-key")
            .arg(fixture("tls/server.key"))
            // The IAM setup below is unauthenticated; every later call is checked.
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            // Path-style buckets whatever the host name.
            .env("S3_IGNORE_SUBDOMAIN_BUCKETNAME", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port, "moto");
    let direct = format!("https://127.0.0.1:{port}");
    let ca = fixture("tls/ca.pem");
    let keys = crate::util::python_json("aws_blind.py", &["setup", &direct, ca.to_str().unwrap()]);
    let (key_id, secret) = (
        keys["key_id"].as_str().unwrap().to_string(),
        keys["secret"].as_str().unwrap().to_string(),
    );
    // moto cannot check presigned URLs with its signature checking on; they go to a recording
    // upstream instead, and botocore's own signer checks what arrives.
    let up = crate::upstream::start();
    let hosts = format!("\"aws.kz.test:{port}\", \"presign.kz.test:{}\"", up.port);
    sb.config(&format!(
        "[secrets]\nAWS_SECRET_ACCESS_KEY = {{ provider = \"env\", ref = \"REAL_AWS_SECRET\", hosts = [{hosts}], sign = \"aws-sigv4\" }}\nAWS_ACCESS_KEY_ID = {{ provider = \"env\", ref = \"REAL_AWS_KEY_ID\", hosts = [{hosts}], swap = [\"headers\", \"query\"] }}\n[network]\nhosts = {{ \"aws.kz.test\" = \"127.0.0.1\", \"presign.kz.test\" = \"127.0.0.1\" }}\nupstream_ca = {:?}\n[audit]\npath = \"audit.jsonl\"\n",
        ca.to_str().unwrap()
    ));
    sb.write(
        "aws-config",
        "[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n",
    );
    sb.write("upload.txt", "uploaded by the aws cli\n");
    let endpoint = format!("https://aws.kz.test:{port}");
    let script = format!(
        r#"set -e
OUT=$("$PY" {agent} agent {endpoint} https://presign.kz.test:{up_port})
printf '%s\n' "$OUT"
URL=$(printf '%s' "$OUT" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["presigned"])')
curl -sS --fail -o /dev/null "$URL" && echo presigned-sent
AWS="$(dirname "$PY")/aws --endpoint-url {endpoint}"
echo "cli-ls: $($AWS s3 ls s3://agent-bucket/ | grep -c hello.txt)"
$AWS s3 cp upload.txt s3://agent-bucket/upload.txt >/dev/null
echo "cli-cp: $($AWS s3 cp s3://agent-bucket/upload.txt -)"
echo "cli-sts: $($AWS sts get-caller-identity --query Arn --output text)"
"#,
        agent = fixture("aws_blind.py").display(),
        up_port = up.port,
    );
    let (code, out, err) = run(sb
        .kz()
        .env("REAL_AWS_SECRET", &secret)
        .env("REAL_AWS_KEY_ID", &key_id)
        .env("AWS_CONFIG_FILE", sb.path().join("aws-config"))
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("PY", python())
        .args(["run", "--blind", "--no-mask", "--", "sh", "-c", &script]));
    assert_eq!(code, 0, "{out}\n{err}");
    let json_line = out.lines().find(|l| l.starts_with('{')).unwrap();
    let v: serde_json::Value = serde_json::from_str(json_line).unwrap();
    let token = v["secret_seen"].as_str().unwrap();
    assert!(!out.contains(&key_id), "the key id is a token too");
    assert!(kz::api::is_token(token), "the SDK held a token: {token}");
    assert_eq!(v["get"], "hello through kz");
    assert_eq!(v["multipart_size"], 6 << 20);
    assert_eq!(v["secret_value"], "db-password-from-moto");
    assert!(
        v["caller"].as_str().unwrap().ends_with(":user/agent"),
        "{v}"
    );
    let wrong = v["wrong_key"].as_str().unwrap();
    assert!(
        wrong.contains("was not made with the token of AWS_SECRET_ACCESS_KEY"),
        "a request signed with another key is refused: {wrong}"
    );
    assert!(out.contains("presigned-sent"), "{out}\n{err}");
    let presigned = up
        .requests()
        .into_iter()
        .find(|r| r.target.contains("X-Amz-Signature="))
        .expect("the presigned GET arrived");
    let arrived = format!("https://presign.kz.test:{}{}", up.port, presigned.target);
    assert!(
        !arrived.contains("KZ_TOK_"),
        "the key id was swapped: {arrived}"
    );
    let check = |id: &str, key: &str, url: &str| {
        let o = Command::new(python())
            .arg(fixture("presign_check.py"))
            .args([id, key, url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(check(&key_id, &secret, &arrived), "valid", "{arrived}");
    let sent = v["presigned"].as_str().unwrap();
    let sent_id = v["key_id_seen"].as_str().unwrap();
    assert_eq!(
        check(sent_id, token, sent),
        "valid",
        "the agent signed with the token"
    );
    assert_eq!(check(&key_id, &secret, sent), "invalid");
    assert!(v["sigv2"].as_str().unwrap().contains("403"), "{v}");
    assert!(out.contains("cli-ls: 1"), "{out}\n{err}");
    assert!(
        out.contains("cli-cp: uploaded by the aws cli"),
        "{out}\n{err}"
    );
    assert!(out.contains("cli-sts: arn:aws:iam::"), "{out}\n{err}");
    assert!(!out.contains(&secret) && !err.contains(&secret));
    let audit = std::fs::read_to_string(sb.path().join("audit.jsonl")).unwrap();
    assert!(audit.contains("was not made with the token"), "{audit}");
    assert!(audit.contains("signature version 2"), "{audit}");
    // moto really checks: the token alone, straight to moto, does not pass.
    let code = Command::new(python())
        .arg(fixture("aws_blind.py"))
        .args(["direct", &direct, ca.to_str().unwrap(), &key_id, token])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&code.stdout);
    assert!(said.contains("SignatureDoesNotMatch"), "{said}");
}
