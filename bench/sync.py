#!/usr/bin/env python3
"""shoal side of the side-by-side sync benchmarks: N local shoal daemons on 127.0.0.1 sharing one
namespace, on the same workloads as ../shared/bench/anchors/syncthing/stbench.py.

Usage: bench/sync.py [--workdir DIR] [--nodes N] [--bin PATH] WORKLOAD...
Workloads: big (1 GiB file), small (10,000 x 4 KiB in 100 dirs), latency (20 one-line appends),
delta (1 MiB overwritten in the middle of the 1 GiB file; then 1 byte inserted at its start),
fanout (1 GiB to 3 peers), rss (after 10,000 files). One JSON line per result, as stbench.py prints;
shoal's lines also give each node's CPU seconds during the timed sync (cpu_s, node 1 first) and
the whole machine's (busy_s: every process and kernel thread; at most cores x seconds), and what
each node sent its peers (sent_mb). --node-cpus gives every daemon a CPU budget of its own
(budget.py): nodes as separate machines rather than four daemons sharing two cores.
Everything stays on loopback; no discovery beyond the seed address.
"""
import argparse, hashlib, json, os, random, shutil, signal, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import budget  # noqa: E402

GiB = 1 << 30
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait(pred, timeout, step=0.02):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if pred():
                return True
        except Exception:
            pass
        time.sleep(step)
    return False


class Node:
    def __init__(self, binary, root, i, seed, upload_limit=0, cpus=0):
        self.i, self.bin, self.upload_limit, self.cpus = i, binary, upload_limit, cpus
        # Its CPU budget's group (see budget.py), named for this run and node.
        self.group = f"shoal-{os.path.basename(root)}-{i}"
        self.base = os.path.join(root, f"shoal{i}")
        self.data = os.path.join(self.base, "data")
        os.makedirs(self.data, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "RUST_LOG")}
        self.env.update(DATA_PATH=self.data, HOST_DATA_PATH=self.data,
                        CONFIG_PATH=os.path.join(self.base, "sync.conf"),
                        PID_PATH=os.path.join(self.base, "shoal.pid"),
                        STATE_PATH=os.path.join(self.base, "state"),
                        SHOAL_LISTEN="127.0.0.1", SHOAL_SYNC_PORT="0", SHOAL_LAN="off",
                        UID="0", GID="0")
        if seed:
            self.env["SHOAL_PEERS"] = seed
        if os.environ.get("BENCH_RUST_LOG"):
            # Timelines for profiling: the nodes' logs stay in each node's `log` (see --keep).
            self.env["RUST_LOG"] = os.environ["BENCH_RUST_LOG"]
        self.proc = None

    def ctl(self, *args):
        return subprocess.run([self.bin, "ctl", *args], env=self.env, check=True,
                              capture_output=True, text=True).stdout

    def status(self):
        """The daemon's status, asked over its control socket as `ctl status --json` does (one JSON
        line each way), without starting a `ctl` process per poll: the timed syncs poll every 10 ms
        and a process each time took ~10% of this 2-core machine from the nodes being measured
        (stbench.py asks Syncthing's REST API in-process likewise). `ctl` when no daemon answers."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(60)
                s.connect(os.path.join(self.env["STATE_PATH"], "control.sock"))
                s.sendall(b'{"op":"status"}\n')
                reply = json.loads(s.makefile("rb").readline())
        except (FileNotFoundError, ConnectionRefusedError):
            return json.loads(self.ctl("status", "--json"))
        assert reply.get("ok"), f"status failed: {reply.get('error')}"
        return reply["data"]

    def start(self, secret):
        self.ctl("init", "--name", f"bench{self.i}", "--upload-limit", str(self.upload_limit))
        self.ctl("add", "--secret", secret, "bench")
        self.log = open(os.path.join(self.base, "log"), "w")
        join = (lambda: budget.join(self.group, self.cpus)) if self.cpus else None
        self.proc = subprocess.Popen([self.bin, "daemon"], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=self.log, preexec_fn=join)
        assert wait(lambda: self.status()["running"], 30), "shoal did not start"

    def stop(self):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.cpus:
            budget.remove(self.group)

    @property
    def folder(self):
        return os.path.join(self.data, "bench")

    def ns(self):
        return self.status()["namespaces"][0]

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    def cpu_s(self):
        """CPU seconds (user + system) the daemon has used so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def bytes_sent(self):
        return sum(p.get("bytes_sent", 0) for p in self.ns()["peers"])


