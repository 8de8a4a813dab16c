//! `kz init-network` in a throwaway network namespace standing in for a pod: applied twice with
//! each backend, the ruleset is the same; connections of ordinary uids are redirected to kz's
//! transparent port while kz's own uid goes straight out. Needs root (CI); with
//! `KZ_REQUIRE_PRIVILEGED=1` a machine that cannot run it fails instead of skipping.

use std::process::Command;

use crate::util::{kz_bin, privileged, Needs};

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
    if !privileged(Needs::RootNamespaces) {
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
        text.contains("-A KEYZERO_OUTPUT -m owner --uid-owner 17337 -j RETURN"),
        "{text}"
    );
    assert!(
        text.contains("-A KEYZERO_OUTPUT -p tcp --dport 15020 -j RETURN"),
        "{text}"
    );
    assert!(text.contains("-I OUTPUT 1 -j KEYZERO_OUTPUT"), "{text}");
    assert!(text.contains("icmp6-port-unreachable"), "{text}");
}

/// A whole simulated pod in one network namespace: `kz init-network`, `kz sidecar` as uid
/// 17337, an HTTPS origin on the pod's loopback, and an agent as another uid whose
/// proxy-ignoring `curl` is intercepted and swapped; its UDP and IPv6 escapes fail.
#[test]
fn simulated_pod_agent_is_intercepted_by_the_sidecar() {
    if !privileged(Needs::RootNamespaces) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("kz-pod-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let share = d.join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::set_permissions(&share, std::fs::Permissions::from_mode(0o777)).unwrap();
    let kz = d.join("kz");
    std::fs::copy(kz_bin(), &kz).unwrap();
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::copy(crate::util::fixture(&format!("tls/{f}")), d.join(f)).unwrap();
    }
    let port = 18443;
    std::fs::write(
        d.join("kz.toml"),
        format!(
            "[secrets]\nGH = {{ provider = \"env\", ref = \"REAL_GH\", hosts = [\"api.kz.test:{port}\"] }}\n[network]\nhosts = {{ \"api.kz.test\" = \"127.0.0.1\" }}\nallow_private = true\nupstream_ca = \"{}\"\n",
            d.join("ca.pem").display()
        ),
    )
    .unwrap();
    for f in ["kz.toml", "ca.pem"] {
        std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::write(
        d.join("origin.py"),
        r#"
import ssl, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        open(sys.argv[2], "a").write(self.headers.get("Authorization", "") + "\n")
        self.send_response(200); self.send_header("Content-Length", "3"); self.end_headers(); self.wfile.write(b"ok\n")
s = HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[3], sys.argv[4])
s.socket = ctx.wrap_socket(s.socket, server_side=True); s.serve_forever()
"#,
    )
    .unwrap();
    let agent_probe = r#"
import socket, time
def fast(label, f):
    t0 = time.time()
    try:
        f(); print(label, "NOT BLOCKED")
    except OSError:
        print(label, "blocked" if time.time() - t0 < 3 else "slow")
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5); u.connect(("192.0.2.1", 443)); u.send(b"q"); u.recv(9)
def v6():
    s = socket.create_connection(("2001:db8::1", 443), timeout=5); s.sendall(b"x")
    if not s.recv(9): raise OSError("closed")
fast("udp", udp); fast("ipv6", v6)
"#;
    std::fs::write(d.join("probe.py"), agent_probe).unwrap();
    let script = format!(
        r#"
cd {d}
python3 origin.py {port} {d}/received.log server.pem server.key & ORIGIN=$!
for i in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1', {port}), 1)" 2>/dev/null && break; sleep 0.1; done
./kz init-network
setpriv --reuid=17337 --regid=17337 --clear-groups env -i PATH="$PATH" REAL_GH=ghp_pod_REAL_value_42 \
  ./kz sidecar -c kz.toml --share-dir {share} 2> sidecar.log & SIDECAR=$!
for i in $(seq 100); do curl -sf http://127.0.0.1:15021/ready >/dev/null && break; sleep 0.1; done
curl -sf http://127.0.0.1:15021/ready
curl -sf 'http://[::1]:15021/ready' && echo ready-on-ipv6
. {share}/tokens.env
setpriv --reuid=65534 --regid=65534 --clear-groups env -i PATH="$PATH" GH="$GH" sh -c '
  echo "agent token: $GH"
  curl --noproxy "*" -sS --cacert {share}/ca-bundle.pem --resolve api.kz.test:{port}:198.51.100.7 \
    "https://api.kz.test:{port}/x" -H "Authorization: Bearer $GH"
  python3 {d}/probe.py'
kill $SIDECAR $ORIGIN || true
echo ---origin---
cat received.log
"#,
        d = d.display(),
        share = share.display()
    );
    let out = in_pod(&script);
    assert!(out.contains("ready"), "{out}");
    assert!(
        out.contains("ready-on-ipv6"),
        "kubelet probes reach it over IPv6 too: {out}"
    );
    assert!(out.contains("agent token: ghp_"), "{out}");
    assert!(!crate::util::tokens_in(&out).is_empty(), "{out}");
    assert!(
        out.contains("\nok\n"),
        "the agent's request went through: {out}"
    );
    assert!(
        out.contains("udp blocked") && out.contains("ipv6 blocked"),
        "{out}"
    );
    let agent_part = out
        .split("agent token:")
        .nth(1)
        .unwrap()
        .split("---origin---")
        .next()
        .unwrap();
    assert!(
        !agent_part.contains("ghp_pod_REAL"),
        "the agent never saw the value: {out}"
    );
    let origin_part = out.split("---origin---").nth(1).unwrap();
    assert!(
        origin_part.contains("Bearer ghp_pod_REAL_value_42"),
        "{out}"
    );
}

