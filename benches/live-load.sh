#!/usr/bin/env bash
# Live mode under a bounded load: nginx in front of the project's backend on loopback, wrk
# through nginx for DURATION seconds, `gatescope live -i lo` on the backend leg. Prints the
# figures (requests, packets/s, kernel drops, gatescope CPU) and checks that offline analysis of
# the packets gatescope saved gives the same findings as live.
# Usage: benches/live-load.sh [DURATION_SECONDS] [CONNECTIONS]   (root; needs nginx, wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-30}
CONNS=${2:-32}
scripts/ensure-deps.sh nginx wrk libpcap-dev >/dev/null
cargo build --release --quiet --bin gatescope --bin gatescope-faulty-backend
GS=target/release/gatescope
dir=$(mktemp -d /tmp/gatescope-load.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BPORT=$(free_port); NPORT=$(free_port)
target/release/gatescope-faulty-backend --listen 127.0.0.1:$BPORT --quiet > "$dir/backend.out" &
pids+=($!)
mkdir -p "$dir/logs"
cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log info;
events { worker_connections 4096; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$BPORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NPORT;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 5s;
    }
  }
}
CONF
nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' &
pids+=($!)
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$NPORT) 2>/dev/null && break; sleep 0.1; done

/usr/bin/time -v "$GS" live -i lo -f "tcp port $BPORT" --format json --write "$dir/leg.pcap" \
  > "$dir/live.jsonl" 2> "$dir/live.err" &
gs_pid=$!
pids+=($gs_pid)
for _ in $(seq 50); do grep -q "capturing on" "$dir/live.err" && break; sleep 0.1; done

wrk -t 2 -c "$CONNS" -d "${DURATION}s" "http://127.0.0.1:$NPORT/ok" > "$dir/wrk.out"
sleep 1
# /usr/bin/time forwards nothing: signal gatescope itself (its child).
kill -INT "$(pgrep -P $gs_pid gatescope || echo $gs_pid)" 2>/dev/null || true
wait $gs_pid || true

"$GS" analyze --format json "$dir/leg.pcap" > "$dir/offline.jsonl" || true
findings() { python3 - "$1" <<'PY'
import json, sys
out = []
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["type"] == "finding":
        out.append((r["kind"], r["conn"], r["exchange"]))
for f in sorted(out): print(*f)
PY
}
summary() { python3 - "$1" <<'PY'
import json, sys
s = [json.loads(l) for l in open(sys.argv[1])][-1]
r = s["read"]
print(f"packets={r['packets']} kernel_received={r['kernel_received']} kernel_dropped={r['kernel_dropped']} "
      f"interface_dropped={r['interface_dropped']} connections={s['connections']} exchanges={s['exchanges']} "
      f"errors={s['errors']} warnings={s['warnings']}")
PY
}
echo "== wrk"; grep -E "requests in|Requests/sec" "$dir/wrk.out"
echo "== gatescope live: $(summary "$dir/live.jsonl")"
echo "== gatescope offline: $(summary "$dir/offline.jsonl")"
pkts=$(python3 -c "import json; print([json.loads(l) for l in open('$dir/live.jsonl')][-1]['read']['packets'])")
echo "== packets/s: $((pkts / DURATION))"
grep -E "Percent of CPU|Maximum resident|Elapsed" "$dir/live.err" | sed 's/^\s*/   /'
if diff <(findings "$dir/live.jsonl") <(findings "$dir/offline.jsonl") > "$dir/findings.diff"; then
  echo "== findings: live and offline identical ($(findings "$dir/live.jsonl" | wc -l) findings)"
else
  echo "== findings differ between live and offline:"; cat "$dir/findings.diff"; exit 1
fi
echo "(work dir: $dir)"
