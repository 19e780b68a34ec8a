"""The GPU check (issue 10, item 8): fixed-shape steps == eager steps, and speed, in one JSON.

    tools/gpu_check.sh                                   # CUDA: 0.6b and 1.7b in bf16, within 8 minutes
    tools/gpu_check.sh --device cpu --preset tiny        # the same steps on CPU, in seconds (tests)
    python tools/gpu_check.py ...                        # without the set-up of gpu_check.sh

Each part runs in its own process under a timeout cut from one overall budget (`--budget`, 480 s),
so a part that fails, hangs or runs out of time is recorded in the JSON and the rest still runs:

  write <preset>        a random-weight checkpoint (`q3tts.testing.presets.make_checkpoint`) into the scratch
                        folder, reused when complete. All presets are written at once, at the start,
                        while the first equivalence check runs (nothing is timed then). One CPU core
                        does each: here the 0.6b took 22 s (2.4 GB), the 1.7b 186 s (4.3 GB) at nice
                        10 on 2 cores loaded 9 deep (by size, about 45 s on a free core: not measured).
  equivalence <preset>  greedy codes of three texts of different lengths in one batch, from
                        `Engine(..., static=...)` with each fixed-shape mode ("auto": CUDA graphs on
                        CUDA; "eager") against the dynamic path ("off"): equal, or the first frame
                        that differs. Then the scheduler, the texts joining at staggered steps: its
                        greedy audio against the API's (server == API), and, where it takes
                        `static=`, static "auto" (CUDA) or "eager" (CPU) against "off". In float32
                        and bfloat16 on CUDA (`--equivalence-dtypes`): float32 tells a real
                        difference from bf16 rounding flipping a near-tie argmax.
  bench <preset>        `q3tts bench --serve`: engine batch 1 and `--batch` (and, by bench's rule,
                        each stream count, for the ratios), then the scheduler the server runs at
                        `--streams` (first audio, RTF, audio-s/s), in one run. Each bench gets a
                        share of the time left (BENCH_WEIGHT).

Writes `--out` (gpu_check.json) after every part, and prints a short table at the end.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENCE_TEXTS = ["Hello there.", "A somewhat longer sentence, so that the rows have prompts of different lengths.",
                     "Third row."]  # fmt: skip
# The same codes decoded in other chunkings or groupings differ by float rounding; other codes by ~0.1.
AUDIO_TOLERANCE = 1e-3
MIN_PART_SECONDS = 10  # a part given less than this is skipped as out of time
# Shares of the time left for the parts still to run. The 1.7b talker is wider than the 0.6b's
# (presets.py: hidden 2048 vs 1024, feed-forward 6144 vs 3072, 28 layers each), its code predictor
# and codec the same, and a GPU step at these sizes is bound by kernel launches more than by
# arithmetic: 1.6 is a guess between those, not a measurement. An equivalence check is a few short
# greedy calls.
BENCH_WEIGHT = {"tiny": 1.0, "0.6b": 1.0, "1.7b": 1.6}
EQUIVALENCE_WEIGHT = 0.4


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"gpu_check: error: {message}\n")


PRESETS = ("tiny", "0.6b", "1.7b")
DTYPES = ("float32", "bfloat16", "float16")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = OneLineParser(prog="tools/gpu_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu (for tests)")
    p.add_argument("--preset", dest="presets", default="0.6b,1.7b", help="checkpoint sizes, e.g. 0.6b,1.7b or tiny")
    p.add_argument("--kind", default="custom_voice", choices=("custom_voice", "voice_design", "base"))
    p.add_argument("--dtype", help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--frames", type=int, default=64, help="frames per request in the bench (12.5 = 1 s)")
    p.add_argument("--batch", type=int, default=8, help="the engine batch beside batch 1")
    p.add_argument("--streams", default="1,8,32", help="concurrent scheduler streams")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch CPU threads in the children (default: bench's)")
    p.add_argument("--equivalence-frames", type=int, default=24, help="greedy frames per row in the equivalence check")
    p.add_argument("--equivalence-dtypes",
                   help="dtypes of the equivalence check (default: float32,bfloat16 on CUDA, float32 on CPU): "
                        "float32 tells a real difference from bf16 rounding flipping an argmax")  # fmt: skip
    p.add_argument("--http", action="store_true", help="also bench a real `q3tts serve` (needs the server extra)")
    p.add_argument("--budget", type=float, default=480, help="seconds for everything (default 480 = 8 minutes)")
    p.add_argument("--scratch", default=os.environ.get("Q3TTS_GPU_CHECK_SCRATCH", "/tmp/q3tts-gpu-check"),
                   help="folder for checkpoints and logs")  # fmt: skip
    p.add_argument("--out", default="gpu_check.json", help="the JSON report (default gpu_check.json)")
    args = p.parse_args(argv)
    args.presets = [x.strip() for x in args.presets.split(",") if x.strip()]
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    default_dtypes = "float32" if args.device == "cpu" else "float32,bfloat16"
    args.equivalence_dtypes = [x.strip() for x in (args.equivalence_dtypes or default_dtypes).split(",") if x.strip()]
    for preset in args.presets:
        if preset not in PRESETS:
            p.error(f"--preset takes {', '.join(PRESETS)} (comma-separated), got {preset!r}")
    for dtype in [args.dtype, *args.equivalence_dtypes]:
        if dtype not in DTYPES:
            p.error(f"dtypes are {', '.join(DTYPES)}, got {dtype!r}")
    if not all(part.strip().isdigit() and int(part) > 0 for part in args.streams.split(",")):
        p.error(f"--streams takes counts like 1,8,32, got {args.streams!r}")
    for name, least in (("frames", 1), ("batch", 1), ("warmup", 0), ("repeat", 1), ("equivalence_frames", 1)):
        if getattr(args, name) < least:
            p.error(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(args, name)}")
    if not args.presets or args.budget <= 0:
        p.error("give at least one --preset and a positive --budget")
    return args


class Report:
    """The JSON on disk, rewritten after every part so that a killed run still leaves one."""

    def __init__(self, path: Path, config: dict):
        self.path = path
        self.data: dict[str, Any] = dict(config=config, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                         environment=None, parts={}, ok=None)  # fmt: skip
        self.save()

    def add(self, name: str, entry: dict) -> None:
        self.data["parts"][name] = entry
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


class Part:
    """One part in its own process group (a timeout kills the bench's own children too)."""

    def __init__(self, name: str, command: list[str], logs: Path, result_path: Optional[Path] = None):
        self.name, self.result_path = name, result_path
        slug = name.replace(" ", "-")
        self.stdout_path, self.stderr_path = logs / f"{slug}.out", logs / f"{slug}.err"
        self.started = time.monotonic()
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, env=child_env(),
                                         start_new_session=True)  # fmt: skip

    def wait(self, deadline: float) -> dict:
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return self.entry("timeout", f"killed after {time.monotonic() - self.started:.0f} s (out of budget)")
        if self.proc.returncode != 0:
            return self.entry("failed", f"exit {self.proc.returncode}: {last_line(self.stderr_path)}")
        try:
            text = (self.result_path or self.stdout_path).read_text()
            return self.entry("ok", None, json.loads(text))
        except (OSError, ValueError) as e:
            return self.entry("failed", f"no result: {e}; {last_line(self.stderr_path)}")

    def entry(self, status: str, error: Optional[str], result: Any = None) -> dict:
        entry = dict(status=status, seconds=round(time.monotonic() - self.started, 2), error=error, result=result,
                     log=str(self.stderr_path))  # fmt: skip
        if status != "ok":  # the logs stay on the machine that ran the check; the JSON is what comes back
            entry["stderr_tail"] = tail(self.stderr_path, 30)
        return entry


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                PYTHONUNBUFFERED="1")  # fmt: skip


def tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1].strip()[:500] if lines else "no output"


def internal(part: str, spec: dict, scratch: Path) -> tuple[list[str], Path]:
    """The command for one of this file's own parts, and where its result lands."""
    stem = f"{part}-{spec.get('preset', '')}"
    spec_path, result_path = scratch / "logs" / f"{stem}.spec.json", scratch / "logs" / f"{stem}.result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--_part", part, str(spec_path), str(result_path)]
    return command, result_path


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    deadline = start + args.budget - 3  # the last write of the JSON and the table
    scratch = Path(args.scratch)
    logs = scratch / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    report = Report(Path(args.out), {k: v for k, v in vars(args).items()})

    def run(name: str, command: list[str], result_path: Optional[Path] = None, cap: Optional[float] = None) -> dict:
        left = deadline - time.monotonic()
        if left < MIN_PART_SECONDS:
            entry = dict(status="skipped", seconds=0, error=f"out of time ({left:.0f} s left)", result=None)
        else:
            entry = Part(name, command, logs, result_path).wait(time.monotonic() + min(left, cap or left))
        report.add(name, entry)
        print(f"gpu_check: {name}: {entry['status']} in {entry['seconds']:.1f} s"
              + (f" ({entry['error']})" if entry["error"] else ""), file=sys.stderr, flush=True)  # fmt: skip
        return entry

    env_command, env_result = internal("environment", dict(device=args.device), scratch)
    environment = run("environment", env_command, env_result, cap=60)
    report.data["environment"] = environment["result"]
    report.save()
    if environment["status"] != "ok":
        return finish(report, start)

    folders = {p: scratch / f"{p}-{args.kind}" for p in args.presets}
    writes = {}  # all at once: they use the CPU while the first equivalence check runs
    for preset, folder in folders.items():
        command, result = internal("write", dict(preset=preset, kind=args.kind, folder=str(folder)), scratch)
        writes[preset] = Part(f"write {preset}", command, logs, result)

    def written(preset: str) -> bool:
        name = f"write {preset}"
        if name not in report.data["parts"]:
            entry = writes[preset].wait(deadline)
            report.add(name, entry)
            print(f"gpu_check: {name}: {entry['status']} in {entry['seconds']:.1f} s"
                  + (f" ({entry['error']})" if entry["error"] else ""), file=sys.stderr, flush=True)  # fmt: skip
        return report.data["parts"][name]["status"] == "ok"

    def skip(name: str, why: str) -> None:
        report.add(name, dict(status="skipped", seconds=0, error=why, result=None))

    def equivalence(preset: str) -> None:
        if not written(preset):
            return skip(f"equivalence {preset}", "its checkpoint was not written")
        spec = dict(preset=preset, folder=str(folders[preset]), device=args.device,
                    dtypes=args.equivalence_dtypes, frames=args.equivalence_frames, threads=args.threads)  # fmt: skip
        command, result = internal("equivalence", spec, scratch)
        run(f"equivalence {preset}", command, result)

    def bench(preset: str, later: list[str]) -> None:
        """Runs with a share of the time left, so that one slow model cannot starve the others."""
        for other in args.presets:  # every write has ended: none competes with the timing
            written(other)
        if not written(preset):
            return skip(f"bench {preset}", "its checkpoint was not written")
        command = [sys.executable, "-m", "q3tts.bench", "--model", str(folders[preset]), "--device", args.device,
                   "--dtype", args.dtype, "--frames", str(args.frames), "--batch", str(args.batch), "--streams",
                   args.streams, "--warmup", str(args.warmup), "--repeat", str(args.repeat), "--json"]  # fmt: skip
        command += ["--threads", str(args.threads)] if args.threads else []
        command += ["--http"] if args.http else []
        weights = [BENCH_WEIGHT[p] for p in [preset, *later]] + [EQUIVALENCE_WEIGHT] * len(rest)
        run(f"bench {preset}", command, cap=(deadline - time.monotonic()) * weights[0] / sum(weights))

    first, rest = args.presets[0], args.presets[1:]
    equivalence(first)
    for i, preset in enumerate(args.presets):
        bench(preset, args.presets[i + 1 :])
    for preset in rest:
        equivalence(preset)
    return finish(report, start)


