"""tools/gpu_check.sh the way the tests can run it: `--device cpu --preset tiny`, through the shell
script (its set-up included), every part in its own process, one JSON at the end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--device", "cpu", "--frames", "4", "--batch", "2", "--streams", "1,2", "--warmup", "0", "--repeat", "1",
         "--threads", "1", "--equivalence-frames", "6"]  # fmt: skip


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """Shared by the tests here: the second finds the first one's tiny checkpoint complete."""
    return tmp_path_factory.mktemp("gpu-check-scratch")


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "tools" / "gpu_check.sh"), *args], env=dict(os.environ, PYTHON=sys.executable),
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


def gpu_check(tmp_path: Path, scratch: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_check.json"
    proc = run_script(*SMALL, "--scratch", str(scratch), "--out", str(out), *args)
    return proc, json.loads(out.read_text())


def test_gpu_check_on_cpu_with_tiny(tmp_path, scratch):
    proc, report = gpu_check(tmp_path, scratch, "--preset", "tiny")
    assert proc.returncode == 0, proc.stderr
    assert report["ok"] is True
    parts = report["parts"]
    assert list(parts) == ["environment", "write tiny", "equivalence tiny", "bench tiny"]
    assert all(p["status"] == "ok" for p in parts.values()), parts
    assert report["environment"]["device"] == "cpu" and report["environment"]["torch"]
    written = parts["write tiny"]["result"]
    assert written["bytes"] > 0 and not written["reused"]
    checks = parts["equivalence tiny"]["result"]["checks"]
    # the fixed-shape steps run eagerly on CPU and must give the dynamic path's greedy codes
    assert checks["float32: engine eager == off"]["same"] is True
    assert checks["float32: scheduler == api"]["same"] is True
    bench = parts["bench tiny"]["result"]
    assert bench["config"]["device"] == "cpu" and bench["config"]["batches"] == [1, 2]
    for n in ("1", "2"):
        assert bench["serving"]["in_process"]["streams"][n]["frames_ok"]
        assert bench["ours"]["runs"][n]["frames_ok"]
    paths = [(r["preset"], r["path"]) for r in report["summary"]]
    assert paths == [("tiny", "engine b=1"), ("tiny", "engine b=2"), ("tiny", "server n=1"), ("tiny", "server n=2")]
    assert all(r["ms_per_frame"] > 0 and r["audio_seconds_per_second"] > 0 for r in report["summary"])
    assert "ok: True" in proc.stdout and "server n=2" in proc.stdout


def test_gpu_check_records_a_failing_part_and_runs_the_rest(tmp_path, scratch):
    """A broken checkpoint (the 0.6b here: a tiny one cut short, marked complete) fails the parts
    that load it; the tiny parts still run, and the JSON says which failed and why."""
    broken = scratch / "0.6b-custom_voice"
    shutil.copytree(scratch / "tiny-custom_voice", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    proc, report = gpu_check(tmp_path, scratch, "--preset", "tiny,0.6b", "--streams", "1", "--batch", "1")
    assert proc.returncode == 1 and report["ok"] is False
    parts = report["parts"]
    assert parts["write tiny"]["result"]["reused"] and parts["write 0.6b"]["result"]["reused"]
    assert parts["equivalence tiny"]["status"] == parts["bench tiny"]["status"] == "ok"
    for name in ("bench 0.6b", "equivalence 0.6b"):
        assert parts[name]["status"] == "failed" and parts[name]["error"], parts[name]
        last = [line for line in parts[name]["stderr_tail"] if line.strip()][-1]
        assert last.strip()[:200] in parts[name]["error"]  # the JSON carries the log's end: logs stay behind
    assert [r["path"] for r in report["summary"]] == ["engine b=1", "server n=1"]
    assert "bench 0.6b" in proc.stdout and "failed" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "2b"], "--preset takes tiny, 0.6b, 1.7b"),
        (["--preset", "tiny", "--dtype", "fp8"], "dtypes are float32"),
        (["--preset", "tiny", "--streams", "1,x"], "--streams takes counts"),
        (["--preset", "tiny", "--frames", "many"], "invalid int value"),
    ],
)
def test_bad_arguments_give_one_line(args, message):
    proc = run_script(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("gpu_check: error:") and message in proc.stderr
