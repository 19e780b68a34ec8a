"""release_idle_workers frees the calling thread's OpenMP team (openmp.py says why it matters)."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, threading, torch
    from q3tts.generate.openmp import release_idle_workers

    def tasks():
        return len(os.listdir("/proc/self/task"))

    torch.set_num_threads(3)
    a = torch.randn(512, 512)
    before = tasks()
    (a @ a).sum()                                  # the main thread's team: 2 workers
    with_team = tasks()
    released = release_idle_workers()
    after = tasks()
    (a @ a).sum()                                  # a new team on the next parallel op
    again = tasks()

    seen = {}
    def worker():                                  # an executor-like thread, then released
        (a @ a).sum()
        seen["with_team"] = tasks()
        seen["released"] = release_idle_workers()
        seen["after"] = tasks()
    t = threading.Thread(target=worker); t.start(); t.join()
    print(before, with_team, released, after, again, seen["with_team"], seen["released"], seen["after"])
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc (Linux)")
def test_release_frees_the_calling_threads_team_only():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    before, with_team, released, after, again, t_with, t_released, t_after = out.stdout.split()
    if released != "True":
        pytest.skip("this torch build's OpenMP runtime has no omp_pause_resource_all")
    before, with_team, after, again, t_with, t_after = map(int, (before, with_team, after, again, t_with, t_after))
    assert with_team == before + 2  # three threads: the caller and two workers
    assert after == with_team - 2  # the workers are gone
    assert again == with_team  # and come back when needed
    # In a second thread: its own team (2 more workers beside the main thread's), freed alone.
    assert t_with == again + 1 + 2
    assert t_released == "True" and t_after == again + 1
