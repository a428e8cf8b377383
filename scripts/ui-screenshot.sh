#!/usr/bin/env bash
# A headless-Chromium screenshot of what `bratslab ui` opens on, for looking at the UI without a
# desktop (e.g. after `make demo`): scripts/ui-screenshot.sh [BRATSLAB_HOME] [OUT_PNG] [PORT]
# Needs `chromium` (Debian: apt-get install chromium). The server binds 127.0.0.1 only.
set -euo pipefail
home=${1:-./bratslab-work}
out=${2:-ui.png}
port=${3:-5077}
here="$(cd "$(dirname "$0")/.." && pwd)"
log=$(mktemp)
BRATSLAB_HOME="$home" "$here/.venv/bin/bratslab" ui --port "$port" >"$log" 2>&1 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 240); do
  grep -q "MLflow UI at" "$log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.5
done
url=$(grep -o "http://[^ ]*" "$log" | tail -1)
echo "screenshot of $url"
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1800,1000 \
  --virtual-time-budget=20000 --screenshot="$out" "$url" 2>/dev/null
echo "wrote $out"
