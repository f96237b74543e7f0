#!/usr/bin/env bash
# Compares gatescope with the libpcap read floor and with tshark on one capture file.
#
#   benches/compare.sh FILE [--port PORT] [--tshark-limit MB] [--runs N] [--threads N]
#
# Rows (each the best of --runs runs, page cache warm; wall time from spawn to exit, peak
# RSS and CPU time from wait4, as /usr/bin/time -v reports them; the two gatescope rows run
# in turns, and the scaling is the median of their paired ratios;
# their CPU time, all threads, is printed too: the cost of sharding; and in the same turns,
# N single-thread runs at once: the most this machine gives N cores, the scaling's ceiling):
#   tcpdump -r FILE -w /dev/null              libpcap reading and writing every record: a floor
#   gatescope --threads 1 --format json FILE  the full analysis, JSON Lines to /dev/null
#   gatescope --threads N --format json FILE  N = --threads, default: the number of cores
#   tshark -r SUB -d tcp.port==PORT,http -q -z http,tree    full HTTP dissection
#
# tshark runs at ~5-10 MB/s and keeps every packet's state in memory, so it reads SUB: the
# first --tshark-limit MB of FILE (default 100; cut at a record boundary with tcpdump -c), or
# FILE itself when it is smaller. gatescope is also run on SUB, for a like-for-like ratio and
# for the check: gatescope's exchanges whose request was complete must equal tshark's "HTTP
# Request Packets" on SUB (requests cut by the end of SUB are complete for neither). The
# script exits 1 if they differ.
#
# It also prints how long touching every page of FILE's mapping takes (gatescope-gen
# page-touch, ms per GB), before and after the gatescope pairs: how the kernel holds the file
# in its page cache (large or small folios) moves both gatescope rows and their ratio.
#
# GATESCOPE=path picks the binary (default: target/release/gatescope, built if missing).
set -euo pipefail

usage() {
    # The comment block at the top of this file.
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    exit 2
}

FILE=""
PORT=8080
LIMIT_MB=100
RUNS=3
THREADS=$(nproc)
while [ $# -gt 0 ]; do
    case "$1" in
        --port) PORT=$2; shift 2 ;;
        --tshark-limit) LIMIT_MB=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) FILE=$1; shift ;;
    esac
done
[ -n "$FILE" ] && [ -r "$FILE" ] || usage
for tool in tcpdump tshark; do
    command -v "$tool" >/dev/null || { echo "compare.sh: $tool is needed" >&2; exit 2; }
done

cd "$(dirname "$0")/.."
BIN=${GATESCOPE:-target/release/gatescope}
if [ ! -x "$BIN" ]; then
    cargo build --release --quiet --bin gatescope
fi
# The generator beside the binary (a build tree), else this tree's (GATESCOPE=/some/copy):
# it times the runs and touches the pages.
GEN=$(dirname "$BIN")/gatescope-gen
if [ ! -x "$GEN" ]; then
    GEN=target/release/gatescope-gen
    [ -x "$GEN" ] || cargo build --release --quiet --bin gatescope-gen
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

size=$(stat -c %s "$FILE")

# One run of "$@": wall time (s) into T_WALL, peak RSS (KiB) into T_RSS, CPU time (user +
# system, s) into T_CPU. Timed by `gatescope-gen time` (wait4's figures, as /usr/bin/time
# reads them): timing with `date` around /usr/bin/time added their forks, ~5 ms, to every run.
once() {
    # Page cache warm for every run: the kernel may reclaim a large file's pages between
    # runs (DAMON-based reclaim on some VMs), which made single runs vary by 2x.
    cat "$FILE" "$SUB" >/dev/null
    local rc=0
    # exit 1 (error findings) is a normal outcome of an analysis
    "$GEN" time -o "$TMP/time" -- "$@" >"${M_OUT:-/dev/null}" 2>"$TMP/err" || rc=$?
    if [ "$rc" -gt 1 ]; then
        echo "compare.sh: failed (exit code $rc): $*" >&2
        cat "$TMP/err" >&2
        exit 2
    fi
    read -r T_WALL T_RSS T_CPU <"$TMP/time"
}

