//! The sidecar injector: AdmissionReview fixtures in, JSON patches out, applied to the pod and
//! checked; refusals; idempotence (re-submitting the patched pod yields no patch).

use base64::Engine;
use serde_json::{json, Value};

use kz::api::{review, InjectConfig, ServerIdentity};

fn fixture(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(crate::util::fixture(&format!("admission/{name}"))).unwrap(),
    )
    .unwrap()
}

const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

/// As the chart configures it: team mode (the sidecar's own token) and resources.
fn cfg() -> InjectConfig {
    InjectConfig {
        image: "keyzero/kz:test".into(),
        config_map: "keyzero-agent".into(),
        sidecar_resources: Some(
            json!({"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}}),
        ),
        init_resources: Some(json!({"requests": {"cpu": "10m", "memory": "16Mi"}})),
        server: Some(ServerIdentity {
            url: "https://r1-keyzero.keyzero.svc:8787".into(),
            ca_file: None,
            ca_pem: Some(CA_PEM.into()),
            audience: "keyzero".into(),
            expiration_seconds: 3600,
        }),
    }
}

/// Without a policy server: the sidecar resolves with what its ConfigMap says.
fn standalone() -> InjectConfig {
    InjectConfig {
        image: "keyzero/kz:test".into(),
        config_map: "keyzero-agent".into(),
        ..Default::default()
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
    patched_with(review_in, &cfg())
}

fn patched_with(review_in: &Value, cfg: &InjectConfig) -> (Value, Value) {
    let out = review(review_in, cfg);
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
    assert_eq!(
        volumes,
        ["keyzero-share", "keyzero-config", "keyzero-identity"]
    );
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
            assert!(kz::api::is_token(token), "{token}");
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
    assert_eq!(init[0]["resources"]["requests"]["cpu"], "10m");
    assert_eq!(init[1]["resources"]["limits"]["memory"], "128Mi");
    crate::util::k8s_validate(&[pod]);
}

/// The sidecar's own identity: a projected token for the policy server's audience, mounted in
/// the sidecar and nowhere else; the sidecar resolves through the server with it.
#[test]
fn the_sidecar_token_is_mounted_in_the_sidecar_alone() {
    let (pod, _) = patched(&fixture("with-init.json"));
    let identity = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "keyzero-identity")
        .unwrap();
    assert_eq!(
        identity["projected"]["sources"][0]["serviceAccountToken"],
        json!({"audience": "keyzero", "expirationSeconds": 3600, "path": "token"})
    );
    let mounts_identity = |c: &Value| {
        c["volumeMounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == "keyzero-identity"))
    };
    let spec = &pod["spec"];
    let all: Vec<&Value> = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(spec["initContainers"].as_array().unwrap())
        .collect();
    let holders: Vec<&str> = all
        .iter()
        .filter(|c| mounts_identity(c))
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(holders, ["keyzero-sidecar"]);
    let sidecar = all.iter().find(|c| c["name"] == "keyzero-sidecar").unwrap();
    let args: Vec<&str> = sidecar["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--server", "https://r1-keyzero.keyzero.svc:8787"])
            && args
                .windows(2)
                .any(|w| w == ["--server-token-file", "/var/run/secrets/keyzero/token"]),
        "{args:?}"
    );
    let ca = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "KZ_SERVER_CA")
        .unwrap();
    assert_eq!(ca["value"], CA_PEM);
    crate::util::k8s_validate(std::slice::from_ref(&pod));

    // Without a policy server there is no token and no --server.
    let (pod, _) = patched_with(&fixture("plain.json"), &standalone());
    let text = pod.to_string();
    assert!(
        !text.contains("keyzero-identity") && !text.contains("--server"),
        "{text}"
    );
    crate::util::k8s_validate(&[pod]);
}