def finish(report: Report, start: float) -> int:
    parts = report.data["parts"]
    report.data["ok"] = all(p["status"] == "ok" for p in parts.values()) and all(
        p["result"]["same"] for name, p in parts.items() if name.startswith("equivalence") and p["result"]
    )
    report.data["seconds"] = round(time.monotonic() - start, 1)
    report.data["summary"] = summary_rows(parts)
    report.save()
    print(format_table(report.data))
    return 0 if report.data["ok"] else 1


# ----------------------------------------------------------------------------------------------
# The summary and the table
# ----------------------------------------------------------------------------------------------


def summary_rows(parts: dict) -> list[dict]:
    """One row per (preset, path): engine batches and scheduler stream counts."""
    rows = []
    for name, part in parts.items():
        if not name.startswith("bench ") or part["status"] != "ok":
            continue
        preset, report = name.split(" ", 1)[1], part["result"]
        ours = report["ours"]
        for batch, f in ours["runs"].items():
            rows.append(dict(preset=preset, path=f"engine b={batch}", ms_per_frame=f["total_ms_per_step"], rtf=f["rtf"],
                             audio_seconds_per_second=f["audio_seconds_per_second"],
                             first_audio_ms=ours["first_chunk_ms"] if batch == "1" else None))  # fmt: skip
        for way in ("in_process", "http"):
            for n, f in ((report.get("serving") or {}).get(way) or {}).get("streams", {}).items():
                rows.append(dict(preset=preset, path=f"{'server' if way == 'in_process' else 'http'} n={n}",
                                 ms_per_frame=f["ms_per_frame"], rtf=f["rtf"],
                                 audio_seconds_per_second=f["audio_seconds_per_second"],
                                 first_audio_ms=f["first_audio_ms_p50"], first_audio_ms_p95=f["first_audio_ms_p95"],
                                 frames_ok=f["frames_ok"]))  # fmt: skip
    return rows


