#!/usr/bin/env python3
"""shoal against Syncthing and rsync on the same workloads, in the same run, on this machine.

Usage: bench/compare.py [--runs N] [--workdir DIR] [WORKLOAD...]
Default workloads: latency small big delta fanout. Runs bench/sync.py (shoal) and
../shared/bench/anchors/syncthing/stbench.py (Syncthing, fsWatcherDelayS=1: its minimum), alternating
tool by tool inside each run so that both see the same machine state, and prints a Markdown table of
medians with the ratio Syncthing / shoal (higher is better for shoal). rsync and cp figures come
from the same runs (local copies of the same data: the floor for any sync tool).
--node-cpus C gives every node of both tools a budget of C cores (bench/budget.py; cgroups, root):
each node as if a machine of its own, rather than all of them sharing this machine's two cores. The
table ends with each tool's 1 GiB to three peers over its 1 GiB to one (run big and fanout).
Needs: a release build (cargo build --release), `apt-get install syncthing rsync`.
On a VM whose root ext4 has no journal, run on a journaled scratch file system (see
bench/scratch-fs.sh and BENCHMARKS.md): `bench/scratch-fs.sh` then `--workdir /mnt/shoal-bench/cmp`.
"""
import argparse, json, os, shutil, statistics, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STBENCH = os.path.join(ROOT, "..", "shared", "bench", "anchors", "syncthing", "stbench.py")
sys.path.insert(0, HERE)
import budget  # noqa: E402

METRIC = {  # workload -> (field, unit, lower is better)
    "big": ("seconds", "s"), "fanout": ("seconds", "s"), "small": ("seconds", "s"),
    "delta": ("seconds", "s"), "latency": ("p90", "s"), "rss": ("rss_mib", "MiB"),
    "insert": ("wire_bytes", "B"),
}


FAILED = []  # the tool runs that exited with an error


def run(cmd, env=None):
    """The result rows `cmd` printed; none (and why, on stderr) when it failed: one failed run
    (Syncthing's nodes not meeting, say) leaves the table to the runs that worked."""
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    budget.remove()  # the run's CPU budget groups, if any (its nodes have ended)
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
    ap.add_argument("--node-cpus", type=float, default=0, metavar="CORES",
                    help="every node of both tools limited to this many cores (see budget.py): the "
                         "nodes as separate machines; 0 (default): they share this machine's cores")
    ap.add_argument("workloads", nargs="*", default=["latency", "small", "big", "delta", "fanout"])
    a = ap.parse_args()
    shoal = [sys.executable, os.path.join(HERE, "sync.py"), "--bin", a.bin]
    st_env = None
    if a.node_cpus:
        try:
            budget.check()
        except budget.Unavailable as e:
            ap.error(str(e))
        real = shutil.which("syncthing")
        if not real:
            ap.error("syncthing is not installed (apt-get install syncthing)")
        shoal += ["--node-cpus", str(a.node_cpus)]
        # stbench.py starts `syncthing` from the PATH: the shim puts each node in its budget.
        st_env = dict(os.environ, PATH=os.path.join(HERE, "shim") + os.pathsep + os.environ["PATH"],
                      BENCH_REAL_SYNCTHING=real, BENCH_NODE_CPUS=str(a.node_cpus))
    results = {}  # (tool, workload) -> list of result dicts
    for r in range(a.runs):
        for w in a.workloads:
            for tool, cmd, env in (("shoal", shoal, None), ("syncthing", [sys.executable, STBENCH], st_env)):
                rows = run(cmd + ["--workdir", os.path.join(a.workdir, tool), w], env)
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
    # Three peers against one: each tool's fanout median over its own one-peer median.
    ratios = {tool: statistics.median(x["seconds"] for x in results[(tool, "fanout")]) /
              statistics.median(x["seconds"] for x in results[(tool, "big")])
              for tool in ("shoal", "syncthing") if (tool, "fanout") in results and (tool, "big") in results}
    if ratios:
        print(f"\n1 GiB to three peers ÷ to one: " +
              ", ".join(f"{tool} {v:.2f}×" for tool, v in ratios.items()))
    note = f" ({len(FAILED)} tool runs failed: see above)" if FAILED else ""
    budgets = f" --node-cpus {a.node_cpus:g}" if a.node_cpus else ""
    print(f"\n{a.runs} runs, medians{note}. Command: bench/compare.py --runs {a.runs}{budgets} {' '.join(a.workloads)}")


if __name__ == "__main__":
    main()
