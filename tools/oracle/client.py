"""Call the reference implementation (the test oracle) from our own venv.

Only numpy is needed here; torch and transformers live in the oracle venv, which
tools/oracle/setup.sh creates. Typical use in a test module (one subprocess per module, because
importing transformers costs seconds):

    from tools.oracle.client import oracle_available, run_reference
    res = run_reference([{"id": "dec", "op": "codec_decode", "checkpoint": ckpt, "codes": codes}], tmp)
    res["dec"]["audio"]   # np.ndarray

Jobs and ops are documented in tools/oracle/reference.py. Arrays (np.ndarray, or anything with
.detach().cpu().numpy() such as a torch tensor) may appear as job values or inside lists; they are
written to .npy files and replaced by their paths.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_SCRIPT = Path(__file__).resolve().with_name("reference.py")
_LIST_ITEM = re.compile(r"^(.*)__(\d+|len)$")


class OracleError(RuntimeError):
    """The reference process or one of its jobs failed."""


def oracle_venv() -> Path:
    venv = Path(os.environ.get("Q3TTS_ORACLE_VENV", ".oracle-venv"))
    return venv if venv.is_absolute() else ROOT / venv


def oracle_python() -> Path:
    return oracle_venv() / "bin" / "python"


def oracle_available() -> bool:
    """True when setup.sh has completed (it writes the marker last)."""
    return oracle_python().exists() and (oracle_venv() / ".q3tts-oracle-complete").exists()


def _to_array(value):
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # torch.Tensor, without importing torch
        return value.detach().cpu().numpy()
    return None


def _write_inputs(jobs: list[dict], in_dir: Path) -> list[dict]:
    """Replace every array in the jobs by the path of an .npy file holding it."""
    out = []
    for job in jobs:
        job = dict(job)
        for key, value in list(job.items()):
            if key == "checkpoint":
                job[key] = str(value)
                continue
            if _to_array(value) is not None:
                path = in_dir / f"{job['id']}.{key}.npy"
                np.save(path, _to_array(value), allow_pickle=False)
                job[key] = str(path)
            elif isinstance(value, (list, tuple)) and any(_to_array(v) is not None for v in value):
                paths = []
                for i, v in enumerate(value):
                    path = in_dir / f"{job['id']}.{key}.{i}.npy"
                    np.save(path, _to_array(v), allow_pickle=False)
                    paths.append(str(path))
                job[key] = paths
        out.append(job)
    return out


def _load_arrays(path: Path) -> dict:
    """Read <id>.npz back, turning X__0, X__1, ... (and X__len) into a list X."""
    result, lists = {}, {}
    with np.load(path, allow_pickle=False) as npz:
        for key in npz.files:
            match = _LIST_ITEM.match(key)
            if match:
                lists.setdefault(match.group(1), {})[match.group(2)] = npz[key]
            else:
                result[key] = npz[key]
    for name, items in lists.items():
        n = int(items.pop("len", len(items)))
        result[name] = [items[str(i)] for i in range(n)]
    return result


def _tail(text: str, n: int = 4000) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def run_reference(jobs: list[dict], workdir, *, check: bool = True, timeout: float = 1800) -> dict[str, dict]:
    """Run the jobs in one reference subprocess; return {job id: {name: array | list | scalar}}.

    With check=True (default) any failed job raises OracleError carrying the job's error, its
    traceback and the tail of the subprocess stderr. With check=False a failed job's entry is
    {"error": message, "traceback": text} instead.
    """
    if not oracle_available():
        raise OracleError(f"oracle venv missing or incomplete at {oracle_venv()}; run tools/oracle/setup.sh")
    ids = [str(j["id"]) for j in jobs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"job ids must be unique: {ids}")
    workdir = Path(workdir)
    in_dir, out_dir = workdir / "oracle-in", workdir / "oracle-out"
    in_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs_path = workdir / "oracle-jobs.json"
    jobs_path.write_text(json.dumps(_write_inputs(jobs, in_dir), indent=1))

    proc = subprocess.run(
        [str(oracle_python()), str(REFERENCE_SCRIPT), str(jobs_path), str(out_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise OracleError(
            f"reference process exited with {proc.returncode}\n--- stderr tail ---\n"
            f"{_tail(proc.stderr)}\n--- stdout tail ---\n{_tail(proc.stdout, 1000)}"
        )

    results, failures = {}, []
    for jid in ids:
        meta_path = out_dir / f"{jid}.json"
        if not meta_path.exists():
            failures.append(f"job {jid}: no result written")
            continue
        meta = json.loads(meta_path.read_text())
        if not meta["ok"]:
            failures.append(f"job {jid} ({meta['op']}): {meta['error']}\n{meta['traceback']}")
            results[jid] = {"error": meta["error"], "traceback": meta["traceback"]}
            continue
        res = dict(meta["result"])
        res.update(_load_arrays(out_dir / f"{jid}.npz"))
        results[jid] = res
    if failures and check:
        raise OracleError("\n".join(failures) + f"\n--- stderr tail ---\n{_tail(proc.stderr)}")
    return results
