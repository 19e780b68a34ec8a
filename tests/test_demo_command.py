"""The official demo's command line, `q3tts demo MODEL --ip 0.0.0.0 --port 8000 --ssl-certfile ...
--ssl-keyfile ... --no-ssl-verify`, serves the web UI alone (a real process, fetched over HTTPS);
`q3tts demo` alone is still the demo job; under `q3tts serve`, `/` leads to the UI."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("gradio")
pytest.importorskip("fastapi")
from serverproc import free_port, serve_in_thread  # noqa: E402

from q3tts.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::q3tts.generate.engine.LengthCapWarning")


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl, else the cryptography package)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    if shutil.which("openssl"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)  # fmt: skip
        return cert, key
    x509 = pytest.importorskip("cryptography.x509")
    import datetime
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .sign(private, hashes.SHA256()))  # fmt: skip
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))  # fmt: skip
    return cert, key


def wait_page(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> httpx.Response:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"q3tts demo exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            r = httpx.get(url, verify=False, timeout=5)
            if r.status_code == 200:
                return r
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not served after {timeout} s")


def test_the_official_demo_command_line_serves_the_ui_over_https(make_tiny, tmp_path):
    cert, key = self_signed(tmp_path)
    port = free_port()
    cmd = [sys.executable, "-m", "q3tts.cli", "demo", str(make_tiny("custom_voice")), "--ip", "0.0.0.0", "--port",
           str(port), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--no-ssl-verify", "--device", "cpu",
           "--voices-dir", str(tmp_path / "voices"), "--max-new-tokens", "321", "--top-p", "0.8"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        page = wait_page(f"https://127.0.0.1:{port}/ui/", proc)
        assert "<title>Qwen3-TTS</title>" in page.text or "Qwen3-TTS" in page.text
        # verified against the certificate it was given: this is that HTTPS server
        trusted = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(f"https://127.0.0.1:{port}/ui/", verify=trusted, timeout=10).status_code == 200
        # --max-new-tokens starts the slider (--top-p goes to every run, as in the official demo)
        config = httpx.get(f"https://127.0.0.1:{port}/ui/config", verify=False, timeout=10).json()
        sliders = {c["props"].get("label"): c["props"].get("value") for c in config["components"]}
        assert sliders["Max new tokens (80 ms each)"] == 321
        root = httpx.get(f"https://127.0.0.1:{port}/", verify=False, timeout=10)
        assert root.is_redirect and root.headers["location"] == "ui/"
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on that port
            httpx.get(f"http://127.0.0.1:{port}/ui/", timeout=5).raise_for_status()
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert "--no-ssl-verify: nothing to verify" in err  # the flag is accepted, and said to change nothing
    assert f"https://127.0.0.1:{port}/ui/" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--share"], "--share (a public gradio.live link) is not supported"),
        (
            ["--ssl-certfile", "missing.pem", "--ssl-keyfile", "missing.pem"],
            "--ssl-certfile missing.pem: file not found",
        ),
        (["--ssl-certfile", "cert.pem"], "--ssl-certfile and --ssl-keyfile go together"),
    ],
)
def test_demo_flags_that_cannot_work_fail_in_one_line(make_tiny, capsys, argv, message):
    capsys.readouterr()
    assert main(["demo", str(make_tiny("custom_voice")), *argv]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("q3tts: error: ") and message in lines[0]


def test_demo_options_without_a_model_say_what_is_missing(capsys):
    assert main(["demo", "--port", "8000"]) == 1
    assert "needs MODEL" in capsys.readouterr().err


def test_demo_without_arguments_is_still_the_demo_job(make_tiny, tmp_path, monkeypatch, capsys):
    # The job (q3tts/demo.py, `make demo`) loads Q3TTS_MODEL; a Base checkpoint makes it stop right
    # after loading, with its own message, instead of generating 200 frames.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("Q3TTS_MODEL", str(make_tiny("base")))
    assert main(["demo"]) == 1
    out = capsys.readouterr().out
    assert f"loaded {make_tiny('base')} (base)" in out and "run `q3tts clone`" in out


def test_serve_redirects_the_root_to_the_ui(tiny_tts, tmp_path):
    import uvicorn

    from q3tts.server import Settings, create_app

    settings = Settings(model="tiny", voices_dir=tmp_path, warmup=False)
    app = create_app(settings, tts=tiny_tts("custom_voice"))
    with serve_in_thread(lambda port: uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")) as url:
        root = httpx.get(url + "/", timeout=30)
        assert root.is_redirect and root.headers["location"] == "ui/"
        page = httpx.get(url + "/", follow_redirects=True, timeout=30)
        assert page.status_code == 200 and str(page.url) == url + "/ui/" and "Qwen3-TTS" in page.text
