#!/usr/bin/env bash
# Peak memory of `gatescope analyze` on every adversarial capture at full size
# (`gatescope-gen adversarial --list` shows the kinds and sizes), with the default limits.
# Prints a markdown table: input, file size, packets, peak RSS and wall time of
# `gatescope analyze --format json FILE > /dev/null`, and what the summary said (evictions,
# out-of-order overflows, limit_reached findings by limit, other findings).
#
#   scripts/adversarial-rss.sh [EXTRA ANALYZE ARGS...]     e.g. --threads 1
#
# Needs /usr/bin/time (Debian package `time`) and python3. The captures go to a temporary
# directory (about 400 MB) that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/time ]; then
    echo "adversarial-rss: /usr/bin/time is missing (apt-get install time)" >&2
    exit 2
fi
cargo build --release --quiet --bin gatescope --bin gatescope-gen

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
gs=target/release/gatescope
kinds=$(target/release/gatescope-gen adversarial --list | awk '{print $1}')

# Reads the JSON Lines of a run: prints "packets<TAB>what the summary said".
cat >"$dir/said.py" <<'EOF'
import json, sys
limits, summary = {}, None
for line in sys.stdin:
    r = json.loads(line)
    if r.get("type") == "finding" and r.get("kind") == "limit_reached":
        name = r.get("evidence", {}).get("limit", "?")
        limits[name] = limits.get(name, 0) + 1
    elif r.get("type") == "summary":
        summary = r
tcp = summary["tcp"]
parts = []
if tcp["evicted_connections"]:
    parts.append("evicted {:,}".format(tcp["evicted_connections"]))
if tcp["ooo_overflows"]:
    parts.append("ooo_overflows {:,}".format(tcp["ooo_overflows"]))
for name, n in sorted(limits.items()):
    parts.append("limit_reached {} ×{:,}".format(name, n))
if summary["retries"]["untracked"]:
    parts.append("retries untracked {:,}".format(summary["retries"]["untracked"]))
for kind, n in sorted(summary["findings"].items()):
    if kind != "limit_reached":
        parts.append("{} ×{:,}".format(kind, n))
print("{:,}\t{}".format(summary["read"]["packets"], "; ".join(parts) or "no findings"))
EOF

echo "| input | size | packets | peak RSS | wall time | summary |"
echo "|---|---:|---:|---:|---:|---|"
for kind in $kinds; do
    f="$dir/$kind.pcap"
    target/release/gatescope-gen adversarial "$kind" --out "$f" 2>/dev/null
    # The measured run, exactly as a user would run it (exit 1 = findings, not a failure).
    rc=0
    /usr/bin/time -v -o "$dir/time" "$gs" analyze --format json "$@" "$f" >/dev/null || rc=$?
    if [ "$rc" -gt 1 ]; then
        echo "adversarial-rss: gatescope failed on $kind (exit $rc)" >&2
        exit 1
    fi
    rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/time")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$dir/time")
    # A second run for what the report says (records are streamed, never stored).
    # (gatescope exits 1 when it reports findings.)
    summary=$({ "$gs" analyze --format json "$@" "$f" || [ $? -eq 1 ]; } | python3 "$dir/said.py")
    packets=${summary%%$'\t'*}
    said=${summary#*$'\t'}
    size=$(stat -c %s "$f")
    printf '| %s | %s MB | %s | %s MB | %s | %s |\n' "$kind" \
        "$(awk -v b="$size" 'BEGIN {printf "%.1f", b / 1e6}')" \
        "$packets" \
        "$(awk -v k="$rss_kb" 'BEGIN {printf "%.1f", k / 1024}')" \
        "$wall" "$said"
    rm -f "$f"
done
