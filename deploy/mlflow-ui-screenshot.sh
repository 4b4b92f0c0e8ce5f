#!/usr/bin/env bash
# Screenshot MLflow's run-comparison page for the trials of a `wcscan tune` sweep:
# parallel-coordinates plot, then the trials' parameters and metrics side by side, best first.
# Starts `mlflow ui` on a free loopback port, finds the child runs of the latest
# tune-* parent run (or of $PARENT_RUN), shoots with headless Chromium, stops the server.
#
#   deploy/mlflow-ui-screenshot.sh STORE OUT.png
#     STORE  MLflow tracking URI (sqlite:///..., file:///...) or a `wcscan tune --out` directory
#   env: PYTHON (with mlflow; default the repo's .venv, else python3), CHROMIUM (default chromium),
#        PARENT_RUN (run id), WINDOW (default 1700,1780), WAIT_MS (default 20000)
set -euo pipefail

usage() { echo "usage: $0 STORE_URI|SWEEP_DIR OUT.png" >&2; exit 2; }
[[ $# -eq 2 && $2 == *.png ]] || usage
store=$1 out=$2
venv=$(dirname "$0")/../.venv/bin/python
py=${PYTHON:-$([[ -x $venv ]] && echo "$venv" || echo python3)}
"$py" -c 'import mlflow' 2>/dev/null || { echo "$py cannot import mlflow (set PYTHON)" >&2; exit 1; }
chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
[[ -x $chromium ]] || { echo "no Chromium found (apt-get install chromium, or set CHROMIUM)" >&2; exit 1; }
if [[ -d $store ]]; then
  [[ -f $store/mlflow.db ]] || { echo "$store/mlflow.db not found" >&2; usage; }
  store=sqlite:///$(realpath "$store")/mlflow.db
fi
[[ $store == *:* ]] || usage
[[ $store != sqlite:///* || -f ${store#sqlite:///} ]] || { echo "no database at $store" >&2; exit 1; }

tmp=$(mktemp -d) pid=
cleanup() { [[ -n $pid ]] && kill -- -"$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# The sweep's child runs -> the compare page's URL fragment.
fragment=$("$py" - "$store" "${PARENT_RUN:-}" <<'EOF'
import json, sys, urllib.parse as up
from mlflow.tracking import MlflowClient
uri, parent = sys.argv[1:]
c = MlflowClient(uri)
if not parent:
    exps = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(exps, "attributes.run_name LIKE 'tune-%'", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        sys.exit(f"no tune-* parent run in {uri}")
    parent = runs[0].info.run_id
exp = c.get_run(parent).info.experiment_id
kids = c.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'", order_by=["metrics.best_val_loss ASC"], max_results=1000)
if not kids:
    sys.exit(f"run {parent} has no child runs")
q = lambda v: up.quote(json.dumps(v, separators=(",", ":")), safe="")
print(f"/#/compare-runs?runs={q([r.info.run_id for r in kids])}&experiments={q([exp])}")
EOF
)

# IPv6 loopback where there is one: MLflow's UI counts only 127.0.0.1/localhost as a
# local server and then opens its Assistant side panel over a third of the page.
read -r host port < <("$py" -c '
import socket
for fam, h in ((socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")):
    try:
        s = socket.socket(fam); s.bind((h, 0)); print(h, s.getsockname()[1]); break
    except OSError:
        pass')
base=http://$host:$port; [[ $host == *:* ]] && base="http://[$host]:$port"

setsid "$py" -m mlflow ui --backend-store-uri "$store" --host "$host" --port "$port" --workers 1 \
  >"$tmp/mlflow.log" 2>&1 &
pid=$!
for _ in $(seq 120); do
  curl -sf "$base/health" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$tmp/mlflow.log" >&2; exit 1; }
  sleep 0.5
done
curl -sf "$base/health" >/dev/null || { echo "mlflow ui did not answer on $base" >&2; exit 1; }

mkdir -p "$(dirname "$out")"
rm -f "$out"
timeout 180 "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$tmp/profile" --hide-scrollbars --window-size="${WINDOW:-1700,1780}" \
  --virtual-time-budget="${WAIT_MS:-20000}" --screenshot="$out" "$base$fragment" >"$tmp/chromium.log" 2>&1 || true
[[ -s $out ]] || { tail -20 "$tmp/chromium.log" >&2; echo "no screenshot written" >&2; exit 1; }
echo "$out: $base$fragment"
