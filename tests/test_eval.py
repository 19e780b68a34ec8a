"""The evaluation metrics (q3tts/eval) on real speech: espeak-ng speaks real sentences in distinct
voices, so WER, speaker similarity, drift and pacing are checked on audio whose truth is known.
Random-weight checkpoints make noise, so they only check that `q3tts eval` runs end to end.

Skips when espeak-ng or the `eval` extra is missing, unless Q3TTS_REQUIRE_ESPEAK=1 (`make test`, CI)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from q3tts.eval.errors import EvalError
from q3tts.eval.text import error_rate, normalize

REQUIRED = os.environ.get("Q3TTS_REQUIRE_ESPEAK", "0") == "1"

SENTENCES = [
    "Thank you very much for coming to the meeting this morning.",
    "I think that we should go home now because it is getting late.",
    "The president said that the economy is growing this year.",
]
# Four espeak-ng voices that Resemblyzer tells apart (the default male, two female variants, whisper).
VOICES = ("en-us", "en-us+f3", "en-us+whisper", "en-us+f5")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops (and Resemblyzer's small LSTM) are too small to split over threads: one
    thread does not spin-wait when other jobs share the cores (as in tests/test_train_run.py)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def need(thing: str, ok: bool) -> None:
    if not ok:
        if REQUIRED:
            pytest.fail(f"Q3TTS_REQUIRE_ESPEAK=1 but {thing} (run `make setup setup-eval`)")
        pytest.skip(f"{thing} (run `make setup setup-eval`)")


@pytest.fixture(scope="module")
def say():
    """say(text, voice, wpm) -> (float32 samples, sample rate) spoken by espeak-ng, cached."""
    need("espeak-ng is not installed", shutil.which("espeak-ng") is not None)
    cache: dict = {}

    def speak(text: str, voice: str = "en-us", wpm: int = 150):
        key = (text, voice, wpm)
        if key not in cache:
            raw = subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", text],
                                 capture_output=True, check=True).stdout  # fmt: skip
            cache[key] = sf.read(io.BytesIO(raw), dtype="float32")
        return cache[key]

    return speak


def _extra(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        need(f"{module} (the `eval` extra) is not installed", False)


@pytest.fixture(scope="module")
def asr():
    _extra("pocketsphinx")
    from q3tts.eval.asr import load_asr

    return load_asr("pocketsphinx")


@pytest.fixture(scope="module")
def resemblyzer():
    from q3tts.eval.speaker import ResemblyzerEmbedder

    _extra("pyloudnorm")
    try:
        return ResemblyzerEmbedder()
    except EvalError as e:
        need(str(e), False)


# -- content ---------------------------------------------------------------------------------------
def test_normalisation_gives_written_and_spoken_forms_one_shape():
    assert (
        normalize("Dr. Smith paid $5.")
        == normalize("Doctor Smith paid five dollars")
        == ("doctor smith paid five dollars")
    )
    assert normalize("It's 12% of $1,234.50!") == (
        "it's twelve percent of one thousand two hundred thirty four dollars fifty cents"
    )
    assert error_rate("Dr. Smith paid $5.", "doctor smith paid five dollars").rate == 0.0
    assert error_rate("the cat sat", "the cat sat down").errors == 1  # one insertion
    cer = error_rate("你好世界", "你好时间", "chinese")
    assert (cer.metric, cer.rate) == ("cer", 0.5)
    with pytest.raises(EvalError, match="no words"):
        error_rate("...", "anything")


def test_wer_of_espeak_speech_own_transcript_vs_wrong_one(say, asr):
    own, wrong = [], []
    for i, text in enumerate(SENTENCES):
        heard = asr.transcribe(*say(text, "en-us", 140)).text
        own.append(error_rate(text, heard).rate)
        wrong.append(error_rate(SENTENCES[(i + 1) % len(SENTENCES)], heard).rate)
    assert np.mean(own) < 0.35 and max(own) < 0.5, own
    assert min(wrong) > 0.8, wrong


def test_written_and_spoken_references_score_the_same(say, asr):
    # PocketSphinx mishears espeak-ng's "doctor smith paid five" (1.0 WER on the bare sentence), so
    # the sentence goes on in words it hears: 0.9 WER, the same for both forms of the reference.
    heard = asr.transcribe(*say("Dr. Smith paid $5 for the meeting this morning.", "en-us", 140))
    written = error_rate("Dr. Smith paid $5 for the meeting this morning.", heard.text)
    spoken = error_rate("Doctor Smith paid five dollars for the meeting this morning", heard.text)
    assert written.rate == spoken.rate < 1 and written.reference == spoken.reference
    assert heard.words and all(w.end > w.start >= 0 for w in heard.words)  # timings come with the words


def test_offline_asr_names_what_to_install_for_other_languages():
    from q3tts.eval.asr import load_asr

    with pytest.raises(EvalError, match="faster-whisper"):
        load_asr("pocketsphinx", "chinese")
    with pytest.raises(EvalError, match="unknown ASR"):
        load_asr("kaldi")


# -- speaker similarity and drift ------------------------------------------------------------------
def _same_beats_different(embeddings: dict) -> list[str]:
    """For every pair of voices, both within-voice similarities beat every cross-voice one."""
    from q3tts.eval.speaker import similarity

    same = {v: similarity(embeddings[v, 0], embeddings[v, 1]) for v in VOICES}
    failures = []
    for a, b in itertools.combinations(VOICES, 2):
        cross = max(similarity(embeddings[a, i], embeddings[b, j]) for i in (0, 1) for j in (0, 1))
        if not min(same[a], same[b]) > cross:
            failures.append(f"{a}/{b}: same {same[a]:.3f}/{same[b]:.3f} vs different {cross:.3f}")
    return failures


def test_resemblyzer_same_voice_beats_different_voices_on_every_pair(say, resemblyzer):
    embeddings = {(v, i): resemblyzer.embed(*say(SENTENCES[i], v)) for v in VOICES for i in (0, 1)}
    assert not _same_beats_different(embeddings)


def test_checkpoint_speaker_encoder_is_the_clone_x_vector(tiny_tts, ref_wav, say):
    """The checkpoint back-end embeds with the same encoder and features as a clone's x-vector.
    The must-show (same voice > different voices) needs trained weights: on the tiny random
    encoder every espeak-ng clip scores 0.96-1.00 against every other, so it is not asserted here."""
    from q3tts.eval.speaker import CheckpointEmbedder, load_embedder, similarity

    model = tiny_tts("base")
    embedder = CheckpointEmbedder(model)
    clip = sf.read(ref_wav, dtype="float32")
    x_vector = model.create_voice_clone_prompt(ref_wav, x_vector_only_mode=True)[0].ref_spk_embedding
    x_vector = x_vector.float().cpu().numpy()
    e = embedder.embed(*clip)
    assert abs(float(np.linalg.norm(e)) - 1) < 1e-5
    assert similarity(e, x_vector / np.linalg.norm(x_vector)) > 0.9999
    assert similarity(e, embedder.embed(clip[0] * 0.5, clip[1])) < 1.0  # it sees the signal, not a constant
    with pytest.raises(EvalError, match="too short"):
        embedder.embed(clip[0][:1000], clip[1])
    with pytest.raises(EvalError, match="no speaker encoder"):
        CheckpointEmbedder(tiny_tts("custom_voice"))
    with pytest.raises(EvalError, match="needs a Base model"):
        load_embedder("checkpoint")


def _long_form(say, voices: list[str]) -> tuple[np.ndarray, int, list[tuple[float, float]]]:
    texts = SENTENCES + SENTENCES[::-1]
    clips = [say(t, v) for t, v in zip(texts, voices)]
    sr = clips[0][1]
    gap = np.zeros(int(0.2 * sr), np.float32)
    wav, bounds, t = [], [], 0.0
    for samples, _ in clips:
        wav += [samples, gap]
        bounds.append((t, t + len(samples) / sr))
        t += (len(samples) + len(gap)) / sr
    return np.concatenate(wav), sr, bounds


def test_drift_flags_a_spliced_middle_third_and_names_it(say, resemblyzer):
    from q3tts.eval.drift import drift

    wav, sr, bounds = _long_form(say, ["en-us"] * 6)
    clean = drift(wav, sr, resemblyzer, bounds)
    assert not clean.drifted, [round(p.similarity, 3) for p in clean.pieces]
    voices = ["en-us", "en-us", "en-us+f3", "en-us+f3", "en-us", "en-us"]  # pieces 2 and 3 of 6
    wav, sr, bounds = _long_form(say, voices)
    spliced = drift(wav, sr, resemblyzer, bounds)
    assert spliced.drifted and set(spliced.flagged) <= {2, 3}, [round(p.similarity, 3) for p in spliced.pieces]
    assert spliced.worst in (2, 3)


# -- pacing and stability ----------------------------------------------------------------------------
def test_pacing_doubles_with_espeak_speed(say):
    from q3tts.eval.pacing import pacing

    text = SENTENCES[1]
    slow, fast = (pacing(*say(text, "en-us", wpm), text) for wpm in (120, 240))
    ratio = fast.words_per_second / slow.words_per_second
    assert abs(ratio / 2 - 1) < 0.15, (slow.words_per_second, fast.words_per_second)
    assert slow.words == 13 and 0 < slow.speech_seconds <= slow.seconds
    reference = pacing(*say(text, "en-us", 120), text, reference_rate=slow.words_per_second)
    assert reference.rate_ratio == pytest.approx(1.0)


def test_stability_flags_runaways_early_stops_clipping_and_pauses():
    from q3tts.eval.stability import stability

    _extra("pyloudnorm")
    sr = 24000
    t = np.arange(sr * 2) / sr
    tone = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    fine = stability(tone, sr, "two seconds of text", frames=25, frame_cap=95)
    assert fine.problems == [] and -30 < fine.loudness_lufs < 0
    assert stability(tone, sr, "x", frames=95, frame_cap=95).runaway
    assert stability(tone[:2400], sr, "a long sentence that needs seconds to be spoken").early_stop
    assert "clipping" in stability(np.clip(tone * 10, -1, 1), sr, "clipped").problems
    paused = np.concatenate([tone, np.zeros(3 * sr, np.float32), tone])
    st = stability(paused, sr, "with a pause inside")
    assert "long_pause" in st.problems and st.longest_pause == pytest.approx(3.0, abs=0.05)
    silent = stability(np.zeros(sr, np.float32), sr, "nothing")
    assert silent.silence_ratio == 1.0 and silent.loudness_lufs == float("-inf")


# -- codec fidelity ----------------------------------------------------------------------------------
def test_codec_metrics_and_round_trip(tiny_checkpoint, say):
    _extra("pystoi")
    from q3tts.audio import SAMPLE_RATE, resample
    from q3tts.eval.codec import compare, round_trip, si_snr
    from q3tts.speech_tokenizer import Qwen3TTSTokenizer

    wav = resample(say(SENTENCES[0])[0], say(SENTENCES[0])[1], SAMPLE_RATE)
    same = compare(wav, wav)
    assert same.mel_distance == 0 and same.si_snr_db > 100 and same.stoi > 0.99
    noisy = wav + 0.1 * np.random.default_rng(0).standard_normal(wav.size).astype(np.float32)
    worse = compare(wav, noisy)
    assert worse.mel_distance > 0 and worse.stoi < same.stoi and si_snr(wav, noisy) < 20
    tokenizer = Qwen3TTSTokenizer.from_pretrained(tiny_checkpoint)
    trip = round_trip(tokenizer, wav, SAMPLE_RATE)
    assert trip.frames == -(-len(wav) // 1920) and np.isfinite([trip.mel_distance, trip.si_snr_db, trip.stoi]).all()


# -- test lists and `q3tts eval` -------------------------------------------------------------------------
def test_test_lists_jsonl_and_seed_tts_format(tmp_path):
    from q3tts.eval.testlist import load_test_list

    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text('{"text": "Hello.", "speaker": "vivian"}\n\n{"id": "b", "text": "Hi.", "ref_audio": "r.wav",'
                     ' "ref_text": "Hey.", "language": "english"}\n')  # fmt: skip
    a, b = load_test_list(jsonl)
    assert (a.id, a.speaker, b.id, b.ref_audio) == ("item0000", "vivian", "b", str(tmp_path / "r.wav"))
    seed = tmp_path / "meta.lst"
    seed.write_text("utt1|prompt words|prompts/p1.wav|target words\n")
    (item,) = load_test_list(seed)
    assert (item.id, item.ref_text, item.text) == ("utt1", "prompt words", "target words")
    for body, message in [('{"text": ""}', "missing or empty"), ("{oops", "not JSON"),
                          ('{"text": "a", "voice": "x"}', "unknown field"), ("", "empty")]:  # fmt: skip
        jsonl.write_text(body + "\n")
        with pytest.raises(EvalError, match=message):
            load_test_list(jsonl)
    seed.write_text("only|three|fields\n")
    with pytest.raises(EvalError, match=r"meta.lst:1: expected"):
        load_test_list(seed)


def _run_cli(capsys, *argv) -> tuple[int, str]:
    from q3tts.cli import main

    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_q3tts_eval_writes_json_csv_markdown_and_png(tmp_path, capsys, make_tiny, say, resemblyzer, asr):
    audio = tmp_path / "espeak"
    audio.mkdir()
    items = []
    for i, (text, voice) in enumerate(zip(SENTENCES[:2], ("en-us", "en-us+f3"))):
        sf.write(audio / f"s{i}.wav", *say(text, voice))
        sf.write(tmp_path / f"ref{i}.wav", *say(SENTENCES[2], voice))
        items.append(dict(id=f"s{i}", text=text, speaker="vivian", ref_audio=f"ref{i}.wav", ref_text=SENTENCES[2]))
    test_list = tmp_path / "list.jsonl"
    test_list.write_text("".join(json.dumps(d) + "\n" for d in items))
    out = tmp_path / "report"
    code, err = _run_cli(capsys, "eval", str(test_list), "-m", str(make_tiny("custom_voice")), "--audio-dir", str(audio),
                         "-o", str(out), "--device", "cpu", "--max-new-tokens", "40", "--codec", str(make_tiny("custom_voice")),
                         "-q")  # fmt: skip
    assert code == 0, err
    result = json.loads((out / "results.json").read_text())
    assert set(result["aggregate"]) == {"tiny-custom_voice-0-bfloat16", "espeak", "codec:tiny-custom_voice-0-bfloat16"}
    codec = [r for r in result["items"] if r["model"].startswith("codec:")]
    assert [r["id"] for r in codec] == ["s0", "s1", "s0", "s1"]  # the references, then the audio folder's clips
    assert all(0 <= r["stoi"] <= 1 and r["frames"] > 0 for r in codec)
    espeak = [r for r in result["items"] if r["model"] == "espeak"]
    assert all(r["wer"] < 0.6 and r["speaker_similarity"] > 0.5 and 0.7 < r["rate_ratio"] < 1.3 for r in espeak), espeak
    generated = [r for r in result["items"] if r["model"] == "tiny-custom_voice-0-bfloat16"]
    assert all(r["frames"] <= r["frame_cap"] == 39 for r in generated)
    with (out / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 8
    assert "| wer (lower) |" in (out / "report.md").read_text()
    assert (out / "distributions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_q3tts_eval_bad_input_is_one_line(tmp_path, capsys):
    code, err = _run_cli(
        capsys, "eval", str(tmp_path / "missing.jsonl"), "--audio-dir", str(tmp_path), "-o", str(tmp_path)
    )
    assert code == 1 and err.count("\n") == 1 and "missing.jsonl" in err
    code, err = _run_cli(capsys, "eval", "x.jsonl", "-o", str(tmp_path))
    assert code == 1 and "nothing to evaluate" in err


def test_only_the_front_doors_and_train_import_the_eval_package():
    from test_layering import import_graph, under

    allowed = ("q3tts.eval", "q3tts.cli", "q3tts.train", "q3tts.server.ui")
    wrong = [f"{name} imports {target}" for name, targets in import_graph().items() for target in targets
             if under(target, "q3tts.eval") and not any(under(name, a) for a in allowed)]  # fmt: skip
    assert not wrong


# -- in training -------------------------------------------------------------------------------------------
def test_training_logs_speaker_similarity_and_wer_each_eval(tmp_path, make_tiny, say, resemblyzer, asr):
    from q3tts.train.__main__ import main as train_main
    from q3tts.train.dataset import main as prepare_main

    texts = ["Hello there.", "Good morning."]
    lines = []
    for i, text in enumerate(texts):
        sf.write(tmp_path / f"{i}.wav", *say(text, "en-us+f3"))
        lines.append(json.dumps({"audio": f"{i}.wav", "text": text, "language": "english"}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    model = make_tiny("base")
    assert prepare_main(["prepare", "--manifest", str(tmp_path / "data.jsonl"), "--model", str(model), "--out",
                         str(tmp_path / "data"), "--val-fraction", "0", "--quiet"]) == 0  # fmt: skip
    run = tmp_path / "run"
    sets = dict(model=model, data=tmp_path / "data", val_data=tmp_path / "data", output_dir=run, max_steps=2,
                batch_size=2, eval_steps=1, save_steps=2, eval_generate=1, metric_for_best="speaker_similarity",
                report_to="none")  # fmt: skip
    assert train_main(["--quiet", *[f"--set={k}={v}" for k, v in sets.items()]]) == 0
    val = [json.loads(line) for line in (run / "validation_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in val] == [1, 2]
    for r in val:
        assert -1 <= r["speaker_similarity"] <= 1 and r["wer"] >= 0 and r["speech_eval_items"] == 1, r
    assert val[0]["best"] and (run / "best" / "config.json").is_file() and not (run / ".speech-eval").exists()
    assert val[1]["best"] == (val[1]["speaker_similarity"] > val[0]["speaker_similarity"])
    with pytest.raises(SystemExit, match="needs eval_generate >= 1"):
        train_main(["--quiet", *[f"--set={k}={v}" for k, v in {**sets, "eval_generate": 0}.items()]])


# -- in the web UI -------------------------------------------------------------------------------------------
def test_ui_clone_measures_and_the_evaluate_tab(tiny_tts, make_tiny, ref_wav, tmp_path, asr):
    pytest.importorskip("gradio")
    from q3tts.server.models import ModelManager
    from q3tts.server.ui import _clone_measures, _evaluate, build_ui

    demo = build_ui(ModelManager({"cv": make_tiny("custom_voice")}, device="cpu"), tmp_path / "voices")
    assert "run_eval" in [d.get("api_name") for d in demo.config["dependencies"]]  # the Evaluate tab's button

    ref = sf.read(ref_wav, dtype="float32")
    line = _clone_measures(tiny_tts("base"), ref[0], ref[1], ref, "a low hum for two seconds")
    assert "similarity to the reference **1.00**" in line and "words/s" in line  # the reference against itself
    assert "similarity" not in _clone_measures(tiny_tts("base"), ref[0], ref[1], None, "a saved voice")
    test_list = tmp_path / "list.jsonl"
    test_list.write_text('{"text": "Hello there.", "speaker": "vivian"}\n{"text": "Bye.", "speaker": "ryan"}\n')
    plot, report = _evaluate(tiny_tts("custom_voice"), str(test_list), {"max_new_tokens": 20, "seed": 0})
    assert plot.ndim == 3 and plot.shape[2] == 3 and plot.std() > 0  # a drawn figure, not a blank
    assert "| items | 2 |" in report and "| wer (lower) |" in report
    test_list.write_text('{"text": "Hello."}\n' * 21)
    with pytest.raises(EvalError, match="at most 20"):
        _evaluate(tiny_tts("custom_voice"), str(test_list), {})
