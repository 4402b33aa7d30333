#!/usr/bin/env bash
# The quickstart, end to end: sweep → export best → serve → query over HTTP → shut down.
set -euo pipefail
cd "$(dirname "$0")/.."
RAYFT=.venv/bin/rayft
PORT="${RAYFT_DEMO_PORT:-8000}"
STORE="${RAYFT_DEMO_STORE:-store}"
CONFIG="${RAYFT_DEMO_CONFIG:-experiments/quickstart.yaml}"
start=$(date +%s)

echo "==> 1/4 validating $CONFIG"
$RAYFT validate "$CONFIG"

echo "==> 2/4 sweeping (Optuna TPE + ASHA; each trial is a Ray Train + DeepSpeed run)"
$RAYFT sweep "$CONFIG" store.path="$STORE" --id quickstart-best

if curl -fsS "http://127.0.0.1:$PORT/healthz" > /dev/null 2>&1; then
  echo "port $PORT is already serving something; stop it or set RAYFT_DEMO_PORT"; exit 1
fi
echo "==> 3/4 serving $STORE on http://127.0.0.1:$PORT"
mkdir -p runs
$RAYFT serve --store "$STORE" --port "$PORT" > runs/serve.log 2>&1 &
server=$!
cleanup() { kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" > /dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { echo "server exited; see runs/serve.log"; tail -20 runs/serve.log; exit 1; }
  sleep 1
done
curl -fsS "http://127.0.0.1:$PORT/v1/models" -o runs/models.json
.venv/bin/python - <<'PY'
import json
for m in json.load(open("runs/models.json"))["data"]:
    acc = {k: round(v, 4) for k, v in m.get("metrics", {}).items() if k in ("eval_accuracy", "test_accuracy")}
    print(f"  GET /v1/models -> {m['id']}: {m.get('kind')} for {m.get('task')} on {m.get('base_model')} {acc}")
PY

echo "==> 4/4 asking the served winner about a few reviews over HTTP"
$RAYFT query --url "http://127.0.0.1:$PORT" --model quickstart-best \
  "A gorgeous, moving film with a terrific cast." \
  "Tedious, predictable and far too long." \
  "The best thing I have seen all year." \
  "A mess of a movie that wastes its talented actors."
echo "==> demo finished in $(( $(date +%s) - start ))s"
