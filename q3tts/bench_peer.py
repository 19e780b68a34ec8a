"""`q3tts bench --peer vox-tts`: a CPU peer engine on the same checkpoint, in the same run as ours.

    tools/peers/setup_vox.sh                                     # once: .peer-venv-vox
    q3tts bench --model PATH --quantize int8 --threads 2 --frames 40 --batch 1 --peer vox-tts

The peer runs in its own virtual environment and its own process (q3tts/bench_peer_vox.py, run by
path with that environment's Python), after ours, so its peak RSS is its own and the two never
compete for cores. Before ours is measured, the checkpoint is converted once with the peer's own
converter (`python -m vox build`) into the cache folder (--peer-cache, else $Q3TTS_PEER_CACHE,
else ~/.cache/q3tts/peers), under a name keyed by the checkpoint's files and the peer's version;
later runs reuse it.

Figures, at batch 1, with the same text, voice, seed, threads and frames as ours: ms per frame
(whole call including prefill, median and best of --repeat), the peer's own stage split, first
audio with 1-frame chunks, peak RSS (VmHWM), and the ratios ours / peer (below 1: ours is faster
or smaller). This module never imports the peer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import Q3TTSError

PACKAGE_ROOT = Path(__file__).resolve().parent


class PeerError(Q3TTSError):
    """A missing or broken peer install, or a failed peer run; reported as one line."""


@dataclass(frozen=True)
class Peer:
    name: str  # as given to --peer
    package: str  # its PyPI requirement, as the setup script installs it
    setup: str  # the script that makes its environment
    venv: str  # that environment's default folder, relative to the checkout
    python_env: str  # the environment variable naming another Python
    runner: Path  # the measuring script, run by path with the peer's Python


PEERS = {
    "vox-tts": Peer(
        "vox-tts",
        "vox-tts==0.19.5",
        "tools/peers/setup_vox.sh",
        ".peer-venv-vox",
        "Q3TTS_PEER_VOX_PYTHON",
        PACKAGE_ROOT / "bench_peer_vox.py",
    ),
}
# vox's formats: f32 / bf16 keep every weight (the codec stays f32), q8 is 8 bits in blocks of 32
# for every talker and predictor linear, q4 4 bits for the talker's attention and MLP (the rest q8).
VOX_QUANTS = {
    "f32": ["--dtype", "f32"],
    "bf16": ["--dtype", "bf16"],
    "q8": ["--dtype", "bf16", "--quant", "q8"],
    "q4": ["--dtype", "bf16", "--quant", "q4"],
    "q4mlp": ["--dtype", "bf16", "--quant", "q4mlp"],
    "q4full": ["--dtype", "bf16", "--quant", "q4full"],
}
QUANT_FOR_OURS = {"none": "f32", "int8": "q8", "int4": "q4"}  # --peer-quant auto: the nearest precision


def add_arguments(parser: argparse.ArgumentParser) -> None:
    peer = parser.add_argument_group("peer engine (another implementation, in its own environment)")
    peer.add_argument("--peer", choices=sorted(PEERS),
                      help="also run this CPU engine on the same checkpoint (batch 1); print ratios ours/peer")  # fmt: skip
    peer.add_argument("--peer-python",
                      help="Python of an environment with the peer (default: $Q3TTS_PEER_VOX_PYTHON, else "
                           ".peer-venv-vox/bin/python, which tools/peers/setup_vox.sh makes)")  # fmt: skip
    peer.add_argument("--peer-quant", choices=("auto", *VOX_QUANTS), default="auto",
                      help="the peer's weights (default auto: q8 for --quantize int8, f32 for none)")  # fmt: skip
    peer.add_argument("--peer-cache", help="folder of converted peer models (default: $Q3TTS_PEER_CACHE, else "
                                           "~/.cache/q3tts/peers)")  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Finding, checking and converting (before ours is measured, so a bad install fails at once)
# ----------------------------------------------------------------------------------------------


def locate(args: argparse.Namespace) -> dict:
    """The peer's Python and version; checked before any checkpoint is written or measured."""
    peer = PEERS[args.peer]
    python = peer_python(peer, args.peer_python)
    return dict(name=peer.name, python=python, version=probe(peer, python))


def prepare(located: dict, args: argparse.Namespace, checkpoint: Path, quantize: str) -> dict:
    """Everything the peer run needs: `located` plus its weights' format and converted model file."""
    peer = PEERS[located["name"]]
    quant = QUANT_FOR_OURS.get(quantize, "q8") if args.peer_quant == "auto" else args.peer_quant
    cache = Path(args.peer_cache or os.environ.get("Q3TTS_PEER_CACHE") or Path.home() / ".cache/q3tts/peers")
    model_file, convert_seconds = converted_model(peer, located["python"], checkpoint, quant, located["version"],
                                                  cache)  # fmt: skip
    return dict(located, quant=quant, model_file=str(model_file), cache_dir=str(cache),
                convert_seconds=convert_seconds)  # fmt: skip


