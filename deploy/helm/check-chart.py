"""Lints and renders the Helm chart without the helm CLI (helm-python-sdk embeds
Helm's SDK), then validates every rendered object against the Kubernetes schemas.

    python deploy/helm/check-chart.py <kubernetes-validate> <yamllint>

For the default values and for deploy/helm/test-values.yaml (every option on):
helm lint --strict; the rendered manifests through `kubernetes-validate --strict`
for Kubernetes 1.30 (the chart's minimum) and the newest it knows, any WARN line
failing too (it only warns about an unknown apiVersion); `yamllint --strict` on
the output; and what the chart promises, asserted on the objects. The
ServiceMonitor is a custom resource with no schema here: it is checked against
the Service it selects instead.
"""

import os
import subprocess
import sys
import tempfile

import yaml
from helm_python import chart

HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(HERE, "pgcutover")
KUBE_VERSIONS = ["1.30.0", "1.37.0"]
validate_bin, yamllint_bin = sys.argv[1], sys.argv[2]
problems = []


def check(cond, what):
    if not cond:
        problems.append(what)


def render(values, label):
    lint = chart.lint(CHART, values, strict=True, namespace="app", kube_version="v1.30.0")
    messages = [m for m in lint.get("messages", []) if m.get("severity", 0) >= 2] if isinstance(lint, dict) else []
    check(not messages, f"{label}: helm lint: {messages}")
    c = chart.Chart.load(CHART)
    out = c.render(values, name="shop", namespace="app", is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, text, doc))
    return out, docs


def validate(docs, label, tmp):
    plain = [d for _, _, d in docs if d["apiVersion"] != "monitoring.coreos.com/v1"]
    path = os.path.join(tmp, f"{label}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump_all(plain, f, sort_keys=False)
    for version in KUBE_VERSIONS:
        r = subprocess.run([validate_bin, "--strict", "-k", version, path], capture_output=True, text=True)
        text = r.stdout + r.stderr
        check(r.returncode == 0 and "WARN" not in text, f"{label}: kubernetes-validate --strict -k {version}:\n{text}")
    raw = os.path.join(tmp, f"{label}-raw.yaml")
    texts = dict((p, t) for p, t, _ in docs)
    with open(raw, "w") as f:
        f.write("".join("---\n" + texts[p] for p in sorted(texts)))
    r = subprocess.run(
        [yamllint_bin, "--strict", "-d", "{extends: default, rules: {line-length: disable, document-start: disable}}", raw],
        capture_output=True,
        text=True,
    )
    check(r.returncode == 0, f"{label}: yamllint --strict on the rendered chart:\n{r.stdout}{r.stderr}")
    return {(d["kind"], d["metadata"]["name"]): d for _, _, d in docs}


def promises(objs, label, with_peers):
    dep = objs.get(("Deployment", "shop-pgcutover"))
    check(dep is not None, f"{label}: no Deployment")
    if dep is None:
        return
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    check(spec["securityContext"]["runAsNonRoot"] is True, f"{label}: pod may run as root")
    check(c["securityContext"]["readOnlyRootFilesystem"] is True, f"{label}: root filesystem writable")
    check(c["securityContext"]["capabilities"]["drop"] == ["ALL"], f"{label}: capabilities kept")
    check(c["readinessProbe"]["httpGet"]["path"] == "/ready", f"{label}: readiness is not GET /ready")
    check("httpGet" in c["livenessProbe"], f"{label}: no liveness probe")
    check(c["lifecycle"]["preStop"]["sleep"]["seconds"] > 0, f"{label}: no preStop pause")
    check(
        spec["terminationGracePeriodSeconds"] > c["lifecycle"]["preStop"]["sleep"]["seconds"] + 30,
        f"{label}: the grace period does not cover the pause and the 30 s drain",
    )
    check(c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], f"{label}: no resource requests")
    check(spec["automountServiceAccountToken"] is False, f"{label}: service account token mounted")
    peers = objs.get(("Service", "shop-pgcutover-peers"))
    check(peers and peers["spec"]["clusterIP"] == "None", f"{label}: no headless peers Service")
    check(peers and peers["spec"]["publishNotReadyAddresses"] is True, f"{label}: unready replicas would not be found")
    check(("PodDisruptionBudget", "shop-pgcutover") in objs, f"{label}: no PodDisruptionBudget")
    check(("ConfigMap", "shop-pgcutover") in objs, f"{label}: no ConfigMap")
    mounts = {m["name"] for m in c["volumeMounts"]}
    if with_peers:
        check(
            env.get("PGCUTOVER_PROXY_PEERS") == '["dns+https://shop-pgcutover-peers.app.svc:9187"]',
            f"{label}: peers are {env.get('PGCUTOVER_PROXY_PEERS')}",
        )
        check({"admin-token", "admin-tls", "auth"} <= mounts, f"{label}: secrets not mounted: {mounts}")
        check(c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS", f"{label}: probes over HTTP with admin TLS on")
    else:
        check("PGCUTOVER_PROXY_PEERS" not in env, f"{label}: peers without a token and TLS")


with tempfile.TemporaryDirectory() as tmp:
    _, default_docs = render(None, "default values")
    objs = validate(default_docs, "default", tmp)
    check(objs[("Deployment", "shop-pgcutover")]["spec"]["replicas"] == 3, "default values: not 3 replicas")
    promises(objs, "default values", with_peers=False)

    with open(os.path.join(HERE, "test-values.yaml")) as f:
        custom = yaml.safe_load(f)
    out, custom_docs = render(custom, "test-values.yaml")
    objs = validate(custom_docs, "custom", tmp)
    check(objs[("Deployment", "shop-pgcutover")]["spec"]["replicas"] == custom["replicaCount"], "custom: replicas")
    promises(objs, "test-values.yaml", with_peers=True)
    sm = objs.get(("ServiceMonitor", "shop-pgcutover"))
    peers = objs.get(("Service", "shop-pgcutover-peers"))
    check(sm is not None and peers is not None, "test-values.yaml: no ServiceMonitor")
    if sm and peers:
        selected = sm["spec"]["selector"]["matchLabels"].items() <= peers["metadata"]["labels"].items()
        check(selected, "ServiceMonitor does not select the peers Service")
        ports = {p["name"] for p in peers["spec"]["ports"]}
        check(all(e["port"] in ports for e in sm["spec"]["endpoints"]), "ServiceMonitor port not on the Service")
    check(("NetworkPolicy", "shop-pgcutover") in objs, "test-values.yaml: no NetworkPolicy")

    # A token without TLS must not render: it would cross the network in clear.
    try:
        chart.Chart.load(CHART).render({"admin": {"token": "x" * 20}}, name="shop", namespace="app")
        problems.append("a token without admin TLS rendered")
    except Exception as e:  # the SDK raises on a template's fail
        check("HTTPS" in str(e), f"a token without admin TLS failed for another reason: {e}")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"chart ok: lint, {len(default_docs)} + {len(custom_docs)} objects valid for Kubernetes {', '.join(KUBE_VERSIONS)}")