# THREADS copies of "$@" at once, each with its own output: wall time (s) of the lot into
# T_WALL, CPU time per copy (s, the median) into T_CPU. What the machine gives THREADS
# independent analyses that share nothing: the most any sharding could give.
together() {
    cat "$FILE" "$SUB" >/dev/null
    local rc=0
    "$GEN" time --copies "$THREADS" -o "$TMP/time" -- "$@" 2>"$TMP/err" || rc=$?
    if [ "$rc" -gt 1 ]; then
        echo "compare.sh: failed (exit code $rc): $*" >&2
        cat "$TMP/err" >&2
        exit 2
    fi
    read -r T_WALL _ T_CPU <"$TMP/time"
}

# The median of its arguments (numbers), with two decimals.
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { printf "%.2f", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

declare -A WALL RSS BYTES

# Keeps run $1's best wall time, and the peak RSS of that run.
best() {
    if [ -z "${WALL[$1]:-}" ] || awk -v a="$T_WALL" -v b="${WALL[$1]}" 'BEGIN { exit !(a < b) }'; then
        WALL[$1]=$T_WALL
        RSS[$1]=$T_RSS
    fi
}

row() {  # name bytes command...
    local name=$1
    BYTES[$name]=$2
    shift 2
    for _ in $(seq "$RUNS"); do
        once "$@"
        best "$name"
    done
}

# gatescope's JSON Lines for a file; exit code 1 (error findings: the generated captures
# have a few faults) is a normal outcome, 2 is not.
json_lines() {
    local rc=0
    "$BIN" analyze --threads 1 --format json "$1" || rc=$?
    if [ "$rc" -gt 1 ]; then
        echo "compare.sh: gatescope failed on $1 (exit code $rc)" >&2
        exit 2
    fi
}

# The file tshark reads: FILE, or its first LIMIT_MB megabytes in whole records.
SUB=$FILE
limit=$((LIMIT_MB * 1000000))
if [ "$size" -gt "$limit" ]; then
    json_lines "$FILE" >"$TMP/full.jsonl"
    packets=$(tail -n 1 "$TMP/full.jsonl" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["read"]["packets"])')
    rm -f "$TMP/full.jsonl"
    count=$(( packets * limit / size ))
    SUB=$TMP/sub.pcap
    tcpdump -r "$FILE" -w "$SUB" -c "$count" 2>/dev/null
fi
sub_size=$(stat -c %s "$SUB")

cat "$FILE" "$SUB" >/dev/null  # page cache warm

row tcpdump "$size" tcpdump -r "$FILE" -w /dev/null
# One thread and all threads take turns, so that both see the same machine: on a shared
# VM, speed drifts by 20-40 % over minutes, and a run of one after a run of the other
# measures the drift. The scaling is the median of the pairs' ratios.
BYTES[gs1]=$size
BYTES[gsN]=$size
# How the kernel holds the file shapes both gatescope rows (see README, Performance):
# touching every page of the mapping, in ms per GB, before and after the pairs.
page_touch() {
    cat "$FILE" >/dev/null
    "$GEN" page-touch "$FILE" 2>/dev/null || echo "?"
}
TOUCH_BEFORE=$(page_touch)
PAIRS=()
CPU1=()
CPUN=()
CEIL=()
CPUC=()
for _ in $(seq "$RUNS"); do
    once "$BIN" analyze --threads 1 --format json "$FILE"
    best gs1
    one=$T_WALL
    CPU1+=("$T_CPU")
    once "$BIN" analyze --threads "$THREADS" --format json "$FILE"
    best gsN
    CPUN+=("$T_CPU")
    PAIRS+=("$(awk -v a="$one" -v b="$T_WALL" 'BEGIN { printf "%.4f", a / b }')")
    together "$BIN" analyze --threads 1 --format json "$FILE"
    CPUC+=("$T_CPU")
    CEIL+=("$(awk -v a="$one" -v b="$T_WALL" -v n="$THREADS" 'BEGIN { printf "%.4f", n * a / b }')")
done
TOUCH_AFTER=$(page_touch)
row gs1_sub "$sub_size" "$BIN" analyze --threads 1 --format json "$SUB"
M_OUT=$TMP/tshark.out RUNS=1 row tshark "$sub_size" tshark -r "$SUB" -d "tcp.port==$PORT,http" -q -z http,tree

mbs() { awk -v b="${BYTES[$1]}" -v t="${WALL[$1]}" 'BEGIN { printf "%.0f", b / 1e6 / (t > 0 ? t : 1e-9) }'; }

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
echo "machine: $cpu, $(nproc) cores; $(uname -sr)"
echo "file: $FILE ($(awk -v b="$size" 'BEGIN { printf "%.0f", b / 1e6 }') MB); tshark input: $( [ "$SUB" = "$FILE" ] && echo "the same file" || echo "its first $(awk -v b="$sub_size" 'BEGIN { printf "%.0f", b / 1e6 }') MB")"
echo
printf "%-44s %9s %9s %9s %12s %10s\n" "run" "input MB" "time s" "MB/s" "peak RSS MiB" "speed"
for r in tcpdump gs1 gsN gs1_sub tshark; do
    case $r in
        tcpdump) label="tcpdump -r FILE -w /dev/null (libpcap floor)" ;;
        gs1) label="gatescope --threads 1 --format json" ;;
        gsN) label="gatescope --threads $THREADS --format json" ;;
        gs1_sub) label="gatescope --threads 1 (tshark's input)" ;;
        tshark) label="tshark -z http,tree (full HTTP dissection)" ;;
    esac
    base=gs1
    [ "$r" = tshark ] || [ "$r" = gs1_sub ] && base=gs1_sub
    ratio=$(awk -v a="$(mbs "$r")" -v b="$(mbs $base)" 'BEGIN { printf "%.2fx", (b > 0 ? a / b : 0) }')
    printf "%-44s %9.0f %9.3f %9s %12.1f %10s\n" "$label" \
        "$(awk -v b="${BYTES[$r]}" 'BEGIN { print b / 1e6 }')" "${WALL[$r]}" "$(mbs "$r")" \
        "$(awk -v k="${RSS[$r]}" 'BEGIN { print k / 1024 }')" "$ratio"
