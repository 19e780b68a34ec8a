"""The `q3tts` command line: synthesis commands, streaming output, formats, the voice library,
encode/decode, bench registration, and the one-line error convention.

Commands run in-process through `main([...])`; loaded models are shared between calls (loading
is tested once, by the first call) to keep the file fast. Two real subprocesses check
`python -m q3tts.cli` itself."""

from __future__ import annotations

import io
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from q3tts.api import Qwen3TTS
from q3tts.cli import main
from q3tts.cli.codes import _save_codes, read_codes
from q3tts.cli.common import CODES_EXTENSIONS
from q3tts.cli.output import _audio_output, _output, _Sink, _write_audio
from q3tts.cli.voices import voices_dir
from q3tts.console import Status
from q3tts.nn.quant import Int8Linear

ROOT = Path(__file__).resolve().parents[1]
GEN = ["--greedy", "--max-new-tokens", "6", "-q"]  # 5 frames, no EOS needed from random weights
FRAMES = 5
SPF = 1920  # samples per frame
_MODELS: dict = {}


@pytest.fixture(scope="module", autouse=True)
def shared_models():
    """Each CLI call loads its model; share loaded models between the calls of this file."""
    load = Qwen3TTS.from_pretrained.__func__

    def cached(cls, path, device="auto", dtype="auto", **kwargs):
        key = (str(path), str(device), str(dtype), kwargs.get("quantize"))
        if key not in _MODELS:
            _MODELS[key] = load(cls, path, device=device, dtype=dtype, **kwargs)
        return _MODELS[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Qwen3TTS, "from_pretrained", classmethod(cached))
        yield
    _MODELS.clear()


@pytest.fixture(autouse=True)
def voices_env(tmp_path, monkeypatch):
    monkeypatch.setenv("Q3TTS_VOICES_DIR", str(tmp_path / "voices"))


@pytest.fixture(scope="module")
def cv(make_tiny):
    return str(make_tiny("custom_voice"))


@pytest.fixture(scope="module")
def base(make_tiny):
    return str(make_tiny("base"))


@pytest.fixture(scope="module")
def vd(make_tiny):
    return str(make_tiny("voice_design"))


def read(path) -> np.ndarray:
    data, sr = sf.read(path, dtype="float32")
    assert sr == 24000
    return data


def check_audio(path, frames: int = FRAMES, exact: bool = True) -> np.ndarray:
    info = sf.info(str(path))
    assert info.samplerate == 24000 and info.channels == 1
    data = read(path)
    if exact:  # lossless formats keep the length; lossy codecs may pad
        assert data.shape[0] == frames * SPF
    assert data.shape[0] > 0 and np.abs(data).max() > 0
    return data


def run_err(capsys, argv, code=1) -> str:
    """Run a command that must fail: exactly one stderr line, nothing on stdout, exit `code`."""
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == code, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("q3tts: error: "), err
    assert out == ""
    return lines[0]


# ---------------------------------------------------------------------------------------------
# Synthesis
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def offline_speak(cv, tmp_path_factory, shared_models) -> np.ndarray:
    """`speak` written at the end (not streamed), 5 greedy frames."""
    path = tmp_path_factory.mktemp("speak") / "offline.flac"
    assert main(["speak", "Hello there.", "-m", cv, "--speaker", "vivian", "-o", str(path), *GEN]) == 0
    return check_audio(path)


