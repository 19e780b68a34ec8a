"""The quality guard (q3tts/bench_quality.py) on tiny checkpoints: float32 against itself is exact,
the teacher forcing feeds exactly the reference codes (a changed code changes the distributions
from the next pick on and nothing before), int8 weights and a bf16 codec stay within measured
bounds, and `q3tts bench --quality` prints the report or a one-line error."""

from __future__ import annotations

import json
import math

import pytest
import torch

from q3tts import bench
from q3tts.bench_quality import (
    LossyMode,
    parse_modes,
    quality_report,
    reference_codes,
    teacher_forced_logprobs,
)
from q3tts.errors import InputError
from q3tts.nn import lowbit

FRAMES = 12


@pytest.fixture(scope="module")
def custom_voice_path(make_tiny):
    return make_tiny("custom_voice")


def test_modes_are_passed_through_as_written():
    assert parse_modes("int8, none@bfloat16,int4") == [LossyMode("int8"), LossyMode(None, "bfloat16"),
                                                       LossyMode("int4")]  # fmt: skip
    assert [m.label for m in parse_modes("int8@float32,none")] == ["int8@float32", "none"]
    for bad in ("", " , ", "@bfloat16", "int8@"):
        with pytest.raises(InputError):
            parse_modes(bad)


def test_float32_against_itself_is_exact(custom_voice_path):
    report = quality_report(custom_voice_path, ["none@float32"], frames=FRAMES)
    assert report.reference_top1 == 1.0  # the forced float32 run chooses its own greedy reference again
    (same,) = report.modes
    assert [f.codebook for f in same.codebooks] == list(range(16))
    assert all(f.top1 == 1.0 and f.kl == 0.0 for f in same.codebooks)
    assert same.top1_mean == 1.0 and same.kl_mean == 0.0 and same.reference_top1 == 1.0
    assert same.codec_snr_db == math.inf and same.codec_dtype == "float32"


def test_teacher_forcing_feeds_the_reference_codes(custom_voice_tts):
    """Changing one reference code changes every distribution computed after it is fed (the code
    predictor's next pick in that frame, the talker's next frame) and none before."""
    tts = custom_voice_tts
    utterance = tts.utterances("Hello there, how are you?", speaker="vivian", language="english")[0]
    reference = reference_codes(tts, utterance, 6)
    base = teacher_forced_logprobs(tts, utterance, reference)
    assert [lp.shape[0] for lp in base] == [6] * 16
    assert all(torch.equal(lp.argmax(-1), reference[:, g]) for g, lp in enumerate(base))
    for frame, codebook in ((3, 5), (3, 15)):  # 15: fed only to the talker, at the next frame
        changed = reference.clone()
        changed[frame, codebook] = (changed[frame, codebook] + 7) % 2048
        forced = teacher_forced_logprobs(tts, utterance, changed)
        order = [(t, g) for t in range(6) for g in range(16)]  # the order the picks are made in
        first_affected = order.index((frame, codebook)) + 1
        for i, (t, g) in enumerate(order):
            same = torch.equal(forced[g][t], base[g][t])
            assert same == (i < first_affected), (frame, codebook, t, g)


def test_forcing_a_sequence_the_model_would_not_choose(custom_voice_tts):
    tts = custom_voice_tts
    utterance = tts.utterances("Hello there.", speaker="vivian", language="english")[0]
    foreign = torch.randint(0, 2048, (5, 16), generator=torch.Generator().manual_seed(1))
    logprobs = teacher_forced_logprobs(tts, utterance, foreign)  # the step takes the codes, or this raises
    agreement = sum(int((lp.argmax(-1) == foreign[:, g]).sum()) for g, lp in enumerate(logprobs)) / foreign.numel()
    assert agreement < 0.2


def test_int8_and_a_bf16_codec_within_measured_bounds(custom_voice_path):
    int8, bf16_codec = quality_report(custom_voice_path, ["int8@float32", "none@bfloat16"], frames=FRAMES).modes
    # Measured on tiny checkpoints of seeds 0, 1, 2 at 12 frames: int8 codebook-0 top-1 1.000, mean
    # top-1 0.953-0.984, mean KL 1.7e-4-2.0e-4 nats; bf16 codec SNR 25.9-26.3 dB (26.9 at 8 frames).
    # The bounds keep ~10x on KL and ~8 dB on SNR: a broken kernel or mis-scaled weights land far outside.
    assert int8.codebooks[0].top1 >= 0.9
    assert int8.top1_mean >= 0.85
    assert 0 < int8.kl_mean <= 2e-3  # > 0: the mode really was loaded
    assert int8.codec_snr_db == math.inf  # its codec stayed float32
    assert bf16_codec.top1_mean == 1.0 and bf16_codec.kl_mean == 0.0  # float weights
    assert bf16_codec.codec_dtype == "bfloat16" and 18.0 <= bf16_codec.codec_snr_db < math.inf


@pytest.mark.skipif(not lowbit.kernel_available(), reason="no C++ compiler to build the low-bit kernel")
def test_low_bit_modes_within_measured_bounds(custom_voice_path):
    q8, int4 = quality_report(custom_voice_path, ["q8@float32", "int4@float32"], frames=FRAMES).modes
    # Measured on this checkpoint at 12 frames: q8 codebook-0 top-1 1.000, mean top-1 0.969, mean
    # KL 1.8e-4 nats (int8: 0.953, 1.9e-4); int4 0.917, 0.615, 0.023. Random weights are the worst
    # case for 4 bits; a broken kernel or packing agrees about 1 time in 2048.
    assert q8.codebooks[0].top1 >= 0.9 and q8.top1_mean >= 0.85 and 0 < q8.kl_mean <= 2e-3
    assert int4.codebooks[0].top1 >= 0.7 and int4.top1_mean >= 0.45 and 0 < int4.kl_mean <= 0.1


def test_bench_quality_on_a_base_model(make_tiny, capsys):
    """The CLI front door, on the clone path (the bench's x-vector voice), as JSON."""
    status = bench.main(["--model", str(make_tiny("base")), "--quality", "none", "--frames", "3", "--threads", "1",
                         "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 0, err
    report = json.loads(out)
    assert report["kind"] == "base" and report["frames"] == 3 and report["reference_top1"] == 1.0
    (mode,) = report["modes"]
    assert mode["mode"] == "none" and mode["codec_snr_db"] == "inf" and mode["kl_mean"] == 0.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--quality", "int3"], "mode int3: unknown quantize 'int3'"),
        (["--quality", "int8@float13"], "mode int8@float13: unknown dtype 'float13'"),
        (["--quality", "int8", "--serve"], "drop --serve"),
        (["--quality", ","], "at least one mode"),
    ],
)
def test_bench_quality_errors_are_one_line(custom_voice_path, capsys, args, message):
    status = bench.main(["--model", str(custom_voice_path), "--frames", "2", *args])
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("q3tts bench: error: ") and message in err


def test_a_mismatched_reference_is_refused(custom_voice_tts):
    """A reference of the wrong width cannot be forced: a clear error, not figures."""
    tts = custom_voice_tts
    utterance = tts.utterances("Hello.", speaker="vivian", language="english")[0]
    with pytest.raises(InputError, match=r"must be \[frames, 16\], got \[3, 8\]"):
        teacher_forced_logprobs(tts, utterance, torch.zeros(3, 8, dtype=torch.long))
