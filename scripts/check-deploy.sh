#!/usr/bin/env bash
# Validates what deploy/ ships, with the tools an operator's CI would use:
#
#   systemd     systemd-analyze verify (any output fails: it exits 0 on "ignoring"
#               lines) and systemd-analyze security --offline with an exposure gate
#   prometheus  promtool check rules, promtool test rules
#   grafana     the dashboard's JSON shape, and every panel query through
#               promtool check rules (template variables substituted)
#   helm        helm lint --strict and helm template (helm-python-sdk: no helm CLI
#               exists for this machine), with the default and with test values,
#               through kubernetes-validate --strict (1.30 and 1.37; WARN fails)
#   yaml        yamllint --strict on every YAML file under deploy/
#
# Installs what is missing, idempotently: prometheus (for promtool; from apt, its
# service not started), and yamllint, kubernetes-validate and helm-python-sdk (PyPI,
# in a venv under the cache dir). That
# every metric the rules and the dashboard name is exported by a running proxy is
# checked by the tests (tests/e2e/deploy.rs).
#
#   scripts/check-deploy.sh
#
# Environment: PGCUTOVER_CACHE_DIR (see scripts/setup.sh), SYSTEMD_EXPOSURE_MAX
# (default 20, i.e. 2.0 on systemd-analyze's 0-10 scale).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

log() { printf '[check-deploy] %s\n' "$*"; }
die() { printf '[check-deploy] error: %s\n' "$*" >&2; exit 1; }

if [ -n "${PGCUTOVER_CACHE_DIR:-}" ]; then
    CACHE_DIR="$PGCUTOVER_CACHE_DIR"
elif [ "$(id -u)" -eq 0 ]; then
    CACHE_DIR=/var/cache/pgcutover
else
    CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/pgcutover"
fi
EXPOSURE_MAX=${SYSTEMD_EXPOSURE_MAX:-20}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_install() {
    log "apt-get install $*"
    # A package's service must not start here (no init system, or a real one we
    # should not touch): policy-rc.d answers "not now" for the duration.
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 0755 "$policy"
        created=1
    fi
    local rc=0
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null \
        || { $SUDO apt-get update >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null; } \
        || rc=$?
    [ "$created" -eq 0 ] || $SUDO rm -f "$policy"
    return "$rc"
}

# ------------------------------------------------------------------ tools
command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd || die "systemd-analyze missing (apt-get install systemd)"
command -v promtool >/dev/null 2>&1 || apt_install prometheus || die "promtool missing (apt-get install prometheus)"
VENV="$CACHE_DIR/deploy-venv"
PY_TOOLS=('yamllint==1.38.0' 'kubernetes-validate==1.37.0' 'helm-python-sdk==0.2.2')
if ! "$VENV/bin/yamllint" --version >/dev/null 2>&1 || ! "$VENV/bin/kubernetes-validate" --version >/dev/null 2>&1 \
    || ! "$VENV/bin/python" -c 'import helm_python' >/dev/null 2>&1; then
    log "installing ${PY_TOOLS[*]} into $VENV (PyPI; kubernetes-validate and the Helm SDK are about 400 MB)"
    mkdir -p "$CACHE_DIR"
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" || { apt_install python3-venv && python3 -m venv "$VENV"; } \
        || die "cannot create a Python venv in $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_TOOLS[@]}" \
        || die "pip install ${PY_TOOLS[*]} failed: this machine must reach PyPI"
fi
PY="$VENV/bin/python"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
failed=0
check() {
    local what="$1"
    shift
    if out=$("$@" 2>&1); then
        log "ok    $what"
    else
        log "FAIL  $what"
        printf '%s\n' "$out" | sed 's/^/    /'
        failed=1
    fi
}

