//! The Helm chart, rendered and linted with the real Helm engine offline (PyPI
//! `helm-python-sdk`), by `tests/helm/test_chart.py`: default and non-default values, and
//! `values.schema.json` rejecting bad values.

use std::path::Path;
use std::process::Command;

#[test]
fn chart_renders_lints_and_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(crate::util::python())
        .arg(root.join("tests/helm/test_chart.py"))
        .arg(root.join("helm/keyzero"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
}
