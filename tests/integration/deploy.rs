//! `deploy/entrypoint` exercised outside Docker (no container engine runs here): as root it
//! sets up isolation and runs the agent as its own user with the token swapped on the wire;
//! the plain manifests are the rendered chart.

use std::path::Path;

use crate::blind::{Blind, REAL_GH};
use crate::util::{kz_bin, privileged, run, Needs};

#[test]
fn entrypoint_runs_the_agent_isolated_as_its_own_user() {
    if !privileged(Needs::Root) {
        return;
    }
    let b = Blind::new();
    let entrypoint = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/entrypoint");
    let bin_dir = kz_bin().parent().unwrap().to_path_buf();
    let mut cmd = std::process::Command::new(&entrypoint);
    cmd.env_clear()
        .env("PATH", format!("{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", bin_dir.display()))
        .env("HOME", b.sb.home())
        .env("KZ_CONFIG", b.sb.path().join(".keyzero.toml"))
        .env("KZ_AGENT_UID", "65534")
        .env("REAL_GH", REAL_GH)
        .env("REAL_OTHER", "other-value-1234")
        .env("UP", b.url("api.kz.test", ""))
        .args(["sh", "-c", "id -u; curl --noproxy '*' -sS --fail \"$UP/entry\" -H \"Authorization: Bearer $GH\" -o /dev/null && echo swapped; grep CapEff /proc/self/status"])
        .stdin(std::process::Stdio::null());
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "{out}{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("65534"), "{out}");
    assert!(out.contains("swapped"), "{out}{err}");
    assert!(
        out.contains("CapEff:\t0000000000000000"),
        "no capabilities: {out}"
    );
    assert_eq!(
        b.up.last().header("authorization"),
        Some(format!("Bearer {REAL_GH}").as_str())
    );
    let (code, _, err) = run(std::process::Command::new(&entrypoint).env("PATH", bin_dir));
    assert_eq!(code, 2, "{err}");
}

#[test]
fn plain_manifests_are_the_rendered_chart() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/keyzero.yaml"),
    )
    .unwrap();
    for kind in [
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
    ] {
        assert!(text.contains(&format!("kind: {kind}")), "{kind} missing");
    }
    assert!(text.contains("failurePolicy: Fail"));
}
