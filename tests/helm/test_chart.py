#!/usr/bin/env python3
"""The keyzero Helm chart rendered and linted with the real Helm engine, offline
(helm-python-sdk); every rendered object checked against the Kubernetes schemas
(kubernetes-validate, strict). Prints "N passed, N failed" and exits non-zero on any failure.

test_chart.py CHART KZ   (KZ: the kz binary, to check the default bundle)"""
import base64
import os
import shutil
import subprocess
import sys
import tempfile

import helm_python
import yaml
from cryptography import x509

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
from k8s_validate import validate_all  # noqa: E402

CHART, KZ = sys.argv[1], sys.argv[2]
results = []


def check(name, fn):
    try:
        fn()
        results.append((name, None))
    except Exception as e:  # noqa: BLE001 - every failure is reported
        results.append((name, repr(e)))


def render(values, chart=CHART, namespace="keyzero"):
    files = helm_python.Chart.load(chart).render(values=values, name="r1", namespace=namespace)
    objs, docs = {}, []
    for path, text in files.items():
        if path.endswith(".txt"):
            objs[path] = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objs[(doc["kind"], doc["metadata"]["name"])] = doc
                docs.append(doc)
    problems = validate_all(docs)
    assert not problems, problems
    return objs


def container(o):
    return o[("Deployment", "r1-keyzero")]["spec"]["template"]["spec"]["containers"][0]


def pem(b64):
    return base64.b64decode(b64)


