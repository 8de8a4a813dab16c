//! The sidecar injector: AdmissionReview fixtures in, JSON patches out, applied to the pod and
//! checked; refusals; idempotence (re-submitting the patched pod yields no patch).

use base64::Engine;
use serde_json::{json, Value};

use kz::server::inject::{review, InjectConfig};

fn fixture(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(crate::util::fixture(&format!("admission/{name}"))).unwrap(),
    )
    .unwrap()
}

fn cfg() -> InjectConfig {
    InjectConfig {
        image: "keyzero/kz:test".into(),
        config_map: "keyzero-agent".into(),
    }
}

/// Applies JSON Patch `add` operations (all the injector emits), per RFC 6902.
fn apply(doc: &mut Value, ops: &[Value]) {
    for op in ops {
        assert_eq!(op["op"], "add", "{op}");
        let path = op["path"].as_str().unwrap();
        let parts: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|p| p.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = parts.split_last().unwrap();
        let mut cur = &mut *doc;
        for p in parents {
            cur = match cur {
                Value::Object(m) => m
                    .get_mut(p)
                    .unwrap_or_else(|| panic!("missing {p} in {path}")),
                Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
                _ => panic!("bad path {path}"),
            };
        }
        match cur {
            Value::Object(m) => {
                m.insert(last.clone(), op["value"].clone());
            }
            Value::Array(a) if last == "-" => a.push(op["value"].clone()),
            Value::Array(a) => a.insert(last.parse().unwrap(), op["value"].clone()),
            _ => panic!("bad target {path}"),
        }
    }
}

