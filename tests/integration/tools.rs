//! The everyday tools: `kz import` (a `.env` file moved into the local store and
//! `.keyzero.toml` without a value ever printed; conflicts listed and left alone; `--remove`;
//! a failure part-way leaves the store as it was), `kz scan`, `kz doctor`, `kz completions`.

use crate::util::{privileged, run, Needs, Sandbox};

const DOTENV: &str = "# the project's secrets\nexport OPENAI_API_KEY=sk-import-0123456789abcdef\nGH_TOKEN=first-value-is-replaced\nGH_TOKEN='ghp_single_quoted_value_42' # a later line wins\nPEM=\"-----BEGIN KEY-----\nline-two-of-the-pem\n-----END KEY-----\"\nEMPTY=\n";

fn assert_no_values(text: &str) {
    for v in [
        "sk-import-0123456789abcdef",
        "ghp_single_quoted_value_42",
        "line-two-of-the-pem",
    ] {
        assert!(!text.contains(v), "a value was printed: {text}");
    }
}

#[test]
fn a_dotenv_file_moves_into_the_store_and_the_config() {
    let sb = Sandbox::new();
    sb.write(".env", DOTENV);
    let (code, out, err) = run(sb.kz().arg("import"));
    assert_no_values(&(out.clone() + &err));
    assert_eq!(code, 1, "EMPTY was not imported: {out}{err}");
    assert!(
        out.contains("imported 3 secrets") && out.contains("OPENAI_API_KEY, GH_TOKEN, PEM"),
        "{out}"
    );
    assert!(err.contains("EMPTY: empty value"), "{err}");
    assert!(
        err.contains(".env still holds the values in plaintext"),
        "{err}"
    );
    let cfg = std::fs::read_to_string(sb.path().join(".keyzero.toml")).unwrap();
    assert!(
        cfg.contains("GH_TOKEN = { provider = \"local\", ref = \"GH_TOKEN\" }"),
        "{cfg}"
    );
    assert_no_values(&cfg);
    // The config resolves, and the values are the file's.
    let (code, out, err) = run(sb.kz().args([
        "run",
        "--no-mask",
        "--",
        "sh",
        "-c",
        "printf '%s|%s|%s' \"$OPENAI_API_KEY\" \"$GH_TOKEN\" \"$PEM\"",
    ]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "sk-import-0123456789abcdef|ghp_single_quoted_value_42|-----BEGIN KEY-----\nline-two-of-the-pem\n-----END KEY-----"
    );
    // Again: every name is now a conflict, nothing is overwritten.
    sb.write(
        ".env",
        "GH_TOKEN=another-value-entirely\nNEW_ONE=fresh-value-777\n",
    );
    let (code, out, err) = run(sb.kz().args(["import", "--remove"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("GH_TOKEN: already in"), "{err}");
    assert!(
        out.contains("imported 1 secret ") && out.contains("NEW_ONE"),
        "{out}"
    );
    assert!(
        sb.path().join(".env").exists(),
        "kept while something was not imported"
    );
    let (_, out, _) = run(sb.kz().args(["secret", "get", "GH_TOKEN"]));
    assert_eq!(out.trim(), "ghp_single_quoted_value_42");
    // --remove deletes the file once everything is stored and read back.
    sb.write("more.env", "LAST=last-value-888\n");
    let (code, out, err) = run(sb.kz().args(["import", "more.env", "--remove"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(!sb.path().join("more.env").exists());
    assert!(out.contains("removed more.env"), "{out}");
}

#[test]
fn a_failure_part_way_leaves_the_store_as_it_was() {
    let sb = Sandbox::new();
    sb.store("KEEP", "kept-value-1");
    let store = sb.home().join(".local/share/keyzero/store.kz");
    let before = std::fs::read(&store).unwrap();
    sb.write(".env", "NEW=new-value-123\n");
    // The config's directory does not exist: the config cannot be written after the store was.
    let (code, out, err) = run(sb.kz().args(["import", "-c", "missing/dir/.keyzero.toml"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("missing/dir"), "{err}");
    assert_eq!(
        std::fs::read(&store).unwrap(),
        before,
        "the store is as it was"
    );
    // A malformed line is named by its number, and nothing is stored.
    sb.write(".env", "GOOD=1\nthis line is wrong\n");
    let (code, _, err) = run(sb.kz().arg("import"));
    assert_eq!(code, 1);
    assert!(err.contains(".env: line 2"), "{err}");
    assert_eq!(std::fs::read(&store).unwrap(), before);
}

#[test]
fn completion_scripts_for_each_shell() {
    let sb = Sandbox::new();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef kz"),
        ("fish", "complete -c kz"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let (code, out, err) = run(sb.kz().args(["completions", shell]));
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}");
        assert!(out.contains("import") && out.contains("sidecar"), "{shell}");
    }
    let (_, script, _) = run(sb.kz().args(["completions", "bash"]));
    let path = sb.write("kz.bash", &script);
    let ok = std::process::Command::new("bash")
        .arg("-n")
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success(), "the bash script parses");
    let (code, _, err) = run(sb.kz().args(["completions", "tcsh"]));
    assert_eq!(code, 2, "{err}");
}

/// `kz scan`: every file and line where a resolved value appears, in which form, by name only;
/// `.gitignore` honoured, binary files only with `--binary`, `--stdin` for a stream.
#[test]
fn scan_finds_leaked_values_by_name_and_form() {
    use base64::Engine;
    let sb = Sandbox::new();
    let value = "sk-leaked-0123456789/abcdef";
    sb.store("leaked", value);
    sb.config("[secrets]\nOPENAI_API_KEY = { provider = \"local\", ref = \"leaked\" }\n");
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("u:{value}"));
    let hex: String = value.bytes().map(|b| format!("{b:02X}")).collect();
    // URL-safe base64, inside a longer text.
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{value}??>"));
    sb.write("logs/run.log", &format!("start\nusing key {value}\nend\n"));
    sb.write(
        "transcripts/t.jsonl",
        &format!("{{\"auth\":\"Basic {b64}\"}}\n{{\"ok\":1}}\n{{\"url\":\"https://x/?k=sk-leaked-0123456789%2Fabcdef\"}}\n{{\"json\":\"sk-leaked-0123456789\\/abcdef\"}}\n{{\"hex\":\"{hex}\"}}\n{{\"b64url\":\"{url}\"}}\n"),
    );
    sb.write("clean.txt", "nothing to see\n");
    sb.write(".gitignore", "ignored/\n");
    sb.write("ignored/secret.txt", value);
    let mut bin = vec![0u8, 1, 2];
    bin.extend_from_slice(value.as_bytes());
    std::fs::write(sb.path().join("blob.bin"), &bin).unwrap();
    let (code, out, err) = run(sb.kz().arg("scan"));
    assert_eq!(code, 1, "{out}{err}");
    assert!(!out.contains(value) && !err.contains(value), "{out}{err}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "logs/run.log:2: OPENAI_API_KEY (raw)",
            "transcripts/t.jsonl:1: OPENAI_API_KEY (base64)",
            "transcripts/t.jsonl:3: OPENAI_API_KEY (percent-encoded)",
            "transcripts/t.jsonl:4: OPENAI_API_KEY (json-escaped)",
            "transcripts/t.jsonl:5: OPENAI_API_KEY (hex)",
            // This value's own characters encode the same in both alphabets: named base64.
            "transcripts/t.jsonl:6: OPENAI_API_KEY (base64)",
        ],
        "{err}"
    );
    let (code, out, _) = run(sb.kz().args(["scan", "--binary", "blob.bin"]));
    assert_eq!((code, out.trim()), (1, "blob.bin:1: OPENAI_API_KEY (raw)"));
    let (code, out, _) = run(sb.kz().args(["scan", "clean.txt"]));
    assert_eq!((code, out.as_str()), (0, ""));
    let mut c = sb.kz();
    c.args(["scan", "--stdin"]);
    let (code, out, _) = crate::util::run_with_stdin(
        &mut c,
        &format!(
            "line one\nhex {}\n",
            value
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
    );
    assert_eq!((code, out.trim()), (1, "<stdin>:2: OPENAI_API_KEY (hex)"));
}

/// `kz doctor`: one line per check with its status and fix, never a value; exit 1 when a
/// configured provider cannot work; `--json` for machines.
#[test]
fn doctor_reports_each_check_and_fails_on_a_broken_provider() {
    let sb = Sandbox::new();
    sb.store("k", "doctor-secret-value-123");
    sb.config(
        "[secrets]\nK = { provider = \"local\", ref = \"k\", hosts = [\"api.example.com\"] }\n",
    );
    let (code, out, err) = run(sb.kz().arg("doctor"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ok    provider local: 1 secret(s) resolved"),
        "{out}"
    );
    assert!(out.contains("ok    config: "), "{out}");
    assert!(out.contains("local store: 1 secret(s)"), "{out}");
    assert!(!out.contains("doctor-secret-value-123"));
    // A Vault nobody serves: that provider fails, the exit status says so.
    let port = crate::util::free_port();
    sb.config(&format!("[secrets]\nK = {{ provider = \"local\", ref = \"k\" }}\nV = {{ provider = \"vault\", ref = \"secret/data/x\" }}\n[providers.vault]\naddress = \"http://127.0.0.1:{port}\"\n"));
    let (code, out, _) = run(sb.kz().args(["doctor", "--json"]).env("VAULT_TOKEN", "t"));
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let status = |name: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {out}"))["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status("provider vault"), "fail");
    assert_eq!(status("provider local"), "ok");
    assert_eq!(status("blind mode"), "warn");
    for name in [
        "user namespaces",
        "firewall in a namespace",
        "runtime directory",
        "CA variables (blind)",
        "node",
    ] {
        assert!(["ok", "warn", "fail"].contains(&status(name).as_str()));
    }
    assert!(!out.contains("doctor-secret-value-123"));
}

/// As an ordinary user `--isolate` runs rootless (user namespaces here); with user namespaces
/// disabled (`user.max_user_namespaces = 0` inside a throwaway user namespace) doctor names
/// the cause. Needs namespaces (root in CI).
#[test]
fn doctor_as_an_ordinary_user_and_with_user_namespaces_disabled() {
    if !privileged(Needs::Namespaces) || !privileged(Needs::Root) {
        return;
    }
    let sb = Sandbox::new();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(sb.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let kz = crate::util::kz_bin();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "env"])
        .arg(format!("HOME={}", sb.path().display()))
        .arg(&kz)
        .arg("doctor")
        .current_dir(sb.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ok    user namespaces: --isolate runs rootless"),
        "{text}"
    );
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces && HOME={} {} doctor",
        sb.path().display(),
        kz.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-U", "-r", "sh", "-c", &script])
        .current_dir(sb.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("warn  user namespaces: user.max_user_namespaces = 0")),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