class Cluster:
    def __init__(self, binary, root, n, upload_limit=0, cpus=0):
        self.root, self.n, self.bin, self.upload_limit, self.cpus = root, n, binary, upload_limit, cpus
        self.secret = subprocess.run([binary, "secret"], check=True, capture_output=True,
                                     text=True).stdout.strip()
        self.nodes = []

    def __enter__(self):
        first = Node(self.bin, self.root, 1, None, self.upload_limit, self.cpus)
        first.start(self.secret)
        self.nodes.append(first)
        seed = first.status()["listen"]
        for i in range(2, self.n + 1):
            nd = Node(self.bin, self.root, i, seed, self.upload_limit, self.cpus)
            nd.start(self.secret)
            self.nodes.append(nd)
        for nd in self.nodes:
            assert wait(lambda: sum(p["state"] == "connected" for p in nd.ns()["peers"]) >= self.n - 1, 60), \
                "nodes did not connect"
        return self

    def __exit__(self, *a):
        for nd in self.nodes:
            nd.stop()

    def cpu(self):
        return [nd.cpu_s() for nd in self.nodes] + [machine_busy_s()]

    def wire_bytes(self):
        return sum(nd.bytes_sent() for nd in self.nodes)


def machine_busy_s():
    """CPU seconds the whole machine has been busy (every process and kernel thread) since boot."""
    with open("/proc/stat") as f:
        t = [int(x) for x in f.readline().split()[1:]]
    return (sum(t[:8]) - t[3] - t[4]) / os.sysconf("SC_CLK_TCK")


def tree_digest(d):
    h = hashlib.sha256()
    for dp, dns, fns in sorted(os.walk(d)):
        dns[:] = sorted(x for x in dns if x != ".sync")
        for f in sorted(fns):
            if f.startswith(".~shoal."):
                continue
            p = os.path.join(dp, f)
            h.update(os.path.relpath(p, d).encode())
            with open(p, "rb") as fh:
                while b := fh.read(1 << 20):
                    h.update(b)
    return h.hexdigest()


def make_big(path, size=GiB):
    with open(path, "wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(os.urandom(1 << 20))


def make_small(d, n=10000, size=4096, dirs=100):
    for i in range(n):
        sub = os.path.join(d, f"d{i % dirs:03d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{i:05d}"), "wb") as f:
            f.write(os.urandom(size))


def count_files(d):
    return sum(len([f for f in fns if not f.startswith(".~shoal.")])
               for dp, dns, fns in os.walk(d) if "/.sync" not in dp[len(d):] + "/")


def emit(**kw):
    print(json.dumps(kw), flush=True)


