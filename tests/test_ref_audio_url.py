"""`ref_audio` (and Qwen3TTSTokenizer.encode) take http(s) URLs, as the official README shows, from a
real HTTP server on the loopback: the Python API and the CLI fetch them within a time and a size
limit; the server refuses them unless started with --ref-audio-url-host, and then refuses hosts off
the list and private or loopback addresses, on every redirect hop too."""

from __future__ import annotations

import base64
import http.server
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

from q3tts.cli import main
from q3tts.speech_tokenizer import Qwen3TTSTokenizer
from q3tts.url_fetch import FetchError, PublicAddressGuard, fetch_url

pytestmark = pytest.mark.filterwarnings("ignore::q3tts.generate.engine.LengthCapWarning")


class Files(http.server.BaseHTTPRequestHandler):
    """/ref.wav (the clip), /moved (302 to `redirect_to`), /stall (headers, then no body), /big."""

    clip: bytes = b""
    redirect_to: str = ""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.end_headers()
        elif self.path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.flush()
            time.sleep(5)
        elif self.path == "/big":
            self.send_response(200)
            self.end_headers()  # no Content-Length: only counting the body finds it too large
            for _ in range(64):
                self.wfile.write(b"\0" * 65536)
        elif self.path.startswith("/ref.wav"):
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(self.clip)))
            self.end_headers()
            self.wfile.write(self.clip)
        else:
            self.send_error(404)


@contextmanager
def http_server(host: str, clip: bytes, redirect_to: str = "", port: int = 0):
    handler = type("Handler", (Files,), {"clip": clip, "redirect_to": redirect_to})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def files(ref_wav):
    with http_server("127.0.0.1", Path(ref_wav).read_bytes()) as url:
        yield url


def test_the_api_clones_from_a_url_as_from_the_file(tiny_tts, ref_wav, files):
    tts = tiny_tts("base")
    (from_url,) = tts.create_voice_clone_prompt(f"{files}/ref.wav?sig=secret", x_vector_only_mode=True)
    (from_file,) = tts.create_voice_clone_prompt(ref_wav, x_vector_only_mode=True)
    assert torch.equal(from_url.ref_spk_embedding, from_file.ref_spk_embedding)  # the codes: the tokenizer test
    wavs, sr = tts.generate_voice_clone("Hi.", ref_audio=f"{files}/ref.wav", x_vector_only_mode=True, max_new_tokens=4)
    assert sr == 24000 and wavs[0].size > 0
    with pytest.raises(FetchError, match=r"/nope.wav: HTTP 404") as e:
        tts.create_voice_clone_prompt(f"{files}/nope.wav", x_vector_only_mode=True)
    assert "sig=" not in str(e.value)


def test_the_tokenizer_encodes_a_url(make_tiny, ref_wav, files):
    tok = Qwen3TTSTokenizer.from_pretrained(make_tiny("base"))
    (from_url,) = tok.encode(f"{files}/ref.wav").audio_codes
    (from_file,) = tok.encode(ref_wav).audio_codes
    assert from_url.shape[0] == 25 and torch.equal(from_url, from_file)


