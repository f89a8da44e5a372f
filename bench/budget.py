"""Per-node CPU budgets for the benchmarks: each daemon in a cgroup of its own, limited to a share of
the machine's cores, as if every node were a machine of its own with that much CPU.

On one 2-core machine a benchmark with four nodes has them share two cores: the time to send 1 GiB
to three peers then measures how much CPU four daemons need in all, not whether the peers pass the
file on to each other as nodes of a cluster, each with its own CPU, would. With a budget per node
(the same for every node and for both tools, kept under the machine's cores in all) the one-peer
and three-peer runs give each node the same CPU, as separate machines would.

Needs root and the cgroup `cpu` controller (cgroup v2, or v1's `cpu` hierarchy). Used by sync.py
(`--node-cpus`) for shoal's daemons and by shim/syncthing for Syncthing's.
"""
import os

V2 = "/sys/fs/cgroup"
V1 = "/sys/fs/cgroup/cpu"
GROUP = "shoal-bench"
PERIOD_US = 100_000


class Unavailable(Exception):
    pass


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _parent():
    """The directory the budget groups live in, and the cgroup version; made on first use."""
    try:
        if os.path.exists(os.path.join(V2, "cgroup.controllers")):
            parent = os.path.join(V2, GROUP)
            os.makedirs(parent, exist_ok=True)
            _write(os.path.join(V2, "cgroup.subtree_control"), "+cpu")
            _write(os.path.join(parent, "cgroup.subtree_control"), "+cpu")
            return parent, 2
        if os.path.exists(os.path.join(V1, "cpu.cfs_quota_us")):
            parent = os.path.join(V1, GROUP)
            os.makedirs(parent, exist_ok=True)
            return parent, 1
    except OSError as e:
        raise Unavailable(f"cannot set up CPU budgets under {V2}: {e} (root is needed)") from e
    raise Unavailable("per-node CPU budgets need the cgroup cpu controller; none is mounted")


def check():
    """Raises Unavailable (with why) when budgets cannot be set on this machine."""
    _parent()


def join(name, cpus):
    """Moves this process, and whatever it starts from now on, into budget group `name`, limited
    to `cpus` cores (0.5: half of one)."""
    parent, version = _parent()
    group = os.path.join(parent, name)
    os.makedirs(group, exist_ok=True)
    quota = max(1000, int(cpus * PERIOD_US))
    if version == 2:
        _write(os.path.join(group, "cpu.max"), f"{quota} {PERIOD_US}")
    else:
        _write(os.path.join(group, "cpu.cfs_period_us"), str(PERIOD_US))
        _write(os.path.join(group, "cpu.cfs_quota_us"), str(quota))
    _write(os.path.join(group, "cgroup.procs"), str(os.getpid()))


def throttled_s(name):
    """Seconds the group's processes spent waiting for their budget so far (0 if no such group)."""
    for base in (os.path.join(V2, GROUP), os.path.join(V1, GROUP)):
        try:
            with open(os.path.join(base, name, "cpu.stat")) as f:
                stat = dict(line.split() for line in f if len(line.split()) == 2)
        except OSError:
            continue
        if "throttled_usec" in stat:
            return int(stat["throttled_usec"]) / 1e6
        if "throttled_time" in stat:
            return int(stat["throttled_time"]) / 1e9
    return 0.0


def remove(name=None):
    """Removes budget group `name` (every group, when None) once its processes have ended; groups
    still in use are left."""
    for base in (os.path.join(V2, GROUP), os.path.join(V1, GROUP)):
        if not os.path.isdir(base):
            continue
        names = [name] if name else [d for d in os.listdir(base)
                                     if os.path.isdir(os.path.join(base, d))]
        for n in names:
            try:
                os.rmdir(os.path.join(base, n))
            except OSError:
                pass
        if name is None:
            try:
                os.rmdir(base)
            except OSError:
                pass
