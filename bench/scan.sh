#!/usr/bin/env bash
# Scanner and watcher benchmarks for BENCHMARKS.md (issue 3).
#
#   bench/scan.sh [RUNS]      (default 3 runs; prints every run and the medians)
#
# Workloads: 2 GiB in 1,000 files; 100,000 small files (1-4 KiB); an unchanged rescan of the latter;
# write-to-index latency with the watcher running. Data lives under $BENCH_DIR (default
# /tmp/shoal-bench-scan) and is read once before measuring, so hashing runs from the page cache.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
DIR=${BENCH_DIR:-/tmp/shoal-bench-scan}
cargo build --release --quiet -p shoal-scan --example scanbench
BIN=target/release/examples/scanbench

make_data() {
  python3 - "$DIR" <<'PY'
import os, sys
d = sys.argv[1]
big, small = os.path.join(d, "big"), os.path.join(d, "small")
if not os.path.exists(os.path.join(big, ".done")):
    os.makedirs(big, exist_ok=True)
    for i in range(1000):
        sub = os.path.join(big, f"d{i // 100}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{i}.bin"), "wb") as f:
            f.write(os.urandom(2 * 1024 * 1024 + i))
    open(os.path.join(big, ".done"), "w").close()
if not os.path.exists(os.path.join(small, ".done")):
    os.makedirs(small, exist_ok=True)
    for i in range(100_000):
        sub = os.path.join(small, f"d{i // 1000}")
        if i % 1000 == 0:
            os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{i}.txt"), "wb") as f:
            f.write(os.urandom(1024 + (i * 37) % 3072))
    open(os.path.join(small, ".done"), "w").close()
PY
  rm -f "$DIR/big/.done.tmp"
  # Warm the page cache.
  find "$DIR" -type f -print0 | xargs -0 cat > /dev/null
}

median() { python3 -c 'import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

make_data
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(uname -r)"
echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
for set in big small; do
  declare -a init=() rate=() fps=() rescan=() rss=() rest=() ibytes=()
  for run in $(seq "$RUNS"); do
    out=$("$BIN" scan "$DIR/$set")
    echo "$set run $run: $out"
    init+=("$(field "$out" initial_s)"); rate+=("$(field "$out" initial_mb_s)")
    fps+=("$(field "$out" initial_files_s)"); rescan+=("$(field "$out" rescan_s)")
    rss+=("$(field "$out" peak_rss_mib)"); rest+=("$(field "$out" rest_rss_bytes_per_entry)")
    ibytes+=("$(field "$out" index_bytes_per_entry)")
  done
  echo "$set median: initial $(median "${init[@]}") s, $(median "${rate[@]}") MB/s, $(median "${fps[@]}") files/s," \
       "unchanged rescan $(median "${rescan[@]}") s, peak RSS $(median "${rss[@]}") MiB," \
       "RSS at rest $(median "${rest[@]}") B/entry, index $(median "${ibytes[@]}") B/entry"
  unset init rate fps rescan rss rest ibytes
done
lat=$(mktemp -d)
for run in $(seq "$RUNS"); do
  echo "latency run $run: $("$BIN" latency "$lat" 200)"
done
rm -rf "$lat"