def defaults():
    o = render({})
    d = o[("Deployment", "r1-keyzero")]
    pod = d["spec"]["template"]["spec"]
    c = container(o)
    assert d["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 17337
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--listen=[::]:8787" in c["args"], "IPv6 and IPv4"
    assert "--inject-image=keyzero/kz:0.1.0" in c["args"]
    assert "--inject-server=https://r1-keyzero.keyzero.svc:8787" in c["args"], "team mode by default"
    assert "--inject-server-ca=/etc/keyzero/tls/ca.crt" in c["args"]
    assert any(a.startswith("--inject-sidecar-resources={") for a in c["args"])
    assert c["resources"]["limits"]["memory"] == "256Mi"
    assert o[("Service", "r1-keyzero")]["spec"]["ports"][0]["port"] == 8787
    assert o[("PodDisruptionBudget", "r1-keyzero")]["spec"]["minAvailable"] == 1
    assert ("HorizontalPodAutoscaler", "r1-keyzero") not in o
    assert ("ServiceAccount", "r1-keyzero") in o
    # No values at all: a CA and a serving certificate for the Service are generated.
    s = o[("Secret", "r1-keyzero-tls")]
    ca = x509.load_pem_x509_certificate(pem(s["data"]["ca.crt"]))
    cert = x509.load_pem_x509_certificate(pem(s["data"]["tls.crt"]))
    assert b"PRIVATE KEY" in pem(s["data"]["tls.key"])
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "r1-keyzero.keyzero.svc" in names, names
    wh = o[("MutatingWebhookConfiguration", "r1-keyzero")]["webhooks"][0]
    assert wh["failurePolicy"] == "Fail"
    assert wh["clientConfig"]["service"]["path"] == "/inject"
    assert wh["clientConfig"]["caBundle"] == s["data"]["ca.crt"], "the webhook trusts the generated CA"
    assert wh["objectSelector"] == {"matchLabels": {"keyzero.dev/inject": "true"}}
    expr = wh["namespaceSelector"]["matchExpressions"][0]
    assert expr["key"] == "kubernetes.io/metadata.name" and expr["operator"] == "NotIn"
    assert "kube-system" in expr["values"] and "keyzero" in expr["values"], expr
    assert "keyzero.dev/inject" in o["keyzero/templates/NOTES.txt"]
    # The default bundle loads the cluster's keys with the server's own token and starts.
    bundle = o[("ConfigMap", "r1-keyzero-bundle")]["data"]["bundle.yaml"]
    assert "jwks_token_file" in bundle and "https://kubernetes.default.svc.cluster.local" in bundle
    with tempfile.TemporaryDirectory() as t:
        open(os.path.join(t, "bundle.yaml"), "w").write(bundle)
        r = subprocess.run([KZ, "policy", "check", os.path.join(t, "bundle.yaml")], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def every_option():
    o = render({
        "autoscaling": {"enabled": True, "maxReplicas": 5},
        "podDisruptionBudget": {"enabled": False},
        "image": {"repository": "reg.example/kz", "tag": "9.9.9", "pullPolicy": "Always"},
        "bundle": "identity:\n  issuers: []\npolicies: []\n",
        "serviceAccountIssuer": "https://oidc.example",
        "env": [{"name": "KZ_JWT_SECRET", "valueFrom": {"secretKeyRef": {"name": "jwt", "key": "k"}}}],
        "service": {"type": "NodePort", "port": 9443},
        "resources": {"requests": {"cpu": "1"}},
        "tls": {"secretName": "", "certManager": {"enabled": True, "issuerName": "ca", "issuerKind": "ClusterIssuer"}},
        "injector": {"failurePolicy": "Ignore", "agentConfigMap": "cfg", "excludeNamespaces": ["ops"],
                     "namespaceSelector": {"matchLabels": {"team": "ai"}},
                     "teamMode": False, "tokenAudience": "kz", "tokenExpirationSeconds": 600,
                     "sidecar": {"resources": {"limits": {"memory": "99Mi"}}},
                     "init": {"resources": {"requests": {"cpu": "5m"}}}},
        "podSecurityContext": {"runAsNonRoot": True},
    })
    d = o[("Deployment", "r1-keyzero")]
    c = container(o)
    assert "replicas" not in d["spec"], "the HPA owns replicas"
    assert o[("HorizontalPodAutoscaler", "r1-keyzero")]["spec"]["maxReplicas"] == 5
    assert ("PodDisruptionBudget", "r1-keyzero") not in o
    assert ("Secret", "r1-keyzero-tls") not in o, "cert-manager fills the Secret"
    cert = o[("Certificate", "r1-keyzero")]
    assert cert["spec"]["issuerRef"] == {"name": "ca", "kind": "ClusterIssuer"}
    assert "r1-keyzero.keyzero.svc" in cert["spec"]["dnsNames"]
    wh = o[("MutatingWebhookConfiguration", "r1-keyzero")]
    assert wh["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "keyzero/r1-keyzero"
    hook = wh["webhooks"][0]
    assert "caBundle" not in hook["clientConfig"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["namespaceSelector"]["matchLabels"] == {"team": "ai"}
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["ops", "keyzero"]
    assert c["image"] == "reg.example/kz:9.9.9"
    assert "--inject-token-audience=kz" in c["args"] and "--inject-token-expiration=600" in c["args"]
    assert any(a.startswith('--inject-sidecar-resources={"limits":{"memory":"99Mi"}') for a in c["args"])
    assert not any(a.startswith("--inject-server") for a in c["args"]), "team mode off"
    assert c["env"][0]["name"] == "KZ_JWT_SECRET"
    assert o[("Service", "r1-keyzero")]["spec"]["type"] == "NodePort"
    o = render({"injector": {"enabled": False}})
    assert ("MutatingWebhookConfiguration", "r1-keyzero") not in o
    assert ("Secret", "r1-keyzero-tls") in o, "the API still serves TLS"
    assert not any(a.startswith("--inject") for a in container(o)["args"])


def with_lookup(secret_data):
    """A copy of the chart whose `lookup` of the TLS Secret returns `secret_data` (as Helm's
    lookup does on an upgrade; offline rendering has no cluster to ask)."""
    t = tempfile.mkdtemp()
    dst = os.path.join(t, "keyzero")
    shutil.copytree(CHART, dst)
    p = os.path.join(dst, "templates", "tls-and-webhook.yaml")
    text = open(p).read()
    fake = "(dict \"data\" (dict " + " ".join(f'"{k}" "{v}"' for k, v in secret_data.items()) + "))"
    n = text.count("lookup \"v1\" \"Secret\"")
    assert n == 2, n
    import re
    text = re.sub(r'lookup "v1" "Secret" [^-}]*', fake + " ", text)
    open(p, "w").write(text)
    return dst


def upgrade_keeps_the_certificate():
    first = render({})[("Secret", "r1-keyzero-tls")]["data"]
    o = render({}, chart=with_lookup(first))
    assert o[("Secret", "r1-keyzero-tls")]["data"] == first, "the existing pair is kept"
    assert o[("MutatingWebhookConfiguration", "r1-keyzero")]["webhooks"][0]["clientConfig"]["caBundle"] == first["ca.crt"]
    # A Secret without a CA (hand-made, half-deleted) is replaced by a fresh pair.
    o = render({}, chart=with_lookup({"tls.crt": first["tls.crt"]}))
    assert o[("Secret", "r1-keyzero-tls")]["data"]["ca.crt"] != first["ca.crt"]


def own_secret():
    o = render({"tls": {"secretName": "mine"}, "injector": {"caBundle": "Q0E="}})
    assert ("Secret", "mine") not in o
    assert o[("MutatingWebhookConfiguration", "r1-keyzero")]["webhooks"][0]["clientConfig"]["caBundle"] == "Q0E="
    vols = o[("Deployment", "r1-keyzero")]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "mine"}} in vols
    # Without caBundle, the Secret's own ca.crt (looked up in the cluster) is used.
    o = render({"tls": {"secretName": "mine"}}, chart=with_lookup({"ca.crt": "RnJvbUNsdXN0ZXI="}))
    assert o[("MutatingWebhookConfiguration", "r1-keyzero")]["webhooks"][0]["clientConfig"]["caBundle"] == "RnJvbUNsdXN0ZXI="


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
    r = helm_python.lint(CHART, {}, strict=False)
    assert not r["errors"] and not [m for m in r["messages"] if m["severity"] >= 3], r


check("installs with no values (generated certificate, team mode, default bundle)", defaults)
check("every option renders", every_option)
check("an upgrade keeps the generated certificate", upgrade_keeps_the_certificate)
check("an own TLS Secret", own_secret)
check("schema rejects replicaCount 0", rejects({"replicaCount": 0}, "replicaCount"))
check("schema rejects an unknown key", rejects({"replicas": 3}, "replicas"))
check("schema rejects a bad failurePolicy", rejects({"injector": {"failurePolicy": "Maybe"}}, "failurePolicy"))
check("schema rejects a short token lifetime", rejects({"injector": {"tokenExpirationSeconds": 60}}, "tokenExpirationSeconds"))
check("an own Secret without a CA is refused", rejects({"tls": {"secretName": "mine"}}, "ca.crt"))
check("lint passes", lint)
for name, err in results:
    print(("ok    " if err is None else "FAIL  ") + name + ("" if err is None else ": " + err))
failed = sum(1 for _, e in results if e)
print(f"{len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
