#!/usr/bin/env python3
"""The keyzero Helm chart rendered and linted with the real Helm engine, offline
(helm-python-sdk). Prints "N passed, N failed" and exits non-zero on any failure."""
import sys
import yaml
import helm_python

CHART = sys.argv[1]
BASE = {"tls": {"secretName": "kz-tls"}, "injector": {"caBundle": "Q0E="}}
results = []


def check(name, fn):
    try:
        fn()
        results.append((name, None))
    except Exception as e:  # noqa: BLE001 - every failure is reported
        results.append((name, repr(e)))


def merge(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def render(values):
    chart = helm_python.Chart.load(CHART)
    files = chart.render(values=merge(BASE, values), name="r1", namespace="agents")
    objs = {}
    for path, text in files.items():
        if path.endswith(".txt"):
            objs[path] = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objs[(doc["kind"], doc["metadata"]["name"])] = doc
    return objs


def defaults():
    o = render({})
    d = o[("Deployment", "r1-keyzero")]
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert d["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 17337
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--inject-image=keyzero/kz:0.1.0" in c["args"]
    assert c["resources"]["limits"]["memory"] == "256Mi"
    assert o[("Service", "r1-keyzero")]["spec"]["ports"][0]["port"] == 8787
    assert "bundle.yaml" in o[("ConfigMap", "r1-keyzero-bundle")]["data"]
    assert o[("PodDisruptionBudget", "r1-keyzero")]["spec"]["minAvailable"] == 1
    assert ("HorizontalPodAutoscaler", "r1-keyzero") not in o
    wh = o[("MutatingWebhookConfiguration", "r1-keyzero")]["webhooks"][0]
    assert wh["failurePolicy"] == "Fail"
    assert wh["clientConfig"]["service"]["path"] == "/inject"
    assert wh["clientConfig"]["caBundle"] == "Q0E="
    assert ("ServiceAccount", "r1-keyzero") in o
    assert "keyzero.dev/inject" in o["keyzero/templates/NOTES.txt"]


def non_defaults():
    o = render({
        "autoscaling": {"enabled": True, "maxReplicas": 5},
        "podDisruptionBudget": {"enabled": False},
        "injector": {"enabled": False},
        "tls": {"secretName": "", "certManager": {"enabled": True, "issuerName": "ca", "issuerKind": "ClusterIssuer"}},
        "image": {"repository": "reg.example/kz", "tag": "9.9.9"},
    })
    d = o[("Deployment", "r1-keyzero")]
    assert "replicas" not in d["spec"], "the HPA owns replicas"
    assert o[("HorizontalPodAutoscaler", "r1-keyzero")]["spec"]["maxReplicas"] == 5
    assert ("PodDisruptionBudget", "r1-keyzero") not in o
    assert ("MutatingWebhookConfiguration", "r1-keyzero") not in o
    assert not any(a.startswith("--inject-image") for a in d["spec"]["template"]["spec"]["containers"][0]["args"])
    cert = o[("Certificate", "r1-keyzero")]
    assert cert["spec"]["issuerRef"] == {"name": "ca", "kind": "ClusterIssuer"}
    assert "r1-keyzero.agents.svc" in cert["spec"]["dnsNames"]
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "reg.example/kz:9.9.9"


def rejects(values, what):
    def fn():
        try:
            render(values)
        except helm_python.HelmError as e:
            assert what in str(e), f"{what!r} not in {e}"
            return
        raise AssertionError(f"accepted {values}")
    return fn


def lint():
    r = helm_python.lint(CHART, BASE, strict=False)
    assert not r["errors"] and not [m for m in r["messages"] if m["severity"] >= 3], r


check("defaults render", defaults)
check("non-default values render", non_defaults)
check("schema rejects replicaCount 0", rejects({"replicaCount": 0}, "replicaCount"))
check("schema rejects an unknown key", rejects({"replicas": 3}, "replicas"))
check("schema rejects a bad failurePolicy", rejects({"injector": {"failurePolicy": "Maybe"}}, "failurePolicy"))
check("tls is required", rejects({"tls": {"secretName": ""}}, "tls"))
check("lint passes", lint)
for name, err in results:
    print(("ok    " if err is None else "FAIL  ") + name + ("" if err is None else ": " + err))
failed = sum(1 for _, e in results if e)
print(f"{len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