def format_table(data: dict) -> str:
    def cell(value, fmt: str) -> str:
        return "-" if value is None else fmt.format(value)

    env = data.get("environment") or {}
    lines = [f"gpu_check: {env.get('gpu') or env.get('device', '?')}, torch {env.get('torch', '?')}, "
             f"{data['config']['dtype']}, {data.get('seconds', 0):.0f} s; ok: {data['ok']}", ""]  # fmt: skip
    lines.append(f"{'part':<22}{'status':<9}{'s':>7}  detail")
    for name, p in data["parts"].items():
        detail = p["error"] or ""
        if name.startswith("equivalence") and p["result"]:
            detail = "; ".join(f"{k}: {'same' if v['same'] else 'DIFFERENT ' + str(v.get('first_difference'))}"
                               if isinstance(v, dict) and "same" in v else f"{k}: {v.get('skipped', v)}"
                               for k, v in p["result"]["checks"].items())  # fmt: skip
        lines.append(f"{name:<22}{p['status']:<9}{p['seconds']:>7.1f}  {detail}")
    rows = data.get("summary") or []
    if rows:
        lines += ["", f"{'model':<7}{'path':<14}{'ms/frame':>10}{'RTF':>8}{'audio-s/s':>11}{'first audio ms':>16}"]
        for r in rows:
            first = cell(r["first_audio_ms"], "{:.0f}")
            if r.get("first_audio_ms_p95") is not None:
                first += f" (p95 {r['first_audio_ms_p95']:.0f})"
            lines.append(f"{r['preset']:<7}{r['path']:<14}{cell(r['ms_per_frame'], '{:.1f}'):>10}"
                         f"{cell(r['rtf'], '{:.3f}'):>8}{cell(r['audio_seconds_per_second'], '{:.2f}'):>11}"
                         f"{first:>16}")  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The parts (each in its own process)
