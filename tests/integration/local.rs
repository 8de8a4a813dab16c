//! The embedded local store: `kz secret` round trips, file modes, atomicity, tampering, wrong key.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use crate::util::{run, Sandbox};

#[test]
fn set_get_list_rm_round_trip_with_private_files() {
    let sb = Sandbox::new();
    sb.store("openai", "sk-one\n");
    sb.store("github", "ghp_two");
    let (code, out, _) = run(sb.kz().args(["secret", "get", "openai"]));
    assert_eq!(
        (code, out.as_str()),
        (0, "sk-one\n"),
        "one trailing newline of piped input is dropped"
    );
    let (_, out, _) = run(sb.kz().args(["secret", "list"]));
    assert_eq!(out, "github\nopenai\n");
    let key = sb.home().join(".config/keyzero/local.key");
    let store = sb.home().join(".local/share/keyzero/store.kz");
    for f in [&key, &store] {
        assert_eq!(
            std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            f.display()
        );
    }
    let raw = std::fs::read(&store).unwrap();
    assert!(
        !raw.windows(6).any(|w| w == b"sk-one" || w == b"ghp_tw"),
        "store is encrypted"
    );
    let (code, _, err) = run(sb.kz().args(["secret", "rm", "openai"]));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(sb.kz().args(["secret", "get", "openai"]));
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "kz: secret \"openai\" not found in local store");
    // No temporary files left next to the store.
    let leftovers: Vec<_> = std::fs::read_dir(store.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn value_never_comes_from_argv() {
    let sb = Sandbox::new();
    let (code, _, _) = run(sb.kz().args(["secret", "set", "name", "value"]));
    assert_eq!(code, 2, "an extra argument is a usage error");
    let (code, _, err) = run(sb.kz().args(["secret", "set", "../etc"]));
    assert_eq!(code, 2);
    assert!(err.contains("invalid secret name"), "{err}");
}

#[test]
fn explicit_store_and_env_key() {
    let sb = Sandbox::new();
    let (_, key, _) = run(sb.kz().args(["secret", "keygen"]));
    let key = key.trim().to_string();
    let store = sb.path().join("team.kz");
    let mut c = sb.kz();
    c.env("KZ_LOCAL_KEY", &key)
        .args(["secret", "set", "db", "--store"])
        .arg(&store)
        .stdin(Stdio::piped());
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"pg-pass").unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        !sb.home().join(".config/keyzero/local.key").exists(),
        "KZ_LOCAL_KEY means no key file"
    );
    sb.config(&format!(
        "[secrets]\nDB = \"local://db\"\n[providers.local]\npath = {:?}\n",
        store.to_str().unwrap()
    ));
    let (code, out, err) = run(sb.kz().env("KZ_LOCAL_KEY", &key).args([
        "run",
        "--no-mask",
        "--",
        "sh",
        "-c",
        "printf %s $DB",
    ]));
    assert_eq!((code, out.as_str()), (0, "pg-pass"), "{err}");
    let (code, _, err) = run(sb
        .kz()
        .env("KZ_LOCAL_KEY", "bm90LWEta2V5")
        .args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(
        err.contains("KZ_LOCAL_KEY: not a base64-encoded 32-byte key"),
        "{err}"
    );
}

#[test]
fn wrong_key_and_tampering_are_clear_errors() {
    let sb = Sandbox::new();
    sb.store("openai", "sk-tamper-test-value");
    sb.config("[secrets]\nK = \"local://openai\"\n");
    let store = sb.home().join(".local/share/keyzero/store.kz");
    let (_, other_key, _) = run(sb.kz().args(["secret", "keygen"]));
    let (code, _, err) = run(sb
        .kz()
        .env("KZ_LOCAL_KEY", other_key.trim())
        .args(["secret", "get", "openai"]));
    assert_eq!(code, 1);
    assert!(err.contains("wrong key for this store"), "{err}");
    let (code, _, err) = run(sb
        .kz()
        .env("KZ_LOCAL_KEY", other_key.trim())
        .args(["run", "--", "true"]));
    assert_eq!(code, 125);
    assert!(
        err.contains("K: local: openai:") && err.contains("wrong key"),
        "{err}"
    );

    let original = std::fs::read(&store).unwrap();
    let mut bytes = original.clone();
    let last = bytes.len() - 20;
    bytes[last] ^= 0x40;
    std::fs::write(&store, &bytes).unwrap();
    let (code, out, err) = run(sb.kz().args(["secret", "get", "openai"]));
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("corrupted or was tampered with"), "{err}");
    // A tampered store is never overwritten by a later set: nothing is lost silently.
    let mut c = sb.kz();
    c.args(["secret", "set", "x"]).stdin(Stdio::piped());
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"v").unwrap();
    assert!(!child.wait().unwrap().success());
    assert_eq!(std::fs::read(&store).unwrap(), bytes);
    std::fs::write(&store, b"not a store at all").unwrap();
    let (_, _, err) = run(sb.kz().args(["secret", "list"]));
    assert!(err.contains("not a keyzero store"), "{err}");

    std::fs::write(&store, &original).unwrap();
    let key = sb.home().join(".config/keyzero/local.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run(sb.kz().args(["secret", "list"]));
    assert_eq!(code, 1);
    assert!(err.contains("readable by other users"), "{err}");
}

#[test]
fn concurrent_sets_lose_nothing() {
    let sb = Sandbox::new();
    sb.store("seed", "x");
    let children: Vec<_> = (0..8)
        .map(|i| {
            let mut c = sb.kz();
            c.args(["secret", "set", &format!("k{i}")])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut ch = c.spawn().unwrap();
            ch.stdin
                .take()
                .unwrap()
                .write_all(format!("v{i}").as_bytes())
                .unwrap();
            ch
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let (_, out, _) = run(sb.kz().args(["secret", "list"]));
    assert_eq!(out.lines().count(), 9, "{out}");
}
