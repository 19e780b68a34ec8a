"""Idle OpenMP worker threads: why the thread that decodes must be the only one holding them.

torch's CPU kernels run on OpenMP, and the OpenMP runtime (libgomp in torch's Linux wheels) gives
every thread that runs a parallel op its own team of worker threads, kept until that thread
exits. Between ops the workers spin briefly for the next one, but libgomp spins only while the
threads it manages are no more than the CPUs; past that it "throttles": the workers sleep after
a few hundred spins and every op pays a futex wake-up. So once the loading thread (or an
executor thread that built a prompt) holds an idle team, a decode thread started later gets a
throttled team of its own: on 2 cores a 1x1024 @ 1024x1024 linear took 2.4x longer in a second
thread than in the loading thread (491 vs 201 ms for 3000 calls; two voluntary context switches
per call instead of none), and the scheduler's decode step 1.5-2x longer than the engine's.

`release_idle_workers()` frees the calling thread's team (OpenMP 5.0 `omp_pause_resource_all`,
soft pause); the next parallel op on that thread makes a new one (tens of microseconds). Threads
that run torch work beside a decode loop call it when that work is done.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from typing import Callable, Optional, TypeVar

import torch

OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: free threads, keep the runtime initialised
T = TypeVar("T")


@functools.lru_cache(maxsize=1)
def _pause_all() -> Optional[Callable[[int], int]]:
    """`omp_pause_resource_all` of the OpenMP runtime torch loaded, or None (no OpenMP, or a
    runtime older than OpenMP 5.0)."""
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    candidates = [os.path.join(lib_dir, name) for pattern in ("libgomp*.so*", "libiomp5*", "libomp*")
                  for name in sorted(os.path.basename(p) for p in glob.glob(os.path.join(lib_dir, pattern)))]  # fmt: skip
    for path in [*candidates, None]:  # None: the symbols already loaded into the process
        try:
            function = ctypes.CDLL(path).omp_pause_resource_all
        except (OSError, AttributeError):
            continue
        function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
        return function
    return None


def release_idle_workers() -> bool:
    """Free the calling thread's idle OpenMP workers; True when the runtime did. A no-op inside a
    parallel region and where the runtime has no pause call."""
    pause = _pause_all()
    return pause is not None and pause(OMP_PAUSE_SOFT) == 0


def releasing_workers(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn`, then `release_idle_workers()` in the same thread: for torch work handed to executor
    threads beside a decode loop."""

    @functools.wraps(fn)
    def run(*args, **kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        finally:
            release_idle_workers()

    return run


__all__ = ["release_idle_workers", "releasing_workers"]
