#!/usr/bin/env python3
"""NFS throughput for BENCHMARKS.md (issue 6).

    python3 bench/nfs.py [RUNS]        (default 3; prints every run and the medians)

One release daemon with NFS on a free port and one namespace. For a 1 GiB file, in the same run:
write and read MB/s with libnfs's nfs-cp and with the PyPI client nfs-rs (1 MiB reads; 64 MiB
write() calls, each ending in a COMMIT), next to
the local disk copy speed (cp of the same file, page cache warm as for the clients). Needs
libnfs-utils and nfs-rs (as .ci/run installs them). Nothing else runs during a measurement.
"""
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 1 << 30
CHUNK = 1 << 20
# Bytes per nfs-rs write() call (each call ends with a COMMIT).
WRITE_CALL = 64 << 20


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def settle(path):
    """Wait until the daemon's scanner has indexed what was written (CPU quiet again)."""
    time.sleep(0.5)
    subprocess.run(["sync"], check=True)


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    subprocess.run(["cargo", "build", "--release", "--quiet", "--locked", "-p", "shoal"], cwd=ROOT, check=True)
    import nfs_rs

    binary = os.environ.get("SHOAL_BIN", os.path.join(ROOT, "target/release/shoal"))
    work = tempfile.mkdtemp(prefix="shoal-bench-nfs-", dir=os.environ.get("BENCH_DIR", "/tmp"))
    port = free_port()
    env = dict(os.environ, DATA_PATH=f"{work}/data", HOST_DATA_PATH=f"{work}/data", PID_PATH=f"{work}/pid",
               UID=str(os.getuid()), GID=str(os.getgid()), SHOAL_LAN="off", SHOAL_SYNC_PORT="0",
               SHOAL_LISTEN="127.0.0.1", NFS="on", NFS_PORT=str(port), DEBUG="")
    subprocess.run([binary, "ctl", "init"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([binary, "ctl", "add", "bench"], env=env, check=True, stdout=subprocess.DEVNULL)
    daemon = subprocess.Popen([binary, "daemon"], env=env, stderr=open(f"{work}/daemon.log", "w"))
    try:
        for _ in range(100):
            if subprocess.run([binary, "ctl", "status"], env=env, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        src = f"{work}/src.bin"
        with open(src, "wb") as f:
            for _ in range(SIZE // CHUNK):
                f.write(os.urandom(CHUNK))
        want = hashlib.sha256(open(src, "rb").read()).hexdigest()
        ns = f"{work}/data/bench"
        url = lambda p: f"nfs://127.0.0.1/bench/{p}?version=3&nfsport={port}&mountport={port}"
        results = {k: [] for k in ["disk cp", "nfs-cp write", "nfs-cp read", "nfs-rs write", "nfs-rs read"]}

        def timed(name, fn):
            settle(ns)
            t = time.perf_counter()
            fn()
            mbs = SIZE / (time.perf_counter() - t) / 1e6
            results[name].append(mbs)
            return mbs

        for run in range(runs):
            for p in os.listdir(ns):
                if p != ".sync":
                    os.remove(os.path.join(ns, p))
            timed("disk cp", lambda: subprocess.run(["cp", src, f"{work}/copy.bin"], check=True))
            os.remove(f"{work}/copy.bin")
            timed("nfs-cp write", lambda: subprocess.run(["nfs-cp", src, url("a.bin")], check=True, stdout=subprocess.DEVNULL))
            timed("nfs-cp read", lambda: subprocess.run(["nfs-cp", url("a.bin"), f"{work}/back.bin"], check=True, stdout=subprocess.DEVNULL))
            os.remove(f"{work}/back.bin")
            c = nfs_rs.Client.connect(f"nfs://127.0.0.1:{port}/bench?version=3&mountport={port}")

            def rs_write():
                # nfs-rs makes every write() call durable (UNSTABLE chunks, then one COMMIT):
                # large calls are how it streams, as a kernel client flushes dirty pages in batches.
                # One buffer, refilled: a new 64 MiB bytes object per call cost the client (on the
                # same two cores as the server) a page fault and a page clearing per 4 KiB.
                buf = bytearray(WRITE_CALL)
                view = memoryview(buf)
                with open(src, "rb", buffering=0) as s, c.open("b.bin", "wb") as f:
                    while n := s.readinto(buf):
                        f.write(view[:n])

            def rs_read():
                n = 0
                with c.open("b.bin", "rb") as f:
                    while True:
                        b = f.read(CHUNK)
                        if not b:
                            break
                        n += len(b)
                assert n == SIZE, f"nfs-rs read {n} bytes"

            timed("nfs-rs write", rs_write)
            timed("nfs-rs read", rs_read)
            # Checked outside the timing: the bytes read back are the bytes written.
            h = hashlib.sha256()
            with c.open("b.bin", "rb") as f:
                while True:
                    b = f.read(CHUNK)
                    if not b:
                        break
                    h.update(b)
            assert h.hexdigest() == want, "nfs-rs read back different bytes"
            c.close()
            assert hashlib.sha256(open(f"{ns}/a.bin", "rb").read()).hexdigest() == want
            print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.0f} MB/s" for k, v in results.items()), flush=True)
        print()
        print("| 1 GiB file | MB/s (median of %d) |" % runs)
        print("|---|---|")
        for k, v in results.items():
            print(f"| {k} | {statistics.median(v):.0f} |")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
