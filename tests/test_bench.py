"""`q3tts bench` on tiny checkpoints: every figure present and positive, exact frame counts, the
reference side through the oracle venv, and one-line errors. No timing thresholds: speed targets
belong in bench reports, not in unit tests."""

from __future__ import annotations

import json

import pytest

from q3tts import bench

FAST = ["--frames", "3", "--warmup", "0", "--repeat", "1", "--threads", "1"]
STEP_FIGURES = ("prefill_ms", "talker_ms_per_step", "code_predictor_ms_per_step", "codec_ms_per_step",
                "total_ms_per_step", "rtf", "frames_per_second", "wall_s", "audio_seconds_per_row")  # fmt: skip


def run_bench(capsys, *args: str) -> tuple[int, str, str]:
    status = bench.main([*args])
    out, err = capsys.readouterr()
    return status, out, err


def check_side(side: dict, batches: dict[str, int], frames: int) -> None:
    assert side["peak_rss_bytes"] > 0 and side["load_seconds"] > 0
    assert set(side["runs"]) == set(batches)
    for name, rows in batches.items():
        figures = side["runs"][name]
        assert figures["batch"] == rows
        assert figures["frames_per_row"] == [frames] * rows and figures["frames_ok"]
        for key in STEP_FIGURES:
            assert figures[key] > 0, key


def test_bench_json_has_every_figure(make_tiny, capsys):
    model = make_tiny("custom_voice")
    status, out, err = run_bench(capsys, "--model", str(model), "--batch", "2", "--json", *FAST)
    assert status == 0, err
    report = json.loads(out)
    ours = report["ours"]
    check_side(ours, {"1": 1, "2": 2}, frames=3)
    assert ours["first_chunk_ms"] > 0
    assert ours["rss_after_load_bytes"] <= ours["peak_rss_bytes"]
    assert ours["checkpoint"]["kind"] == "custom_voice" and ours["checkpoint"]["parameters"] > 0
    assert {"torch", "device", "threads", "dtype", "cpu"} <= set(ours["env"])
    assert ours["env"]["threads"] == 1 and report["config"]["batches"] == [1, 2]
    assert report["reference"] is None and report["ratios"] is None


def test_bench_int8_table_on_a_base_model(make_tiny, capsys):
    """The clone path (x-vector prompt) with int8 weights, printed as the table, the scheduler too."""
    status, out, err = run_bench(capsys, "--model", str(make_tiny("base")), "--batch", "1", "--quantize", "int8",
                                 "--streams", "1", *FAST)  # fmt: skip
    assert status == 0, err
    assert "total ms/step" in out and "quantize int8" in out and "ours b=1" in out
    assert "sched n=1" in out and "in_process 1 vs engine b=1: ms/frame" in out
    assert "warning" not in out


FRAME_SECONDS = 0.08  # 1920 samples at 24 kHz: 12.5 frames per second