def test_the_cli_takes_a_url(make_tiny, ref_wav, files, tmp_path, capsys):
    model = str(make_tiny("base"))
    out = tmp_path / "hi.wav"
    clone = ["clone", "Hi.", "-m", model, "--device", "cpu", "--x-vector-only", "--greedy", "--max-new-tokens", "4",
             "-q", "-o", str(out)]  # fmt: skip
    assert main([*clone, "--ref-audio", f"{files}/ref.wav"]) == 0
    assert sf.info(out).frames > 0
    assert (
        main(["encode", f"{files}/ref.wav", "-m", model, "--device", "cpu", "-q", "-o", str(tmp_path / "u.npy")]) == 0
    )
    assert main(["encode", ref_wav, "-m", model, "--device", "cpu", "-q", "-o", str(tmp_path / "f.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "u.npy"), np.load(tmp_path / "f.npy"))
    capsys.readouterr()
    assert main([*clone, "--ref-audio", f"{files}/missing.wav"]) == 1
    assert capsys.readouterr().err.splitlines() == [f"q3tts: error: {files}/missing.wav: HTTP 404 Not Found"]


def test_a_download_has_a_size_and_a_time_limit(files):
    with pytest.raises(FetchError, match=r"ref.wav is \d+ bytes; at most 1000 are allowed"):
        fetch_url(f"{files}/ref.wav", max_bytes=1000)  # refused on its Content-Length
    with pytest.raises(FetchError, match="/big is larger than 1000000 bytes"):
        fetch_url(f"{files}/big", max_bytes=1_000_000)  # no length announced: counted
    started = time.monotonic()
    with pytest.raises(FetchError, match="/stall: no answer within 1 s"):
        fetch_url(f"{files}/stall", timeout=1.0)
    assert time.monotonic() - started < 4
    with pytest.raises(FetchError, match="not an http"):
        fetch_url("ftp://127.0.0.1/ref.wav")


class LoopbackOneIsPublic(PublicAddressGuard):
    """The guard's rules, except that 127.0.0.1 counts as a public address (no public host is
    reachable from a test): a redirect from it to 127.0.0.2 must be refused at the second hop."""

    def check_address(self, host, address):
        if address != "127.0.0.1":
            super().check_address(host, address)


def test_every_redirect_hop_is_checked(ref_wav):
    clip = Path(ref_wav).read_bytes()
    with http_server("127.0.0.2", clip) as inner:
        with http_server("127.0.0.1", clip, redirect_to=f"{inner}/ref.wav") as outer:
            allowed = ["127.0.0.1", "127.0.0.2"]
            assert fetch_url(f"{outer}/ref.wav", guard=LoopbackOneIsPublic(allowed)) == clip
            assert fetch_url(f"{outer}/moved") == clip  # the API follows redirects (no guard)
            with pytest.raises(FetchError, match=r"'127.0.0.2' resolves to a private, loopback or reserved address"):
                fetch_url(f"{outer}/moved", guard=LoopbackOneIsPublic(allowed))
            with pytest.raises(FetchError, match="URLs on host '127.0.0.2' are not allowed"):
                fetch_url(f"{outer}/moved", guard=LoopbackOneIsPublic(["127.0.0.1"]))
            with pytest.raises(FetchError, match=r"'localhost' resolves to a private, loopback"):
                fetch_url(outer.replace("127.0.0.1", "localhost") + "/ref.wav", guard=PublicAddressGuard(["*"]))


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "::1", "fd00::1",
                "::ffff:127.0.0.1", "0.0.0.0", "100.64.0.1", "224.0.0.1"],
)  # fmt: skip
def test_private_loopback_and_reserved_addresses_are_refused(address):
    with pytest.raises(FetchError, match="private, loopback or reserved"):
        PublicAddressGuard(["*"]).check_address("example.test", address)


def test_public_addresses_pass():
    for address in ("8.8.8.8", "2606:4700:4700::1111", "::ffff:1.1.1.1"):
        PublicAddressGuard(["*"]).check_address("example.test", address)


@contextmanager
def speech_server(tts, tmp_path, **settings):
    pytest.importorskip("fastapi")
    import uvicorn
    from serverproc import serve_in_thread

    from q3tts.server import Settings, create_app

    app = create_app(Settings(model="tiny", voices_dir=tmp_path, warmup=False, ui=False, **settings), tts=tts)
    with serve_in_thread(lambda port: uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")) as url:
        yield url


def speech(url: str, ref_audio: str) -> httpx.Response:
    body = {"input": "Hi.", "ref_audio": ref_audio, "x_vector_only_mode": True, "response_format": "wav",
            "max_new_tokens": 4}  # fmt: skip
    return httpx.post(url + "/v1/audio/speech", json=body, timeout=120)


def test_the_server_refuses_urls_unless_allowed_and_then_private_addresses(tiny_tts, files, ref_wav, tmp_path):
    tts = tiny_tts("base")
    with speech_server(tts, tmp_path / "closed") as url:
        r = speech(url, f"{files}/ref.wav")
        assert r.status_code == 400 and "--ref-audio-url-host" in r.json()["error"]["message"]
        inline = base64.b64encode(Path(ref_wav).read_bytes()).decode()
        assert speech(url, inline).status_code == 200  # base64 as ever
    with speech_server(tts, tmp_path / "open", ref_audio_url_hosts=["cdn.example.com", "127.0.0.1"]) as url:
        r = speech(url, f"{files}/ref.wav")  # on the list, but a loopback address
        assert r.status_code == 400 and r.json()["error"]["code"] == "ref_audio_fetch_failed"
        assert "resolves to a private, loopback or reserved address (127.0.0.1)" in r.json()["error"]["message"]
        r = speech(url, files.replace("127.0.0.1", "localhost") + "/ref.wav")  # not on the list
        assert r.status_code == 400 and "host 'localhost' are not allowed" in r.json()["error"]["message"]
        assert speech(url, "file:///etc/hostname").status_code == 400


def test_the_allow_list_flag_and_environment(monkeypatch):
    pytest.importorskip("fastapi")
    from q3tts.server.__main__ import build_parser, settings_from_args

    args = build_parser().parse_args(["--ref-audio-url-host", "cdn.example.com", "--ref-audio-url-host", "*.a.org",
                                      "--ref-audio-url-timeout", "5"])  # fmt: skip
    settings = settings_from_args(args)
    assert settings.ref_audio_url_hosts == ["cdn.example.com", "*.a.org"] and settings.ref_audio_url_timeout == 5
    monkeypatch.setenv("Q3TTS_REF_AUDIO_URL_HOSTS", "x.example.com, y.example.com")
    assert settings_from_args(build_parser().parse_args([])).ref_audio_url_hosts == ["x.example.com", "y.example.com"]