#[test]
fn the_label_opts_in_and_exclusion_annotations_reach_the_rules() {
    let mut r = fixture("plain.json");
    let meta = &mut r["request"]["object"]["metadata"];
    meta["annotations"] = json!({
        "keyzero.dev/secrets": "OPENAI_API_KEY",
        "keyzero.dev/exclude-outbound-cidrs": "10.96.0.0/12, fd00::/8",
        "keyzero.dev/exclude-outbound-ports": "5432"
    });
    meta["labels"] = json!({"keyzero.dev/inject": "true"});
    let (pod, _) = patched(&r);
    let args = &pod["spec"]["initContainers"][0]["args"];
    assert_eq!(
        args,
        &json!([
            "init-network",
            "--kz-uid",
            "17337",
            "--exclude-cidr",
            "10.96.0.0/12",
            "--exclude-cidr",
            "fd00::/8",
            "--exclude-port",
            "5432"
        ])
    );
    crate::util::k8s_validate(&[pod]);
    for (key, value, why) in [
        (
            "keyzero.dev/exclude-outbound-cidrs",
            "10.0.0.1/8",
            "10.0.0.1/8",
        ),
        (
            "keyzero.dev/exclude-outbound-cidrs",
            "everything",
            "everything",
        ),
        ("keyzero.dev/exclude-outbound-ports", "0", "not a port"),
        ("keyzero.dev/exclude-outbound-ports", "http", "not a port"),
    ] {
        let mut bad = r.clone();
        bad["request"]["object"]["metadata"]["annotations"][key] = json!(value);
        let out = review(&bad, &cfg());
        assert_eq!(out["response"]["allowed"], false, "{value}: {out}");
        let msg = out["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains(key) && msg.contains(why), "{msg}");
    }
    // "false" is not an opt-in, whatever the other says.
    let mut off = r.clone();
    off["request"]["object"]["metadata"]["labels"]["keyzero.dev/inject"] = json!("false");
    let out = review(&off, &cfg());
    assert!(out["response"].get("patch").is_none(), "{out}");
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
    assert_eq!(
        vols,
        [
            "data",
            "keyzero-share",
            "keyzero-config",
            "keyzero-identity"
        ]
    );
    // A pod volume with one of kz's names would be shadowed: refused.
    let mut r = fixture("with-init.json");
    r["request"]["object"]["spec"]["volumes"][0]["name"] = json!("keyzero-share");
    let out = review(&r, &cfg());
    assert_eq!(out["response"]["allowed"], false, "{out}");
    assert!(out["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .contains("keyzero-share"));
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
    let ca = sb.write(
        "ca.crt",
        "-----BEGIN CERTIFICATE-----\nFIRST\n-----END CERTIFICATE-----\n",
    );
    let mut cmd = sb.kz();
    cmd.env("KZ_JWT_SECRET", "x")
        .stdout(std::process::Stdio::null());
    let (mut child, port) = crate::util::start_kz_server(
        cmd,
        &[
            "--inject-image",
            "keyzero/kz:1",
            "--inject-server",
            "https://r1-keyzero.keyzero.svc:8787",
            "--inject-server-ca",
            ca.to_str().unwrap(),
            "--inject-sidecar-resources",
            r#"{"limits":{"memory":"99Mi"}}"#,
        ],
    );
    let ask = || {
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
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["response"]["allowed"], true, "{v}");
        assert_eq!(v["response"]["patchType"], "JSONPatch");
        let ops: Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(v["response"]["patch"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        ops.to_string()
    };
    let ops = ask();
    assert!(
        ops.contains("keyzero/kz:1") && ops.contains("99Mi"),
        "{ops}"
    );
    assert!(
        ops.contains("FIRST") && ops.contains("r1-keyzero.keyzero.svc"),
        "{ops}"
    );
    // A renewed CA reaches the next pod without a restart.
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nSECOND\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let ops = ask();
    assert!(ops.contains("SECOND") && !ops.contains("FIRST"), "{ops}");
    let _ = child.kill();
    let _ = child.wait();
    // Bad resources are a usage error naming the flag.
    let (code, _, err) = crate::util::run(sb.kz().args([
        "server",
        "start",
        "--bundle",
        "bundle.yaml",
        "--inject-image",
        "k",
        "--inject-sidecar-resources",
        r#"{"cpu":"1"}"#,
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--inject-sidecar-resources") && err.contains("cpu"),
        "{err}"
    );
}