done
echo "(speed: MB/s relative to gatescope --threads 1 on the same input)"
echo
range=$(printf '%s\n' "${PAIRS[@]}" | sort -n | awk '{ a[NR] = $1 } END { printf "%.2f-%.2f over %d pairs", a[1], a[NR], NR }')
echo "scaling: --threads $THREADS is $(median "${PAIRS[@]}")x --threads 1 (median of back-to-back pairs: $range);" \
    "best of each: $(awk -v a="${WALL[gs1]}" -v b="${WALL[gsN]}" 'BEGIN { printf "%.2f", a / b }')x;" \
    "gatescope is $(awk -v a="$(mbs gs1)" -v b="$(mbs tcpdump)" 'BEGIN { printf "%.2f", a / b }')x the libpcap floor" \
    "and $(awk -v a="$(mbs gs1_sub)" -v b="$(mbs tshark)" 'BEGIN { printf "%.0f", a / b }')x tshark"
# CPU time (all threads) is what sharding costs, whatever the machine's drift: with N
# threads the wall time can be at best the N-thread CPU time / N.
c1=$(median "${CPU1[@]}")
cN=$(median "${CPUN[@]}")
echo "cpu: --threads 1 used $c1 s, --threads $THREADS used $cN s of CPU (medians;" \
    "$(awk -v a="$c1" -v b="$cN" 'BEGIN { printf "%+.0f %%", (a > 0 ? (b / a - 1) * 100 : 0) }') for sharding)"
# The machine's own limit: THREADS single-thread analyses at once, sharing nothing but the
# page cache. On a shared VM two busy vCPUs are not always two cores' worth.
cC=$(median "${CPUC[@]}")
echo "ceiling: $THREADS --threads 1 runs at once: $(median "${CEIL[@]}")x the throughput of one" \
    "(median of the same turns; CPU per run $cC s, alone $c1 s); --threads $THREADS reached" \
    "$(awk -v a="$(median "${PAIRS[@]}")" -v b="$(median "${CEIL[@]}")" 'BEGIN { printf "%.0f", (b > 0 ? a / b * 100 : 0) }') % of that"
echo "page cache: touching every page of FILE's mapping took $TOUCH_BEFORE ms/GB before the" \
    "gatescope pairs and $TOUCH_AFTER after (the larger the page cache's folios, the lower: a few ms when" \
    "they are 2 MiB, 40-180 when small, by machine; see benches/PERFORMANCE.md)"

# The check: complete requests, counted by both.
tshark_requests=$(awk '/HTTP Request Packets/ { print $4; exit }' "$TMP/tshark.out")
json_lines "$SUB" >"$TMP/sub.jsonl"
gs_requests=$(grep '"type":"exchange"' "$TMP/sub.jsonl" | grep -vc '"request_end":null' || true)
echo "requests on tshark's input: tshark $tshark_requests, gatescope $gs_requests"
if [ "$tshark_requests" != "$gs_requests" ]; then
    echo "compare.sh: request counts differ" >&2
    exit 1
fi
