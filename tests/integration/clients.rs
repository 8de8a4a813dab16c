//! The user's own proxy and trust settings, and long answers, through `kz run --blind`: a
//! `NO_PROXY` naming a bound host must not send it around kz; kz's own upstream connections go
//! through `upstream_proxy` (a CONNECT-logging proxy on loopback); clients that read only
//! `SSL_CERT_DIR` or `WGETRC` trust kz; a body that starts after 20 s of silence arrives.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::blind::{Blind, REAL_GH};
use crate::util::{fixture, python};

#[test]
fn no_proxy_naming_a_bound_host_is_not_passed_on() {
    let b = Blind::new();
    let (code, out, err) = b.run_sh_with(
        r#"echo "np=$NO_PROXY"; curl -sS --fail -o /dev/null "$UP/echo" -H "Authorization: Bearer $GH" && echo sent"#,
        &[("NO_PROXY", "api.kz.test,.kz.test,corp.internal")],
    );
    assert_eq!(code, 0, "{out}{err}");
    let np = out.lines().find_map(|l| l.strip_prefix("np=")).unwrap();
    assert_eq!(np, "corp.internal,localhost,127.0.0.1,::1", "{out}");
    assert!(
        err.contains("NO_PROXY entries api.kz.test, .kz.test left out"),
        "{err}"
    );
    assert_eq!(
        b.up.last().header("authorization"),
        Some(format!("Bearer {REAL_GH}").as_str()),
        "the request went through kz"
    );
}

#[test]
fn wget_and_cert_dir_only_clients_trust_kz() {
    let b = Blind::new();
    let (code, out, err) = b.run_sh(
        r#"wget -q -O - --header "Authorization: Bearer $GH" "$UP/echo" >/dev/null && echo wget-ok
env -u SSL_CERT_FILE -u REQUESTS_CA_BUNDLE "$PY" -c '
import os, ssl, urllib.request
ctx = ssl.create_default_context(cafile=None, capath=os.environ["SSL_CERT_DIR"])
ctx.load_verify_locations(capath=os.environ["SSL_CERT_DIR"])
req = urllib.request.Request(os.environ["UP"] + "/echo", headers={"Authorization": "Bearer " + os.environ["GH"]})
print("capath", urllib.request.urlopen(req, context=ctx).status)'
echo "dirs=$SSL_CERT_DIR"
ls "${SSL_CERT_DIR%%:*}" | grep -c '^[0-9a-f]\{8\}\.[0-9]$'
cat "$WGETRC""#,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("wget-ok"), "{out}{err}");
    assert!(out.contains("capath 200"), "{out}{err}");
    assert!(out.contains("ca_certificate = "), "{out}");
    // kz's CA in a directory of its own, then the system's hashed directory.
    let hashed: usize = out.lines().find_map(|l| l.parse().ok()).unwrap();
    assert_eq!(hashed, 1, "{out}");
    let dirs = out.lines().find_map(|l| l.strip_prefix("dirs=")).unwrap();
    assert!(dirs.ends_with(":/etc/ssl/certs"), "{dirs}");
    let auths: Vec<String> =
        b.up.requests()
            .iter()
            .filter_map(|r| r.header("authorization").map(String::from))
            .collect();
    assert_eq!(auths.len(), 2, "{auths:?}");
    assert!(auths.iter().all(|a| a == &format!("Bearer {REAL_GH}")));
}

#[test]
fn kz_reaches_upstreams_through_upstream_proxy_with_basic_auth() {
    // A CONNECT proxy on loopback that logs each request head and tunnels.
    let mut proxy = Command::new(python())
        .arg(fixture("connect_proxy.py"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(proxy.stdout.take().unwrap()).lines();
    let port: u16 = lines
        .next()
        .unwrap()
        .unwrap()
        .strip_prefix("PORT ")
        .unwrap()
        .parse()
        .unwrap();
    let b = Blind::with_network(&format!(
        "allow_private = true\nupstream_proxy = \"http://corp%40user:p%3Ass@127.0.0.1:{port}\"\n"
    ));
    // localhost is not mapped in [network] hosts, so kz's connection goes through the proxy.
    let local = b.url("localhost", "/echo");
    let (code, out, err) = b.run_sh_with(
        r#"curl -sS --fail --noproxy '' -o /dev/null --cacert "$TEST_CA" "$LOCAL" && echo ok"#,
        &[("LOCAL", &local)],
    );
    assert_eq!(code, 0, "{out}{err}");
    let _ = proxy.kill();
    let _ = proxy.wait();
    let logged: Vec<String> = lines.map_while(Result::ok).collect();
    let connect = logged
        .iter()
        .find(|l| l.starts_with("CONNECT localhost:"))
        .unwrap_or_else(|| panic!("no CONNECT through the upstream proxy: {logged:?}"));
    use base64::Engine;
    let want = base64::engine::general_purpose::STANDARD.encode("corp@user:p:ss");
    assert!(connect.contains(&format!("auth=Basic {want}")), "{connect}");
    // A bad proxy url is a config error naming the key.
    let b = Blind::with_network("upstream_proxy = \"socks5://x\"\n");
    let (code, _, err) = b.run_sh("true");
    assert_eq!(code, 125);
    assert!(err.contains("network.upstream_proxy"), "{err}");
}

#[test]
fn a_body_that_starts_after_twenty_seconds_of_silence_arrives() {
    let b = Blind::new();
    let start = std::time::Instant::now();
    let (code, out, err) =
        b.run_sh(r#"curl -sS --fail "$UP/slow-body" -H "Authorization: Bearer $GH""#);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "late answer\n");
    assert!(start.elapsed() >= std::time::Duration::from_secs(20));
}

#[test]
fn a_body_silent_longer_than_response_timeout_is_cut() {
    let b = Blind::with_network("allow_private = true\nresponse_timeout = \"2s\"\n");
    let start = std::time::Instant::now();
    let (code, out, err) =
        b.run_sh(r#"curl -sS "$UP/slow-body" -H "Authorization: Bearer $GH"; echo "curl=$?""#);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains("late answer") && !out.contains("curl=0"),
        "{out}{err}"
    );
    let took = start.elapsed();
    assert!(
        took < std::time::Duration::from_secs(15),
        "cut after the idle limit, not the 20 s wait: {took:?}"
    );
}

/// An HTTP/2 upload with `Expect: 100-continue` gets its `100` at once (curl would otherwise
/// wait a second before sending the body).
#[test]
fn an_http2_upload_expecting_100_continue_does_not_stall() {
    let b = Blind::new();
    b.sb.write("upload.bin", &"u".repeat(300_000));
    let (code, out, err) = b.run_sh(
        r#"for i in 1 2 3; do curl -sS --fail --http2 -o /dev/null -w '%{http_version} %{time_total}\n' -H "Authorization: Bearer $GH" -H "Expect: 100-continue" --data-binary @upload.bin "$UP/echo"; done"#,
    );
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with('2')).collect();
    assert_eq!(lines.len(), 3, "{out}");
    for l in &lines {
        let t: f64 = l.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(t < 0.8, "an upload waited for 100-continue: {out}");
    }
    let seen = b.up.last();
    assert_eq!(seen.body.len(), 300_000);
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {REAL_GH}").as_str())
    );
}