def check_streams(figures: dict, streams: int, frames: int, waves: int, chunk_frames: int) -> None:
    """One stream count's figures: every request made exactly `frames` frames, and the figures
    agree with each other (they come from the same request records)."""
    assert figures["streams"] == streams and figures["waves"] == waves
    assert figures["requests"] == streams * waves and figures["errors"] == 0 and figures["first_error"] is None
    assert figures["frames_min"] == figures["frames_max"] == figures["frames_requested"] == frames
    assert figures["frames_ok"]
    assert figures["audio_seconds_per_request"] == pytest.approx(frames * FRAME_SECONDS)
    # the first chunk holds 1 frame, the others `chunk_frames`, the last the rest
    assert figures["chunks_per_request"] == 1 + -(-(frames - 1) // chunk_frames)
    assert 0 < figures["first_audio_ms_p50"] <= figures["first_audio_ms_p95"]
    assert 0 < figures["inter_chunk_gap_ms_p50"] <= figures["inter_chunk_gap_ms_p95"]
    # every request has the same frames and audio, so per-request ms/frame and RTF order alike
    assert figures["rtf"] == pytest.approx(figures["ms_per_frame"] / (1e3 * FRAME_SECONDS))
    # a request cannot finish before its first chunk, nor stream faster than its own wall time allows
    assert figures["ms_per_frame"] * frames >= figures["first_audio_ms_p50"] or streams > 1
    if streams == 1:  # one request per wave: the wave's wall time is the request's
        assert figures["audio_seconds_per_second"] == pytest.approx(1 / figures["rtf"])
    else:  # the wave lasts at least as long as its median request
        assert 0 < figures["audio_seconds_per_second"] <= streams / figures["rtf"] * (1 + 1e-9)


def test_bench_serving_mode_in_process_and_over_http(make_tiny, capsys):
    """`--serve --http`: the scheduler in the bench child, then a real `q3tts serve` process, at
    1 and 2 streams, beside engine batches 1 and 2, with the server / engine ratios."""
    model = make_tiny("custom_voice")
    frames, chunk_frames = 5, 2
    status, out, err = run_bench(capsys, "--model", str(model), "--batch", "1", "--streams", "1,2", "--http",
                                 "--chunk-frames", str(chunk_frames), "--json", "--frames", str(frames), "--warmup",
                                 "0", "--repeat", "1", "--threads", "1")  # fmt: skip
    assert status == 0, err
    report = json.loads(out)
    assert report["config"]["batches"] == [1, 2] and report["config"]["streams"] == [1, 2]
    ours = report["ours"]
    check_side(ours, {"1": 1, "2": 2}, frames=frames)
    serving = report["serving"]
    for way in ("in_process", "http"):
        assert set(serving[way]["streams"]) == {"1", "2"}, way
        for n, figures in serving[way]["streams"].items():
            check_streams(figures, int(n), frames, waves=1, chunk_frames=chunk_frames)
        ratios = serving["ratios"][way]
        for n in ("1", "2"):
            figures, batch = serving[way]["streams"][n], ours["runs"][n]
            assert ratios[f"streams_{n}"]["ms_per_frame"] == pytest.approx(
                figures["ms_per_frame"] / batch["total_ms_per_step"]
            )
            assert ratios[f"streams_{n}"]["audio_seconds_per_second"] == pytest.approx(
                figures["audio_seconds_per_second"] / batch["audio_seconds_per_second"]
            )
        first = ratios["streams_1"]["first_audio_ms_minus_engine"]
        assert first == pytest.approx(serving[way]["streams"]["1"]["first_audio_ms_p50"] - ours["first_chunk_ms"])
    assert serving["in_process"]["max_batch"] == serving["http"]["max_batch"] == 2
    assert serving["http"]["server_peak_rss_bytes"] > 0 and serving["http"]["ready_seconds"] > 0
    # the engine's batch figures are the same kind of number: audio-s/s = rows * audio / wall
    for n, batch in ours["runs"].items():
        assert batch["audio_seconds_per_second"] == pytest.approx(int(n) * frames * FRAME_SECONDS / batch["wall_s"])


def test_bench_reference_gives_ratios(make_tiny, oracle, capsys):
    import client  # tools/oracle/client.py, on sys.path via conftest

    model = make_tiny("custom_voice")
    status, out, err = run_bench(capsys, "--model", str(model), "--batch", "2", "--json", "--reference",
                                 "--reference-python", str(client.oracle_python()), *FAST)  # fmt: skip
    assert status == 0, err
    report = json.loads(out)
    ref = report["reference"]
    check_side(ref, {"1": 1, "2": 2}, frames=3)
    assert ref["implementation"] == "qwen-tts" and ref["first_chunk_ms"] is None
    assert ref["checkpoint"]["parameters"] == report["ours"]["checkpoint"]["parameters"]
    ratios = report["ratios"]
    assert ratios["peak_rss"] > 0
    for batch in ("batch_1", "batch_2"):
        assert all(v > 0 for v in ratios[batch].values()), ratios[batch]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/no/such/checkpoint"], "no such checkpoint folder"),
        (["--batch", "0"], "--batch must be at least 1"),
        (["--frames", "0"], "--frames must be at least 1"),
        (["--reference", "--reference-python", "/no/such/python"], "reference python '/no/such/python' not found"),
        ([], "give --model PATH or --preset"),
        (["--streams", "0,4"], "--streams counts must be at least 1"),
        (["--streams", "one"], "--streams takes counts like 1,4,16"),
        (["--chunk-frames", "0"], "--chunk-frames must be at least 1"),
    ],
)
def test_bad_arguments_give_one_line(make_tiny, capsys, args, message):
    if "--model" not in args and args:
        args = ["--model", str(make_tiny("custom_voice")), *args]
    status, out, err = run_bench(capsys, *args)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("q3tts bench: error:") and message in err, err


@pytest.mark.filterwarnings("ignore:generation reached max_new_tokens")  # the cap is how every run stops
def test_split_hooks_time_every_part_and_come_off(make_tiny):
    """The split times the prefill, the talker steps, the code predictor's pass (in either step
    form) and the codec on the real core, and every hook comes off again."""
    import torch

    from q3tts.api import Qwen3TTS
    from q3tts.generate.steps import EagerSteps, FixedShapeSteps

    before = (EagerSteps.predict_rest, FixedShapeSteps.predict_rest, FixedShapeSteps.talker_step)
    tts = Qwen3TTS.from_pretrained(make_tiny("custom_voice"), device="cpu")
    clock = bench.Stopwatch(torch.device("cpu"))
    parts, remove = bench.instrument(tts, clock, split=True)
    assert parts == ["prefill", "talker", "code_predictor", "codec"]
    config = dict(language="english", frames=3, seed=0, speaker=None, text="Hello there.")
    generate, _ = bench.calls_for(tts, config, bench.voice_for(tts, config))
    spf = tts.checkpoint.speech_tokenizer.samples_per_frame
    start = clock.now()
    wavs, sr = generate(2)
    sample = dict(wall_s=clock.now() - start, seconds=dict(clock.seconds), parts_timed=parts,
                  frames_per_row=[len(w) // spf for w in wavs], audio_seconds_per_row=[len(w) / sr for w in wavs])  # fmt: skip
    figures = bench.summarise_runs([sample], frames_requested=3)
    assert figures["frames_ok"] and figures["total_ms_per_step"] > 0
    assert all(figures[f"{p}_ms_per_step"] > 0 for p in ("talker", "code_predictor", "codec"))
    remove()
    assert (EagerSteps.predict_rest, FixedShapeSteps.predict_rest, FixedShapeSteps.talker_step) == before
    assert "decode_chunk" not in vars(tts.checkpoint.speech_tokenizer.decoder)
    assert not tts.checkpoint.networks.talker._forward_hooks and not tts.checkpoint.networks.talker._forward_pre_hooks
