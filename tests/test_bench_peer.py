"""`q3tts bench --peer vox-tts` on a tiny checkpoint: the peer engine in its own venv and process,
converted once into a cache, forced to the same frames as ours, and one-line errors when it is
missing. The end-to-end test needs the peer venv (tools/peers/setup_vox.sh); it skips without
it, unless Q3TTS_REQUIRE_PEER=1. No timing thresholds."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from q3tts import bench, bench_peer

FRAMES = 4
FAST = ["--frames", str(FRAMES), "--warmup", "0", "--repeat", "2", "--threads", "1", "--batch", "1"]


def vox_python() -> str:
    try:
        return bench_peer.peer_python(bench_peer.PEERS["vox-tts"], None)
    except bench_peer.PeerError as e:
        if os.environ.get("Q3TTS_REQUIRE_PEER", "0") == "1":
            pytest.fail(str(e))
        pytest.skip(f"peer venv missing: run tools/peers/setup_vox.sh ({e})")


@pytest.fixture(scope="module")
def eager_to_stop(make_tiny, tmp_path_factory):
    """A tiny CustomVoice checkpoint whose talker says end-of-speech after a frame or two: only
    the EOS row of its codec head is left, scaled up. Forcing the length must still give FRAMES."""
    folder = tmp_path_factory.mktemp("eager") / "tiny-eager-eos"
    source = make_tiny("custom_voice")
    folder.mkdir()
    for path in source.rglob("*"):
        if path.is_file():
            (folder / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (folder / path.relative_to(source)).write_bytes(path.read_bytes())
    eos = json.loads((folder / "config.json").read_text())["talker_config"]["codec_eos_token_id"]
    weights = load_file(folder / "model.safetensors")
    head = weights["talker.codec_head.weight"]
    only_eos = torch.zeros_like(head)
    only_eos[eos] = head[eos].float().mul(1e4).to(head.dtype)
    weights["talker.codec_head.weight"] = only_eos
    save_file(weights, folder / "model.safetensors")
    return folder


def test_peer_runs_beside_ours_on_the_same_checkpoint(eager_to_stop, tmp_path, capsys):
    python = vox_python()
    cache = tmp_path / "peer-cache"
    status = bench.main(["--model", str(eager_to_stop), "--peer", "vox-tts", "--peer-python", python, "--peer-cache",
                         str(cache), "--json", *FAST])  # fmt: skip
    out, err = capsys.readouterr()
    assert status == 0, err
    report = json.loads(out)
    ours, peer = report["ours"], report["peer"]
    assert peer["name"] == "vox-tts" and peer["version"] == "0.19.5" and peer["quant"] == "f32"
    assert peer["env"]["threads"] == 1 and peer["env"]["debug_no_eos"]
    # converted once into the cache folder, under a name of the checkpoint
    assert peer["convert_seconds"] > 0 and os.path.dirname(peer["model_file"]) == str(cache)
    assert os.path.basename(peer["model_file"]).startswith("tiny-eager-eos-")
    # both sides made exactly FRAMES frames, though this talker wants to stop at once
    for side in (ours, peer):
        figures = side["runs"]["1"]
        assert figures["frames_per_row"] == [FRAMES] and figures["frames_ok"] and figures["repeats"] == 2
        assert 0 < figures["total_ms_per_step_min"] <= figures["total_ms_per_step"]
        assert side["peak_rss_bytes"] >= side["rss_after_load_bytes"] > 0 and side["first_chunk_ms"] > 0
    assert set(peer["runs"]) == {"1"}
    p = peer["runs"]["1"]
    assert p["audio_seconds_per_row"] == pytest.approx(FRAMES * 0.08)
    assert p["talker_ms_per_step"] > 0 and p["code_predictor_ms_per_step"] > 0 and p["codec_ms_per_step"] > 0
    assert peer["first_chunk_frames"] == 1 and peer["first_chunk_ms_min"] <= peer["first_chunk_ms"]
    # ratios are ours / peer, from the figures above
    r, o = peer["ratios"], ours["runs"]["1"]
    assert r["total_ms_per_step"] == pytest.approx(o["total_ms_per_step"] / p["total_ms_per_step"])
    assert r["total_ms_per_step_min"] == pytest.approx(o["total_ms_per_step_min"] / p["total_ms_per_step_min"])
    assert r["first_chunk_ms"] == pytest.approx(ours["first_chunk_ms"] / peer["first_chunk_ms"])
    assert r["peak_rss"] == pytest.approx(ours["peak_rss_bytes"] / peer["peak_rss_bytes"])
    # the text report has the peer's section
    text = bench.format_report(report)
    assert "peer        vox-tts 0.19.5 (f32)" in text and "ours/peer" in text and "warning" not in text
    # a second run finds the conversion in the cache
    args = argparse.Namespace(peer="vox-tts", peer_python=python, peer_quant="auto", peer_cache=str(cache))
    again = bench_peer.prepare(bench_peer.locate(args), args, eager_to_stop.resolve(), "none")
    assert again["model_file"] == peer["model_file"] and again["convert_seconds"] is None


def run_bench(capsys, *args: str) -> tuple[int, str]:
    status = bench.main([*args])
    return status, capsys.readouterr().err


def test_missing_peer_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    """A missing peer Python, or one without vox, is one line naming the setup script, and fails
    before the preset checkpoint is written (nothing appears in the folder)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("Q3TTS_PEER_VOX_PYTHON", raising=False)
    status, err = run_bench(capsys, "--preset", "tiny", "--peer", "vox-tts", "--peer-python", str(tmp_path / "no-py"))
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "q3tts bench: error: peer vox-tts: python" in err and "tools/peers/setup_vox.sh" in err
    monkeypatch.setenv("Q3TTS_PEER_VOX_PYTHON", sys.executable)  # q3tts' own Python: no vox in it
    status, err = run_bench(capsys, "--preset", "tiny", "--peer", "vox-tts")
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "cannot load it" in err and "No module named 'vox'" in err and "tools/peers/setup_vox.sh" in err
    assert list(tmp_path.iterdir()) == []
    # no --peer-python, no $Q3TTS_PEER_VOX_PYTHON and no venv here or in the checkout
    monkeypatch.delenv("Q3TTS_PEER_VOX_PYTHON")
    nowhere = dataclasses.replace(bench_peer.PEERS["vox-tts"], venv=".peer-venv-that-nobody-made")
    with pytest.raises(bench_peer.PeerError, match=r"^peer vox-tts is not installed: run tools/peers/setup_vox.sh"):
        bench_peer.peer_python(nowhere, None)


@pytest.mark.parametrize("option", ["--peer-quant=q4", "--peer-cache=x", "--peer-python=x"])
def test_peer_options_need_peer(tmp_path, capsys, option):
    status, err = run_bench(capsys, "--model", str(tmp_path), option)
    assert status == 2 and f"{option.split('=')[0]} needs --peer" in err


def test_unknown_peer_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--preset", "tiny", "--peer", "other"])
    assert exit_info.value.code == 2 and "invalid choice: 'other'" in capsys.readouterr().err