def test_speak_stream_equals_offline(cv, offline_speak, tmp_path, capsys):
    out = tmp_path / "streamed.flac"
    assert main(["speak", "Hello there.", "-m", cv, "--speaker", "Vivian", "-o", str(out), "--stream",
                 "--chunk-frames", "2", *GEN[:-1]]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "first audio after" in err and f"wrote {out}" in err and "\r" not in err  # no progress: not a TTY
    np.testing.assert_array_equal(check_audio(out), offline_speak)


def test_speak_stdin_to_stdout_stream(cv, offline_speak, capsysbinary, monkeypatch):
    """`-o -`: a WAV on stdout, written while generated; the text from stdin."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello there.\n"))
    assert main(["speak", "-", "-m", cv, "--speaker", "vivian", "-o", "-", "--stream", *GEN]) == 0
    data, sr = sf.read(io.BytesIO(capsysbinary.readouterr().out), dtype="float32")
    assert sr == 24000 and data.shape == offline_speak.shape
    # WAV and FLAC round floats to 16 bits differently in libsndfile: equal within one step.
    np.testing.assert_allclose(data, offline_speak, rtol=0, atol=1 / 32768)


def test_design_stream_mp3(vd, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("A short line.\n", encoding="utf-8")
    out = tmp_path / "d.mp3"
    rc = main(["design", "--text-file", str(text), "-m", vd, "--instruct", "a calm low voice", "-o", str(out),
               "--stream", "--threads", str(torch.get_num_threads()), *GEN])  # fmt: skip
    assert rc == 0
    assert sf.info(str(out)).format == "MP3"
    check_audio(out, exact=False)


def test_voice_library_round_trip(base, ref_wav, tmp_path, capsys):
    ref = ["--ref-audio", ref_wav, "--ref-text", "A reference sentence."]
    assert main(["voices", "save", "me", "-m", base, *ref, "-q"]) == 0
    assert main(["voices", "save", "flat", "-m", base, "--ref-audio", ref_wav, "--x-vector-only", "-q"]) == 0
    run_err(capsys, ["voices", "save", "me", "-m", base, *ref])  # exists: needs --force
    assert main(["voices", "save", "me", "-m", base, *ref, "--force", "-q"]) == 0

    capsys.readouterr()
    assert main(["voices", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "MODE", "REF", "HIDDEN", "SIZE"]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert rows["me"][1] == "in-context" and rows["me"][2:4] == ["2.0", "s"]  # 25 frames of reference
    assert rows["flat"][1] == "x-vector" and rows["flat"][2] == "-"

    # A library voice gives the same greedy audio as the reference it was made from.
    direct, saved = tmp_path / "direct.wav", tmp_path / "saved.wav"
    assert main(["clone", "Hello.", "-m", base, *ref, "-o", str(direct), *GEN]) == 0
    assert main(["clone", "Hello.", "-m", base, "--voice", "me", "-o", str(saved), "--stream", *GEN]) == 0
    np.testing.assert_array_equal(check_audio(saved), check_audio(direct))

    # --voice also takes a voice file's path; x-vector-only clone, written as Ogg Vorbis.
    flat = Path(voices_dir()) / "flat.safetensors"
    assert main(["clone", "Hello.", "-m", base, "--voice", str(flat), "-o", str(tmp_path / "x.ogg"), *GEN]) == 0
    check_audio(tmp_path / "x.ogg", exact=False)

    assert main(["voices", "delete", "me", "-q"]) == 0
    run_err(capsys, ["voices", "delete", "me"])
    run_err(capsys, ["clone", "Hi.", "-m", base, "--voice", "me", "-o", str(tmp_path / "y.wav")])
    capsys.readouterr()
    assert main(["voices", "list", "--json"]) == 0
    assert "flat" in capsys.readouterr().out


def test_voices_dir_option_and_names(base, ref_wav, tmp_path, capsys):
    lib = tmp_path / "elsewhere"
    assert main(["voices", "list", "--voices-dir", str(lib)]) == 0
    assert "no voices in" in capsys.readouterr().err
    for bad in ("../evil", ".hidden", "a/b", "x" * 101, "me.safetensors", ""):
        run_err(capsys, ["voices", "save", bad, "-m", base, "--ref-audio", ref_wav, "--x-vector-only"])
    run_err(capsys, ["voices", "delete", "../../etc/passwd"])
    assert not lib.exists()


def test_encode_decode_round_trip(base, ref_wav, tmp_path, capsys):
    codes = tmp_path / "codes.npy"
    assert main(["encode", ref_wav, "-m", base, "-o", str(codes), "-q"]) == 0
    arr = np.load(codes)
    assert arr.dtype == np.int64 and arr.shape == (25, 16)  # 2 s at 12.5 Hz
    out = tmp_path / "decoded.wav"  # from the model folder's speech_tokenizer/ folder, this time
    assert main(["decode", str(codes), "-m", f"{base}/speech_tokenizer", "-o", str(out)]) == 0
    assert "25 frames -> 2.00 s of audio" in capsys.readouterr().err
    check_audio(out, frames=25)
    assert main(["decode", str(codes), "-m", base, "-o", str(tmp_path / "c.opus"), "-q"]) == 0
    check_audio(tmp_path / "c.opus", exact=False)


@pytest.mark.parametrize("ext", ["safetensors", "pt"])
def test_codes_files(ext, tmp_path):
    codes = torch.randint(0, 2048, (7, 16))
    out = _output(str(tmp_path / f"c.{ext}"), CODES_EXTENSIONS, "codes")
    _save_codes(out, codes)
    back = read_codes(str(out.path))
    assert back.dtype == torch.int64 and torch.equal(back, codes)
    np.save(tmp_path / "batch.npy", codes[None].numpy())  # [1, T, 16] is taken as [T, 16]
    assert torch.equal(read_codes(str(tmp_path / "batch.npy")), codes)


@pytest.mark.parametrize("ext", ["wav", "flac", "mp3", "ogg", "opus"])
def test_writers_every_format(ext, tmp_path, capsysbinary):
    fmt = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "ogg": "OGG", "opus": "OGG"}[ext]
    if fmt not in sf.available_formats():
        pytest.skip(f"the installed libsndfile has no {fmt} support")
    wav = (0.3 * np.sin(np.arange(3 * SPF) / 7.0)).astype(np.float32)
    whole, streamed = tmp_path / f"whole.{ext}", tmp_path / f"streamed.{ext}"
    _write_audio(_audio_output(str(whole)), wav, 24000)
    sink = _Sink(_audio_output(str(streamed)), 24000)
    for part in np.split(wav, [SPF, 2 * SPF]):
        sink.write(part)
    sink.close()
    a, b = check_audio(whole, 3, exact=ext in ("wav", "flac")), check_audio(streamed, 3, exact=ext in ("wav", "flac"))
    if ext in ("wav", "flac"):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, wav, atol=1 / 32768)
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away


def test_stdout_wav(capsysbinary, monkeypatch):
    wav = (0.3 * np.sin(np.arange(2 * SPF) / 5.0)).astype(np.float32)
    _write_audio(_audio_output("-"), wav, 24000)
    whole = capsysbinary.readouterr().out
    np.testing.assert_allclose(sf.read(io.BytesIO(whole))[0], wav, rtol=0, atol=1 / 32768)

    def stream(seekable: bool) -> bytes:
        monkeypatch.setattr(sys.stdout.buffer, "seekable", lambda: seekable)
        sink = _Sink(_audio_output("-"), 24000)
        sink.write(wav[:100])
        sink.write(wav[100:])
        sink.close()
        return capsysbinary.readouterr().out

    assert stream(seekable=True) == whole  # stdout is a file: the header gets the real sizes
    piped = stream(seekable=False)  # a pipe: an open-ended header, the same samples
    assert piped[44:] == whole[44:] and piped[40:44] == b"\xdb\xff\xff\xff"
    np.testing.assert_array_equal(sf.read(io.BytesIO(piped))[0], sf.read(io.BytesIO(whole))[0])


# ---------------------------------------------------------------------------------------------
# Errors: one line, non-zero exit, no traceback
# ---------------------------------------------------------------------------------------------


def test_errors_before_loading(cv, base, ref_wav, tmp_path, capsys):
    o = ["-o", str(tmp_path / "x.wav")]
    speak = ["speak", "Hi.", "--speaker", "vivian"]
    assert "no such checkpoint folder" in run_err(capsys, [*speak, "-m", str(tmp_path / "nope"), *o])
    assert "needs a custom_voice checkpoint" in run_err(capsys, [*speak, "-m", base, *o])
    assert "needs a base checkpoint" in run_err(capsys, ["voices", "save", "v", "-m", cv, "--ref-audio", ref_wav,
                                                         "--x-vector-only"])  # fmt: skip
    assert "text is empty" in run_err(capsys, ["speak", "   ", "-m", cv, "--speaker", "vivian", *o])
    assert "no text" in run_err(capsys, ["speak", "-m", cv, "--speaker", "vivian", *o])
    # The output is checked before anything is loaded: a missing model is not what gets reported.
    missing = str(tmp_path / "nope")
    assert "unknown audio format" in run_err(capsys, [*speak, "-m", missing, "-o", str(tmp_path / "x.xyz")])
    assert "does not exist" in run_err(capsys, [*speak, "-m", missing, "-o", str(tmp_path / "no" / "x.wav")])
    (tmp_path / "dir.wav").mkdir()
    assert "is a directory" in run_err(capsys, [*speak, "-m", missing, "-o", str(tmp_path / "dir.wav")])
    # Reference audio.
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio")
    clone = ["clone", "Hi.", "-m", base, *o]
    assert "cannot decode" in run_err(capsys, [*clone, "--ref-audio", str(junk), "--ref-text", "x"])
    assert "not found" in run_err(capsys, [*clone, "--ref-audio", str(tmp_path / "none.wav"), "--ref-text", "x"])
    assert "--ref-text" in run_err(capsys, [*clone, "--ref-audio", ref_wav])
    assert "no voice named" in run_err(capsys, [*clone, "--voice", "nobody"])
    assert "bad voice name" in run_err(capsys, [*clone, "--voice", ".sneaky"])
    assert "not a q3tts voice prompt" in run_err(capsys, [*clone, "--voice", str(_foreign_safetensors(tmp_path))])
    # Usage errors from argparse are one line too (exit 2).
    assert "--speaker" in run_err(capsys, ["speak", "Hi.", "-m", cv, *o], code=2)
    assert "--ref-audio" in run_err(capsys, [*clone], code=2)
    if not torch.cuda.is_available():
        assert "CUDA is not available" in run_err(capsys, [*speak, "-m", cv, *o, "--device", "cuda"])
    assert "bad --device" in run_err(capsys, [*speak, "-m", cv, *o, "--device", "toaster"])
    assert "must be at least 1" in run_err(capsys, [*speak, "-m", cv, *o, "--max-new-tokens", "0"], code=2)
    assert not (tmp_path / "x.wav").exists()


def _foreign_safetensors(tmp_path) -> Path:
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    return path


def test_errors_after_loading(cv, tmp_path, capsys):
    out = tmp_path / "x.wav"
    speak = ["speak", "Hi.", "-m", cv, "-o", str(out), *GEN]
    assert "unknown speaker 'nobody'" in run_err(capsys, [*speak, "--speaker", "nobody"])
    assert "unsupported language 'klingon'" in run_err(capsys, [*speak, "--speaker", "vivian", "--language", "klingon"])
    assert "unknown speaker" in run_err(capsys, [*speak, "--speaker", "nobody", "--stream"])
    assert "top_p" in run_err(capsys, [*speak, "--speaker", "vivian", "--top-p", "0"])
    assert not out.exists()  # nothing written when the call is rejected


def test_bad_codes_files(base, tmp_path, capsys):
    dec = ["decode", "-m", base, "-o", str(tmp_path / "x.wav")]
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"\x93NUMPY nonsense")
    assert "not a readable .npy codes file" in run_err(capsys, [*dec, str(garbage)])
    np.save(tmp_path / "float.npy", np.zeros((4, 16), np.float32))
    assert "must be integers" in run_err(capsys, [*dec, str(tmp_path / "float.npy")])
    np.save(tmp_path / "flat.npy", np.zeros(16, np.int64))
    assert "[frames, codebooks]" in run_err(capsys, [*dec, str(tmp_path / "flat.npy")])
    np.save(tmp_path / "narrow.npy", np.zeros((4, 8), np.int64))
    assert "codes must be [frames, 16]" in run_err(capsys, [*dec, str(tmp_path / "narrow.npy")])
    np.save(tmp_path / "big.npy", np.full((4, 16), 99999, np.int64))
    assert "out of range" in run_err(capsys, [*dec, str(tmp_path / "big.npy")])
    assert "codes file not found" in run_err(capsys, [*dec, str(tmp_path / "none.npy")])
    assert "unknown codes format" in run_err(capsys, [*dec, str(tmp_path / "codes.txt")])
    assert "unknown codes format" in run_err(capsys, ["encode", "x.wav", "-m", base, "-o", str(tmp_path / "c.csv")])
    assert not (tmp_path / "x.wav").exists()


def test_keyboard_interrupt_is_quiet(cv, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield  # pragma: no cover

    monkeypatch.setattr(Qwen3TTS, "stream", interrupted)
    rc = main(["speak", "Hi.", "-m", cv, "--speaker", "vivian", "-o", str(tmp_path / "x.wav"), *GEN])
    assert rc == 130 and capsys.readouterr().err == ""


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_closed_output_pipe_is_an_error(cv, stream):
    """`q3tts speak ... -o - | head -c 10`: a real pipe whose reader takes 10 bytes and closes. The
    audio is lost, so the command must say so in one line and fail, not exit 0."""
    argv = ["speak", "Hello there, a sentence long enough.", "-m", cv, "--speaker", "vivian", "-o", "-",
            "--greedy", "--max-new-tokens", "20", "-q", *(["--stream"] if stream else [])]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "q3tts.cli", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, err
    errors = [line for line in err.splitlines() if line.startswith("q3tts: error: ")]
    assert errors == ["q3tts: error: standard output was closed before all the audio was read"], err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_stdout_read_to_the_end_is_no_error(cv):
    """The same command read to the end through a pipe exits 0 with the whole WAV."""
    argv = ["speak", "Hello there.", "-m", cv, "--speaker", "vivian", "-o", "-", *GEN]
    proc = subprocess.run([sys.executable, "-m", "q3tts.cli", *argv], cwd=ROOT, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    assert sr == 24000 and data.shape == (FRAMES * SPF,)


def test_subprocess_one_line_error(base, tmp_path):
    """The real entry point: `python -m q3tts.cli`, a wrong-kind checkpoint and a usage error."""
    for argv, code, expect in [
        (["speak", "Hi.", "-m", base, "--speaker", "vivian", "-o", str(tmp_path / "x.wav")], 1, "needs a custom_voice"),
        (["decode", "c.npy", "-m", base, "-o", str(tmp_path / "x.aiff")], 1, "unknown audio format"),
    ]:
        proc = subprocess.run([sys.executable, "-m", "q3tts.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert proc.returncode == code, proc.stderr
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("q3tts: error: ") and expect in lines[0], proc.stderr


# ---------------------------------------------------------------------------------------------
# bench registration, progress display
# ---------------------------------------------------------------------------------------------


def test_bench_is_passed_through(monkeypatch, capsys):
    import q3tts

    seen = {}
    fake = types.ModuleType("q3tts.bench")
    fake.add_arguments = lambda p: (p.add_argument("--model"), p.add_argument("--runs", type=int, default=1))

    def run(args):
        seen["args"] = args
        return 7

    fake.run = run
    monkeypatch.setitem(sys.modules, "q3tts.bench", fake)
    monkeypatch.setattr(q3tts, "bench", fake, raising=False)
    assert main(["bench", "--model", "m", "--runs", "3"]) == 7
    assert seen["args"].model == "m" and seen["args"].runs == 3
    assert main(["bench", "--help"]) == 0
    assert "--runs" in capsys.readouterr().out
    assert "--nope" in run_err(capsys, ["bench", "--nope"], code=2)
    # Without q3tts/bench.py: one clear line.
    monkeypatch.setitem(sys.modules, "q3tts.bench", None)
    monkeypatch.delattr(q3tts, "bench")
    assert "q3tts/bench.py is missing" in run_err(capsys, ["bench"])


def test_unknown_arguments_and_help(capsys):
    assert "unrecognized arguments: --bogus" in run_err(capsys, ["info", "x", "--bogus"], code=2)
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("speak", "design", "clone", "voices", "encode", "decode", "bench", "info"))


def test_status_line_only_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Tty(), io.StringIO()
    with Status(stream=tty) as s:
        s.update("generating: 3 frames", force=True)
    with Status(stream=pipe) as s:
        s.update("generating: 3 frames", force=True)
    with Status(enabled=False, stream=Tty()) as quiet:
        quiet.update("x", force=True)
    assert tty.getvalue() == "\rgenerating: 3 frames\033[K\r\033[K" and pipe.getvalue() == ""


def test_speak_quantize_int8(cv, tmp_path, capsys):
    out = tmp_path / "int8.wav"
    assert main(["speak", "Hello there.", "-m", cv, "--speaker", "vivian", "-o", str(out), "--quantize", "int8",
                 "--device", "cpu", *GEN]) == 0  # fmt: skip
    check_audio(out)
    (model,) = [model for key, model in _MODELS.items() if key[0] == cv and key[3] == "int8"]
    assert any(isinstance(m, Int8Linear) for m in model.checkpoint.networks.talker.modules())
