//! `kz run --blind --isolate`: clients that ignore every proxy and CA variable are still
//! intercepted and swapped; escapes fail fast; rootless keeps the uid; nothing is left behind.
//! These need namespaces (root in CI). With `KZ_REQUIRE_PRIVILEGED=1` a machine that cannot run
//! them fails the tests instead of skipping. Escape probes aim only at documentation addresses.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::blind::{Blind, REAL_GH};
use crate::util::{kz_bin, privileged, python, run, Needs};

impl Blind {
    /// `kz run --blind --isolate --no-mask -- sh -c SCRIPT`.
    fn run_isolated(&self, script: &str) -> (i32, String, String) {
        self.run_isolated_with(script, &[])
    }

    fn run_isolated_with(&self, script: &str, env: &[(&str, &Path)]) -> (i32, String, String) {
        let mut cmd = self.sb.kz();
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(cmd
            .env("REAL_GH", REAL_GH)
            .env("REAL_OTHER", crate::blind::REAL_OTHER)
            .env("UP", self.url("api.kz.test", ""))
            .env("PORT", self.up.port.to_string())
            .env("PY", python())
            .env("HOST_NETNS", netns_id())
            .args([
                "run",
                "--blind",
                "--isolate",
                "--no-mask",
                "--",
                "sh",
                "-c",
                script,
            ]))
    }
}

fn netns_id() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Every isolated script starts by proving it runs in a namespace of its own.
const IN_OWN_NETNS: &str = r#"[ "$(readlink /proc/self/ns/net)" != "$HOST_NETNS" ] || { echo "not isolated"; exit 99; }
"#;

/// The user's `HTTPS_PROXY` (and friends) is not passed into the namespace; a client with a
/// proxy of its own (`curl -x`) reaches kz's transparent port, which accepts its CONNECT and
/// absolute-form requests as the explicit proxy would. The hashed `/etc/ssl/certs` inside
/// holds kz's CA.
#[test]
fn inherited_proxies_are_replaced_and_a_clients_own_proxy_still_reaches_kz() {
    if !privileged(Needs::Namespaces) {
        return;
    }
    let b = Blind::new();
    let script = format!(
        r#"{IN_OWN_NETNS}
echo "vars=$HTTPS_PROXY$https_proxy$HTTP_PROXY$ALL_PROXY$NO_PROXY"
curl -sS --fail -x http://192.0.2.10:3128 "$UP/via-connect" -H "Authorization: Bearer $GH" -o /dev/null && echo connect-ok
env -u SSL_CERT_FILE -u CURL_CA_BUNDLE "$PY" -c '
import os, ssl, urllib.request
ctx = ssl.create_default_context(cafile=None, capath="/etc/ssl/certs")
ctx.load_verify_locations(capath="/etc/ssl/certs")
req = urllib.request.Request(os.environ["UP"] + "/capath", headers={{"Authorization": "Bearer " + os.environ["GH"]}})
print("etc-certs", urllib.request.urlopen(req, context=ctx).status)'
"#
    );
    let proxy = Path::new("http://192.0.2.10:3128");
    let (code, out, err) = b.run_isolated_with(
        &script,
        &[
            ("HTTPS_PROXY", proxy),
            ("https_proxy", proxy),
            ("ALL_PROXY", proxy),
            ("NO_PROXY", Path::new("api.kz.test")),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("vars=\n"),
        "inherited proxy variables are gone: {out}"
    );
    assert!(out.contains("connect-ok"), "{out}{err}");
    assert!(out.contains("etc-certs 200"), "{out}{err}");
    let reqs = b.up.requests();
    for path in ["/via-connect", "/capath"] {
        let r = reqs
            .iter()
            .find(|r| r.target == path)
            .unwrap_or_else(|| panic!("{path}: {out}{err}"));
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {REAL_GH}").as_str()),
            "{path}"
        );
    }
}