/// A pod with a real interface: the "node" is a fresh network namespace, the pod another one
/// joined to it by a veth pair (documentation addresses, nothing routed anywhere). With kz's
/// rules in the pod, an app listening on its pod IP still answers the node: the replies of an
/// inbound connection are not new outbound connections.
fn inbound_through_veth(backend: &str) -> String {
    let script = format!(
        r#"set -e
ip link set lo up
unshare -n sleep 60 &
POD=$!
sleep 0.2
ip link add veth-node type veth peer name veth-pod netns $POD
ip addr add 192.0.2.1/24 dev veth-node
ip addr add 192.0.2.3/24 dev veth-node
ip link set veth-node up
python3 -m http.server 8081 --bind 192.0.2.1 >/dev/null 2>&1 &
NODE1=$!
python3 -m http.server 8081 --bind 192.0.2.3 >/dev/null 2>&1 &
NODE3=$!
P="nsenter -t $POD -n"
$P ip link set lo up
$P ip addr add 192.0.2.2/24 dev veth-pod
$P ip link set veth-pod up
ip addr add 2001:db8::1/64 dev veth-node nodad
$P ip addr add 2001:db8::2/64 dev veth-pod nodad
$P {kz} init-network --backend {backend} --exclude-cidr 192.0.2.1/32 >/dev/null 2>&1
$P python3 -m http.server 8080 --bind 192.0.2.2 >/dev/null 2>&1 &
APP=$!
$P python3 -m http.server 8080 --bind 2001:db8::2 >/dev/null 2>&1 &
APP6=$!
for i in $(seq 50); do curl -s -o /dev/null --max-time 1 http://192.0.2.2:8080/ && break; sleep 0.1; done
ok=0
for i in $(seq 40); do
  code=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 2 http://192.0.2.2:8080/ || true)
  [ "$code" = 200 ] && ok=$((ok+1))
done
echo "inbound $ok/40"
# IPv6: neighbour discovery leaves the pod, so the node finds it and gets its answer.
echo "inbound-v6 $(curl -s -o /dev/null -w '%{{http_code}}' --max-time 3 'http://[2001:db8::2]:8080/' || true)"
# A probe-like bare TCP connect from the node.
python3 -c "import socket; s=socket.create_connection(('192.0.2.2', 8080), 2); print('probe connected')"
# Outbound from the pod: an excluded network is reached directly, any other is redirected to
# kz's port (where nothing listens in this test, so it fails).
echo "outbound-excluded $($P curl -s -o /dev/null -w '%{{http_code}}' --max-time 2 http://192.0.2.1:8081/ || true)"
echo "outbound-other $($P curl -s -o /dev/null -w '%{{http_code}}' --max-time 2 http://192.0.2.3:8081/ || true)"
kill $APP $APP6 $POD $NODE1 $NODE3 2>/dev/null || true
"#,
        kz = kz_bin().display()
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
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

#[test]
fn inbound_connections_are_answered_and_excluded_networks_go_direct_with_both_backends() {
    if !privileged(Needs::RootNamespaces) {
        return;
    }
    for backend in ["nft", "iptables"] {
        let out = inbound_through_veth(backend);
        assert!(out.contains("inbound 40/40"), "{backend}: {out}");
        assert!(out.contains("probe connected"), "{backend}: {out}");
        assert!(out.contains("inbound-v6 200"), "{backend}: {out}");
        assert!(out.contains("outbound-excluded 200"), "{backend}: {out}");
        assert!(out.contains("outbound-other 000"), "{backend}: {out}");
    }
}

#[test]
fn rules_of_other_owners_survive_with_both_backends() {
    if !privileged(Needs::RootNamespaces) {
        return;
    }
    let norm = "sed -e 's/\\[[0-9]*:[0-9]*\\]//' -e '/^#/d'";
    let out = in_pod(&format!(
        "iptables -t nat -A POSTROUTING -s 10.99.0.0/16 -j MASQUERADE; iptables -A INPUT -p tcp --dport 9 -j DROP; \
         ip6tables -A INPUT -p tcp --dport 9 -j DROP; \
         $KZ init-network --backend iptables 2>/dev/null; $KZ init-network --backend iptables 2>/dev/null; \
         iptables-save | {norm}; ip6tables-save | {norm}"
    ));
    assert!(
        out.contains("-A POSTROUTING -s 10.99.0.0/16 -j MASQUERADE"),
        "{out}"
    );
    assert_eq!(out.matches("--dport 9 -j DROP").count(), 2, "{out}");
    // One jump per table and family, however often the rules are applied.
    assert_eq!(
        out.matches("-A OUTPUT -j KEYZERO_OUTPUT").count(),
        4,
        "{out}"
    );
    let out = in_pod(
        "nft -f - <<'EOF'\ntable inet other {\n  chain out {\n    type filter hook output priority 10; policy accept;\n    tcp dport 9 drop\n  }\n}\nEOF\n\
         $KZ init-network --backend nft 2>/dev/null; $KZ init-network --backend nft 2>/dev/null; nft list ruleset",
    );
    assert!(out.contains("table inet other"), "{out}");
    assert!(out.contains("tcp dport 9 drop"), "{out}");
    assert_eq!(out.matches("table inet keyzero").count(), 1, "{out}");
}
