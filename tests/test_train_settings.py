"""The community pipelines' settings, typed as their users type them (issue 11, items 1-4, 6, 7, 10).

Each test runs the command line (`q3tts train ...`, `q3tts dataset ...`, `accelerate launch ...`,
`q3tts doctor`) on the tiny Base checkpoint, on the CPU, for a few steps. Most run the CLI's
`main` in this process (the code path of the `q3tts` script, without a second torch start-up);
`accelerate launch` and `q3tts doctor` run as real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from q3tts.api import Qwen3TTS
from q3tts.cli import main as q3tts
from q3tts.train.config import ENV_NAMES, ConfigError, resolve_config
from q3tts.train.data import PreparedSet

SR = 24000
ROOT = Path(__file__).resolve().parents[1]

# The names the issue lists (the community pipeline's .env), every one of them accepted.
PIPELINE_NAMES = """INIT_MODEL_PATH OUTPUT_DIR TRAIN_JSONL VALIDATION_JSONL DATA_MODE DATASET_NAME TRAIN_SPLIT
VALIDATION_SPLIT MAX_TRAIN_SAMPLES MAX_EVAL_SAMPLES BATCH_SIZE LR LEARNING_RATE NUM_EPOCHS GRADIENT_ACCUMULATION_STEPS
WEIGHT_DECAY WARMUP_STEPS WARMUP_RATIO MAX_GRAD_NORM SUB_TALKER_LOSS_WEIGHT MIXED_PRECISION SAVE_STEPS
SAVE_TOTAL_LIMIT EVAL_STEPS LOGGING_STEPS SEED SPEAKER_NAME REF_AUDIO_PATH REPLACE_LAST_N_LAYERS ADD_NEW_LAYERS
FREEZE_ORIGINAL_LAYERS FREEZE_SPEAKER_ENCODER USE_WANDB WANDB_PROJECT WANDB_RUN_NAME WANDB_ENTITY UPLOAD_TO_HUB
HUB_MODEL_ID_BEST HUB_MODEL_ID_LAST HF_TOKEN""".split()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are far too small to split (1 thread is ~5x faster than 2 here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """The .env names are read from the environment too: a CI runner's OUTPUT_DIR or SEED must not
    leak into these runs."""
    for name in [*ENV_NAMES, "ACCELERATE_MIXED_PRECISION"]:
        monkeypatch.delenv(name, raising=False)


def clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f = 200 + 150 * seed + 300 * t
    return (0.3 * np.sin(2 * np.pi * np.cumsum(f) / SR) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, make_tiny) -> dict:
    """6 clips as clip.wav + clip.txt pairs, the same as a JSONL manifest, and the tiny Base model."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "clips").mkdir()
    lines = []
    for i in range(6):
        sf.write(root / "clips" / f"c{i}.wav", clip(1.0 + 0.2 * i, i), SR)
        (root / "clips" / f"c{i}.txt").write_text(f"Sentence number {i} is here.")
        lines.append(json.dumps({"audio": f"clips/c{i}.wav", "text": f"Sentence number {i} is here."}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return {"root": root, "model": make_tiny("base"), "manifest": root / "data.jsonl", "clips": root / "clips"}


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = q3tts([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def env_file(path: Path, **values) -> Path:
    path.write_text("# a community pipeline .env\n" + "".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def changed_tensors(source: Path, exported: Path) -> set[str]:
    a = load_file(str(source / "model.safetensors"))
    b = load_file(str(exported / "model.safetensors"))
    return {k for k, v in b.items() if k not in a or not torch.equal(a[k].float(), v.float())}


# -- 1. the .env names, the environment, precedence ------------------------------------------------
def test_every_pipeline_name_is_known_and_precedence_is_flag_env_file_default(tmp_path):
    assert [n for n in PIPELINE_NAMES if n not in ENV_NAMES] == []
    path = env_file(tmp_path / ".env", INIT_MODEL_PATH="m", TRAIN_JSONL="d.jsonl", NUM_EPOCHS=6, LEARNING_RATE=1e-5,
                    SUB_TALKER_LOSS_WEIGHT=0.5, HF_TOKEN="hf_secret")  # fmt: skip
    (tmp_path / "train.yaml").write_text("model: m\ndata: d\nepochs: 4\nbatch_size: 5\n")
    yaml, env = tmp_path / "train.yaml", {"NUM_EPOCHS": "2", "SEED": "7", "UNRELATED": "x"}
    cases = [  # (yaml, env file, environment, flags) -> epochs, its source
        ((yaml, None, {}, ()), (4, "config file")),
        ((None, path, {}, ()), (6, "env file")),
        ((yaml, path, {}, ()), (6, "env file")),
        ((yaml, path, env, ()), (2, "environment")),
        ((yaml, path, env, ("epochs=1",)), (1, "flag")),
        ((yaml, None, {}, ("model=m",)), (4, "config file")),
    ]
    for (y, e, environ, flags), expected in cases:
        r = resolve_config(y, flags, e, environ=environ)
        assert (r.config.epochs, r.sources["epochs"]) == expected
    assert resolve_config(None, ("model=m", "data=d")).sources.get("epochs", "default") == "default"
    flat = resolve_config(None, ("model=m", "data=d", "columns=text=transcription,speaker=spk")).config.columns
    assert flat == {"text": "transcription", "speaker": "spk"}
    r = resolve_config(tmp_path / "train.yaml", ("epochs=1",), path, environ=env)
    assert (r.config.batch_size, r.sources["batch_size"]) == (5, "config file")
    assert (r.config.seed, r.sources["seed"], r.config.lr, r.config.cp_loss_weight) == (7, "environment", 1e-5, 0.5)
    printed = "\n".join(r.lines())
    assert "epochs" in printed and "[flag]" in printed and "hf_secret" not in printed and "*** (set)" in printed
    assert r.config.to_dict()["hf_token"] is None  # secrets never reach checkpoints or trackers
    env_file(tmp_path / "bad.env", INIT_MODEL_PATH="m", TRAIN_JSONL="d", NUM_EPOCH=1)
    with pytest.raises(ConfigError, match=r"unknown setting NUM_EPOCH \(did you mean NUM_EPOCHS\?\)"):
        resolve_config(None, (), tmp_path / "bad.env")


def test_unknown_env_name_is_one_line_on_the_command_line(tmp_path, corpus, capsys):
    bad = env_file(tmp_path / ".env", INIT_MODEL_PATH=corpus["model"], TRAIN_JSONL=corpus["manifest"], LEARNIN_RATE=1)
    code, out = run_cli(capsys, "train", "--env-file", bad)
    assert code == 1 and "Traceback" not in out
    assert out.strip().splitlines() == [f"q3tts: {bad}: unknown setting LEARNIN_RATE (did you mean LEARNING_RATE?); "
                                        "see ENV_NAMES in q3tts/train/config.py"]  # fmt: skip


def test_layer_replacement_env_changes_exactly_those_layers(tmp_path, corpus, capsys, monkeypatch):
    """REPLACE_LAST_N_LAYERS=2 + ADD_NEW_LAYERS=1 on the 2-layer tiny talker: layers 0-1 replaced,
    layer 2 new. The export differs from the source in exactly those layers' tensors (and the new
    speaker's codec row), as many as the printed summary says; NUM_EPOCHS comes from the
    environment, the sample limits from the file."""
    out = tmp_path / "run"
    path = env_file(tmp_path / ".env", INIT_MODEL_PATH=corpus["model"], OUTPUT_DIR=out, TRAIN_JSONL=corpus["manifest"],
                    NUM_EPOCHS=5, BATCH_SIZE=2, LEARNING_RATE="1e-2", REPLACE_LAST_N_LAYERS=2, ADD_NEW_LAYERS=1,
                    SPEAKER_NAME="alice", USE_WANDB="false", MAX_TRAIN_SAMPLES=4, MAX_EVAL_SAMPLES=1,
                    TOKENIZER_PATH="Qwen/Qwen3-TTS-Tokenizer-12Hz", REF_AUDIO_PATH=corpus["clips"] / "c5.wav")  # fmt: skip
    monkeypatch.setenv("NUM_EPOCHS", "1")
    code, printed = run_cli(capsys, "train", "--env-file", path, "--set", "export_dtype=float32",
                            "--set", "report_to=[none]", "--set", "val_fraction=0.3")  # fmt: skip
    assert code == 0, printed
    assert "epochs                 = 1                        [environment]" in printed
    assert "mode                   = layers                   [implied by layers.replace / layers.add]" in printed
    assert "TOKENIZER_PATH is not needed: the codec is the model's own speech_tokenizer/" in printed
    assert "(max_train_samples 4) (max_eval_samples 1)" in printed
    rows = {line.split()[0]: line for line in printed.splitlines() if line.startswith("talker.")}
    replaced, new = rows["talker.model.layers.0-1"].split(), rows["talker.model.layers.2"].split()
    assert rows["talker.model.layers.0-1"].endswith("replaced, trainable") and int(replaced[1]) == 22
    assert rows["talker.model.layers.2"].endswith("new, trainable") and int(new[1]) == 11
    assert all(r.endswith("frozen") for k, r in rows.items() if "layers" not in k)
    final = out / "final"
    diff = changed_tensors(corpus["model"], final)
    in_layers = {k for k in diff if k.startswith("talker.model.layers.")}
    assert {k.split(".")[3] for k in in_layers} == {"0", "1", "2"}
    assert len(in_layers) == int(replaced[1]) + int(new[1]) == 33  # every tensor of those layers, nothing else
    assert diff - in_layers == {"talker.model.codec_embedding.weight"}  # the new speaker's row
    tts = Qwen3TTS.from_pretrained(final, device="cpu", dtype="float32")
    assert len(tts.checkpoint.networks.talker.model.layers) == 3 and tts.get_supported_speakers() == ["alice"]
    # the limits stopped preparing at 4 + 1 of the 6 clips; REF_AUDIO_PATH: one clip's embedding
    # stands for every item (five different clips otherwise)
    vectors = [e.xvector for e in PreparedSet(out / "data").light()]
    assert len(vectors) == 5 and all(torch.equal(v, vectors[0]) for v in vectors)
    row = load_file(str(final / "model.safetensors"))["talker.model.codec_embedding.weight"][3000]
    assert torch.equal(row, vectors[0])


def test_freeze_original_layers_false_trains_the_rest_and_speaker_encoder_note(tmp_path, corpus):
    from q3tts.train.module import load_base, setup_mode

    def trainable(**values) -> tuple[set, dict, list]:
        path = env_file(tmp_path / ".env", INIT_MODEL_PATH=corpus["model"], TRAIN_JSONL=corpus["manifest"], **values)
        r = resolve_config(None, (), path)
        base = load_base(str(corpus["model"]))
        roles = setup_mode(base.networks, base.config, r.config)
        return {n for n, p in base.networks.named_parameters() if p.requires_grad}, roles, r.notes

    only_new, roles, notes = trainable(REPLACE_LAST_N_LAYERS=1)
    assert roles == {1: "replaced"} and notes == []
    assert {n.split(".")[3] for n in only_new} == {"1"} and all(
        n.startswith("talker.model.layers.1.") for n in only_new
    )
    everything, roles, notes = trainable(REPLACE_LAST_N_LAYERS=1, FREEZE_ORIGINAL_LAYERS="false",
                                         FREEZE_SPEAKER_ENCODER="false")  # fmt: skip
    assert roles == {1: "replaced"} and only_new < everything
    assert "talker.model.layers.0.mlp.up_proj.weight" in everything
    assert any(n.startswith("talker.code_predictor.") for n in everything)
    assert "talker.model.text_embedding.weight" not in everything  # `freeze` still holds, as in mode full
    assert len(notes) == 1 and notes[0].startswith("freeze_speaker_encoder false (FREEZE_SPEAKER_ENCODER): q3tts never")


# -- 2. accelerate launch --mixed_precision bf16 -------------------------------------------------
def test_accelerate_launch_bf16_trains_in_bf16_on_cpu(tmp_path, corpus):
    out = tmp_path / "run"
    path = env_file(tmp_path / ".env", INIT_MODEL_PATH=corpus["model"], OUTPUT_DIR=out, TRAIN_JSONL=corpus["manifest"],
                    MIXED_PRECISION="no", LOGGING_STEPS=1, BATCH_SIZE=3, SPEAKER_NAME="alice")  # fmt: skip
    launcher = Path(sys.executable).with_name("accelerate")  # the `accelerate` script of this venv
    cmd = [str(launcher), "launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "bf16", "--dynamo_backend", "no", "-m", "q3tts.train", "--env-file", str(path),
           "--set", "max_steps=2", "--set", "report_to=[none]"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))  # os.environ: cleaned by clean_environment
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout + proc.stderr
    assert "mixed_precision        = bf16                     [accelerate launch]" in printed
    assert "precision: bf16 (mixed_precision)" in printed
    assert "step 1: autocast on (bfloat16), talker logits in bfloat16" in printed
    first = json.loads((out / "training_log.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["compute"] == "autocast on (bfloat16), talker logits in bfloat16"
    assert json.loads((out / "final" / "training_state.json").read_text())["config"]["mixed_precision"] == "bf16"


# -- 3. sample limits and dataset info -----------------------------------------------------------
def test_prepare_max_samples_and_dataset_info(tmp_path, corpus, capsys):
    manifest = tmp_path / "m.jsonl"
    lines = [json.dumps({"audio": "missing.wav", "text": "gone"})]
    lines += [json.dumps({"audio": str(corpus["clips"] / f"c{i}.wav"), "text": f"clip {i}", "speaker": "bob",
                          "language": "english" if i % 2 else "auto"}) for i in range(6)]  # fmt: skip
    manifest.write_text("\n".join(lines) + "\n")
    code, out = run_cli(capsys, "dataset", "prepare", "--manifest", manifest, "--model", corpus["model"],
                        "--out", tmp_path / "data", "--max-samples", 3, "--val-fraction", 0)  # fmt: skip
    assert code == 0, out
    assert len((tmp_path / "data" / "index.jsonl").read_text().splitlines()) == 3
    code, out = run_cli(capsys, "dataset", "info", tmp_path / "data")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].endswith("3 items (train 3), 0.001 h") and lines[1] == "speakers: bob 3"
    assert lines[2] == "languages: auto 2, english 1"
    assert lines[3] == "length: min 1.00 s, mean 1.20 s, max 1.40 s"
    assert any(line.split()[:2] == ["1-2", "s"] and line.split()[2] == "3" for line in lines)
    assert "dropped: 1:" in lines and any("missing_file" in line for line in lines)
    code, out = run_cli(capsys, "dataset", "info", tmp_path / "data", "--json")
    info = json.loads(out)
    assert info["items"] == 3 and info["dropped"]["by_reason"] == {"missing_file": 1}
    assert sum(info["length_histogram"].values()) == 3
    code, out = run_cli(capsys, "dataset", "info", tmp_path / "nothing")
    assert code == 1 and out.strip().startswith("q3tts:") and len(out.strip().splitlines()) == 1


# -- 4. a Hugging Face dataset with splits, and a folder of clips ---------------------------------
def test_hf_dataset_splits_are_prepared_on_the_fly_and_resume(tmp_path, corpus, capsys):
    datasets = pytest.importorskip("datasets")  # the train extra; present in CI
    rows = [{"audio": str(corpus["clips"] / f"c{i}.wav"), "transcription": f"clip {i}"} for i in range(6)]
    parts = {"train": rows[:4], "validation": rows[4:]}
    dd = datasets.DatasetDict({k: datasets.Dataset.from_list(v).cast_column("audio", datasets.Audio())
                               for k, v in parts.items()})  # fmt: skip
    dd.save_to_disk(str(tmp_path / "hfdata"))
    out = tmp_path / "run"
    path = env_file(tmp_path / ".env", INIT_MODEL_PATH=corpus["model"], OUTPUT_DIR=out, DATA_MODE="direct",
                    DATASET_NAME=tmp_path / "hfdata", TRAIN_SPLIT="train", VALIDATION_SPLIT="validation",
                    SPEAKER_NAME="carol")  # fmt: skip
    argv = ["train", "--env-file", path, "--set", "columns={text: transcription}", "--set", "max_steps=1",
            "--set", "report_to=[none]"]  # fmt: skip
    code, printed = run_cli(capsys, *argv)
    assert code == 0, printed
    assert "data: 4 training items, 2 validation items" in printed
    assert len((out / "data" / "index.jsonl").read_text().splitlines()) == 4
    assert len((out / "val_data" / "index.jsonl").read_text().splitlines()) == 2
    code, printed = run_cli(capsys, *argv)  # again: nothing is encoded twice
    assert code == 0 and "kept 4 items (0 new, 4 already prepared)" in printed
    assert "kept 2 items (0 new, 2 already prepared)" in printed
    missing = [*argv, "--set", "data_mode=jsonl", "--set", f"data={tmp_path / 'not-yet.jsonl'}"]
    code, printed = run_cli(capsys, *missing)  # jsonl mode, TRAIN_JSONL not there yet: the dataset stands in
    assert code == 0 and "kept 4 items (0 new, 4 already prepared)" in printed
    bad = [*argv, "--set", "validation_split=nope"]
    code, printed = run_cli(capsys, *bad)
    assert code == 1 and "split 'nope'" in printed and "Traceback" not in printed


def test_folder_of_clips_trains_and_metadata_csv_prepares(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    code, printed = run_cli(capsys, "train", "--set", f"model={corpus['model']}", "--set", f"data={corpus['clips']}",
                            "--set", f"output_dir={out}", "--set", "max_steps=1", "--set", "report_to=[none]",
                            "--set", "val_fraction=0")  # fmt: skip
    assert code == 0, printed
    texts = sorted(json.loads(line)["text"] for line in (out / "data" / "index.jsonl").read_text().splitlines())
    assert texts == [f"Sentence number {i} is here." for i in range(6)]
    lj = tmp_path / "lj"
    (lj / "wavs").mkdir(parents=True)
    for i in range(3):
        sf.write(lj / "wavs" / f"LJ{i:03d}.wav", clip(1.0, i), SR)
    (lj / "metadata.csv").write_text("LJ000|Raw one|Normalised one\nLJ001|Raw two|Normalised two\nLJ009|No file|x\n")
    hf = tmp_path / "audiofolder"
    hf.mkdir()
    sf.write(hf / "a.wav", clip(1.0, 4), SR)
    (hf / "metadata.csv").write_text("file_name,transcription,speaker\na.wav,Hello from a,dave\n")
    for folder, expected in ((lj, ["Normalised one", "Normalised two"]), (hf, ["Hello from a"])):
        code, printed = run_cli(capsys, "dataset", "prepare", "--clips", folder, "--model", corpus["model"],
                                "--out", folder / "prepared", "--quiet")  # fmt: skip
        assert code == 0, printed
        index = [json.loads(line) for line in (folder / "prepared" / "index.jsonl").read_text().splitlines()]
        assert sorted(x["text"] for x in index) == expected
    report = json.loads((lj / "prepared" / "report.json").read_text())
    assert report["dropped"]["by_reason"] == {"missing_file": 1}


# -- 6. NaN / Inf losses -----------------------------------------------------------------------------
def test_nonfinite_losses_skip_steps_then_stop_and_saved_files_stay(tmp_path, corpus, capsys):
    """A good run writes checkpoint, best/ and final/; a second run in the same folder with an
    absurd learning rate (1e30: the first update sends the weights to ~1e30, every later loss is
    Inf/NaN) skips 3 steps, logs them, stops with one line, and leaves every saved file as it was."""
    import hashlib

    out = tmp_path / "run"
    base = ["train", "--set", f"model={corpus['model']}", "--set", f"data={corpus['manifest']}", "--set",
            f"output_dir={out}", "--set", "report_to=[none]", "--set", "batch_size=3", "--set", "speaker_name=alice"]  # fmt: skip
    code, printed = run_cli(capsys, *base, "--set", "max_steps=2", "--set", "lr=1e-3")
    assert code == 0, printed
    rows = {line.split()[0]: line for line in printed.splitlines() if line.startswith("talker.")}
    assert rows["talker.model.text_embedding"].endswith("frozen")  # mode full: all but the text table
    assert rows["talker.model.layers.0-1"].endswith(" trainable") and rows["talker.code_predictor"].endswith(
        " trainable"
    )

    def snapshot() -> dict:
        return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
                if p.is_file() and p.parent.name != "data" and not p.name.endswith(".jsonl")}  # fmt: skip

    before = snapshot()
    assert any(k.startswith("checkpoint-000002/") for k in before) and "best/model.safetensors" in before
    code, printed = run_cli(capsys, *base, "--set", "max_steps=8", "--set", "lr=1e30", "--set", "save_steps=100",
                            "--set", "eval_steps=100", "--set", "max_nonfinite_steps=3", "--set", "logging_steps=1")  # fmt: skip
    assert code == 1
    last = printed.strip().splitlines()[-1]
    assert last.startswith("q3tts: stopped at step 4: the loss or gradient was NaN/Inf for 3 steps in a row")
    assert "Saved checkpoints are untouched (latest:" in last and "Traceback" not in printed
    assert printed.count("the update was skipped") == 3
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and "skipped" not in log[0]
    assert all(r["skipped"].startswith("non-finite") for r in log[1:])
    assert snapshot() == before  # no new checkpoint, best/ and final/ unchanged


# -- 10. W&B run name and entity; q3tts doctor ------------------------------------------------------
def test_wandb_run_name_and_entity_reach_wandb(tmp_path, corpus, capsys, monkeypatch):
    pytest.importorskip("wandb")  # optional: W&B logging only runs where it is installed
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                       "USE_WANDB": "true", "WANDB_RUN_NAME": "alice-try-3", "WANDB_ENTITY": "voice-team",
                       "WANDB_PROJECT": "tts-ft"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    code, printed = run_cli(capsys, "train", "--set", f"model={corpus['model']}", "--set", f"data={corpus['manifest']}",
                            "--set", f"output_dir={tmp_path / 'run'}", "--set", "max_steps=1")  # fmt: skip
    assert code == 0, printed
    assert "wandb run 'alice-try-3' (entity 'voice-team', project 'tts-ft')" in printed
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_doctor_reports_the_machine(capsys):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "q3tts.cli", "doctor", "--json"], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert proc.returncode == (1 if any(c["status"] == "!!" for c in checks.values()) else 0), proc.stderr
    assert checks["python"]["detail"].startswith(".".join(map(str, sys.version_info[:3])))
    assert checks["torch"]["detail"].startswith(torch.__version__)
    assert ("cuda:0" in checks) == torch.cuda.is_available()
    assert {"bf16 (cpu)", "disk (here)", "ram", "train: accelerate", "ui: gradio", "oracle venv", "ffmpeg"} <= set(
        checks
    )
    assert checks["train: accelerate"]["status"] == "ok"  # the train extra is installed for these tests
    import shutil

    assert (checks["ffmpeg"]["status"] == "ok") == (shutil.which("ffmpeg") is not None)
    code, text = run_cli(capsys, "doctor")  # the same checks, one line each
    assert code == proc.returncode and len(text.splitlines()) == len(checks)
    assert all(line[:2] in ("ok", "--", "!!") for line in text.splitlines())