# ----------------------------------------------------------------------------------------------


def part_environment(spec: dict) -> dict:
    import torch

    env = dict(python=platform.python_version(), torch=torch.__version__, device=spec["device"],
               cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(), cpu_cores=os.cpu_count())  # fmt: skip
    if spec["device"].startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch sees no CUDA device")
        props = torch.cuda.get_device_properties(torch.device(spec["device"]))
        env.update(gpu=props.name, gpu_memory_bytes=props.total_memory, capability=f"{props.major}.{props.minor}")
    import q3tts  # every dependency of the package, or the one missing, before any checkpoint is written

    env["q3tts"] = str(Path(q3tts.__file__).parent)
    return env


def part_write(spec: dict) -> dict:
    from q3tts.testing.presets import make_checkpoint

    folder = Path(spec["folder"])
    marker = folder / ".complete"  # written last: a folder from a killed run is written again
    reused = marker.exists()
    start = time.perf_counter()
    if not reused:
        marker.unlink(missing_ok=True)
        make_checkpoint(folder, spec["preset"], spec["kind"])
        marker.write_text("ok\n")
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return dict(folder=str(folder), reused=reused, write_seconds=time.perf_counter() - start, bytes=size)


def part_equivalence(spec: dict) -> dict:
    import gc

    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    checks: dict[str, Any] = {}
    for dtype in spec["dtypes"]:
        checks.update({f"{dtype}: {name}": check for name, check in equivalence_checks(spec, dtype).items()})
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return dict(same=all(c["same"] for c in checks.values() if "same" in c), checks=checks,
                rows=len(EQUIVALENCE_TEXTS), frames=spec["frames"])  # fmt: skip


def equivalence_checks(spec: dict, dtype: str) -> dict:
    """Greedy codes of one batch of EQUIVALENCE_TEXTS from each fixed-shape mode of the engine
    against its dynamic path, then the scheduler (see scheduler_checks)."""
    from q3tts.api import Qwen3TTS
    from q3tts.generate.engine import Engine
    from q3tts.generate.prompt import build_prompt
    from q3tts.generate.sampling import SamplingOptions

    cuda = spec["device"].startswith("cuda")
    tts = Qwen3TTS.from_pretrained(spec["folder"], device=spec["device"], dtype=dtype, cuda_graphs=False)
    ck = tts.checkpoint
    utterances = tts.utterances(EQUIVALENCE_TEXTS, **voice_arguments(tts))
    frames = spec["frames"]
    greedy = dict(do_sample=False, subtalker_dosample=False, max_new_tokens=frames + 1, min_new_tokens=frames + 1)
    checks: dict[str, Any] = {}
    if "static" not in inspect.signature(Engine).parameters:
        checks["engine"] = dict(skipped="Engine takes no static=")
    else:
        opts = SamplingOptions.from_defaults(ck.generation, **greedy)
        prompts = [build_prompt(ck.networks.talker, ck.config, ck.tokenizer, u) for u in utterances]
        baseline = engine_codes(Engine(ck.networks, ck.config, static="off"), prompts, opts)
        for mode in ["auto", "eager"] if cuda else ["eager"]:  # "auto" off CUDA is the dynamic path itself
            start = time.perf_counter()
            codes = engine_codes(Engine(ck.networks, ck.config, static=mode), prompts, opts)
            checks[f"engine {mode} == off"] = compare_codes(baseline, codes) | dict(seconds=time.perf_counter() - start)
    checks.update(scheduler_checks(tts, utterances, greedy, "auto" if cuda else "eager"))
    return checks


def voice_arguments(tts) -> dict:
    if tts.kind == "custom_voice":
        return dict(speaker=tts.get_supported_speakers()[0])
    if tts.kind == "voice_design":
        return dict(instruct="A calm, clear adult voice.")
    from q3tts.bench import reference_clip

    return dict(voice_clone_prompt=tts.create_voice_clone_prompt(reference_clip(), x_vector_only_mode=True))