def install_hint(peer: Peer) -> str:
    return (f"run {peer.setup} (it makes {peer.venv}), or point --peer-python or ${peer.python_env} at a Python "
            f"with {peer.package}")  # fmt: skip


def peer_python(peer: Peer, explicit: Optional[str]) -> str:
    """The given Python, else $ENV, else the default venv here or in the checkout q3tts runs from."""
    given = explicit or os.environ.get(peer.python_env)
    if given:
        if not Path(given).is_file():
            raise PeerError(f"peer {peer.name}: python '{given}' not found: {install_hint(peer)}")
        return given
    for root in (Path.cwd(), PACKAGE_ROOT.parent):
        candidate = root / peer.venv / "bin" / "python"
        if candidate.is_file():
            return str(candidate)
    raise PeerError(f"peer {peer.name} is not installed: {install_hint(peer)}")


def probe(peer: Peer, python: str) -> str:
    """The peer's version, from its own Python; a Python without the peer is one clear error."""
    try:
        proc = subprocess.run([python, str(peer.runner), "--probe"], capture_output=True, text=True, timeout=120,
                              check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PeerError(f"peer {peer.name}: cannot run {python}: {e}") from None
    if proc.returncode:
        raise PeerError(f"peer {peer.name}: {python} cannot load it ({last_line(proc.stderr)}): {install_hint(peer)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["version"]


def cache_key(checkpoint: Path, quant: str, version: str) -> str:
    """Changes when any file of the checkpoint does (size or time), or the peer's version or format."""
    h = hashlib.sha256(f"{checkpoint}\n{quant}\n{version}\n".encode())
    for path in sorted(p for p in checkpoint.rglob("*") if p.is_file()):
        stat = path.stat()
        h.update(f"{path.relative_to(checkpoint)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def converted_model(peer: Peer, python: str, checkpoint: Path, quant: str, version: str,
                    cache: Path) -> tuple[Path, Optional[float]]:  # fmt: skip
    """The cached conversion, made now if missing: (path, seconds it took, or None when cached)."""
    target = cache / f"{checkpoint.name}-{cache_key(checkpoint, quant, version)}.{quant}.tmod"
    if target.is_file():
        return target, None
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PeerError(f"peer cache folder {cache}: {e.strerror or e}") from None
    print(f"q3tts bench: converting {checkpoint} for {peer.name} ({quant}) into {target} ...", file=sys.stderr,
          flush=True)  # fmt: skip
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    # --no-hash: vox binds saved voice files to the weights' sha256; the bench saves none
    command = [python, "-m", "vox", "build", "--model", str(checkpoint), *VOX_QUANTS[quant], "--no-hash", "-o",
               str(partial)]  # fmt: skip
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        if proc.returncode or not partial.is_file():
            raise PeerError(f"peer {peer.name}: converting {checkpoint} failed (exit {proc.returncode}): "
                            f"{last_line(proc.stderr)}")  # fmt: skip
        os.replace(partial, target)  # a conversion that dies halfway never looks cached
    finally:
        partial.unlink(missing_ok=True)
    return target, time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# The run and its figures
# ----------------------------------------------------------------------------------------------


def measure(prepared: dict, config: dict, ours_raw: dict) -> dict:
    """The peer's raw samples (the same fields as ours at batch 1), from its own process."""
    peer = PEERS[prepared["name"]]
    child_config = dict(config, peer=dict(model_file=prepared["model_file"], quant=prepared["quant"],
                                          kind=ours_raw["checkpoint"]["kind"], speaker=ours_raw.get("speaker")))  # fmt: skip
    # end of speech masked at every step (the runner says so in its env): exactly `frames` frames
    env = dict(os.environ, VOX_DEBUG_NO_EOS="1")
    with tempfile.TemporaryDirectory(prefix="q3tts-bench-peer-") as tmp:
        config_path, result_path = Path(tmp) / "config.json", Path(tmp) / "result.json"
        config_path.write_text(json.dumps(child_config))
        command = [prepared["python"], str(peer.runner), str(config_path), str(result_path)]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if proc.returncode or not result_path.exists():
            raise PeerError(f"peer {peer.name} run failed (exit {proc.returncode}): {last_line(proc.stderr)}")
        return json.loads(result_path.read_text())


def last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def describe(prepared: dict, side: dict) -> dict:
    """The peer's summarised side with what was run: version, weights, converted file, cache."""
    out = dict(side)
    out.update(name=prepared["name"], version=prepared["version"], quant=prepared["quant"],
               model_file=prepared["model_file"], cache_dir=prepared["cache_dir"],
               convert_seconds=prepared["convert_seconds"], batch_note="one utterance per call (batch 1 only)")  # fmt: skip
    return out


def ratios(ours: dict, peer: dict) -> dict:
    """ours / peer at batch 1: below 1 means ours is faster (or smaller)."""

    def ratio(a, b):
        return a / b if a is not None and b else None

    o, p = ours["runs"]["1"], peer["runs"]["1"]
    out: dict[str, Any] = {key: ratio(o.get(key), p.get(key)) for key in (
        "total_ms_per_step", "total_ms_per_step_min", "prefill_ms", "talker_ms_per_step",
        "code_predictor_ms_per_step", "codec_ms_per_step", "rtf")}  # fmt: skip
    out.update(first_chunk_ms=ratio(ours.get("first_chunk_ms"), peer.get("first_chunk_ms")),
               peak_rss=ratio(ours["peak_rss_bytes"], peer["peak_rss_bytes"]),
               rss_after_load=ratio(ours["rss_after_load_bytes"], peer["rss_after_load_bytes"]),
               load=ratio(ours["load_seconds"], peer["load_seconds"]))  # fmt: skip
    return out


ROWS = [  # (label, key in batch 1's figures, format)
    ("prefill ms", "prefill_ms", "{:.1f}"),
    ("talker ms/frame", "talker_ms_per_step", "{:.1f}"),
    ("code predictor ms/frame", "code_predictor_ms_per_step", "{:.1f}"),
    ("codec ms/frame", "codec_ms_per_step", "{:.1f}"),
    ("total ms/frame, median", "total_ms_per_step", "{:.1f}"),
    ("  best run", "total_ms_per_step_min", "{:.1f}"),
    ("RTF (wall/audio)", "rtf", "{:.3f}"),
]


def format_peer(ours: dict, peer: dict, frames: int) -> list[str]:
    """The text report's peer section: ours beside the peer at batch 1, and ours / peer."""
    name, r = peer["name"], peer["ratios"]
    o, p = ours["runs"]["1"], peer["runs"]["1"]
    converted = "converted now" if peer["convert_seconds"] is not None else "cached"
    lines = [
        "",
        f"peer        {name} {peer['version']} ({peer['quant']}), {peer['env'].get('threads')} threads, its own "
        f"process; model {peer['model_file']} ({converted})",
        f"            whole call incl. prefill, {frames} frames forced (end of speech masked), median of "
        f"{p['repeats']}; ours / peer below 1: ours faster or smaller",
        f"{'':<26}{'ours b=1':>12}{name + ' b=1':>14}{'ours/peer':>12}",
    ]
    for label, key, pattern in ROWS:
        cells = [fmt(o.get(key), pattern), fmt(p.get(key), pattern), fmt(r.get(key), "{:.2f}x")]
        lines.append(f"{label:<26}{cells[0]:>12}{cells[1]:>14}{cells[2]:>12}")
    first = [fmt(ours.get("first_chunk_ms"), "{:.0f}"), fmt(peer.get("first_chunk_ms"), "{:.0f}"),
             fmt(r.get("first_chunk_ms"), "{:.2f}x")]  # fmt: skip
    lines.append(f"{'first audio ms (1 frame)':<26}{first[0]:>12}{first[1]:>14}{first[2]:>12}")
    for label, key, ratio_key in (("peak RSS MiB", "peak_rss_bytes", "peak_rss"),
                                  ("RSS after load MiB", "rss_after_load_bytes", "rss_after_load")):  # fmt: skip
        cells = [f"{ours[key] / 2**20:.0f}", f"{peer[key] / 2**20:.0f}", fmt(r.get(ratio_key), "{:.2f}x")]
        lines.append(f"{label:<26}{cells[0]:>12}{cells[1]:>14}{cells[2]:>12}")
    lines.append(
        f"{'load s':<26}{ours['load_seconds']:>12.2f}{peer['load_seconds']:>14.2f}{fmt(r['load'], '{:.2f}x'):>12}"
    )
    if peer.get("first_chunk_frames") not in (None, 1, 1.0):
        lines.append(f"note: the peer's first chunk held {peer['first_chunk_frames']:g} frames, not 1")
    if not p["frames_ok"]:
        lines.append(f"warning: {name} made {p['frames_per_row']} frames per row, not {frames}")
    lines.append("the peer's split comes from its own stage counters; it decodes audio on its own thread, so the "
                 "parts may overlap")  # fmt: skip
    return lines


def fmt(value: Optional[float], pattern: str) -> str:
    return "-" if value is None else pattern.format(value)
