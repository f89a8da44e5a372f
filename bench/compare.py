#!/usr/bin/env python3
"""shoal against Syncthing and rsync on the same workloads, in the same run, on this machine.

Usage: bench/compare.py [--runs N] [--workdir DIR] [WORKLOAD...]
Default workloads: latency small big delta fanout. Runs bench/sync.py (shoal) and
../shared/bench/anchors/syncthing/stbench.py (Syncthing, fsWatcherDelayS=1: its minimum), alternating
tool by tool inside each run so that both see the same machine state, and prints a Markdown table of
medians with the ratio Syncthing / shoal (higher is better for shoal). rsync and cp figures come
from the same runs (local copies of the same data: the floor for any sync tool).
Needs: a release build (cargo build --release), `apt-get install syncthing rsync`.
On a VM whose root ext4 has no journal, run on a journaled scratch file system (see
bench/scratch-fs.sh and BENCHMARKS.md): `bench/scratch-fs.sh` then `--workdir /mnt/shoal-bench/cmp`.
"""
import argparse, json, os, statistics, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STBENCH = os.path.join(ROOT, "..", "shared", "bench", "anchors", "syncthing", "stbench.py")

METRIC = {  # workload -> (field, unit, lower is better)
    "big": ("seconds", "s"), "fanout": ("seconds", "s"), "small": ("seconds", "s"),
    "delta": ("seconds", "s"), "latency": ("p90", "s"), "rss": ("rss_mib", "MiB"),
    "insert": ("wire_bytes", "B"),
}


FAILED = []  # the tool runs that exited with an error


def run(cmd):
    """The result rows `cmd` printed; none (and why, on stderr) when it failed: one failed run
    (Syncthing's nodes not meeting, say) leaves the table to the runs that worked."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        print(f"FAILED (exit {done.returncode}): {' '.join(cmd)}\n{tail}", file=sys.stderr, flush=True)
        FAILED.append(cmd)
        return [r for r in rows if r.get("workload")]
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/shoal-compare")
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "shoal"),
                    help="the shoal binary (a copy keeps a build during the run out of it)")
    ap.add_argument("workloads", nargs="*", default=["latency", "small", "big", "delta", "fanout"])
    a = ap.parse_args()
    results = {}  # (tool, workload) -> list of result dicts
    for r in range(a.runs):
        for w in a.workloads:
            for tool, cmd in (("shoal", [sys.executable, os.path.join(HERE, "sync.py"), "--bin", a.bin]),
                              ("syncthing", [sys.executable, STBENCH])):
                rows = run(cmd + ["--workdir", os.path.join(a.workdir, tool), w])
                for row in rows:
                    if row["workload"] == "rss":
                        row["rss_mib"] = round(max(row["rss_kib"]) / 1024, 1)
                    results.setdefault((tool, row["workload"]), []).append(row)
                    print(f"run {r + 1}: {json.dumps(row)}", file=sys.stderr, flush=True)
    print("| workload | shoal | Syncthing | Syncthing / shoal | rsync -a (local) | cp |")
    print("|---|---|---|---|---|---|")
    for w in ["latency", "small", "rss", "big", "delta", "insert", "fanout"]:
        if ("shoal", w) not in results:
            continue
        field, unit = METRIC[w]
        med = lambda tool: statistics.median(x[field] for x in results[(tool, w)]) \
            if (tool, w) in results else None
        s, t = med("shoal"), med("syncthing")
        wire = ""
        if w == "delta":
            wire = f" ({statistics.median(x['wire_bytes'] for x in results[('shoal', w)]) / 1e6:.2f} MB on the wire" + \
                   (f" vs {statistics.median(x['wire_bytes'] for x in results[('syncthing', w)]) / 1e6:.2f} MB)" if ("syncthing", w) in results else ")")
        rs = [x.get("rsync_s") for x in results[("shoal", w)] if x.get("rsync_s") is not None]
        cp = [x.get("cp_s") for x in results[("shoal", w)] if x.get("cp_s") is not None]
        ratio = f"{t / s:.1f}×" if s and t else "—"
        # Medians of an even count are means of two: printed to the precision measured.
        num = lambda v: "—" if v is None else f"{v:.3f}".rstrip("0").rstrip(".") if unit != "B" else f"{v:.0f}"
        print(f"| {w} | {num(s)} {unit}{wire} | {num(t)} {unit if t is not None else ''} | {ratio} | "
              f"{num(statistics.median(rs)) if rs else '—'} | {num(statistics.median(cp)) if cp else '—'} |")
    note = f" ({len(FAILED)} tool runs failed: see above)" if FAILED else ""
    print(f"\n{a.runs} runs, medians{note}. Command: bench/compare.py --runs {a.runs} {' '.join(a.workloads)}")


if __name__ == "__main__":
    main()
