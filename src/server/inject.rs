//! The sidecar injector: a mutating admission webhook (`POST /inject`, AdmissionReview v1). For
//! pods labelled (or annotated) `keyzero.dev/inject: "true"` it returns a JSON patch that adds the
//! `kz init-network` init container, the `kz sidecar` native sidecar (an init container with
//! `restartPolicy: Always`), the shared volume and, for the secrets named in
//! `keyzero.dev/secrets`, one token per secret in the agent containers' environment and the
//! same token in the sidecar's; agent containers lose the capabilities that could undo the
//! rules or reach kz's uid. With a policy server configured (the chart's default) the sidecar
//! gets a projected service-account token of its own (audience `keyzero`), mounted in it alone,
//! and resolves through the server with it. Pods that would defeat the rules are refused; pods
//! already injected get no patch. Pure: JSON in, JSON out.

use serde_json::{json, Value};

pub const ANNOTATION: &str = "keyzero.dev/inject";
pub const SECRETS_ANNOTATION: &str = "keyzero.dev/secrets";
pub const INJECTED_ANNOTATION: &str = "keyzero.dev/injected";
/// kz's uid, as pod specs spell numbers.
pub const KZ_UID: i64 = crate::net::KZ_UID as i64;
pub const INIT_NAME: &str = "keyzero-init";
pub const SIDECAR_NAME: &str = "keyzero-sidecar";
pub const VOLUME: &str = "keyzero-share";
pub const SHARE_DIR: &str = "/var/run/keyzero";
pub const IDENTITY_VOLUME: &str = "keyzero-identity";
pub const IDENTITY_DIR: &str = "/var/run/secrets/keyzero";
/// Per-pod exceptions to the redirect, comma-separated (as `kz init-network` takes them).
pub const EXCLUDE_CIDRS_ANNOTATION: &str = "keyzero.dev/exclude-outbound-cidrs";
pub const EXCLUDE_PORTS_ANNOTATION: &str = "keyzero.dev/exclude-outbound-ports";

/// How the injected containers look.
#[derive(Debug, Clone, Default)]
pub struct InjectConfig {
    pub image: String,
    /// A ConfigMap holding the sidecar's `keyzero.toml`.
    pub config_map: String,
    /// `resources` of the sidecar and of the init container.
    pub sidecar_resources: Option<Value>,
    pub init_resources: Option<Value>,
    /// Team mode: the sidecar resolves through this policy server with its own token.
    pub server: Option<ServerIdentity>,
}

/// The sidecar's identity towards the policy server.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    pub url: String,
    /// The CA that signed the server's certificate, read for each review (it may rotate).
    pub ca_file: Option<std::path::PathBuf>,
    /// Its PEM, passed to the sidecar as `KZ_SERVER_CA`.
    pub ca_pem: Option<String>,
    pub audience: String,
    pub expiration_seconds: i64,
}

impl InjectConfig {
    /// This configuration with the CA file read now (a renewal is picked up by the next pod).
    pub fn with_current_ca(&self) -> InjectConfig {
        let mut cfg = self.clone();
        if let Some(server) = &mut cfg.server {
            if let Some(f) = &server.ca_file {
                match std::fs::read_to_string(f) {
                    Ok(pem) => server.ca_pem = Some(pem),
                    Err(e) => eprintln!(
                        "kz: injector: {}: {} (sidecars get no KZ_SERVER_CA)",
                        f.display(),
                        crate::config::io_reason(&e)
                    ),
                }
            }
        }
        cfg
    }
}

fn csv(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_str)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// The decision for one pod.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Nothing to do (not opted in, or already injected).
    Skip,
    Patch(Vec<Value>),
    Refuse(String),
}

fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Decides what to do with `pod`; `tokens` makes the token for each secret name.
pub fn mutate(pod: &Value, cfg: &InjectConfig, mut token: impl FnMut(&str) -> String) -> Verdict {
    let annotations = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    // The label is what the webhook's objectSelector sees; the annotation is read as well for
    // webhooks configured without that selector.
    let opted_in = [
        annotations.and_then(|a| a.get(ANNOTATION)),
        pod.pointer("/metadata/labels")
            .and_then(|l| l.get(ANNOTATION)),
    ]
    .iter()
    .any(|v| v.and_then(Value::as_str) == Some("true"));
    if !opted_in {
        return Verdict::Skip;
    }
    let init = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if annotations.is_some_and(|a| a.contains_key(INJECTED_ANNOTATION))
        || init
            .iter()
            .any(|c| c.get("name").and_then(Value::as_str) == Some(INIT_NAME))
    {
        return Verdict::Skip;
    }
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let spec_flag =
        |f: &str| pod.pointer(&format!("/spec/{f}")).and_then(Value::as_bool) == Some(true);
    if spec_flag("hostNetwork") {
        return Verdict::Refuse(
            "the pod uses the node's network (hostNetwork): kz's rules would land on the node"
                .into(),
        );
    }
    if spec_flag("shareProcessNamespace") {
        return Verdict::Refuse(
            "the pod shares one process namespace (shareProcessNamespace): an agent could read the sidecar's memory"
                .into(),
        );
    }
    let pod_uid = pod
        .pointer("/spec/securityContext/runAsUser")
        .and_then(Value::as_i64);
    for c in containers.iter().chain(init.iter()) {
        let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
        let uid = c
            .pointer("/securityContext/runAsUser")
            .and_then(Value::as_i64)
            .or(pod_uid);
        if uid == Some(KZ_UID) {
            return Verdict::Refuse(format!(
                "container {name} runs as uid {KZ_UID}, kz's own: its traffic would bypass kz"
            ));
        }
        let caps = c
            .pointer("/securityContext/capabilities/add")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(cap) = caps.iter().filter_map(Value::as_str).find(|x| {
            let x = x.trim_start_matches("CAP_");
            matches!(
                x,
                "NET_ADMIN" | "ALL" | "SETUID" | "SETGID" | "SYS_ADMIN" | "SYS_PTRACE"
            )
        }) {
            return Verdict::Refuse(format!(
                "container {name} adds {cap}, with which it could undo kz's rules, become kz's uid or read kz's memory"
            ));
        }
        if c.pointer("/securityContext/privileged")
            .and_then(Value::as_bool)
            == Some(true)
        {
            return Verdict::Refuse(format!(
                "container {name} is privileged, which could undo kz's rules"
            ));
        }
    }
    let names = csv(annotations.and_then(|a| a.get(SECRETS_ANNOTATION)));
    let mut init_args: Vec<String> =
        vec!["init-network".into(), "--kz-uid".into(), KZ_UID.to_string()];
    for c in csv(annotations.and_then(|a| a.get(EXCLUDE_CIDRS_ANNOTATION))) {
        if let Err(e) = c.parse::<kz_netns::rules::Cidr>() {
            return Verdict::Refuse(format!("{EXCLUDE_CIDRS_ANNOTATION}: {e}"));
        }
        init_args.extend(["--exclude-cidr".into(), c]);
    }
    for p in csv(annotations.and_then(|a| a.get(EXCLUDE_PORTS_ANNOTATION))) {
        if !p.parse::<u16>().is_ok_and(|n| n > 0) {
            return Verdict::Refuse(format!(
                "{EXCLUDE_PORTS_ANNOTATION}: {p:?} is not a port (1-65535)"
            ));
        }
        init_args.extend(["--exclude-port".into(), p]);
    }
    let tokens: Vec<(String, String)> = names.iter().map(|n| (n.clone(), token(n))).collect();
    let mount = json!({"name": VOLUME, "mountPath": SHARE_DIR, "readOnly": true});
    let mut init_network = json!({
        "name": INIT_NAME,
        "image": cfg.image,
        "args": init_args,
        "securityContext": {
            "runAsUser": 0, "runAsNonRoot": false, "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    });
    if let Some(r) = &cfg.init_resources {
        init_network["resources"] = r.clone();
    }
    let mut sidecar_env: Vec<Value> = tokens
        .iter()
        .map(|(n, t)| json!({"name": format!("KZ_TOKEN_{n}"), "value": t}))
        .collect();
    sidecar_env.push(json!({"name": "KZ_CONFIG", "value": "/etc/keyzero/keyzero.toml"}));
    let mut sidecar_args: Vec<String> =
        vec!["sidecar".into(), "--share-dir".into(), SHARE_DIR.into()];
    let mut sidecar_mounts = vec![
        json!({"name": VOLUME, "mountPath": SHARE_DIR}),
        json!({"name": "keyzero-config", "mountPath": "/etc/keyzero", "readOnly": true}),
    ];
    if let Some(server) = &cfg.server {
        sidecar_args.extend([
            "--server".into(),
            server.url.clone(),
            "--server-token-file".into(),
            format!("{IDENTITY_DIR}/token"),
        ]);
        sidecar_mounts
            .push(json!({"name": IDENTITY_VOLUME, "mountPath": IDENTITY_DIR, "readOnly": true}));
        if let Some(pem) = &server.ca_pem {
            sidecar_env.push(json!({"name": "KZ_SERVER_CA", "value": pem}));
        }
    }
    let mut sidecar = json!({
        "name": SIDECAR_NAME,
        "image": cfg.image,
        "restartPolicy": "Always",
        "args": sidecar_args,
        "env": sidecar_env,
        "volumeMounts": sidecar_mounts,
        "startupProbe": {"httpGet": {"path": "/ready", "port": crate::net::READY_PORT}, "periodSeconds": 1, "failureThreshold": 60},
        "securityContext": {
            "runAsUser": KZ_UID, "runAsGroup": KZ_UID, "runAsNonRoot": true,
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    });
    if let Some(r) = &cfg.sidecar_resources {
        sidecar["resources"] = r.clone();
    }
    let mut ops = Vec::new();
    if pod.pointer("/spec/initContainers").is_none() {
        ops.push(
            json!({"op": "add", "path": "/spec/initContainers", "value": [init_network, sidecar]}),
        );
    } else {
        // The rules first and the sidecar second, before any init container of the pod's own.
        ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": sidecar}));
        ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init_network}));
    }
    let mut volumes = vec![
        json!({"name": VOLUME, "emptyDir": {}}),
        json!({"name": "keyzero-config", "configMap": {"name": cfg.config_map}}),
    ];
    if let Some(server) = &cfg.server {
        // The sidecar's own identity: a token only the sidecar mounts, for the policy server's
        // audience alone (the pod's ordinary service-account token is not accepted there).
        volumes.push(
            json!({"name": IDENTITY_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
                "audience": server.audience,
                "expirationSeconds": server.expiration_seconds,
                "path": "token"
            }}]}}),
        );
    }
    let taken: Vec<&str> = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .map(|v| v.iter().filter_map(|x| x.get("name")?.as_str()).collect())
        .unwrap_or_default();
    if let Some(clash) = volumes
        .iter()
        .filter_map(|v| v["name"].as_str())
        .find(|n| taken.contains(n))
    {
        return Verdict::Refuse(format!(
            "the pod already has a volume named {clash}, which kz's sidecar needs"
        ));
    }
    if pod.pointer("/spec/volumes").is_none() {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    } else {
        for v in volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
        }
    }
    for (i, c) in containers.iter().enumerate() {
        let base = format!("/spec/containers/{i}");
        if c.get("volumeMounts").is_none() {
            ops.push(
                json!({"op": "add", "path": format!("{base}/volumeMounts"), "value": [mount]}),
            );
        } else {
            ops.push(
                json!({"op": "add", "path": format!("{base}/volumeMounts/-"), "value": mount}),
            );
        }
        // An agent that is root (or may become it) could switch to kz's uid and go direct:
        // these capabilities go, whatever the image does.
        let drop = ["SETUID", "SETGID", "NET_ADMIN", "NET_RAW"];
        match (
            c.get("securityContext"),
            c.pointer("/securityContext/capabilities"),
            c.pointer("/securityContext/capabilities/drop"),
        ) {
            (None, _, _) => ops.push(json!({"op": "add", "path": format!("{base}/securityContext"), "value": {"capabilities": {"drop": drop}}})),
            (Some(_), None, _) => ops.push(json!({"op": "add", "path": format!("{base}/securityContext/capabilities"), "value": {"drop": drop}})),
            (_, Some(_), None) => ops.push(json!({"op": "add", "path": format!("{base}/securityContext/capabilities/drop"), "value": drop})),
            (_, _, Some(have)) => {
                let have: Vec<&str> = have
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if !have.contains(&"ALL") {
                    for d in drop.iter().filter(|d| !have.contains(d)) {
                        ops.push(json!({"op": "add", "path": format!("{base}/securityContext/capabilities/drop/-"), "value": d}));
                    }
                }
            }
        }
        let mut env: Vec<Value> = tokens
            .iter()
            .map(|(n, t)| json!({"name": n, "value": t}))
            .collect();
        for var in crate::blind::env::CA_BUNDLE_VARS {
            env.push(json!({"name": var, "value": format!("{SHARE_DIR}/ca-bundle.pem")}));
        }
        env.push(json!({"name": "SSL_CERT_DIR", "value": format!("{SHARE_DIR}/certs")}));
        env.push(json!({"name": "WGETRC", "value": format!("{SHARE_DIR}/wgetrc")}));
        if c.get("env").is_none() {
            ops.push(json!({"op": "add", "path": format!("{base}/env"), "value": env}));
        } else {
            for e in env {
                ops.push(json!({"op": "add", "path": format!("{base}/env/-"), "value": e}));
            }
        }
    }
    let ann_path = format!(
        "/metadata/annotations/{}",
        escape_pointer(INJECTED_ANNOTATION)
    );
    ops.push(json!({"op": "add", "path": ann_path, "value": "true"}));
    Verdict::Patch(ops)
}

/// Answers an AdmissionReview v1 request.
pub fn review(body: &Value, cfg: &InjectConfig) -> Value {
    let uid = body.pointer("/request/uid").cloned().unwrap_or(Value::Null);
    let pod = body
        .pointer("/request/object")
        .cloned()
        .unwrap_or(Value::Null);
    let response = match mutate(&pod, cfg, |_| crate::blind::new_token()) {
        Verdict::Skip => json!({"uid": uid, "allowed": true}),
        Verdict::Refuse(reason) => {
            json!({"uid": uid, "allowed": false, "status": {"code": 403, "message": format!("keyzero: {reason}")}})
        }
        Verdict::Patch(ops) => {
            use base64::Engine;
            json!({
                "uid": uid, "allowed": true, "patchType": "JSONPatch",
                "patch": base64::engine::general_purpose::STANDARD.encode(Value::Array(ops).to_string())
            })
        }
    };
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}