def timed_sync(cl, src, name, files):
    """Move prepared data into node 1's folder; time until every other node has it all, verified."""
    n1 = cl.nodes[0]
    perf = None
    if os.environ.get("BENCH_PERF"):
        # A profile of the whole machine during the timed sync: BENCH_PERF=FILE (perf.data);
        # BENCH_PERF_ARGS adds perf record options (default: -F 999 -g).
        perf = subprocess.Popen(["perf", "record", "-a", "-o", os.environ["BENCH_PERF"],
                                 *os.environ.get("BENCH_PERF_ARGS", "-F 999 -g").split()],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    s0 = [nd.bytes_sent() for nd in cl.nodes]
    c0 = cl.cpu()
    t0 = time.time()
    os.rename(src, os.path.join(n1.folder, name))
    want_files = files

    def done(nd):
        s = nd.ns()
        return s["index"]["counts"]["files"] >= want_files and s["state"] == "idle" \
            and s["sync"]["state"] == "idle"
    for nd in cl.nodes[1:]:
        assert wait(lambda: done(nd), 1800, 0.01), f"node {nd.i} never synced"
    dt = time.time() - t0
    *cl.last_cpu, cl.last_busy = [round(b - a, 2) for a, b in zip(c0, cl.cpu())]
    cl.last_sent = [round((nd.bytes_sent() - b) / 1e6) for nd, b in zip(cl.nodes, s0)]
    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait()
    want = tree_digest(n1.folder)
    for nd in cl.nodes[1:]:
        assert tree_digest(nd.folder) == want, f"node {nd.i} differs"
    return dt


def baseline(src, kind):
    dst = src + f".{kind}"
    t0 = time.time()
    if kind == "rsync":
        subprocess.run(["rsync", "-a", src + ("/" if os.path.isdir(src) else ""), dst], check=True)
    else:
        subprocess.run(["cp", "-r", src, dst], check=True)
    subprocess.run(["sync"], check=True)
    dt = time.time() - t0
    shutil.rmtree(dst) if os.path.isdir(dst) else os.remove(dst)
    return dt


def same_stat(p1, p2):
    """Cheap poll: the copy has the original's size and mtime (shoal sets both before the atomic
    rename, so this holds only once the whole new version is in place); the digest then verifies.
    stbench.py polls with a SHA-256 of the whole file instead, which adds up to ~2 s to its figure."""
    a, b = os.stat(p1), os.stat(p2)
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


def file_digest(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/shoal"))
    ap.add_argument("--upload-limit", type=int, default=0, metavar="KBPS",
                    help="every node's upload_limit in kB/s (0: none): each node as if behind its own "
                         "link, where fanout shows whether receivers pass chunks on to each other")
    ap.add_argument("--node-cpus", type=float, default=0, metavar="CORES",
                    help="every node's CPU budget in cores (0: none; see budget.py): each node as if "
                         "a machine of its own, where fanout shows whether receivers pass chunks on "
                         "rather than how much CPU four daemons on one machine need in all")
    ap.add_argument("--keep", action="store_true",
                    help="keep each run's nodes (folders, state, logs) under --workdir")
    ap.add_argument("workloads", nargs="+")
    a = ap.parse_args()
    if a.node_cpus:
        try:
            budget.check()
        except budget.Unavailable as e:
            ap.error(str(e))
    root = a.workdir or tempfile.mkdtemp(prefix="shoalbench-")
    os.makedirs(root, exist_ok=True)
    stage = os.path.join(root, "stage")
    os.makedirs(stage, exist_ok=True)
    for w in a.workloads:
        run = tempfile.mkdtemp(dir=root, prefix=w + "-")
        n = a.nodes if w != "fanout" else max(a.nodes, 4)
        if w in ("big", "fanout", "delta"):
            f = os.path.join(stage, "big")
            make_big(f)
            base = {k: baseline(f, k) for k in ("rsync", "cp")}
            with Cluster(a.bin, run, n, a.upload_limit, a.node_cpus) as cl:
                dt = timed_sync(cl, f, "big", 1)
                if w == "delta":
                    p1 = os.path.join(cl.nodes[0].folder, "big")
                    p2 = os.path.join(cl.nodes[1].folder, "big")

                    def overwrite():
                        with open(p1, "r+b") as fh:
                            fh.seek(GiB // 2)
                            fh.write(os.urandom(1 << 20))

                    def insert():
                        tmp = p1 + ".ins"
                        with open(p1, "rb") as src, open(tmp, "wb") as dst:
                            dst.write(b"\x01")
                            shutil.copyfileobj(src, dst, 1 << 20)
                        os.rename(tmp, p1)

                    for name, change in (("delta", overwrite), ("insert", insert)):
                        b0 = cl.wire_bytes()
                        t0 = time.time()
                        change()
                        # Done when the copy has the new size and mtime (shoal renames the
                        # finished file in at once); its content is checked after the clock
                        # stops (a SHA-256 of 1 GiB inside the timing took a core from the nodes
                        # for ~0.6 s).
                        assert wait(lambda: same_stat(p1, p2), 600, 0.005)
                        dt = time.time() - t0
                        assert file_digest(p2) == file_digest(p1), f"{name}: copies differ"
                        emit(tool="shoal", workload=name, seconds=round(dt, 3),
                             wire_bytes=cl.wire_bytes() - b0)
                else:
                    emit(tool="shoal", workload=w, nodes=n, seconds=round(dt, 3),
                         upload_limit_kbps=a.upload_limit, node_cpus=a.node_cpus,
                         mb_s=round(GiB / dt / 1e6, 1), rsync_s=round(base["rsync"], 3),
                         cp_s=round(base["cp"], 3), cpu_s=cl.last_cpu, busy_s=cl.last_busy, sent_mb=cl.last_sent)
        elif w in ("small", "rss"):
            d = os.path.join(stage, "small")
            make_small(d)
            base = {k: baseline(d, k) for k in ("rsync", "cp")}
            with Cluster(a.bin, run, n, cpus=a.node_cpus) as cl:
                dt = timed_sync(cl, d, "small", 10000)
                emit(tool="shoal", workload="small", nodes=n, seconds=round(dt, 3),
                     files_s=round(10000 / dt), rsync_s=round(base["rsync"], 3),
                     cp_s=round(base["cp"], 3), cpu_s=cl.last_cpu, busy_s=cl.last_busy, sent_mb=cl.last_sent)
                time.sleep(5)
                emit(tool="shoal", workload="rss", rss_kib=[nd.rss_kib() for nd in cl.nodes],
                     files=10000)
        elif w == "latency":
            with Cluster(a.bin, run, 2, cpus=a.node_cpus) as cl:
                p1 = os.path.join(cl.nodes[0].folder, "note.txt")
                p2 = os.path.join(cl.nodes[1].folder, "note.txt")
                open(p1, "w").write("start\n")
                assert wait(lambda: open(p2).read() == "start\n", 120)
                lat = []
                for k in range(20):
                    line = f"line {k} {random.random()}\n"
                    want = open(p1).read() + line
                    t0 = time.time()
                    with open(p1, "a") as fh:
                        fh.write(line)
                    assert wait(lambda: open(p2).read() == want, 120, 0.002)
                    lat.append(time.time() - t0)
                    time.sleep(0.2)
                lat.sort()
                emit(tool="shoal", workload="latency", p50=round(lat[9], 3), p90=round(lat[17], 3),
                     max=round(lat[-1], 3))
        if not a.keep:
            shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