#[test]
fn clients_that_ignore_proxy_variables_are_intercepted() {
    if !privileged(Needs::Namespaces) {
        return;
    }
    let b = Blind::new();
    let script = format!(
        r#"{IN_OWN_NETNS}
case "$HTTPS_PROXY$HTTP_PROXY" in "") echo no-proxy-vars;; esac
curl --noproxy '*' -sS --fail "$UP/curl" -H "Authorization: Bearer $GH" -o /dev/null && echo curl-ok
"$PY" -c '
import os, requests
s = requests.Session(); s.trust_env = False
r = s.get(os.environ["UP"] + "/requests", headers={{"Authorization": "Bearer " + os.environ["GH"]}}, verify=os.environ["SSL_CERT_FILE"])
print("requests-ok", r.status_code)'
node -e 'fetch(process.env.UP + "/node", {{ headers: {{ authorization: "Bearer " + process.env.GH }} }}).then(r => console.log("node-ok", r.status)).catch(e => {{ console.error(e); process.exit(3) }})'
"$PY" -c '
import os, socket, ssl
ctx = ssl.create_default_context(cafile=os.environ["KZ_CA_CERT"])
raw = socket.create_connection(("192.0.2.77", int(os.environ["PORT"])), timeout=5)
t = ctx.wrap_socket(raw, server_hostname="api.kz.test")
t.sendall(("GET /raw HTTP/1.1\r\nHost: api.kz.test:%s\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n" % (os.environ["PORT"], os.environ["GH"])).encode())
print("raw-ip-ok", t.recv(100).split(b"\r\n")[0].decode())'
env -u SSL_CERT_FILE -u CURL_CA_BUNDLE -u REQUESTS_CA_BUNDLE -u KZ_CA_CERT curl --noproxy '*' -sS --fail "$UP/truststore" -H "Authorization: Bearer $GH" -o /dev/null && echo truststore-ok
"#
    );
    let (code, out, err) = b.run_isolated(&script);
    assert_eq!(code, 0, "{out}{err}");
    for want in [
        "no-proxy-vars",
        "curl-ok",
        "requests-ok 200",
        "node-ok 200",
        "raw-ip-ok HTTP/1.1 200",
        "truststore-ok",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{out}\n{err}");
    }
    let reqs = b.up.requests();
    for path in ["/curl", "/requests", "/node", "/raw", "/truststore"] {
        let r = reqs
            .iter()
            .find(|r| r.target == path)
            .unwrap_or_else(|| panic!("{path} not received"));
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {REAL_GH}").as_str()),
            "{path}"
        );
    }
    assert!(!out.contains(REAL_GH) && !err.contains(REAL_GH));
}

#[test]
fn escapes_fail_fast_and_send_nothing() {
    if !privileged(Needs::Namespaces) {
        return;
    }
    let b = Blind::with_network("allow_private = true\nallow = [\"api.kz.test\"]\n");
    let script = format!(
        r#"{IN_OWN_NETNS}
"$PY" -c '
import socket, time, subprocess
def fast(label, f):
    t0 = time.time()
    try:
        f(); print(label, "NOT BLOCKED")
    except OSError as e:
        print(label, "blocked" if time.time() - t0 < 3 else "slow")
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
    u.connect(("192.0.2.1", 443)); u.send(b"quic"); u.recv(10)
fast("udp", udp)
def v6():
    s = socket.create_connection(("2001:db8::1", 443), timeout=5); s.sendall(b"x")
    if not s.recv(10): raise OSError("closed")
fast("ipv6", v6)
def icmp():
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
fast("raw", icmp)
def dns():
    socket.getaddrinfo("evil.example.com", 443)
fast("dns", dns)
def allowed_dns():
    socket.getaddrinfo("api.kz.test", 443)
def dns_over_tcp(name):
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00\x00\x01\x00\x01"
    s = socket.create_connection(("198.18.0.53", 53), timeout=3)
    s.sendall(len(q).to_bytes(2, "big") + q)
    n = int.from_bytes(s.recv(2), "big"); r = s.recv(n)
    return r[3] & 0x0f, int.from_bytes(r[6:8], "big")
print("tcp-dns allowed", dns_over_tcp("api.kz.test"))
print("tcp-dns refused", dns_over_tcp("evil.example.com"))
try:
    allowed_dns(); print("allowed-dns ok")
except OSError as e:
    print("allowed-dns failed", e)
'
ping -c 1 -W 2 192.0.2.1 >/dev/null 2>&1 && echo "ping NOT BLOCKED" || echo "ping blocked"
"#
    );
    let (code, out, err) = b.run_isolated(&script);
    assert_eq!(code, 0, "{out}{err}");
    for want in [
        "udp blocked",
        "ipv6 blocked",
        "raw blocked",
        "dns blocked",
        "allowed-dns ok",
        "ping blocked",
        "tcp-dns allowed (0, 1)",
        "tcp-dns refused (5, 0)",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{out}\n{err}");
    }
    assert!(b.up.requests().is_empty(), "nothing reached any upstream");
    assert!(
        b.audit().iter().any(|l| l["event"] == "refused"),
        "refusals audited"
    );
}

