"""Dataset preparation (q3tts/train/dataset.py, checks.py, sources.py) and the training config.

A manifest with 20 deliberately broken items (every kind of breakage) next to good ones: the
run finishes, keeps the good ones, names each broken one with its reason; a re-run encodes
nothing again. Also: a Hugging Face `save_to_disk` folder as input, the CLI, config parsing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from q3tts.train.config import ConfigError, load_config
from q3tts.train.data import load_prepared, split_examples
from q3tts.train.dataset import Encoders, Prepare, main, read_index, split_of
from q3tts.train.sources import manifest_items

SR = 24000


def clip(seconds: float, seed: int, sr: int = SR, channels: int = 1, level: float = 0.3) -> np.ndarray:
    """A gliding tone with a little noise: audible, unclipped, different per seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f = 180 + 40 * seed + 250 * t
    wav = level * np.sin(2 * np.pi * np.cumsum(f) / sr) + 0.03 * rng.standard_normal(t.size)
    return np.repeat(wav[:, None], channels, axis=1).astype(np.float32) if channels > 1 else wav.astype(np.float32)


GOOD = {  # name -> (file writer args); stereo is down-mixed, other rates resampled
    "mono24k": dict(data=clip(1.0, 1), samplerate=SR),
    "stereo48k": dict(data=clip(0.8, 2, sr=48000, channels=2), samplerate=48000),
    "int16_16k": dict(data=clip(1.2, 3, sr=16000), samplerate=16000, subtype="PCM_16"),
}


def write_dataset(root: Path) -> tuple[Path, dict[str, str]]:
    """A manifest of 3 good and 20 broken items; returns it and {source line: expected reason}."""
    (root / "a").mkdir(parents=True)
    for name, kw in GOOD.items():
        sf.write(root / "a" / f"{name}.wav", **kw)
    quiet = 10 ** (-75 / 20) * np.random.default_rng(0).standard_normal(SR).astype(np.float32)
    square = np.sign(np.sin(2 * np.pi * 100 * np.arange(SR) / SR)).astype(np.float32)
    nan = clip(1.0, 4)
    nan[100] = np.nan
    bad_audio = {
        "short.wav": dict(data=clip(0.2, 5), samplerate=SR),
        "long.wav": dict(data=clip(31.0, 6, sr=8000), samplerate=8000, subtype="PCM_16"),
        "zeros.wav": dict(data=np.zeros(SR, np.float32), samplerate=SR),
        "quiet.wav": dict(data=quiet, samplerate=SR),
        "clipped.wav": dict(data=square, samplerate=SR),
        "four.wav": dict(data=clip(1.0, 7, channels=4), samplerate=SR),
        "three.wav": dict(data=clip(1.0, 8, channels=3), samplerate=SR),
        "nan.wav": dict(data=nan, samplerate=SR, subtype="FLOAT"),
    }
    for name, kw in bad_audio.items():
        sf.write(root / "a" / name, **kw)
    (root / "a" / "garbage.wav").write_bytes(b"RIFF\x00\x00not really a wave file" * 10)
    (root / "a" / "empty.wav").write_bytes(b"")
    (root / "a" / "folder.wav").mkdir()

    good = [{"audio": f"a/{n}.wav", "text": f"Good item {n}.", "speaker": "alice"} for n in GOOD]
    broken = [
        ({"audio": "a/nowhere.wav", "text": "x"}, "missing_file"),
        ({"audio": "a/folder.wav", "text": "x"}, "missing_file"),
        ({"audio": "a/garbage.wav", "text": "x"}, "unreadable"),
        ({"audio": "a/empty.wav", "text": "x"}, "unreadable"),
        ({"audio": "a/mono24k.wav", "text": ""}, "empty_text"),
        ({"audio": "a/mono24k.wav", "text": "   "}, "empty_text"),
        ({"audio": "a/mono24k.wav"}, "empty_text"),
        ({"audio": "a/short.wav", "text": "x"}, "too_short"),
        ({"audio": "a/long.wav", "text": "x"}, "too_long"),
        ({"audio": "a/zeros.wav", "text": "x"}, "silent"),
        ({"audio": "a/quiet.wav", "text": "x"}, "silent"),
        ({"audio": "a/clipped.wav", "text": "x"}, "clipped"),
        ({"audio": "a/four.wav", "text": "x"}, "channels"),
        ({"audio": "a/three.wav", "text": "x"}, "channels"),
        ({"audio": "a/nan.wav", "text": "x"}, "non_finite"),
        ('{"audio": "a/mono24k.wav", "text": ', "bad_line"),
        ({"text": "no audio key"}, "bad_line"),
        ({"audio": "a/mono24k.wav", "text": "x", "language": "klingon"}, "bad_language"),
        (good[0], "duplicate"),
        ({"audio": "a/mono24k.wav", "text": "x", "ref_audio": "a/missing_ref.wav"}, "ref_audio"),
    ]
    lines = [json.dumps(g) for g in good] + [b if isinstance(b, str) else json.dumps(b) for b, _ in broken]
    manifest = root / "data.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = {f"data.jsonl:{len(good) + i + 1}": reason for i, (_, reason) in enumerate(broken)}
    return manifest, expected


