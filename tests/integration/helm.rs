//! The Helm chart, rendered and linted with the real Helm engine offline (PyPI
//! `helm-python-sdk`), by `tests/helm/test_chart.py`: no values at all, every option, an
//! upgrade keeping the generated certificate, every object checked against the Kubernetes
//! schemas (kubernetes-validate), and `values.schema.json` rejecting bad values.

use std::path::Path;
use std::process::Command;

#[test]
fn chart_renders_lints_and_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(crate::util::python())
        .arg(root.join("tests/helm/test_chart.py"))
        .arg(root.join("helm/keyzero"))
        .arg(crate::util::kz_bin())
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
