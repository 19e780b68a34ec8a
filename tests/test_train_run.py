"""End-to-end fine-tuning on the tiny Base checkpoint (q3tts/train/trainer.py, export.py).

* Overfit 4 generated utterances of two new speakers (one with a dialect): the loss falls by
  >= 90 %, and greedy generation from the exported CustomVoice checkpoint reproduces every
  training utterance's codes, in q3tts and in the official package (which also lists them).
* Resume: a run stopped after step k and resumed ends with the same weights as one that ran through.
* LoRA and layer replacement change exactly the tensors they should.

Needs accelerate (and peft for LoRA): the `train` extra. Missing, these tests fail, not skip.
"""

from __future__ import annotations

import json
from pathlib import Path

import accelerate  # noqa: F401  (the train extra; a missing one must fail these tests, not skip them)
import numpy as np
import peft  # noqa: F401
import pytest
import soundfile as sf
import torch
import yaml  # noqa: F401
from safetensors.torch import load_file

from q3tts.api import Qwen3TTS
from q3tts.generate.prompt import Utterance
from q3tts.train.__main__ import main as train_main
from q3tts.train.config import load_config
from q3tts.train.data import load_prepared
from q3tts.train.dataset import main as prepare_main
from q3tts.train.trainer import train

SR = 24000
TEXTS = ["Hello world, this is a test.", "The quick brown fox jumps.", "A calm narrator reads a story.",
         "Numbers: 1 2 3 4 5."]  # fmt: skip