@pytest.fixture(scope="module")
def encoders(make_tiny):
    return Encoders(str(make_tiny("base")))


class CountingEncoders:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.languages, self.speaker = inner.languages, inner.speaker

    def codes(self, wavs):
        self.calls += len(wavs)
        return self.inner.codes(wavs)

    def xvector(self, wav):
        return self.inner.xvector(wav)


def test_broken_items_are_reported_and_resume_skips_encoded(tmp_path, encoders):
    manifest, expected = write_dataset(tmp_path)
    out = tmp_path / "prepared"
    enc = CountingEncoders(encoders)
    report = Prepare(out, enc, val_fraction=0.0, shard_size=2, batch_size=2).run(manifest_items(manifest), quiet=True)

    assert report["kept"]["total"] == 3 and enc.calls == 3
    assert report["dropped"]["total"] == 20
    got = {d["source"]: d["reason"] for d in report["dropped_items"]}
    assert got == expected
    assert all(d["detail"] for d in report["dropped_items"])
    assert json.loads((out / "report.json").read_text()) == report
    assert len(list(out.glob("shard-*.safetensors"))) == 2  # shard_size 2: 2 + 1 items

    examples = load_prepared(out)
    assert sorted(e.text for e in examples) == sorted(f"Good item {n}." for n in GOOD)
    durations = sorted(x["duration"] for x in read_index(out))
    assert durations == pytest.approx([0.8, 1.0, 1.2], abs=1e-3)
    assert all(e.codes.shape == (-(-round(d * SR) // 1920), 16) for e, d in
               zip(sorted(examples, key=lambda e: e.codes.shape[0]), durations))  # fmt: skip
    assert all(e.xvector is not None and e.xvector.dtype == torch.float32 for e in examples)

    shards = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    enc.calls = 0
    again = Prepare(out, enc, val_fraction=0.0, shard_size=2, batch_size=2).run(manifest_items(manifest), quiet=True)
    assert enc.calls == 0 and again["kept"] == dict(report["kept"], new=0, previous=3)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == shards
    assert {d["source"]: d["reason"] for d in again["dropped_items"]} == expected


def test_partial_run_resumes_with_only_new_items(tmp_path, encoders):
    manifest, _ = write_dataset(tmp_path)
    first = tmp_path / "first.jsonl"
    first.write_text("".join(manifest.read_text().splitlines(keepends=True)[:2]))
    out = tmp_path / "prepared"
    enc = CountingEncoders(encoders)
    Prepare(out, enc, shard_size=10).run(manifest_items(first), quiet=True)
    assert enc.calls == 2
    report = Prepare(out, enc, shard_size=10).run(manifest_items(manifest), quiet=True)
    assert enc.calls == 3 and report["kept"]["new"] == 1 and report["kept"]["previous"] == 2


def test_split_is_deterministic(tmp_path, encoders):
    ids = [f"{i:016x}" for i in range(0, 2**64, 2**58)]
    splits = [split_of(i, 0.25) for i in ids]
    assert splits == [split_of(i, 0.25) for i in ids] and 0 < splits.count("validation") < len(ids)


def test_cli_and_hf_dataset(tmp_path, make_tiny, capsys):
    datasets = pytest.importorskip("datasets")  # optional part of the train extra
    root = tmp_path / "clips"
    root.mkdir()
    paths = []
    for i in range(2):
        sf.write(root / f"{i}.wav", clip(1.0, 10 + i), SR)
        paths.append(str(root / f"{i}.wav"))
    ds = datasets.Dataset.from_dict({"audio": paths, "sentence": ["One clip.", "Another clip."]})
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    ds.save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "prepared"
    rc = main(["prepare", "--dataset", str(tmp_path / "hf"), "--column", "text=sentence", "--model",
               str(make_tiny("base")), "--out", str(out), "--val-fraction", "0.5", "--quiet"])  # fmt: skip
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["kept"]["total"] == 2 and report["dropped"]["total"] == 0
    train, val = split_examples(load_prepared(out), out)
    assert sorted(e.text for e in train + val) == ["Another clip.", "One clip."]


def test_config_yaml_overrides_and_env_names(tmp_path):
    (tmp_path / "train.yaml").write_text("model: m\ndata: d\nmode: lora\nlora: {rank: 4}\nLR: 1e-5\nfreeze: []\n")
    (tmp_path / ".env").write_text("export BATCH_SIZE=3\nLORA_TARGET_MODULES='q_proj,v_proj'  # two\n")
    tc = load_config(tmp_path / "train.yaml", ("lora.alpha=8", "epochs=2", "SPEAKER_NAME=bob", "SPEAKER_ID=3005"),
                     tmp_path / ".env")  # fmt: skip
    assert (tc.model, tc.data, tc.mode, tc.lr, tc.freeze) == ("m", "d", "lora", 1e-5, [])
    assert (tc.lora.rank, tc.lora.alpha, tc.lora.targets) == (4, 8.0, ["q_proj", "v_proj"])
    assert (tc.batch_size, tc.epochs, tc.speaker_name, tc.speaker("bob").id) == (3, 2, "bob", 3005)
    for bad in (("mode=nope",), ("lora.nope=1",), ("layers.add=x",)):
        with pytest.raises(ConfigError):
            load_config(tmp_path / "train.yaml", bad)
    with pytest.raises(ConfigError):
        load_config(None, ("data=d",))  # no model


def test_missing_datasets_package_is_one_line(monkeypatch):
    import sys

    from q3tts.train.sources import dataset_items

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(SystemExit, match=r"needs the 'datasets' package; install the train extra"):
        next(dataset_items("user/corpus"))


def test_entry_points_run_as_modules():
    import subprocess
    import sys

    for module in ("q3tts.train", "q3tts.train.dataset"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: python -m " + module in proc.stdout, proc.stderr


def test_hf_dataset_with_audio_bytes_and_arrays(tmp_path, make_tiny):
    """Audio cells that carry the sound itself: encoded bytes (Audio(decode=False)) and decoded
    arrays with their rate (here 16 kHz, resampled to 24 kHz)."""
    import io

    datasets = pytest.importorskip("datasets")
    encoded = io.BytesIO()
    sf.write(encoded, clip(1.2, 20), SR, format="WAV")
    as_bytes = datasets.Dataset.from_dict({"audio": [{"bytes": encoded.getvalue(), "path": None}],
                                           "text": ["Bytes in a cell."]})  # fmt: skip
    as_bytes = as_bytes.cast_column("audio", datasets.Audio(decode=False))
    as_bytes.save_to_disk(str(tmp_path / "bytes"))
    samples16k = clip(1.5, 21, sr=16000)
    as_array = datasets.Dataset.from_dict({"audio": [{"array": samples16k.tolist(), "sampling_rate": 16000}],
                                           "text": ["An array in a cell."]})  # fmt: skip
    as_array.save_to_disk(str(tmp_path / "array"))
    for name, seconds in (("bytes", 1.2), ("array", 1.5)):
        out = tmp_path / f"prepared-{name}"
        assert main(["prepare", "--dataset", str(tmp_path / name), "--model", str(make_tiny("base")), "--out",
                     str(out), "--val-fraction", "0", "--quiet"]) == 0  # fmt: skip
        report = json.loads((out / "report.json").read_text())
        assert report["kept"]["total"] == 1 and report["dropped"]["total"] == 0, report
        (example,) = load_prepared(out)
        assert abs(example.codes.shape[0] - 12.5 * seconds) <= 1 and example.codes.shape[1] == 16
