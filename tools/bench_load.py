"""Peak memory of loading a checkpoint, against its size on disk.

    .venv/bin/python tools/bench_load.py [CHECKPOINT] [--preset 0.6b] [--dtype bfloat16|float32|file]

The peak is taken after reading every weight once (memory-mapped pages count only when touched).
Without CHECKPOINT it writes a random full-size checkpoint (under checkpoints/) first. The load
runs in a fresh subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time, torch
from q3tts.model import load_checkpoint

def high_water_mark():  # VmHWM: per address space, so unlike ru_maxrss it does not carry over from the parent
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

dtype = {"file": None, "bfloat16": torch.bfloat16, "float32": torch.float32}[sys.argv[2]]
base = high_water_mark()
t = time.perf_counter()
ck = load_checkpoint(sys.argv[1], "cpu", dtype)
seconds = time.perf_counter() - t
weights = sum(p.numel() * p.element_size() for p in ck.networks.parameters())
weights += sum(p.numel() * p.element_size() for p in ck.speech_tokenizer.parameters())
weights += sum(b.numel() * b.element_size() for b in ck.speech_tokenizer.buffers())
peak = high_water_mark()
# Memory-mapped weights are only resident once read: read every one, as the first generation would.
tensors = [*ck.networks.parameters(), *ck.speech_tokenizer.parameters(), *ck.speech_tokenizer.buffers()]
checksum = sum(float(t.sum(dtype=torch.float32)) for t in tensors)  # no float copy of the tensor
print(json.dumps({"seconds": seconds, "peak_rss_after_load": peak, "peak_rss": high_water_mark(),
                  "rss_before_load": base, "loaded_weight_bytes": weights}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("--preset", default="0.6b")
    ap.add_argument("--kind", default="base")
    ap.add_argument("--dtype", default="file", choices=("file", "bfloat16", "float32"))
    args = ap.parse_args()
    path = Path(args.checkpoint or f"checkpoints/{args.preset}-{args.kind}")
    if not (path / "model.safetensors").exists():
        from q3tts.testing.presets import make_checkpoint

        print(f"writing a random {args.preset} {args.kind} checkpoint to {path} ...", flush=True)
        make_checkpoint(path, args.preset, args.kind)
    disk = sum(p.stat().st_size for p in path.rglob("*.safetensors"))
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), args.dtype], capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r.update(
        checkpoint=str(path),
        dtype=args.dtype,
        disk_bytes=disk,
        peak_over_disk=r["peak_rss"] / disk,
        peak_over_weights=r["peak_rss"] / r["loaded_weight_bytes"],
    )
    print(json.dumps(r, indent=2))
    print(f"peak RSS {r['peak_rss'] / 1e9:.2f} GB = {r['peak_over_disk']:.2f} x the {disk / 1e9:.2f} GB on disk "
          f"and {r['peak_over_weights']:.2f} x the {r['loaded_weight_bytes'] / 1e9:.2f} GB of loaded weights, every "
          f"weight read (interpreter + torch alone: {r['rss_before_load'] / 1e9:.2f} GB); load took {r['seconds']:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
