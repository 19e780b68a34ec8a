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
    """The clone path (x-vector prompt) with int8 weights, printed as the table."""
    status, out, err = run_bench(capsys, "--model", str(make_tiny("base")), "--batch", "1", "--quantize", "int8", *FAST)
    assert status == 0, err
    assert "total ms/step" in out and "quantize int8" in out and "ours b=1" in out
    assert "warning" not in out


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
    ],
)
def test_bad_arguments_give_one_line(make_tiny, capsys, args, message):
    if "--model" not in args and args:
        args = ["--model", str(make_tiny("custom_voice")), *args]
    status, out, err = run_bench(capsys, *args)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("q3tts bench: error:") and message in err, err
