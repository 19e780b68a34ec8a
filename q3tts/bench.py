"""`q3tts bench`: generation speed and memory on one checkpoint, ours and the official package's.

    q3tts bench --preset 0.6b --kind custom_voice             # writes checkpoints/0.6b-custom_voice once
    q3tts bench --model PATH --frames 64 --batch 4 --quantize int8 --reference --json
    q3tts bench --model PATH --serve --streams 1,4,16 --http   # and the server's path (bench_serve.py)
    q3tts bench --model PATH --quality int8 --frames 24         # accuracy against float32 (bench_quality.py)
    python -m q3tts.bench ...                                  # the same without the CLI

Every run makes exactly `--frames` frames per row (end of speech is masked for every step:
min_new_tokens = max_new_tokens = frames + 1) at batch 1 and at `--batch` (with `--serve`, also at
every stream count, so each has an engine batch to compare with). Ours and the reference are
measured in separate child processes, one after the other, so each peak RSS is that
implementation's own and they never compete for cores. Figures, per batch size B (a *step* makes one frame for each of the B rows):

  prefill ms           the talker's forward over the prompt
  talker ms/step       the talker's one-frame forwards / steps
  code predictor       codebooks 1..15 of a frame (15 sub-steps, heads and sampling) / steps
  codec ms/step        codes -> audio / steps
  total ms/step        wall time of the whole call, text in and audio out, / steps (and the
                       fastest run's: on a shared machine the least disturbed one)
  RTF                  wall / audio seconds of one row: below 1 is faster than real time
  first chunk ms       stream(..., first_chunk_frames=1) at batch 1: call to first audio (and
                       with the text streamed in, non_streaming_mode=False: a short prefill)
  peak RSS             VmHWM of the measuring process (load included); peak GPU when on CUDA
  RSS after load       resident memory once the weights are loaded (and quantised)

Timings are medians over `--repeat` runs after `--warmup` runs. The split comes from hooks on
the child's own model instance (the engine code is not changed): a forward pre/post hook on the
talker, and wrappers of the step forms' `predict_rest` (steps.py) and the codec's `decode_chunk`. A hook
whose target is missing is skipped (that part reads "-", the total stays). On CUDA the split is
off unless `--split`: timing a part synchronises the device, which would slow the very loop it
measures. The hooks are removed before the serving runs.

`--serve` then measures the scheduler the server runs, in the same child on the same model, and
`--http` a real `q3tts serve` process after it: see bench_serve.py for those figures. The
ratios printed (and under "serving" in `--json`) are server / engine: at 1 stream against the
engine's batch 1 (ms/frame, first audio), at N streams against its batch N (audio-s/s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional

from . import bench_peer
from .errors import Q3TTSError

DEFAULT_TEXT = ("Hello! This is a benchmark of the Qwen3 text to speech model, reading one ordinary sentence "
                "at a natural pace, so that every run takes the same path.")  # fmt: skip
REFERENCE_SCRIPT = Path(__file__).with_name("bench_reference.py")
STEP_PARTS = ("talker", "code_predictor", "codec")


class BenchError(Q3TTSError):
    """A bad argument or a failed child process; reported as one line."""


# ----------------------------------------------------------------------------------------------
# Arguments and the parent process
# ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--model", help="checkpoint folder or Hugging Face repo id")
    what.add_argument("--preset", choices=("tiny", "0.6b", "1.7b"),
                      help="random-weight checkpoint of this size, written under checkpoints/ if missing")  # fmt: skip
    parser.add_argument("--kind", choices=("custom_voice", "voice_design", "base"), default="custom_voice",
                        help="model kind for --preset (default custom_voice)")  # fmt: skip
    parser.add_argument("--frames", type=int, default=64, help="frames per row in every run (12.5 frames = 1 s)")
    parser.add_argument("--batch", type=int, default=4, help="the second batch size, after 1 (1: batch 1 only)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: physical cores, at most 8)")
    parser.add_argument("--quantize", default="none",
                        help="none, int8, q8, int4 or per network ('talker=int4,predictor=q8'): our talker's and "
                             "code predictor's weights (CPU); the reference stays float")  # fmt: skip
    parser.add_argument("--text", default=DEFAULT_TEXT)
    parser.add_argument("--speaker", help="CustomVoice speaker (default: the first supported one)")
    parser.add_argument("--instruct", default="A calm, clear adult voice.", help="VoiceDesign description")
    parser.add_argument("--language", default="english")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also run the official qwen-tts package on the same checkpoint; print ratios",
    )
    parser.add_argument("--reference-python",
                        help="Python of an environment with qwen-tts (default: $Q3TTS_REFERENCE_PYTHON, "
                             "else .oracle-venv/bin/python in the current folder)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--quality", metavar="MODE[,MODE...]",
                        help="instead of speed: each mode's accuracy against float32, teacher-forced over the same "
                             "--frames (MODE: a from_pretrained quantize= value or none, optionally @CODEC_DTYPE; "
                             "see bench_quality.py)")  # fmt: skip
    serve = parser.add_argument_group("serving (the scheduler `q3tts serve` runs)")
    serve.add_argument("--serve", action="store_true", help="also measure the server's scheduler, in process")
    serve.add_argument("--streams", help="concurrent streams to measure, e.g. 1,4,16 (the default); implies --serve")
    serve.add_argument("--http", action="store_true",
                       help="also measure a real `q3tts serve` process over HTTP (needs the server extra); "
                            "implies --serve")  # fmt: skip
    serve.add_argument(
        "--chunk-frames", type=int, default=8, help="frames per streamed chunk (default 8, the server's)"
    )
    serve.add_argument("--static", choices=("auto", "off", "eager"), default="auto",
                       help="fixed-shape steps: auto (CUDA graphs on CUDA), off, or eager (without graphs); "
                            "the engine follows off / not off, the scheduler takes it where it supports it")  # fmt: skip
    serve.add_argument(
        "--split", action="store_true", help="time talker / code predictor / codec on CUDA too (each part synchronises)"
    )
    bench_peer.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run the bench for parsed arguments; prints the report, returns the exit status."""
    if args.quality is not None:
        return run_quality(args)
    try:
        ref_python = reference_python(args) if args.reference else None  # before writing any checkpoint
        check_peer_arguments(args)
        peer = bench_peer.locate(args) if args.peer else None  # before writing any checkpoint too
        config = make_config(args)
        if peer:
            if config["device"] != "cpu":
                raise BenchError(f"--peer runs a CPU engine beside ours: use --device cpu, not {config['device']}")
            peer = bench_peer.prepare(peer, args, Path(config["model"]), config["quantize"])
        report = bench(config, ref_python, peer)
    except (BenchError, bench_peer.PeerError) as e:
        print(f"q3tts bench: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    http = (report.get("serving") or {}).get("http") or {}
    if http.get("error"):  # the figures measured before it are printed above, not lost
        print(f"q3tts bench: error: http serving: {http['error']}", file=sys.stderr)
        return 1
    return 0


def run_quality(args: argparse.Namespace) -> int:
    """`--quality MODES`: bench_quality's report for the modes, on the same checkpoint and voice."""
    from . import bench_quality
    from .nn.quant import default_threads

    try:
        others = [flag for flag, on in (("--reference", args.reference), ("--serve", args.serve), ("--http", args.http),
                                        ("--streams", args.streams is not None),
                                        ("--quantize", args.quantize != "none")) if on]  # fmt: skip
        if others:
            raise BenchError(f"--quality measures its modes on its own; drop {', '.join(others)}")
        modes = bench_quality.parse_modes(args.quality)
        if args.frames < 1 or (args.threads is not None and args.threads < 1):
            raise BenchError("--frames and --threads must be at least 1")
        import torch

        torch.set_num_threads(args.threads or default_threads())
        report = bench_quality.quality_report(
            checkpoint_folder(args), modes, frames=args.frames, text=args.text, language=args.language,
            voice=lambda tts: voice_for(tts, vars(args)), device=args.device,
            progress=lambda message: print(f"q3tts bench: quality: {message} ...", file=sys.stderr, flush=True),
        )  # fmt: skip
    except Q3TTSError as e:
        print(f"q3tts bench: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=1) if args.json else bench_quality.format_quality(report))
    return 0


def check_peer_arguments(args: argparse.Namespace) -> None:
    if not args.peer:
        for option in ("peer_python", "peer_cache"):
            if getattr(args, option):
                raise BenchError(f"--{option.replace('_', '-')} needs --peer")
        if args.peer_quant != "auto":
            raise BenchError("--peer-quant needs --peer")


def parse_streams(text: Optional[str]) -> list[int]:
    try:
        streams = sorted({int(part) for part in (text or "1,4,16").split(",") if part.strip()})
    except ValueError:
        raise BenchError(f"--streams takes counts like 1,4,16, got {text!r}") from None
    if not streams or streams[0] < 1:
        raise BenchError(f"--streams counts must be at least 1, got {text!r}")
    return streams


def make_config(args: argparse.Namespace) -> dict:
    for name, least in (("frames", 1), ("batch", 1), ("warmup", 0), ("repeat", 1), ("threads", 1), ("chunk_frames", 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise BenchError(f"--{name.replace('_', '-')} must be at least {least}, got {value}")
    import torch

    from .api import resolve_device, resolve_dtype

    try:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
    except (RuntimeError, ValueError) as e:
        raise BenchError(str(e)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda but torch sees no CUDA device")
    from .nn.quant import QuantizationError, default_threads, parse_quantize

    try:
        quantize = parse_quantize(args.quantize)
    except QuantizationError as e:
        raise BenchError(str(e)) from None
    if quantize is not None and device.type != "cpu":
        raise BenchError(f"--quantize {args.quantize} is for CPU; on a GPU use --dtype bfloat16")

    serve = args.serve or args.http or args.streams is not None
    streams = parse_streams(args.streams) if serve else []
    return dict(
        model=str(checkpoint_folder(args)),
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        threads=args.threads or default_threads(),
        quantize=str(quantize) if quantize is not None else "none",
        frames=args.frames,
        batches=sorted({1, args.batch, *streams}),
        warmup=args.warmup,
        repeat=args.repeat,
        text=args.text,
        speaker=args.speaker,
        instruct=args.instruct,
        language=args.language,
        seed=args.seed,
        split=args.split or device.type != "cuda",
        static=args.static,
        serve=serve,
        streams=streams,
        http=args.http,
        chunk_frames=args.chunk_frames,
    )


def checkpoint_folder(args: argparse.Namespace) -> Path:
    from .checkpoint import MAIN_FILES, CheckpointError, require_files, resolve

    if args.preset:
        folder = Path("checkpoints") / f"{args.preset}-{args.kind}"
        if not (folder / "model.safetensors").exists():
            from .testing.presets import make_checkpoint

            print(f"q3tts bench: writing a random {args.preset} {args.kind} checkpoint to {folder} ...",
                  file=sys.stderr, flush=True)  # fmt: skip
            make_checkpoint(folder, args.preset, args.kind)
        return folder.resolve()
    if not args.model:
        raise BenchError("give --model PATH or --preset tiny|0.6b|1.7b")
    try:
        folder = resolve(args.model)
        require_files(folder, MAIN_FILES)
    except CheckpointError as e:
        raise BenchError(str(e)) from None
    return folder.resolve()


def reference_python(args: argparse.Namespace) -> str:
    python = args.reference_python or os.environ.get("Q3TTS_REFERENCE_PYTHON") or ".oracle-venv/bin/python"
    if not Path(python).is_file():
        raise BenchError(f"reference python '{python}' not found: set --reference-python or Q3TTS_REFERENCE_PYTHON "
                         "to the Python of an environment with qwen-tts (tools/oracle/setup.sh makes one)")  # fmt: skip
    return python


def bench(config: dict, ref_python: Optional[str], peer: Optional[dict] = None) -> dict:
    """Measure ours (and the reference when `ref_python` is given, the peer when `peer` is, as
    bench_peer.prepare made it) in child processes, one after the other."""
    from . import bench_serve

    env = bench_serve.package_env()
    runs = (config["warmup"] + config["repeat"]) * (len(config["batches"]) + 1)
    serving = f", then the scheduler at {config['streams']} streams" if config["serve"] else ""
    print(f"q3tts bench: measuring q3tts ({runs} runs of {config['frames']} frames{serving}) ...", file=sys.stderr,
          flush=True)  # fmt: skip
    ours = run_child([sys.executable, "-m", "q3tts.bench", "--_child"], config, env, "q3tts")
    report: dict[str, Any] = dict(config=config, ours=summarise_side(ours, config), reference=None, ratios=None)
    if config["serve"]:
        report["serving"] = serving_report(config, ours, report["ours"], env)
    if ref_python:
        print(f"q3tts bench: measuring the reference with {ref_python} ...", file=sys.stderr, flush=True)
        ref = run_child([ref_python, str(REFERENCE_SCRIPT)], config, None, "reference")
        report["reference"] = summarise_side(ref, config)
        report["ratios"] = ratios(report["ours"], report["reference"])
    report["peer"] = None
    if peer:
        print(f"q3tts bench: measuring the peer {peer['name']} with {peer['python']} ...", file=sys.stderr, flush=True)
        report["peer"] = bench_peer.describe(peer, summarise_side(bench_peer.measure(peer, config, ours), config))
        report["peer"]["ratios"] = bench_peer.ratios(report["ours"], report["peer"])
    return report


def serving_report(config: dict, raw: dict, ours: dict, env: dict) -> dict:
    """The in-process scheduler figures the child measured, then (with --http) a server's."""
    from . import bench_serve

    frames, spf, sr = config["frames"], raw["samples_per_frame"], raw["sample_rate"]
    serving: dict[str, Any] = dict(in_process=bench_serve.summarise_way(raw["serving"], frames, spf, sr), http=None)
    if config["http"]:
        print(f"q3tts bench: measuring q3tts serve over HTTP at {config['streams']} streams ...", file=sys.stderr,
              flush=True)  # fmt: skip
        try:
            voice = bench_serve.http_voice(ours["checkpoint"]["kind"], raw.get("speaker"), config, reference_clip)
            result = bench_serve.measure_http(config, voice, spf, env)
            serving["http"] = bench_serve.summarise_way(result, frames, spf, sr)
        except (bench_serve.ServingBenchError, OSError) as e:
            serving["http"] = dict(error=str(e))
    serving["ratios"] = {way: bench_serve.serving_ratios(ours, serving[way]) for way in ("in_process", "http")
                         if serving[way] and "streams" in serving[way]}  # fmt: skip
    return serving


def run_child(command: list[str], config: dict, env: Optional[dict], name: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="q3tts-bench-") as tmp:
        config_path, result_path = Path(tmp) / "config.json", Path(tmp) / "result.json"
        config_path.write_text(json.dumps(config))
        proc = subprocess.run([*command, str(config_path), str(result_path)], env=env, capture_output=True, text=True,
                              check=False)  # fmt: skip
        if proc.returncode or not result_path.exists():
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            raise BenchError(f"{name} run failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'}")
        return json.loads(result_path.read_text())


# ----------------------------------------------------------------------------------------------
# Figures from raw samples (the same definitions for both sides)
# ----------------------------------------------------------------------------------------------


def summarise_side(result: dict, config: dict) -> dict:
    result = dict(result)
    result["runs"] = {batch: summarise_runs(samples, config["frames"]) for batch, samples in result["runs"].items()}
    return result


def summarise_runs(samples: list[dict], frames_requested: int) -> dict:
    def median(f: Callable[[dict], float]) -> float:
        return statistics.median(f(s) for s in samples)

    def steps(s: dict) -> int:  # each step makes one frame for every row
        return max(max(s["frames_per_row"]), 1)

    def per_step(s: dict, part: str) -> float:
        return 1e3 * s["seconds"].get(part, 0.0) / steps(s)

    timed = set(samples[-1].get("parts_timed", ("prefill", *STEP_PARTS)))  # the reference times every part

    def if_timed(parts, value: Callable[[], float]) -> Optional[float]:
        return value() if timed.issuperset(parts) else None

    last = samples[-1]
    out: dict[str, Any] = dict(
        batch=len(last["frames_per_row"]),
        frames_requested=frames_requested,
        frames_per_row=last["frames_per_row"],
        frames_ok=all(f == frames_requested for s in samples for f in s["frames_per_row"]),
        repeats=len(samples),
        wall_s=median(lambda s: s["wall_s"]),
        prefill_ms=if_timed(["prefill"], lambda: median(lambda s: 1e3 * s["seconds"].get("prefill", 0.0))),
    )
    for part in STEP_PARTS:
        out[f"{part}_ms_per_step"] = if_timed([part], lambda part=part: median(lambda s: per_step(s, part)))
    out["total_ms_per_step"] = median(lambda s: 1e3 * s["wall_s"] / steps(s))
    out["total_ms_per_step_min"] = min(1e3 * s["wall_s"] / steps(s) for s in samples)
    # The rest: prompt building, code-0 sampling, embeddings, Python; prefill spread over the steps.
    out["other_ms_per_step"] = if_timed((*STEP_PARTS, "prefill"), lambda: median(
        lambda s: 1e3 * (s["wall_s"] - sum(s["seconds"].get(p, 0.0) for p in (*STEP_PARTS, "prefill"))) / steps(s)
    ))  # fmt: skip
    audio = median(lambda s: statistics.mean(s["audio_seconds_per_row"]))
    out["audio_seconds_per_row"] = audio
    out["rtf"] = out["wall_s"] / audio if audio else float("nan")
    out["frames_per_second"] = median(lambda s: sum(s["frames_per_row"]) / s["wall_s"])
    out["audio_seconds_per_second"] = median(lambda s: sum(s["audio_seconds_per_row"]) / s["wall_s"])
    return out


def ratios(ours: dict, ref: dict) -> dict:
    """reference / ours: above 1 means ours is faster (or smaller)."""

    def ratio(a, b):
        return a / b if a is not None and b else None

    out: dict[str, Any] = dict(
        peak_rss=ratio(ref["peak_rss_bytes"], ours["peak_rss_bytes"]),
        peak_gpu=ratio(ref.get("peak_gpu_bytes"), ours.get("peak_gpu_bytes")),
        load=ratio(ref["load_seconds"], ours["load_seconds"]),
    )
    for batch in sorted(ours["runs"].keys() & ref["runs"].keys(), key=int):
        o, r = ours["runs"][batch], ref["runs"][batch]
        out[f"batch_{batch}"] = {key: ratio(r.get(key), o.get(key)) for key in
                                 ("total_ms_per_step", "total_ms_per_step_min", "talker_ms_per_step", "code_predictor_ms_per_step",
                                  "codec_ms_per_step", "prefill_ms", "rtf")}  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------
# The report table
# ----------------------------------------------------------------------------------------------

ROWS = [  # (label, key in a batch's figures, format)
    ("prefill ms", "prefill_ms", "{:.1f}"),
    ("talker ms/step", "talker_ms_per_step", "{:.1f}"),
    ("code predictor ms/step", "code_predictor_ms_per_step", "{:.1f}"),
    ("codec ms/step", "codec_ms_per_step", "{:.1f}"),
    ("other ms/step", "other_ms_per_step", "{:.1f}"),
    ("total ms/step", "total_ms_per_step", "{:.1f}"),
    ("  best run", "total_ms_per_step_min", "{:.1f}"),
    ("frames/s, all rows", "frames_per_second", "{:.2f}"),
    ("RTF (wall/audio)", "rtf", "{:.3f}"),
]


def format_report(report: dict) -> str:
    cfg, ours, ref = report["config"], report["ours"], report["reference"]
    ck, env = ours["checkpoint"], ours["env"]
    lines = [
        f"checkpoint  {cfg['model']} ({ck['kind']}, {ck['size']}, {ck['parameters'] / 1e6:.0f} M parameters)",
        (
            f"setup       {env['device']} {env.get('cpu', '')}, {cfg['dtype']}, {env['threads']} threads, quantize "
            f"{cfg['quantize']}, codec {env.get('codec_dtype', '?')}, torch {env['torch']}"
        ),
        (
            f"runs        {cfg['frames']} frames per row, warmup {cfg['warmup']}, median of {cfg['repeat']}; "
            "a step = one frame for every row"
        ),
        "",
    ]
    columns = [(f"ours b={b}", ours["runs"][b]) for b in ours["runs"]]
    if ref:
        columns += [(f"ref b={b}", ref["runs"][b]) for b in ref["runs"]]
        columns += [(f"ref/ours b={b}", report["ratios"][f"batch_{b}"]) for b in ref["runs"] if b in ours["runs"]]
    width = 24
    lines.append(" " * width + "".join(f"{name:>14}" for name, _ in columns))
    for label, key, fmt in ROWS:
        cells = []
        for name, figures in columns:
            value = figures.get(key)
            cells.append("-" if value is None else (f"{value:.2f}x" if name.startswith("ref/") else fmt.format(value)))
        lines.append(f"{label:<{width}}" + "".join(f"{c:>14}" for c in cells))
    lines.append("")
    first_chunk = f"first chunk (b=1)       ours {fmt_ms(ours['first_chunk_ms'])}"
    if ref:
        first_chunk += f", reference {fmt_ms(ref['first_chunk_ms'])} ({ref.get('first_chunk_note', '')})"
    lines.append(first_chunk)
    if ours.get("first_chunk_text_streamed_ms") is not None:
        lines.append(f"  text streamed in       ours {fmt_ms(ours['first_chunk_text_streamed_ms'])} "
                     "(non_streaming_mode=False: the prefill holds the voice, not the whole text)")  # fmt: skip
    lines.append(memory_line("peak RSS", ours["peak_rss_bytes"], ref and ref["peak_rss_bytes"]))
    lines.append(memory_line("RSS after load", ours["rss_after_load_bytes"], ref and ref["rss_after_load_bytes"]))
    if ours.get("peak_gpu_bytes") is not None:
        lines.append(memory_line("peak GPU memory", ours["peak_gpu_bytes"], ref and ref.get("peak_gpu_bytes")))
    lines.append(f"load s                  ours {ours['load_seconds']:.1f}"
                 + (f", reference {ref['load_seconds']:.1f}" if ref else ""))  # fmt: skip
    for side, name in ((ours, "ours"), (ref, "reference")):
        for batch, figures in (side or {}).get("runs", {}).items():
            if not figures["frames_ok"]:
                lines.append(f"warning: {name} b={batch} made {figures['frames_per_row']} frames per row, "
                             f"not {cfg['frames']}")  # fmt: skip
    if report.get("peer"):
        lines += bench_peer.format_peer(ours, report["peer"], cfg["frames"])
    if report.get("serving"):
        from .bench_serve import format_serving

        lines += format_serving(report["serving"])
    return "\n".join(lines)


def fmt_ms(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def memory_line(label: str, ours: int, ref: Optional[int]) -> str:
    text = f"{label:<24}ours {ours / 2**20:.0f} MiB"
    if ref:
        text += f", reference {ref / 2**20:.0f} MiB ({ref / ours:.2f}x ours)"
    return text


# ----------------------------------------------------------------------------------------------
# The child process: our implementation
# ----------------------------------------------------------------------------------------------


def memory_kib(field: str) -> int:
    """VmHWM (peak) or VmRSS (now) of this process; VmHWM, unlike ru_maxrss, is per address space
    and so is not inherited from the parent."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource  # no /proc (macOS): the best available, in bytes there

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


class Stopwatch:
    """Seconds and call counts per named section of one run (CUDA synchronised at both ends)."""

    def __init__(self, device):
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.reset()

    def reset(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def add(self, name: str, start: float) -> None:
        self.seconds[name] += self.now() - start
        self.calls[name] += 1

    def wrap(self, fn: Callable, name: str) -> Callable:
        def timed(*args, **kwargs):
            start = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, start)

        return timed


def instrument(tts, clock: Stopwatch, split: bool) -> tuple[list[str], Callable[[], None]]:
    """Time the talker, code predictor and codec of this instance (when `split`). Returns the
    parts timed and a function that removes every hook. A target these internals no longer have
    is skipped: its part is reported as not timed, the totals stay."""
    import torch

    from .generate.steps import EagerSteps, FixedShapeSteps

    engine = tts.engine
    parts: list[str] = []
    undo: list[Callable[[], None]] = []
    if not split:
        return parts, lambda: None
    talker = getattr(engine, "talker", None)
    if isinstance(talker, torch.nn.Module):
        starts: list[float] = []

        def capturing() -> bool:  # no synchronising (nor timing) while a CUDA graph is being recorded
            return engine.device.type == "cuda" and torch.cuda.is_current_stream_capturing()

        def before(mod, args):
            if not capturing():
                starts.append(clock.now())

        def after(mod, args, out):
            if not capturing() and starts:
                many = bool(args) and getattr(args[0], "ndim", 0) >= 2 and args[0].shape[1] > 1
                clock.add("prefill" if many else "talker", starts.pop())

        handles = [talker.register_forward_pre_hook(before), talker.register_forward_hook(after)]
        undo += [h.remove for h in handles]
        parts += ["prefill", "talker"]
        if engine.fixed_shape and engine.device.type == "cuda":
            # CUDA graphs: a replayed talker step runs no Python hooks; patched in this child only
            step = FixedShapeSteps.talker_step
            FixedShapeSteps.talker_step = clock.wrap(step, "talker")
            undo.append(lambda: setattr(FixedShapeSteps, "talker_step", step))
    for form in (EagerSteps, FixedShapeSteps):  # the code predictor's pass, in either step form
        rest = form.predict_rest
        form.predict_rest = clock.wrap(rest, "code_predictor")
        undo.append(lambda form=form, rest=rest: setattr(form, "predict_rest", rest))
    parts.append("code_predictor")
    codec = tts.checkpoint.speech_tokenizer.decoder
    codec.decode_chunk = clock.wrap(codec.decode_chunk, "codec")  # an instance attribute: undo deletes it
    undo.append(lambda: delattr(codec, "decode_chunk"))
    parts.append("codec")

    def remove() -> None:
        for step in reversed(undo):
            step()

    return parts, remove


def measure_ours(config: dict) -> dict:
    import torch

    from .api import Qwen3TTS
    from .generate.engine import LengthCapWarning
    from .nn.lowbit import LowBitLinear
    from .nn.quant import Int8Linear

    warnings.simplefilter("ignore", LengthCapWarning)  # the cap is how every run stops
    torch.set_num_threads(config["threads"])
    device = torch.device(config["device"])
    start = time.perf_counter()
    quantize = None if config["quantize"] == "none" else config["quantize"]
    tts = Qwen3TTS.from_pretrained(config["model"], device=device, dtype=config["dtype"], quantize=quantize,
                                   cuda_graphs=config["static"] != "off")  # fmt: skip
    networks = tts.checkpoint.networks
    parameters = sum(p.numel() for p in networks.parameters())
    parameters += sum(
        m.in_features * m.out_features for m in networks.modules() if isinstance(m, (Int8Linear, LowBitLinear))
    )
    load_seconds = time.perf_counter() - start
    rss_after_load = memory_kib("VmRSS") * 1024
    clock = Stopwatch(device)
    parts_timed, remove_hooks = instrument(tts, clock, config["split"])
    voice = voice_for(tts, config)
    call, stream = calls_for(tts, config, voice)
    samples_per_frame = tts.checkpoint.speech_tokenizer.samples_per_frame
    runs: dict[str, list[dict]] = {}
    for batch in config["batches"]:
        runs[str(batch)] = []
        for i in range(config["warmup"] + config["repeat"]):
            clock.reset()
            start = clock.now()
            wavs, sr = call(batch)
            wall = clock.now() - start
            if i >= config["warmup"]:
                runs[str(batch)].append(dict(
                    wall_s=wall, seconds=dict(clock.seconds), calls=dict(clock.calls), parts_timed=parts_timed,
                    frames_per_row=[len(w) // samples_per_frame for w in wavs],
                    audio_seconds_per_row=[len(w) / sr for w in wavs],
                ))  # fmt: skip
    first_chunk, first_chunk_text_streamed = [], []
    variants = [(True, first_chunk), (False, first_chunk_text_streamed)]
    if tts.kind == "base":  # a clone already streams its text by default: the two would be one call
        variants = variants[:1]
    for i in range(config["warmup"] + config["repeat"]):
        for whole_text, times in variants:
            start = clock.now()
            chunks = stream(whole_text)
            next(chunks)
            if i >= config["warmup"]:
                times.append(1e3 * (clock.now() - start))
            chunks.close()
    peak_rss = memory_kib("VmHWM") * 1024
    peak_gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    serving = None
    if config["serve"]:
        from .bench_serve import measure_scheduler

        remove_hooks()  # the scheduler runs as the server runs it
        utterance = tts.utterances(config["text"], language=config["language"], **voice)[0]
        serving = measure_scheduler(tts, utterance, config)
        serving["peak_rss_bytes"] = memory_kib("VmHWM") * 1024
        if device.type == "cuda":
            serving["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
    return dict(
        implementation="q3tts",
        env={**environment(torch, device, config), "codec_dtype": str(tts.codec_dtype).split(".")[-1]},
        checkpoint=dict(kind=tts.kind, size=tts.checkpoint.config.tts_model_size, parameters=parameters),
        load_seconds=load_seconds,
        rss_after_load_bytes=rss_after_load,
        peak_rss_bytes=peak_rss,
        peak_gpu_bytes=peak_gpu,
        first_chunk_ms=statistics.median(first_chunk),
        first_chunk_text_streamed_ms=statistics.median(first_chunk_text_streamed)
        if first_chunk_text_streamed
        else None,
        runs=runs,
        speaker=voice.get("speaker"),
        samples_per_frame=samples_per_frame,
        sample_rate=tts.sample_rate,
        serving=serving,
    )


def voice_for(tts, config: dict) -> dict:
    """The voice arguments for the checkpoint's kind (the same for engine and scheduler runs)."""
    if tts.kind == "custom_voice":
        return dict(speaker=config["speaker"] or tts.get_supported_speakers()[0])
    if tts.kind == "voice_design":
        return dict(instruct=config["instruct"])
    return dict(voice_clone_prompt=tts.create_voice_clone_prompt(reference_clip(), x_vector_only_mode=True))


def calls_for(tts, config: dict, voice: dict) -> tuple[Callable[[int], Any], Callable[[], Any]]:
    """(batch -> (wavs, sr), () -> audio-chunk iterator) for the checkpoint's kind. Scalar voice
    arguments are broadcast over the batch by the API. End of speech is masked at every step the
    cap allows, so each row makes exactly `frames` frames."""
    options = dict(language=config["language"], max_new_tokens=config["frames"] + 1,
                   min_new_tokens=config["frames"] + 1, seed=config["seed"])  # fmt: skip
    generate = {"custom_voice": tts.generate_custom_voice, "voice_design": tts.generate_voice_design}.get(
        tts.kind, tts.generate_voice_clone
    )
    text = config["text"]
    # stream(False): the text fed one token per frame (non_streaming_mode=False), so the prefill
    # holds the voice and the first token only, not the whole text.
    return (lambda batch: generate([text] * batch, **voice, **options),
            lambda whole_text=True: tts.stream(text, first_chunk_frames=1, non_streaming_mode=None if whole_text
                                               else False, **voice, **options))  # fmt: skip


def reference_clip(seconds: float = 3.0, sr: int = 24000):
    """A deterministic voiced-like clip to clone in Base benches (the same one bench_reference.py uses)."""
    import numpy as np

    t = np.arange(int(seconds * sr)) / sr
    wav = sum(0.2 / k * np.sin(2 * np.pi * 140 * k * t) for k in range(1, 6))
    wav = wav * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.01 * np.random.default_rng(0).standard_normal(t.shape)
    return wav.astype(np.float32), sr


def environment(torch, device, config: dict) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = dict(torch=torch.__version__, python=platform.python_version(), device=str(device), dtype=config["dtype"],
               threads=torch.get_num_threads(), cpu=cpu, cpu_capability=torch.backends.cpu.get_cpu_capability(),
               quantize=config["quantize"])  # fmt: skip
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


# ----------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_child"]:  # internal: python -m q3tts.bench --_child CONFIG RESULT
        config = json.loads(Path(argv[1]).read_text())
        Path(argv[2]).write_text(json.dumps(measure_ours(config), indent=1))
        return 0
    parser = argparse.ArgumentParser(prog="q3tts bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
