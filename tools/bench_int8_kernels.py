"""Which CPU kernel runs a weight-only int8 linear fastest, on the 0.6B talker's shapes?

    .venv/bin/python tools/bench_int8_kernels.py [--threads 2] [--rows 1 4] [--rounds 5]
    .venv/bin/python tools/bench_int8_kernels.py --accuracy checkpoints/0.6b-custom_voice

Times the seven linears of one decoder layer (hidden 1024, q 16x128, kv 8x128, intermediate
3072; the talker and the code predictor of the 0.6B model have the same layer shapes) plus the
codec head, for each candidate, at M rows of activations, over --layers distinct copies so that
the weights stream from memory as in a real forward rather than sit in the CPU cache. Rounds
are interleaved and the best round is kept: on a shared machine the minimum is the least
disturbed measurement.

--accuracy compares, on a CustomVoice checkpoint, the talker's codec-head logits and the code
predictor's first-head logits over a real prompt, float32 against each int8 kernel.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# (out_features, in_features) of q, k, v, o, gate, up, down and the codec head.
SHAPES = [(2048, 1024), (1024, 1024), (1024, 1024), (1024, 2048), (3072, 1024), (3072, 1024), (1024, 3072),
          (3072, 1024)]  # fmt: skip


def int8_weights(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def candidates(weights: list[torch.Tensor]) -> dict[str, tuple[Callable, torch.dtype]]:
    """name -> (function of one linear: (layer index, input) -> output, activation dtype)."""
    q = [int8_weights(w) for w in weights]
    bf = [w.bfloat16() for w in weights]
    scales16 = [s.bfloat16() for _, s in q]
    fns: dict[str, tuple[Callable, torch.dtype]] = {
        "fp32 F.linear": (lambda i, a: F.linear(a, weights[i]), torch.float32),
        "bf16 F.linear": (lambda i, a: F.linear(a, bf[i]), torch.bfloat16),
        "int8pack_mm fp32 act": (lambda i, a: torch._weight_int8pack_mm(a, q[i][0], q[i][1]), torch.float32),
        "int8pack_mm bf16 act": (lambda i, a: torch._weight_int8pack_mm(a, q[i][0], scales16[i]), torch.bfloat16),
        "dequant + fp32 matmul": (lambda i, a: F.linear(a, q[i][0].float()) * q[i][1], torch.float32),
        "dequant + bf16 matmul": (lambda i, a: F.linear(a, q[i][0].bfloat16()) * scales16[i], torch.bfloat16),
    }
    try:
        from torch.ao.quantization import quantize_dynamic

        dyn = []
        for w in weights:
            lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
            lin.weight.data.copy_(w)
            dyn.append(quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8))
        fns["ao dynamic int8 (int8 act)"] = (lambda i, a: dyn[i](a), torch.float32)
    except Exception as e:  # torch.ao may be gone in later torch versions
        print(f"torch.ao dynamic quantisation unavailable: {e}")
    try:  # the same fbgemm/x86 kernel without torch.ao: per-channel weights, activations quantised per call
        packed = [torch.ops.quantized.linear_prepack(
            torch._make_per_channel_quantized_tensor(w8, s.double(), torch.zeros_like(s, dtype=torch.long), 0), None)
            for w8, s in q]  # fmt: skip
        fns["quantized::linear_dynamic per-channel"] = (
            lambda i, a: torch.ops.quantized.linear_dynamic(a, packed[i], True), torch.float32)  # fmt: skip
    except Exception as e:
        print(f"quantized::linear_dynamic unavailable: {e}")
    return fns


def run_all(fn: Callable, shapes: list[tuple[int, int]], inputs: dict[int, torch.Tensor]) -> None:
    for i, (_, k) in enumerate(shapes):
        fn(i, inputs[k])


def logits_over_prompt(talker, prefill: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(talker codec-head logits [T, V], code-predictor head-0 logits [T, V_cp]) for prefill [T, H]."""
    with torch.inference_mode():
        positions = torch.arange(prefill.shape[0])
        hidden = talker(prefill[None], positions[None])
        cp = talker.code_predictor
        return talker.codec_head(hidden)[0], cp.lm_head[0](cp(hidden, positions))[0]


def accuracy(checkpoint: str) -> None:
    from q3tts.api import Qwen3TTS
    from q3tts.nn.quant import quantize_int8_

    def load():
        tts = Qwen3TTS.from_pretrained(checkpoint, device="cpu", dtype="float32")
        utts = tts._custom_voice_utterances("Hello! This is a test of int8 weights, one ordinary sentence.",
                                            tts.get_supported_speakers()[0], "english", None, True)  # fmt: skip
        return tts.checkpoint.networks.talker, tts._prompts(utts)[0].prefill

    talker, prefill = load()
    reference = logits_over_prompt(talker, prefill)
    del talker
    print(f"{checkpoint}: {prefill.shape[0]} prompt positions; cosine = min over positions")
    for kernel in ("dynamic", "weight_only"):
        talker, _ = load()
        quantize_int8_(talker, kernel)
        for name, ref, got in zip(("talker codec head", "code predictor head 0"), reference,
                                  logits_over_prompt(talker, prefill)):  # fmt: skip
            cosine = F.cosine_similarity(ref, got, dim=-1).min().item()
            agree = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
            print(f"  {kernel:12s} {name:22s} cosine {cosine:.5f}  argmax agreement {agree:.3f}")
        del talker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--layers", type=int, default=8,
                    help="distinct copies of the weights, so that they do not all fit in the CPU cache")  # fmt: skip
    ap.add_argument("--accuracy", metavar="CHECKPOINT", help="compare logits float vs int8 instead of timing")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # torch.ao and quantised-tensor deprecation notices
    torch.set_num_threads(args.threads)
    if args.accuracy:
        return accuracy(args.accuracy)
    gen = torch.Generator().manual_seed(0)
    shapes = SHAPES * args.layers
    weights = [torch.randn(n, k, generator=gen) / k**0.5 for n, k in shapes]
    fp32_bytes = sum(w.numel() * 4 for w in weights)
    print(f"torch {torch.__version__}, {args.threads} threads, {torch.backends.cpu.get_cpu_capability()}; "
          f"{args.layers} x (one 0.6B layer's linears + codec head) = {fp32_bytes / 1e6:.0f} MB in fp32")  # fmt: skip
    fns = candidates(weights)
    with torch.inference_mode():
        for m in args.rows:
            best = {name: float("inf") for name in fns}
            for _ in range(args.rounds):
                for name, (fn, dtype) in fns.items():
                    inputs = {k: torch.randn(m, k, generator=gen).to(dtype) for _, k in SHAPES}
                    run_all(fn, shapes, inputs)  # warm (weight packing, allocator)
                    t = time.perf_counter()
                    for _ in range(args.iters):
                        run_all(fn, shapes, inputs)
                    best[name] = min(best[name], (time.perf_counter() - t) / args.iters)
            base = best["fp32 F.linear"]
            print(f"\nM={m} rows: ms for all {len(shapes)} linears (best of {args.rounds} rounds); "
                  "GB/s = fp32-equivalent weight bytes streamed per second")  # fmt: skip
            for name, sec in sorted(best.items(), key=lambda kv: kv[1]):
                print(
                    f"  {name:38s} {sec * 1e3:8.2f} ms  {base / sec:5.2f}x vs fp32  {fp32_bytes / sec / 1e9:6.1f} GB/s"
                )


if __name__ == "__main__":
    main()