# ------------------------------------------------------------------ systemd
UNIT=deploy/systemd/pgcutover.service
# verify insists that ExecStart's binary exists: point it at this checkout's build
# (only that path differs from the shipped file).
BIN="$ROOT/target/debug/pgcutover"
[ -x "$BIN" ] || cargo build --quiet --bin pgcutover
sed "s#^ExecStart=/usr/local/bin/pgcutover #ExecStart=$BIN #" "$UNIT" > "$TMP/pgcutover.service"
grep -q "^ExecStart=$BIN " "$TMP/pgcutover.service" || die "$UNIT: ExecStart is not /usr/local/bin/pgcutover ..."
verify_silent() {
    local out
    out=$(systemd-analyze verify --man=no "$1" 2>&1) || { printf '%s\n' "$out"; return 1; }
    [ -z "$out" ] || { printf '%s\n' "$out"; return 1; }
}
check "systemd-analyze verify $UNIT (no output)" verify_silent "$TMP/pgcutover.service"
exposure() {
    local out
    out=$(systemd-analyze security --offline=true --threshold="$EXPOSURE_MAX" "$1" 2>&1) \
        || { printf '%s\n' "$out" | grep -E '✗|Overall'; return 1; }
    printf '%s\n' "$out" | grep Overall
}
check "systemd-analyze security $UNIT: exposure at most $((EXPOSURE_MAX / 10)).$((EXPOSURE_MAX % 10))" exposure "$TMP/pgcutover.service"
log "      $(systemd-analyze security --offline=true "$TMP/pgcutover.service" 2>&1 | grep Overall | sed 's/→ //')"

# ------------------------------------------------------------------ prometheus
check "promtool check rules deploy/prometheus/pgcutover-rules.yml" promtool check rules deploy/prometheus/pgcutover-rules.yml
check "promtool test rules deploy/prometheus/pgcutover-rules.test.yml" promtool test rules deploy/prometheus/pgcutover-rules.test.yml

# ------------------------------------------------------------------ grafana
dashboard_queries() {
    "$PY" - deploy/grafana/pgcutover.json "$TMP/dashboard-rules.yml" <<'EOF'
import json, sys
path, out = sys.argv[1], sys.argv[2]
d = json.load(open(path))
problems = []
for key in ("title", "uid", "panels", "templating", "schemaVersion"):
    if key not in d:
        problems.append(f"no {key!r}")
ids = [p.get("id") for p in d.get("panels", [])]
if len(ids) != len(set(ids)):
    problems.append(f"panel ids repeat: {ids}")
variables = {v["name"] for v in d.get("templating", {}).get("list", [])}
rules = []
for p in d.get("panels", []):
    if p.get("type") == "row":
        continue
    title = p.get("title") or f"panel {p.get('id')}"
    if p.get("datasource", {}).get("uid") != "${datasource}":
        problems.append(f"{title}: datasource is not the $datasource variable")
    if not {"h", "w", "x", "y"} <= set(p.get("gridPos", {})):
        problems.append(f"{title}: gridPos incomplete")
    if not p.get("targets"):
        problems.append(f"{title}: no query")
    for t in p.get("targets", []):
        expr = t.get("expr", "")
        for var in ("instance", "datasource"):
            if "$" + var in expr and var not in variables:
                problems.append(f"{title}: uses ${var}, which is not defined")
        # What Grafana substitutes before Prometheus sees the query.
        expr = (expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
                .replace("$__interval", "15s").replace("$instance", ".*"))
        rules.append({"record": f"dashboard:panel{p['id']}:{t['refId']}", "expr": expr})
if problems:
    sys.exit("\n".join(problems))
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(out, "w"), indent=1)
print(f"{len(rules)} queries in {len(ids)} panels")
EOF
}
check "deploy/grafana/pgcutover.json: shape" dashboard_queries
check "deploy/grafana/pgcutover.json: every panel query parses (promtool check rules)" promtool check rules "$TMP/dashboard-rules.yml"

# ------------------------------------------------------------------ helm
# helm lint --strict, helm template with the default and with test values, and
# kubernetes-validate --strict on the output (deploy/helm/check-chart.py says how).
check "deploy/helm/pgcutover: lint, render, kubernetes-validate --strict, promises" \
    "$PY" deploy/helm/check-chart.py "$VENV/bin/kubernetes-validate" "$VENV/bin/yamllint"

# ------------------------------------------------------------------ yaml
mapfile -t yamls < <(find deploy -name '*.yml' -o -name '*.yaml' | grep -v '/templates/' | sort)
check "yamllint --strict (${#yamls[@]} files)" "$VENV/bin/yamllint" --strict -c .yamllint.yml "${yamls[@]}"

if [ "$failed" -ne 0 ]; then
    die "some deploy checks failed (above)"
fi
log "every deploy check passed"
