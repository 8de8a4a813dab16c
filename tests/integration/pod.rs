//! `kz init-network` in a throwaway network namespace standing in for a pod: applied twice with
//! each backend, the ruleset is the same; connections of ordinary uids are redirected to kz's
//! transparent port while kz's own uid goes straight out. Needs root (CI); with
//! `KZ_REQUIRE_PRIVILEGED=1` a machine that cannot run it fails instead of skipping.

use std::process::Command;

use crate::util::kz_bin;

fn privileged() -> bool {
    let ok = nix::unistd::getuid().is_root()
        && Command::new("unshare")
            .args(["-n", "true"])
            .status()
            .is_ok_and(|s| s.success())
        && Command::new("setpriv")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("KZ_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("root, network namespaces or setpriv unavailable but KZ_REQUIRE_PRIVILEGED=1");
    }
    ok
}

fn in_pod(script: &str) -> String {
    let full = format!(
        "set -e; ip link set lo up; ip route add default dev lo src 127.0.0.1; ip -6 route add default dev lo src ::1; KZ={kz}; {script}",
        kz = kz_bin().display()
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &full])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

const PROBE: &str = r#"
import os, socket, subprocess, sys
lst = socket.socket(); lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", 15001)); lst.listen(); lst.settimeout(1.5)
def attempt(uid):
    code = "import socket\ns=socket.socket(); s.settimeout(1)\ntry:\n    s.connect(('192.0.2.9', 443))\nexcept OSError:\n    pass\n"
    subprocess.Popen(["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups", sys.executable, "-c", code])
    try:
        c, _ = lst.accept(); c.close(); return "redirected"
    except socket.timeout:
        return "direct"
print("agent", attempt(65534))
print("kz", attempt(17337))
"#;

#[test]
fn init_network_is_idempotent_and_spares_kz_uid() {
    if !privileged() {
        return;
    }
    let probe = std::env::temp_dir().join(format!("kz-pod-probe-{}.py", std::process::id()));
    std::fs::write(&probe, PROBE).unwrap();
    let out = in_pod(&format!(
        "$KZ init-network --backend nft; nft list ruleset > /tmp/kz-pod-1.$$; $KZ init-network --backend nft; nft list ruleset > /tmp/kz-pod-2.$$; \
         cmp /tmp/kz-pod-1.$$ /tmp/kz-pod-2.$$ && echo nft-idempotent; rm -f /tmp/kz-pod-*.$$; python3 {}",
        probe.display()
    ));
    assert!(out.contains("nft-idempotent"), "{out}");
    assert!(out.contains("agent redirected"), "{out}");
    assert!(
        out.contains("kz direct"),
        "kz's own traffic must not loop back to itself: {out}"
    );
    let norm = "sed -e 's/\\[[0-9]*:[0-9]*\\]//' -e '/^#/d'";
    let out = in_pod(&format!(
        "$KZ init-network --backend iptables; iptables-save | {norm} > /tmp/kz-pod-1.$$; ip6tables-save | {norm} >> /tmp/kz-pod-1.$$; \
         $KZ init-network --backend iptables; iptables-save | {norm} > /tmp/kz-pod-2.$$; ip6tables-save | {norm} >> /tmp/kz-pod-2.$$; \
         cmp /tmp/kz-pod-1.$$ /tmp/kz-pod-2.$$ && echo iptables-idempotent; rm -f /tmp/kz-pod-*.$$; python3 {}",
        probe.display()
    ));
    std::fs::remove_file(&probe).unwrap();
    assert!(out.contains("iptables-idempotent"), "{out}");
    assert!(
        out.contains("agent redirected") && out.contains("kz direct"),
        "{out}"
    );
}

#[test]
fn dry_run_prints_and_changes_nothing() {
    let out = Command::new(kz_bin())
        .args([
            "init-network",
            "--dry-run",
            "--backend",
            "iptables",
            "--exclude-port",
            "15020",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("# iptables-restore") && text.contains("# ip6tables-restore"),
        "{text}"
    );
    assert!(
        text.contains("-A OUTPUT -m owner --uid-owner 17337 -j RETURN"),
        "{text}"
    );
    assert!(
        text.contains("-A OUTPUT -p tcp --dport 15020 -j RETURN"),
        "{text}"
    );
    assert!(text.contains("icmp6-port-unreachable"), "{text}");
}
