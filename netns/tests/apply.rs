//! The generated rules against a real kernel: loaded into a throwaway network namespace with
//! `nft` and with `iptables-restore`, then probed. Needs root (or a user namespace) and the
//! tools; with `KZ_REQUIRE_PRIVILEGED=1` (CI, as root) a missing prerequisite fails the test.
//! Probes aim only at documentation addresses (192.0.2.0/24, 2001:db8::/32).

use std::process::Command;

use kz_netns::rules::{iptables_restore, nft_ruleset, RuleSpec};

fn prerequisites() -> bool {
    let ok = Command::new("unshare")
        .args(["-U", "-r", "-n", "true"])
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("nft")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        && Command::new("iptables-restore")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("KZ_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("namespaces, nft or iptables-restore unavailable but KZ_REQUIRE_PRIVILEGED=1");
    }
    ok
}

/// Runs the probe in a new user + network namespace with loopback up and default routes via lo
/// (with loopback as the preferred source: without it a redirected connection gets source
/// 0.0.0.0 and its replies fall outside the loopback exemption).
fn in_namespace(rules_cmd: &str, rules: &str, probe: &str) -> String {
    let dir = tempfile_dir();
    std::fs::write(dir.join("rules"), rules).unwrap();
    std::fs::write(dir.join("probe.py"), probe).unwrap();
    let script = format!(
        "set -e; ip link set lo up; ip route add default dev lo src 127.0.0.1; ip -6 route add default dev lo src ::1; {rules_cmd} < {r}; python3 {p}",
        r = dir.join("rules").display(),
        p = dir.join("probe.py").display()
    );
    let out = Command::new("unshare")
        .args(["-U", "-r", "-n", "sh", "-c", &script])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kz-rules-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

const PROBE: &str = r#"
import socket, struct, time
res = []
lst = socket.socket(); lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", 15001)); lst.listen()
lst6 = socket.socket(socket.AF_INET6); lst6.bind(("::1", 15001)); lst6.listen()
# TCP to an outside IPv4 address lands on the transparent port, original destination intact.
c = socket.create_connection(("192.0.2.10", 443), timeout=2)
a, _ = lst.accept()
d = a.getsockopt(socket.SOL_IP, 80, 16)
res.append("tcp4 %s:%d" % (socket.inet_ntoa(d[4:8]), struct.unpack("!H", d[2:4])[0]))
c6 = socket.create_connection(("2001:db8::10", 443), timeout=2)
a6, _ = lst6.accept()
res.append("tcp6 redirected")
# Loopback stays loopback.
other = socket.socket(); other.bind(("127.0.0.1", 15999)); other.listen()
socket.create_connection(("127.0.0.1", 15999), timeout=2); other.accept()
res.append("loopback local")
# UDP other than DNS fails fast.
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
t0 = time.time()
try:
    u.connect(("192.0.2.10", 443)); u.send(b"x"); u.recv(10); res.append("udp NOT blocked")
except OSError as e:
    res.append("udp blocked fast" if time.time() - t0 < 1 else "udp slow")
# DNS is redirected to the resolver port.
dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); dns.bind(("127.0.0.1", 15053))
q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); q.sendto(b"query", ("192.0.2.53", 53))
data, _ = dns.recvfrom(100); res.append("dns redirected" if data == b"query" else "dns wrong")
print("\n".join(res))
"#;

fn check(out: &str) {
    for want in [
        "tcp4 192.0.2.10:443",
        "tcp6 redirected",
        "loopback local",
        "udp blocked fast",
        "dns redirected",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
}

fn spec() -> RuleSpec {
    RuleSpec {
        proxy_port: 15001,
        dns_port: 15053,
        exclude_uids: vec![],
        exclude_ports: vec![],
        exclude_cidrs: vec![],
    }
}

#[test]
fn nft_rules_redirect_and_reject() {
    if !prerequisites() {
        return;
    }
    check(&in_namespace("nft -f -", &nft_ruleset(&spec()), PROBE));
    // Applying twice is the same as once.
    let twice = format!("{0}{0}", nft_ruleset(&spec()));
    check(&in_namespace("nft -f -", &twice, PROBE));
}

#[test]
fn iptables_rules_redirect_and_reject() {
    if !prerequisites() {
        return;
    }
    // A fresh namespace: kz's chains are new, so both jumps are added.
    let v4 = iptables_restore(&spec(), false, true, true);
    let v6 = iptables_restore(&spec(), true, true, true);
    let dir = tempfile_dir();
    std::fs::write(dir.join("v6"), &v6).unwrap();
    let cmd = format!(
        "ip6tables-restore --noflush {} && iptables-restore --noflush",
        dir.join("v6").display()
    );
    check(&in_namespace(&cmd, &v4, PROBE));
    std::fs::remove_dir_all(&dir).unwrap();
}
