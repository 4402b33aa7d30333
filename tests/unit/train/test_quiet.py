"""Ray's own threads yield to training on a local Ray: renicing thread by thread, keeping the right ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rayft.options import QUIET_THREADS_VAR, thread_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
# What a thread left alone keeps: the niceness the tests started at (0 unless they run under `nice`).
BASE = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else 0

SCRIPT = """
import json, os, threading
from rayft.train.quiet import quiet_worker_threads

stop = threading.Event()
threads = [threading.Thread(target=stop.wait, name=name) for name in ("ray-io", "gloo_tcp_loop")]
for t in threads:
    t.start()
    # Name the OS thread as Ray's and gloo's C++ threads are named (Python names only its own object).
    with open(f"/proc/{os.getpid()}/task/{t.native_id}/comm", "w") as fh:
        fh.write(t.name)
changed = quiet_worker_threads(int(os.environ.get("WORLD", "2")))
nice = {t.name: os.getpriority(os.PRIO_PROCESS, t.native_id) for t in threads}
nice["caller"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
started_after = threading.Thread(target=lambda: nice.__setitem__("later", os.getpriority(os.PRIO_PROCESS, 0)))
started_after.start(); started_after.join()
stop.set()
print(json.dumps({"changed": changed, "nice": nice}))
"""


def run(env: dict[str, str]) -> dict:
    import os

    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_on_a_local_ray_every_thread_but_the_callers_and_gloos_is_lowered_with_peers():
    seen = run(thread_env(19))
    assert seen["nice"]["ray-io"] == 19
    assert seen["nice"]["gloo_tcp_loop"] == BASE and seen["nice"]["caller"] == BASE
    assert seen["nice"]["later"] == BASE  # threads the training thread starts (intra-op pools) keep its priority
    assert seen["changed"] >= 1


def test_a_lone_worker_lowers_gloos_threads_too():
    seen = run({**thread_env(19), "WORLD": "1"})
    assert seen["nice"]["ray-io"] == 19 and seen["nice"]["gloo_tcp_loop"] == 19
    assert seen["nice"]["caller"] == BASE and seen["nice"]["later"] == BASE


def test_elsewhere_nothing_changes():
    seen = run({QUIET_THREADS_VAR: "0"})
    assert seen["changed"] == 0 and set(seen["nice"].values()) == {BASE}


def test_renice_threads_only_lowers_and_only_the_threads_asked_for():
    from rayft.cluster import renice_threads

    script = """
import json, os, threading
from rayft.cluster import renice_threads
stop = threading.Event()
a, b = (threading.Thread(target=stop.wait) for _ in range(2))
a.start(); b.start()
n = renice_threads(os.getpid(), 10, only={a.native_id})
again = renice_threads(os.getpid(), 5, only={a.native_id})  # never raises a thread's priority back
out = [os.getpriority(os.PRIO_PROCESS, t.native_id) for t in (a, b)]
stop.set()
print(json.dumps([n, again, out]))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [1, 0, [10, BASE]]
    assert renice_threads(2**22 + 12345, 19) == 0  # no such process: nothing to do, no error


def test_a_local_ray_lowers_its_bookkeeping_but_not_its_workers(ray_local):
    """GCS and agents at 19 thread by thread; the raylet's main thread (workers fork from it) and the workers
    it starts later stay at normal priority, so training is not slowed by what quiets Ray."""
    import os

    import psutil
    import ray

    ours = {p.pid: " ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)}
    gcs = next(pid for pid, cmd in ours.items() if "gcs_server" in cmd)
    raylet = next(pid for pid, cmd in ours.items() if "raylet/raylet" in cmd)

    def nice(pid: int) -> dict[int, int]:
        return {int(t): os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{pid}/task")}

    assert set(nice(gcs).values()) == {19}
    assert nice(raylet)[raylet] == BASE and 19 in nice(raylet).values()

    @ray.remote(num_cpus=0)
    def worker_priorities() -> list[int]:
        return sorted({os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{os.getpid()}/task")})

    assert ray.get(worker_priorities.remote()) == [BASE]


LATE = """
import json, os, threading
from rayft.train.quiet import quiet_late_gloo_threads, quiet_worker_threads

def named(name):
    t = threading.Thread(target=stop.wait, name=name)
    t.start()
    with open(f"/proc/{os.getpid()}/task/{t.native_id}/comm", "w") as fh:
        fh.write(name)
    return t

stop = threading.Event()
world = int(os.environ["WORLD"])
quiet_worker_threads(world)
late = [named("gloo_tcp_loop"), named("intra-op")]  # started while the engine is built, after the first call
changed = quiet_late_gloo_threads(world)
nice = {t.name: os.getpriority(os.PRIO_PROCESS, t.native_id) for t in late}
stop.set()
print(json.dumps({"changed": changed, "nice": nice}))
"""


def _late(world: int) -> dict:
    import os

    out = subprocess.run([sys.executable, "-c", LATE], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **thread_env(19), "WORLD": str(world)})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_gloo_loops_started_after_the_first_call_are_lowered_in_a_lone_worker_only():
    lone = _late(1)
    assert lone["nice"] == {"gloo_tcp_loop": 19, "intra-op": BASE} and lone["changed"] == 1
    with_peers = _late(2)
    assert with_peers["nice"] == {"gloo_tcp_loop": BASE, "intra-op": BASE} and with_peers["changed"] == 0