#[test]
fn rootless_keeps_the_uid_and_still_swaps() {
    if !privileged(Needs::Namespaces) {
        return;
    }
    if !nix::unistd::getuid().is_root() {
        return; // the unprivileged case is the one being run already
    }
    let b = Blind::new();
    // An ordinary user must be able to read the config and run kz.
    let dir = tempfile::Builder::new()
        .prefix("kz-rootless-")
        .tempdir()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let cfg = dir.path().join("kz.toml");
    std::fs::copy(b.sb.path().join(".keyzero.toml"), &cfg).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "path = \"audit.jsonl\"",
        &format!("path = {:?}", dir.path().join("a.jsonl")),
    );
    std::fs::write(&cfg, text).unwrap();
    // A copy of kz an ordinary user can execute wherever the checkout lives.
    let kz_copy = dir.path().join("kz");
    std::fs::copy(kz_bin(), &kz_copy).unwrap();
    std::fs::set_permissions(&kz_copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", "env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp"])
        .arg(format!("REAL_GH={REAL_GH}"))
        .arg("REAL_OTHER=other-value-1234")
        .arg(format!("UP={}", b.url("api.kz.test", "")))
        .arg(&kz_copy)
        .args(["run", "-c"])
        .arg(&cfg)
        .args(["--blind", "--isolate", "--no-mask", "--", "sh", "-c", "id -u; curl --noproxy '*' -sS --fail \"$UP/rootless\" -H \"Authorization: Bearer $GH\" -o /dev/null && echo swapped"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{so}{se}");
    assert!(
        so.starts_with("65534\n"),
        "the child keeps the invoking uid: {so}"
    );
    assert!(so.contains("swapped"), "{so}{se}");
    assert_eq!(
        b.up.last().header("authorization"),
        Some(format!("Bearer {REAL_GH}").as_str())
    );
}

fn host_state() -> (String, String) {
    let rules = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    (rules, mounts)
}

#[test]
fn nothing_is_left_behind_even_after_sigkill() {
    if !privileged(Needs::Namespaces) {
        return;
    }
    let b = Blind::new();
    // kz's temporary files go to a directory of this test's own, which must end up empty.
    let tmp = tempfile::tempdir().unwrap();
    let before = host_state();
    let (code, _, err) = b.run_isolated_with(
        &format!("{IN_OWN_NETNS} curl --noproxy '*' -sS \"$UP/x\" -o /dev/null -H \"Authorization: Bearer $GH\""),
        &[("TMPDIR", tmp.path())],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = b.run_isolated_with(
        &format!("{IN_OWN_NETNS} kill -KILL $$"),
        &[("TMPDIR", tmp.path())],
    );
    assert_eq!(code, 137);
    let after = host_state();
    assert_eq!(before.0, after.0, "host firewall ruleset changed");
    assert_eq!(before.1, after.1, "host mount table changed");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn exit_codes_and_signals_pass_through_the_helper() {
    if !privileged(Needs::Namespaces) {
        return;
    }
    let b = Blind::new();
    assert_eq!(b.run_isolated("exit 7").0, 7);
    assert_eq!(b.run_isolated("kill -TERM $$").0, 143);
    let (code, _, err) = run(b
        .sb
        .kz()
        .env("REAL_GH", REAL_GH)
        .env("REAL_OTHER", "other-value-1234")
        .args(["run", "--blind", "--isolate", "--", "no-such-command-kz"]));
    assert_eq!(code, 127, "{err}");
    assert!(
        err.contains("no-such-command-kz: command not found"),
        "{err}"
    );
}

/// A connection to an unbound host, redirected and tunnelled, still waiting for its answer when
/// the agent exits (the namespace's processes end with it): kz run ends promptly and the tunnel
/// has its audit line with both byte counts.
#[test]
fn a_redirected_tunnel_is_audited_when_the_agent_exits() {
    if !privileged(Needs::Namespaces) {
        return;
    }
    let b = Blind::new();
    let ca = crate::util::fixture("tls/ca.pem");
    let script = format!(
        r#"{IN_OWN_NETNS}
curl --noproxy '*' -sS --cacert "$TEST_CA" "https://evil.kz.test:$PORT/slow-body" >/dev/null 2>&1 &
sleep 1"#
    );
    let started = std::time::Instant::now();
    let (code, out, err) = b.run_isolated_with(&script, &[("TEST_CA", &ca)]);
    let took = started.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        took < std::time::Duration::from_secs(10),
        "kz run took {took:?}"
    );
    b.assert_tunnel_audited("evil.kz.test");
}