SPEAKERS = ["alice", "alice", "bob", "bob"]  # bob speaks Sichuan dialect
SPEAKER = "alice"  # the default speaker of the shorter runs
OVERFIT = dict(max_steps=90, batch_size=4, lr=5e-3, warmup_steps=0, weight_decay=0.0, logging_steps=1,
               eval_steps=30, save_steps=30, save_total_limit=2)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are far too small to split: 1 thread is ~5x faster than 2 here, and
    does not spin-wait when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f = 200 + 150 * seed + 300 * t
    return (0.3 * np.sin(2 * np.pi * np.cumsum(f) / SR) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def sets(**kw) -> list[str]:
    return [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in kw.items()]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, make_tiny) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("finetune")
    lines = []
    for i, text in enumerate(TEXTS):
        sf.write(root / f"{i}.wav", clip(1.0 + 0.2 * i, i), SR)
        lines.append(json.dumps({"audio": f"{i}.wav", "text": text, "speaker": SPEAKERS[i]}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    model = make_tiny("base")
    assert prepare_main(["prepare", "--manifest", str(root / "data.jsonl"), "--model", str(model), "--out",
                         str(root / "data"), "--val-fraction", "0", "--quiet"]) == 0  # fmt: skip
    return model, root / "data"


@pytest.fixture(scope="module")
def overfit(prepared, tmp_path_factory) -> Path:
    """The CLI on a YAML config (one key under its .env name), validating on the training items."""
    model, data = prepared
    out = tmp_path_factory.mktemp("overfit")
    (out / "train.yaml").write_text(f"model: {model}\ndata: {data}\nval_data: {data}\nSPEAKER_NAME: {SPEAKER}\n"
                                    f"output_dir: {out / 'run'}\nreport_to: [auto]\n"
                                    "speakers: {bob: {dialect: sichuan_dialect}}\n")  # fmt: skip
    assert train_main(["--config", str(out / "train.yaml"), "--quiet", *["--set=" + s for s in sets(**OVERFIT)]]) == 0
    return out / "run"


def test_loss_falls_by_90_percent(overfit):
    log = [json.loads(line) for line in (overfit / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, OVERFIT["max_steps"] + 1))
    first, last = log[0]["loss"], log[-1]["loss"]
    print(f"loss {first:.3f} -> {last:.4f} ({1 - last / first:.1%} lower)")
    assert last <= 0.1 * first
    val = [json.loads(line) for line in (overfit / "validation_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in val] == [30, 60, 90] and val[-1]["best"]
    assert (overfit / "best" / "model.safetensors").is_file() and (overfit / "final" / "config.json").is_file()
    assert sorted(p.name for p in overfit.glob("checkpoint-*")) == ["checkpoint-000060", "checkpoint-000090"]


def test_greedy_generation_reproduces_training_codes(overfit, prepared):
    tts = Qwen3TTS.from_pretrained(overfit / "final", device="cpu", dtype="float32")
    assert tts.kind == "custom_voice" and tts.get_supported_speakers() == ["alice", "bob"]
    talker = json.loads((overfit / "final" / "config.json").read_text())["talker_config"]
    assert talker["spk_id"] == {"alice": 3000, "bob": 3001}
    assert talker["spk_is_dialect"] == {"alice": False, "bob": "sichuan_dialect"}
    assert not any(k.startswith("speaker_encoder.") for k in load_file(str(overfit / "final" / "model.safetensors")))
    for ex in load_prepared(prepared[1]):
        codes = tts.generate_codes([Utterance(ex.text, "auto", speaker=ex.speaker)], do_sample=False,
                                   subtalker_dosample=False)[0]  # fmt: skip
        assert torch.equal(codes, ex.codes), ex.text
    wavs, sr = tts.generate_custom_voice(TEXTS[0], speaker="alice", do_sample=False, subtalker_dosample=False)
    frames = next(e.codes.shape[0] for e in load_prepared(prepared[1]) if e.text == TEXTS[0])
    assert sr == SR and wavs[0].shape == (frames * 1920,)


def test_new_speaker_rows_are_the_mean_of_their_clips(overfit, prepared):
    """Each new speaker's codec-embedding row is the float32 mean of its clips' x-vectors, in the
    export dtype: two distinct clips each, so a wrong average (or a single clip's) shows."""
    examples = load_prepared(prepared[1])
    table = load_file(str(overfit / "final" / "model.safetensors"))["talker.model.codec_embedding.weight"]
    for name, sid in (("alice", 3000), ("bob", 3001)):
        vectors = [e.xvector for e in examples if e.speaker == name]
        assert len(vectors) == 2 and not torch.equal(vectors[0], vectors[1])
        mean = torch.stack(vectors).double().mean(0).float()
        assert torch.equal(table[sid], mean.to(table.dtype)), name


def test_official_package_loads_export_and_agrees(overfit, prepared, oracle):
    final = str(overfit / "final")
    jobs = [dict(id="info", op="info", checkpoint=final)]
    jobs += [dict(id=f"gen{i}", op="generate", checkpoint=final, call="custom_voice", text=t, speaker=SPEAKERS[i],
                  language="auto", max_new_tokens=60) for i, t in enumerate(TEXTS)]  # fmt: skip
    res = oracle(jobs)
    assert res["info"]["model_type"] == "custom_voice" and sorted(res["info"]["speakers"]) == ["alice", "bob"]
    tts = Qwen3TTS.from_pretrained(final, device="cpu", dtype="float32")
    by_text = {e.text: e.codes for e in load_prepared(prepared[1])}
    for i, text in enumerate(TEXTS):
        ours = tts.generate_codes([Utterance(text, "auto", speaker=SPEAKERS[i])], do_sample=False,
                                  subtalker_dosample=False, max_new_tokens=60)[0]  # fmt: skip
        theirs = torch.from_numpy(res[f"gen{i}"]["codes"][0])
        assert torch.equal(ours, theirs), text
        assert torch.equal(theirs, by_text[text]), text


def run(prepared, out: Path, **kw) -> dict:
    model, data = prepared
    tc = load_config(None, tuple(sets(model=str(model), data=str(data), output_dir=str(out), speaker_name=SPEAKER,
                                      report_to=["none"], **kw)))  # fmt: skip
    return train(tc, quiet=True)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_resume_gives_the_same_weights(prepared, tmp_path, mode):
    """batch 1 x accumulation 2: two steps per epoch, so the stop falls mid-epoch; LoRA dropout
    makes the RNG state matter too."""
    kw = dict(mode=mode, max_steps=6, batch_size=1, grad_accum=2, lr=1e-3, warmup_steps=2, save_steps=1000,
              logging_steps=2, **{"lora.dropout": 0.2})  # fmt: skip
    straight = run(prepared, tmp_path / "straight", **kw)
    stopped = run(prepared, tmp_path / "stopped", stop_at_step=3, **kw)
    assert stopped["stopped"] and stopped["step"] == 3
    resumed = run(prepared, tmp_path / "stopped", resume="latest", **kw)
    assert resumed["step"] == 6
    a = load_file(str(Path(straight["checkpoint"]) / "trainable.safetensors"))
    b = load_file(str(Path(resumed["checkpoint"]) / "trainable.safetensors"))
    assert a.keys() == b.keys() and (mode == "full" or all(".lora_" in k for k in a))
    for k in a:
        assert a[k].dtype == torch.float32
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    logs = [(tmp_path / d / "training_log.jsonl").read_text() for d in ("straight", "stopped")]
    assert logs[0] == logs[1]


def changed(source: Path, exported: Path) -> tuple[set, set]:
    """Tensors of `exported` that differ from (or are absent in) `source`, and the rows of the
    codec embedding that differ."""
    a = {k: v.float() for k, v in load_file(str(source / "model.safetensors")).items()}
    b = load_file(str(exported / "model.safetensors"))
    diff = {k for k, v in b.items() if k not in a or not torch.equal(a[k], v)}
    key = "talker.model.codec_embedding.weight"
    rows = set((a[key] != b[key]).any(-1).nonzero().flatten().tolist())
    return diff, rows


def test_lora_trains_only_its_adapters(prepared, tmp_path):
    res = run(prepared, tmp_path, mode="lora", max_steps=3, batch_size=4, lr=1e-2, export_dtype="float32")
    diff, rows = changed(prepared[0], Path(res["final"]))
    linears = {f"talker.model.layers.{i}.{m}.weight" for i in range(2) for m in
               ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj")}  # fmt: skip
    assert diff == linears | {"talker.model.codec_embedding.weight"}
    assert rows == {3000, 3001}  # only the new speakers' rows
    ckpt = load_file(str(Path(res["checkpoint"]) / "trainable.safetensors"))
    assert len(ckpt) == 2 * len(linears) and all(".lora_" in k for k in ckpt)


def test_layer_replacement_trains_only_new_layers(prepared, tmp_path):
    res = run(prepared, tmp_path, mode="layers", max_steps=3, batch_size=4, lr=1e-2, export_dtype="float32",
              **{"layers.replace": 1, "layers.add": 1})  # fmt: skip
    final = Path(res["final"])
    assert json.loads((final / "config.json").read_text())["talker_config"]["num_hidden_layers"] == 3
    diff, rows = changed(prepared[0], final)
    new_layers = {
        k
        for k in load_file(str(final / "model.safetensors"))
        if k.startswith(("talker.model.layers.1.", "talker.model.layers.2."))
    }
    assert diff == new_layers | {"talker.model.codec_embedding.weight"} and rows == {3000, 3001}
    # Against the same run with lr 0 (the new layers as initialised, same seed): training moved
    # every tensor of the new layers and nothing else.
    untrained = run(prepared, tmp_path / "lr0", mode="layers", max_steps=3, batch_size=4, lr=0.0,
                    export_dtype="float32", **{"layers.replace": 1, "layers.add": 1})  # fmt: skip
    moved, _ = changed(Path(untrained["final"]), final)
    assert moved == new_layers
    tts = Qwen3TTS.from_pretrained(final, device="cpu", dtype="float32")
    assert len(tts.checkpoint.networks.talker.model.layers) == 3


def test_export_command_matches_final(prepared, tmp_path):
    res = run(prepared, tmp_path / "run", max_steps=2, batch_size=4, lr=1e-3)
    assert train_main(["export", "--checkpoint", res["checkpoint"], "--out", str(tmp_path / "exported")]) == 0
    a = load_file(str(Path(res["final"]) / "model.safetensors"))
    b = load_file(str(tmp_path / "exported" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_shard_the_data_and_resume(prepared, tmp_path):
    """`torchrun` with 2 CPU processes (gloo): each step splits its batches between the ranks,
    logs are written once, every rank's RNG is saved, and a stopped run resumes."""
    import os
    import subprocess
    import sys

    model, data = prepared
    out = tmp_path / "run"
    (tmp_path / "train.yaml").write_text(f"model: {model}\ndata: {data}\noutput_dir: {out}\nspeaker_name: {SPEAKER}\n"
                                         "max_steps: 4\nbatch_size: 1\nlr: 1.0e-3\nlogging_steps: 1\n"
                                         "save_steps: 100\nreport_to: [none]\n")  # fmt: skip
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "q3tts.train", "--config", str(tmp_path / "train.yaml"), "--quiet"]  # fmt: skip
    for extra in (["--set", "stop_at_step=2"], ["--resume"]):
        proc = subprocess.run(torchrun + extra, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and [r["epoch"] for r in log] == [0.5, 1.0, 1.5, 2.0]
    assert {p.name for p in (out / "checkpoint-000004").glob("rng_state_*")} == {"rng_state_0.pt", "rng_state_1.pt"}
    assert Qwen3TTS.from_pretrained(out / "final", device="cpu", dtype="float32").get_supported_speakers() == [
        "alice",
        "bob",
    ]


def test_kill_9_then_resume_in_a_new_process(prepared, tmp_path):
    """SIGKILL a training process once it has written a checkpoint, resume it in a new process:
    the end weights equal those of a run that was never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    model, data = prepared
    kw = dict(max_steps=30, batch_size=1, grad_accum=2, lr=1e-3, warmup_steps=3, save_steps=3, save_total_limit=2,
              logging_steps=1)  # fmt: skip
    out = tmp_path / "killed"
    (tmp_path / "train.yaml").write_text(f"model: {model}\ndata: {data}\noutput_dir: {out}\nspeaker_name: {SPEAKER}\n"
                                         "report_to: [none]\n")  # fmt: skip
    cmd = [sys.executable, "-m", "q3tts.train", "--config", str(tmp_path / "train.yaml"), "--quiet",
           *["--set=" + s for s in sets(**kw)]]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (out / "checkpoint-000006").is_dir():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint after 300 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists(), "the run ended before it could be killed"
    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = run(prepared, tmp_path / "straight", **kw)
    a = load_file(str(Path(straight["checkpoint"]) / "trainable.safetensors"))
    b = load_file(str(out / "checkpoint-000030" / "trainable.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    steps = [json.loads(line)["step"] for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))  # the steps logged after the checkpoint, then lost, are not logged twice


def test_gradient_checkpointing_gives_the_same_weights_and_bf16_trains(prepared, tmp_path):
    kw = dict(max_steps=3, batch_size=4, lr=1e-3, export_dtype="float32", save_steps=1000)
    plain = run(prepared, tmp_path / "plain", **kw)
    checkpointed = run(prepared, tmp_path / "gc", gradient_checkpointing=True, **kw)
    a = load_file(str(Path(plain["checkpoint"]) / "trainable.safetensors"))
    b = load_file(str(Path(checkpointed["checkpoint"]) / "trainable.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    bf16 = run(prepared, tmp_path / "bf16", mixed_precision="bf16", **{**kw, "max_steps": 20, "lr": 5e-3,
                                                                        "logging_steps": 1})  # fmt: skip
    losses = [json.loads(line)["loss"] for line in (tmp_path / "bf16" / "training_log.jsonl").read_text().splitlines()]
    assert len(losses) == 20 and all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]
    tts = Qwen3TTS.from_pretrained(bf16["final"], device="cpu", dtype="float32")
    assert tts.get_supported_speakers() == ["alice", "bob"]