fn patched(review_in: &Value) -> (Value, Value) {
    let out = review(review_in, &cfg());
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(out["response"]["uid"], review_in["request"]["uid"]);
    assert_eq!(out["response"]["allowed"], true, "{out}");
    assert_eq!(out["response"]["patchType"], "JSONPatch");
    let ops: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(out["response"]["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut pod = review_in["request"]["object"].clone();
    apply(&mut pod, ops.as_array().unwrap());
    (pod, ops)
}

#[test]
fn plain_pod_gets_rules_sidecar_volume_and_tokens() {
    let r = fixture("plain.json");
    let (pod, _) = patched(&r);
    let init = pod["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init[0]["name"], "keyzero-init");
    assert_eq!(
        init[0]["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN"]),
        "the rules need NET_ADMIN only"
    );
    for c in &init[..2] {
        assert_eq!(
            c["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
    }
    assert_eq!(init[1]["name"], "keyzero-sidecar");
    assert_eq!(init[1]["restartPolicy"], "Always", "native sidecar");
    assert_eq!(init[1]["securityContext"]["runAsUser"], 17337);
    assert_eq!(init[1]["startupProbe"]["httpGet"]["path"], "/ready");
    let volumes: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(volumes, ["keyzero-share", "keyzero-config"]);
    let sidecar_env = init[1]["env"].as_array().unwrap();
    for c in pod["spec"]["containers"].as_array().unwrap() {
        assert!(c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/var/run/keyzero"));
        let env = c["env"].as_array().unwrap();
        for name in ["OPENAI_API_KEY", "GITHUB_TOKEN"] {
            let token = env.iter().find(|e| e["name"] == name).unwrap()["value"]
                .as_str()
                .unwrap();
            assert!(kz::blind::is_token(token), "{token}");
            let in_sidecar = sidecar_env
                .iter()
                .find(|e| e["name"] == format!("KZ_TOKEN_{name}"))
                .unwrap();
            assert_eq!(
                in_sidecar["value"], token,
                "agent and sidecar share the token"
            );
        }
        assert!(env.iter().any(|e| e["name"] == "SSL_CERT_FILE"));
        // No agent can become kz's uid or touch the rules.
        let drop = c["securityContext"]["capabilities"]["drop"]
            .as_array()
            .unwrap();
        for cap in ["SETUID", "SETGID", "NET_ADMIN", "NET_RAW"] {
            assert!(drop.iter().any(|d| d == cap), "{cap} not dropped: {c}");
        }
    }
    assert_eq!(
        pod["spec"]["containers"][0]["env"][0]["name"], "MODE",
        "existing env kept"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["keyzero.dev/injected"],
        "true"
    );
}

#[test]
fn existing_init_containers_and_volumes_are_kept_after_ours() {
    let (pod, _) = patched(&fixture("with-init.json"));
    let names: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["keyzero-init", "keyzero-sidecar", "migrate"]);
    let vols: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vols, ["data", "keyzero-share", "keyzero-config"]);
}

#[test]
fn injection_is_idempotent() {
    let r = fixture("plain.json");
    let (pod, _) = patched(&r);
    let mut again = r.clone();
    again["request"]["object"] = pod;
    let out = review(&again, &cfg());
    assert_eq!(out["response"]["allowed"], true);
    assert!(
        out["response"].get("patch").is_none(),
        "an injected pod gets no second patch: {out}"
    );
}

#[test]
fn pods_that_would_defeat_the_rules_are_refused() {
    for (f, why) in [
        ("kz-uid.json", "uid 17337"),
        ("net-admin.json", "NET_ADMIN"),
    ] {
        let out = review(&fixture(f), &cfg());
        assert_eq!(out["response"]["allowed"], false, "{f}");
        assert_eq!(out["response"]["status"]["code"], 403);
        assert!(
            out["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains(why),
            "{out}"
        );
    }
    // The same opted-in pod, each with one thing that would let it escape.
    let plain = fixture("plain.json");
    let cases: [(&str, &str, Value); 6] = [
        (
            "/request/object/spec/hostNetwork",
            "hostNetwork",
            json!(true),
        ),
        (
            "/request/object/spec/shareProcessNamespace",
            "shareProcessNamespace",
            json!(true),
        ),
        (
            "/request/object/spec/containers/1/securityContext",
            "SETUID",
            json!({"capabilities": {"add": ["SETUID"]}}),
        ),
        (
            "/request/object/spec/containers/1/securityContext",
            "CAP_SYS_PTRACE",
            json!({"capabilities": {"add": ["CAP_SYS_PTRACE"]}}),
        ),
        (
            "/request/object/spec/containers/0/securityContext",
            "privileged",
            json!({"privileged": true}),
        ),
        (
            "/request/object/spec/containers/0/securityContext",
            "uid 17337",
            json!({"runAsUser": 17337}),
        ),
    ];
    for (path, why, value) in cases {
        let mut r = plain.clone();
        let (parent, key) = path.rsplit_once('/').unwrap();
        r.pointer_mut(parent).unwrap()[key] = value;
        let out = review(&r, &cfg());
        assert_eq!(out["response"]["allowed"], false, "{path}: {out}");
        let msg = out["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains(why), "{why}: {msg}");
    }
    // A container that drops some capabilities already gets the rest added.
    let mut r = plain.clone();
    r["request"]["object"]["spec"]["containers"][1]["securityContext"] =
        json!({"capabilities": {"drop": ["NET_RAW", "MKNOD"]}});
    let (pod, _) = patched(&r);
    assert_eq!(
        pod["spec"]["containers"][1]["securityContext"]["capabilities"]["drop"],
        json!(["NET_RAW", "MKNOD", "SETUID", "SETGID", "NET_ADMIN"])
    );
    let out = review(&fixture("not-annotated.json"), &cfg());
    assert_eq!(out["response"]["allowed"], true);
    assert!(out["response"].get("patch").is_none());
}

#[test]
fn the_server_serves_the_webhook() {
    let sb = crate::util::Sandbox::new();
    sb.write("bundle.yaml", "identity:\n  issuers:\n  - issuer: i\n    audiences: [a]\n    algorithms: [HS256]\n    secret_env: KZ_JWT_SECRET\n");
    let mut cmd = sb.kz();
    cmd.env("KZ_JWT_SECRET", "x")
        .stdout(std::process::Stdio::null());
    let (mut child, port) = crate::util::start_kz_server(cmd, &["--inject-image", "keyzero/kz:1"]);
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data-binary",
        ])
        .arg(format!(
            "@{}",
            crate::util::fixture("admission/plain.json").display()
        ))
        .arg(format!("http://127.0.0.1:{port}/inject"))
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["response"]["allowed"], true, "{v}");
    assert_eq!(v["response"]["patchType"], "JSONPatch");
    let ops: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(v["response"]["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(ops.to_string().contains("keyzero/kz:1"));
}