def engine_codes(engine, prompts, opts) -> list:
    import torch

    rows: list[list] = [[] for _ in prompts]
    for step in engine.frames(prompts, opts):
        codes, emitted = step.codes.cpu(), step.emitted.cpu()
        for r in range(len(prompts)):
            if bool(emitted[r]):
                rows[r].append(codes[r])
    return [torch.stack(r) if r else torch.zeros(0, 0, dtype=torch.long) for r in rows]


def compare_codes(expected: list, got: list) -> dict:
    for row, (a, b) in enumerate(zip(expected, got)):
        if a.shape != b.shape:
            return dict(same=False, first_difference=dict(row=row, frames=[a.shape[0], b.shape[0]]))
        differs = (a != b).nonzero()
        if len(differs):
            frame, codebook = (int(x) for x in differs[0])
            return dict(same=False, first_difference=dict(row=row, frame=frame, codebook=codebook))
    return dict(same=True)


def scheduler_checks(tts, utterances, greedy: dict, mode: str) -> dict:
    """Greedy audio of requests joining at staggered steps: the scheduler against the API's batch
    (server == API), and, where the scheduler takes `static=`, its `mode` against "off"."""
    import numpy as np

    from q3tts.serving import SpeechScheduler

    parts: list[list] = [[] for _ in utterances]
    for row, chunk in tts.stream_batch(utterances, chunk_frames=4, first_chunk_frames=1, **greedy):
        parts[row].append(chunk)
    api = [np.concatenate(p) for p in parts]
    takes_static = "static" in inspect.signature(SpeechScheduler).parameters
    off = dict(static="off") if takes_static else {}
    start = time.perf_counter()
    baseline = staggered_audio(SpeechScheduler(tts, max_batch=4, max_queue=4, **off), utterances, greedy)
    checks = {"scheduler == api": compare_audio(api, baseline) | dict(seconds=time.perf_counter() - start)}
    if not takes_static:
        checks[f"scheduler {mode} == off"] = dict(skipped="SpeechScheduler takes no static= yet")
        return checks
    start = time.perf_counter()
    audio = staggered_audio(SpeechScheduler(tts, max_batch=4, max_queue=4, static=mode), utterances, greedy)
    checks[f"scheduler {mode} == off"] = compare_audio(baseline, audio) | dict(seconds=time.perf_counter() - start)
    return checks


def compare_audio(expected: list, got: list) -> dict:
    largest = 0.0
    for row, (a, b) in enumerate(zip(expected, got)):
        if a.shape != b.shape:
            return dict(same=False, first_difference=dict(row=row, samples=[len(a), len(b)]))
        largest = max(largest, float(abs(a - b).max()) if len(a) else 0.0)
    return dict(same=largest <= AUDIO_TOLERANCE, max_abs_difference=largest)


def staggered_audio(scheduler, utterances, greedy: dict) -> list:
    """Each request is submitted once the one before has sent its first chunk: they join a running batch."""
    import numpy as np

    scheduler.start()
    try:
        jobs, iterators, audio = [], [], []
        for u in utterances:
            job = scheduler.submit(u, chunk_frames=4, first_chunk_frames=1, **greedy)
            it = job.chunks()
            audio.append([next(it)])
            jobs.append(job)
            iterators.append(it)
        for parts, it in zip(audio, iterators):
            parts.extend(it)
        return [np.concatenate(p) for p in audio]
    finally:
        scheduler.close()


PARTS = dict(environment=part_environment, write=part_write, equivalence=part_equivalence)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--_part"]:  # internal: gpu_check.py --_part NAME SPEC RESULT
        _, _, name, spec_path, result_path = sys.argv
        result = PARTS[name](json.loads(Path(spec_path).read_text()))
        Path(result_path).write_text(json.dumps(result, indent=1))
        sys.exit(0)
    sys.exit(main())
