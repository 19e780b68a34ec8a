"""What a fine-tuning run leaves behind, and what it holds in memory (issue 11, items 5, 6, 8, 9).

* Streaming: peak RSS of `q3tts train` on a prepared set 10x larger grows by less than 10 %.
* best/ and final/ are model folders with training_state.json, speakers.json and a README;
  `q3tts train export` of a periodic checkpoint makes the same folder.
* Hub upload, with the real huggingface_hub client against a local stand-in of the hub API
  (tests/hubstub.py, HF_ENDPOINT pointed at it); an unreachable hub is a warning, never a failure.

* A step with a NaN loss in the middle of a run is skipped and the run goes on.

The runs are real `q3tts train` processes (HF_ENDPOINT is read when huggingface_hub is imported,
and peak RSS is per process), but for the NaN step, which runs the CLI's main in this process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hubstub import HubStub
from safetensors.torch import load_file

from q3tts.api import Qwen3TTS
from q3tts.config import ModelConfig
from q3tts.train.config import ENV_NAMES
from q3tts.train.dataset import INDEX, ShardWriter

SR = 24000
ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_test_token_5f3a"


def q3tts_cmd(*argv) -> list[str]:
    return [sys.executable, "-m", "q3tts.cli", *[str(a) for a in argv]]


def run_env(**extra) -> dict:
    """This environment without hub / W&B settings and without the .env names (read from the
    environment too: a CI runner's OUTPUT_DIR must not leak into these runs)."""
    drop = set(ENV_NAMES) | {"ACCELERATE_MIXED_PRECISION"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("HF_", "HUGGING_FACE", "WANDB"))}
    return dict(env, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_DISABLE_TELEMETRY="1", **extra)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, make_tiny) -> dict:
    root = tmp_path_factory.mktemp("corpus")
    lines = []
    for i in range(5):
        t = np.arange(int(SR * (1.0 + 0.2 * i))) / SR
        wav = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * np.random.default_rng(i).standard_normal(t.size)
        sf.write(root / f"c{i}.wav", wav.astype(np.float32), SR)
        lines.append(json.dumps({"audio": f"c{i}.wav", "text": f"Sentence number {i}.", "speaker": "alice"}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return {"root": root, "model": make_tiny("base"), "manifest": root / "data.jsonl"}


# -- 5. memory flat in the dataset size ---------------------------------------------------------------
def synthetic_prepared(folder: Path, model: Path, items: int, frames: int = 150) -> Path:
    """A prepared folder of `items` random 12 s items, written by the real ShardWriter."""
    cfg = ModelConfig.from_file(model / "config.json").talker
    folder.mkdir(parents=True)
    writer = ShardWriter(folder, shard_size=500)
    gen = torch.Generator().manual_seed(0)
    for i in range(items):
        codes = torch.randint(0, cfg.codebook_size, (frames, cfg.num_code_groups), generator=gen)
        meta = dict(id=f"{i:016x}", text=f"Item {i}.", speaker="alice", language="auto", duration=frames / 12.5,
                    source=f"synthetic[{i}]", split="train")  # fmt: skip
        writer.add(meta, codes, torch.randn(cfg.hidden_size, generator=gen))
    writer.flush()
    assert len((folder / INDEX).read_text().splitlines()) == items
    return folder


def peak_rss_mb(cmd: list[str], env: dict, cwd: Path) -> float:
    """Peak resident memory of that one process (os.wait4 reports the child's own rusage)."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err.decode()[-2000:]
    return usage.ru_maxrss / 1024  # KiB on Linux


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss units differ outside Linux")
def test_peak_memory_is_flat_in_dataset_size(tmp_path, corpus):
    """1,000 vs 10,000 prepared items of 150 frames (the larger set: 48 MB of int16 codes; held
    in RAM as int64, as training did before it streamed, that is ~190 MB more)."""
    rss = {}
    for n in (1000, 10000):
        data = synthetic_prepared(tmp_path / f"data{n}", corpus["model"], n)
        cmd = q3tts_cmd("train", "--set", f"model={corpus['model']}", "--set", f"data={data}", "--set",
                        f"output_dir={tmp_path / f'run{n}'}", "--set", "max_steps=3", "--set", "batch_size=2",
                        "--set", "report_to=[none]", "--quiet")  # fmt: skip
        rss[n] = peak_rss_mb(cmd, run_env(), tmp_path)
    growth = rss[10000] / rss[1000] - 1
    print(f"peak RSS: {rss[1000]:.0f} MB at 1k items, {rss[10000]:.0f} MB at 10k items ({growth:+.1%})")
    assert growth < 0.10


# -- 8 + 9. exports and the hub ------------------------------------------------------------------------
def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_exports_carry_their_story_and_go_to_the_hub(tmp_path, corpus):
    out = tmp_path / "run"
    (tmp_path / ".env").write_text(
        f"INIT_MODEL_PATH={corpus['model']}\nOUTPUT_DIR={out}\nTRAIN_JSONL={corpus['manifest']}\n"
        f"VALIDATION_JSONL={corpus['manifest']}\nBATCH_SIZE=5\nLEARNING_RATE=1e-3\nSAVE_STEPS=2\nEVAL_STEPS=1\n"
        f"UPLOAD_TO_HUB=true\nHUB_MODEL_ID_LAST=me/alice-voice\nHUB_MODEL_ID_BEST=me/alice-voice-best\n"
        f"HF_TOKEN={TOKEN}\nUSE_WANDB=false\n"
    )
    with HubStub(token=TOKEN) as hub:
        proc = subprocess.run(q3tts_cmd("train", "--env-file", tmp_path / ".env", "--set", "max_steps=2", "--set",
                                        "report_to=[none]"), env=run_env(HF_ENDPOINT=hub.url), cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "uploaded final/ to the hub: me/alice-voice" in proc.stderr
    assert "uploaded best/ to the hub: me/alice-voice-best" in proc.stderr
    assert [(c["organization"], c["name"]) for c in hub.created] == [("me", "alice-voice"), ("me", "alice-voice-best")]
    assert hub.repos["me/alice-voice"] == files_of(out / "final")  # every file, byte for byte
    assert hub.repos["me/alice-voice-best"] == files_of(out / "best")
    assert hub.cards and all(card.startswith("---\nlibrary_name: q3tts\n") for card in hub.cards)
    for folder in (out / "final", out / "best", out / "checkpoint-000002"):
        assert all(TOKEN.encode() not in data for data in files_of(folder).values()), folder  # the token stays out

    state = json.loads((out / "final" / "training_state.json").read_text())
    assert {"step", "epoch", "best_val_loss", "best_val_metrics", "config"} <= set(state)
    assert (state["step"], state["epoch"], state["config"]["hf_token"]) == (2, 2.0, None)
    assert state["data"]["train_items"] == 5 and state["best_val_loss"] == pytest.approx(
        state["best_val_metrics"]["loss"]
    )
    assert json.loads((out / "final" / "speakers.json").read_text()) == {"alice": {"id": 3000, "dialect": None,
                                                                                  "items": 5}}  # fmt: skip
    readme = (out / "final" / "README.md").read_text()
    assert f"Trained from: `{corpus['model']}`" in readme and "Trained on: 5 items" in readme
    assert "Trained for: 2 steps, 2.0 epochs" in readme
    for folder in ("best", "final"):
        tts = Qwen3TTS.from_pretrained(out / folder, device="cpu", dtype="float32")
        assert tts.kind == "custom_voice" and tts.get_supported_speakers() == ["alice"]

    exported = tmp_path / "exported"
    proc = subprocess.run(q3tts_cmd("train", "export", "--checkpoint", out / "checkpoint-000002", "--out", exported),
                          env=run_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = load_file(str(out / "final" / "model.safetensors")), load_file(str(exported / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = json.loads((exported / "training_state.json").read_text())
    assert (again["step"], again["epoch"], again["data"], again["speaker_items"]) == (
        2,
        2.0,
        state["data"],
        {"alice": 5},
    )
    assert "Trained for: 2 steps" in (exported / "README.md").read_text() and (exported / "speakers.json").is_file()


def test_unreachable_hub_warns_and_keeps_the_local_copy(tmp_path, corpus):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    cmd = q3tts_cmd("train", "--set", f"model={corpus['model']}", "--set", f"data={corpus['manifest']}", "--set",
                    f"output_dir={out}", "--set", "max_steps=1", "--set", "report_to=[none]",
                    "--push-to-hub", "me/alice-voice")  # fmt: skip
    env = run_env(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_TOKEN=TOKEN)
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: hub upload of final/ to me/alice-voice failed (" in proc.stderr
    assert f"the local copy stays at {out / 'final'}" in proc.stderr and "Traceback" not in proc.stderr
    assert Qwen3TTS.from_pretrained(out / "final", device="cpu", dtype="float32").get_supported_speakers() == ["alice"]


# -- 6. a NaN step in the middle of a run -------------------------------------------------------------
def test_a_nan_step_is_skipped_and_training_goes_on(tmp_path, corpus, capsys):
    """A prepared set whose speaker bob has a corrupt (infinite) embedding: every step on bob's
    item has a NaN loss and is skipped, the steps on alice's items train, the run finishes."""
    from q3tts.cli import main as q3tts

    cfg = ModelConfig.from_file(corpus["model"] / "config.json").talker
    data = tmp_path / "data"
    data.mkdir()
    writer = ShardWriter(data, shard_size=10)
    gen = torch.Generator().manual_seed(0)
    for i, speaker in enumerate(["alice", "alice", "bob"]):
        xvector = torch.randn(cfg.hidden_size, generator=gen)
        xvector[0] = float("inf") if speaker == "bob" else xvector[0]
        codes = torch.randint(0, cfg.codebook_size, (20, cfg.num_code_groups), generator=gen)
        writer.add(dict(id=f"{i:016x}", text=f"Item {i}.", speaker=speaker, language="auto", duration=1.6,
                        source=f"synthetic[{i}]", split="train"), codes, xvector)  # fmt: skip
    writer.flush()
    out = tmp_path / "run"
    code = q3tts(["train", "--set", f"model={corpus['model']}", "--set", f"data={data}", "--set", f"output_dir={out}",
                  "--set", "max_steps=6", "--set", "batch_size=1", "--set", "lr=1e-3", "--set", "logging_steps=1",
                  "--set", "report_to=[none]"])  # fmt: skip
    printed = capsys.readouterr().err
    assert code == 0, printed[-3000:]
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in log if "skipped" in r]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6] and len(skipped) == 2  # bob's item, once per epoch
    assert all(np.isfinite(r["loss"]) for r in log if "skipped" not in r)
    assert printed.count("the update was skipped (1 in a row") == 2
    trained = load_file(str(out / "checkpoint-000006" / "trainable.safetensors"))
    assert all(torch.isfinite(v).all() for v in trained.values())
    source = load_file(str(corpus["model"] / "model.safetensors"))
    head = trained["networks.talker.codec_head.weight"]  # the trainable tensors, named inside the TrainModule
    assert not torch.equal(head, source["talker.codec_head.weight"].float())  # alice's steps did train
