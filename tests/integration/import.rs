//! `kz import` and `kz completions`: a `.env` file moved into the local store and
//! `.keyzero.toml` without a value ever printed; conflicts listed and left alone; `--remove`;
//! a failure part-way leaves the store as it was. Completion scripts for each shell.

use crate::util::{run, Sandbox};

const DOTENV: &str = "# the project's secrets\nexport OPENAI_API_KEY=sk-import-0123456789abcdef\nGH_TOKEN='ghp_single_quoted_value_42'\nPEM=\"-----BEGIN KEY-----\nline-two-of-the-pem\n-----END KEY-----\"\nEMPTY=\n";

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
