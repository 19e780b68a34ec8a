"""`q3tts doctor`: what this machine can run (the community pipelines' `test_setup.py`, as a command).

    q3tts doctor [--json]

Python, the torch build, CUDA / MPS devices and bf16 support, free disk and RAM, which optional
extras are installed, the official package (the oracle) and ffmpeg. Each line is `ok`, `--`
(optional, missing) or `!!` (a problem); the exit status is 1 only when a `!!` line is present.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from ..console import size

# extra -> (module, what it is for); the modules of pyproject.toml's optional dependencies
EXTRAS = {
    "train": [("accelerate", "training loop"), ("peft", "LoRA"), ("yaml", "YAML configs (pyyaml)"),
              ("datasets", "Hugging Face datasets"), ("tensorboard", "TensorBoard logs")],
    "server": [("fastapi", "q3tts serve"), ("uvicorn", "q3tts serve"), ("pydantic_settings", "server settings"),
               ("multipart", "uploads (python-multipart)"), ("av", "streamed mp3/opus/aac"),
               ("prometheus_client", "metrics")],
    "ui": [("gradio", "web UI")],
    "other": [("wandb", "Weights & Biases logging"), ("huggingface_hub", "hub downloads and uploads")],
}  # fmt: skip
MIN_FREE_DISK = 10 * 2**30  # a 1.7B checkpoint with its codec is ~4.5 GB; fine-tuning writes several
MIN_FREE_RAM = 4 * 2**30


@dataclass
class Check:
    name: str
    status: str  # ok | -- | !!
    detail: str


def python_checks() -> list[Check]:
    ok = sys.version_info >= (3, 10)
    return [Check("python", "ok" if ok else "!!", f"{platform.python_version()} ({sys.executable})"
                  + ("" if ok else "; q3tts needs 3.10 or newer"))]  # fmt: skip


def torch_checks() -> list[Check]:
    try:
        import torch
    except ImportError as e:
        return [Check("torch", "!!", f"not importable: {e}")]
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else ("ROCm " + torch.version.hip if getattr(
        torch.version, "hip", None) else "CPU only")  # fmt: skip
    out = [Check("torch", "ok", f"{torch.__version__} ({build}), {torch.get_num_threads()} CPU threads")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(Check(f"cuda:{i}", "ok", f"{p.name}, {size(p.total_memory)}, compute {p.major}.{p.minor}"))
        bf16 = torch.cuda.is_bf16_supported()
        out.append(Check("bf16 (cuda)", "ok" if bf16 else "--", "supported" if bf16 else "not supported: use fp16"))
    else:
        why = "torch is a CPU-only build" if not torch.version.cuda else "no CUDA device visible"
        out.append(Check("cuda", "--", why))
    mps = getattr(torch.backends, "mps", None)
    if platform.system() == "Darwin":
        available = bool(mps and mps.is_available())
        out.append(Check("mps", "ok" if available else "--", "available" if available else "not available"))
    out.append(cpu_bf16())
    out.append(lowbit_kernel())
    return out


def lowbit_kernel() -> Check:
    """The int4/q8 CPU modes need their kernel built (a C++ compiler, once per machine)."""
    from ..nn import lowbit

    try:
        isa = lowbit.kernels().isa()
    except lowbit.KernelUnavailable as e:
        return Check("int4/q8 kernel", "--", f"{e}")
    path = {512: "AVX512-VNNI", 257: "AVX2 + AVX-VNNI", 256: "AVX2"}.get(isa, "portable C++ (slow: no AVX2 here)")
    return Check("int4/q8 kernel", "ok", f"built, {path}")


def cpu_bf16() -> Check:
    """bf16 always runs on the CPU; it is fast only with native bf16 instructions."""
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        pass
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()]
    detail = f"native ({', '.join(native)})" if native else "emulated (slower than float32 on this CPU)"
    return Check("bf16 (cpu)", "ok" if native else "--", detail)


def resource_checks() -> list[Check]:
    out = []
    cache = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    places = {"disk (here)": Path.cwd(), "disk (HF cache)": cache if cache.exists() else cache.parent}
    for name, path in places.items():
        try:
            free = shutil.disk_usage(path).free
        except OSError as e:
            out.append(Check(name, "--", f"{path}: {e.strerror}"))
            continue
        status = "ok" if free >= MIN_FREE_DISK else "!!"
        out.append(Check(name, status, f"{size(free)} free at {path}" +
                         ("" if status == "ok" else f" (under {size(MIN_FREE_DISK)})")))  # fmt: skip
    ram = available_ram()
    if ram is None:
        out.append(Check("ram", "--", "unknown"))
    else:
        status = "ok" if ram >= MIN_FREE_RAM else "!!"
        out.append(Check("ram", status, f"{size(ram)} available" + ("" if status == "ok" else
                                                                     f" (under {size(MIN_FREE_RAM)})")))  # fmt: skip
    return out


def available_ram():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def extra_checks() -> list[Check]:
    out = []
    for extra, modules in EXTRAS.items():
        for module, what in modules:
            found = importlib.util.find_spec(module) is not None
            hint = f"pip install 'q3tts[{extra}]'" if extra != "other" else f"pip install {module}"
            out.append(Check(f"{extra}: {module}", "ok" if found else "--", what + ("" if found else f"; {hint}")))
    return out


def oracle_checks() -> list[Check]:
    """The official package: importable here, or in the oracle venv the test suite uses."""
    out = []
    here = importlib.util.find_spec("qwen_tts") is not None
    out.append(Check("qwen-tts (official)", "ok" if here else "--",
                     "importable here" if here else "not installed here (only needed to compare outputs)"))  # fmt: skip
    root = Path(__file__).resolve().parents[2]
    venv = Path(os.environ.get("Q3TTS_ORACLE_VENV", root / ".oracle-venv"))
    ready = (venv / "bin" / "python").exists() and (venv / ".q3tts-oracle-complete").exists()
    out.append(Check("oracle venv", "ok" if ready else "--",
                     f"{venv}" + ("" if ready else " missing or incomplete (tools/oracle/setup.sh)")))  # fmt: skip
    return out


def ffmpeg_check() -> Check:
    path = shutil.which("ffmpeg")
    if path is None:
        return Check("ffmpeg", "--", "not on PATH (only WAV/FLAC/OGG then; mp3/opus need it)")
    try:
        first = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=10).stdout.splitlines()
        version = first[0].split(" Copyright")[0] if first else "unknown version"
    except (OSError, subprocess.SubprocessError) as e:
        return Check("ffmpeg", "!!", f"{path} does not run: {e}")
    return Check("ffmpeg", "ok", f"{version} ({path})")


def run_checks() -> list[Check]:
    return [*python_checks(), *torch_checks(), *resource_checks(), *extra_checks(), *oracle_checks(), ffmpeg_check()]


def cmd_doctor(args) -> int:
    checks = run_checks()
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{c.status:>2}  {c.name:<{width}}  {c.detail}")
    return 1 if any(c.status == "!!" for c in checks) else 0
