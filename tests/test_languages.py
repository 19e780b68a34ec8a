"""ISO codes, tags and common spellings of a language (en, zh-CN, pt_BR, English, Deutsch) mean the
model's language in the API, the CLI and the server (the web UI: tests/test_ui_uploads_cleanup.py
clones with language "en"); anything else is one error that lists what the model takes."""

from __future__ import annotations

import httpx
import pytest
import torch

from q3tts.cli import main
from q3tts.languages import UnknownLanguage, accepted_names, resolve_language

pytestmark = pytest.mark.filterwarnings("ignore::q3tts.generate.engine.LengthCapWarning")
MODEL_LANGUAGES = ["auto", "chinese", "english", "french", "german", "italian", "japanese", "korean", "portuguese",
                   "russian", "spanish"]  # fmt: skip


@pytest.mark.parametrize(
    ("typed", "language"),
    [("en", "english"), ("EN", "english"), ("en-US", "english"), ("en_GB", "english"), ("English", "english"),
     ("english", "english"), (" english ", "english"), ("eng", "english"), ("zh", "chinese"), ("zh-CN", "chinese"),
     ("zh-Hans", "chinese"), ("zh_TW", "chinese"), ("中文", "chinese"), ("ja", "japanese"), ("日本語", "japanese"),
     ("ko", "korean"), ("es", "spanish"), ("es-419", "spanish"), ("Español", "spanish"), ("pt-BR", "portuguese"),
     ("pt", "portuguese"), ("de", "german"), ("Deutsch", "german"), ("fr-CA", "french"), ("it", "italian"),
     ("ru", "russian"), (None, "auto"), ("", "auto"), ("Auto", "auto")],
)  # fmt: skip
def test_codes_and_spellings_resolve_to_the_model_language(typed, language):
    assert resolve_language(typed, MODEL_LANGUAGES) == language


def test_an_unknown_language_lists_the_accepted_ones():
    with pytest.raises(UnknownLanguage) as e:
        resolve_language("klingon", MODEL_LANGUAGES)
    assert str(e.value) == (
        "unsupported language 'klingon'; use one of: auto, chinese, english, french, german, italian, japanese, "
        "korean, portuguese, russian, spanish (or a code such as en, zh, ja, pt-BR)"
    )
    with pytest.raises(UnknownLanguage, match=r"'pt-BR' \(portuguese is not one of this model's languages\)"):
        resolve_language("pt-BR", ["auto", "english"])  # a model without Portuguese
    assert isinstance(e.value, ValueError)  # an InputError: one line in the CLI, a 400 in the server


def test_the_api_takes_codes(custom_voice_tts):
    tts = custom_voice_tts
    (by_code,) = tts.utterances("Hello.", speaker="vivian", language="en-US")
    (by_name,) = tts.utterances("Hello.", speaker="vivian", language="English")
    assert by_code.language == by_name.language == "english"
    # the same prompt (the language id among its codec tokens), so the same speech
    code_prompt, name_prompt = tts.plan(by_code).prompts[0], tts.plan(by_name).prompts[0]
    assert torch.equal(code_prompt.prefill, name_prompt.prefill)
    (auto,) = tts.utterances("Hello.", speaker="vivian")
    assert tts.plan(auto).prompts[0].prefill.shape[0] == code_prompt.prefill.shape[0] - 1  # no language id
    greedy = {"do_sample": False, "subtalker_dosample": False, "max_new_tokens": 3}
    wavs, _ = tts.generate_custom_voice(["Hi.", "你好。"], speaker="vivian", language=["en", "zh-CN"], **greedy)
    assert len(wavs) == 2
    with pytest.raises(ValueError, match="unsupported language 'xx'; use one of: auto, chinese"):
        tts.generate_custom_voice("Hi.", speaker="vivian", language="xx")


def test_the_cli_takes_codes(make_tiny, tmp_path, capsys):
    model = str(make_tiny("custom_voice"))
    speak = ["speak", "Hello.", "-m", model, "--speaker", "vivian", "--device", "cpu", "--greedy",
             "--max-new-tokens", "4", "-q"]  # fmt: skip
    assert main([*speak, "--language", "zh-CN", "-o", str(tmp_path / "zh.wav")]) == 0
    assert (tmp_path / "zh.wav").stat().st_size > 44
    capsys.readouterr()
    assert main([*speak, "--language", "tlh", "-o", str(tmp_path / "x.wav")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        "q3tts: error: unsupported language 'tlh'; use one of: auto, chinese, english, french, german, italian, "
        "japanese, korean, portuguese, russian, spanish (or a code such as en, zh, ja, pt-BR)"
    ]
    assert not (tmp_path / "x.wav").exists()


@pytest.fixture(scope="module")
def server_url(tiny_tts, tmp_path_factory):
    pytest.importorskip("fastapi")
    import uvicorn
    from serverproc import serve_in_thread

    from q3tts.server import Settings, create_app

    settings = Settings(model="tiny", voices_dir=tmp_path_factory.mktemp("voices"), warmup=False, ui=False)
    app = create_app(settings, tts=tiny_tts("custom_voice"))
    with serve_in_thread(lambda port: uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")) as url:
        yield url


def test_the_server_takes_codes(server_url):
    body = {"input": "Olá.", "voice": "vivian", "response_format": "wav", "max_new_tokens": 4}
    r = httpx.post(server_url + "/v1/audio/speech", json={**body, "language": "pt-BR"}, timeout=120)
    assert r.status_code == 200 and r.content[:4] == b"RIFF"
    r = httpx.post(server_url + "/v1/audio/speech", json={**body, "language": "xx"}, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("unsupported language 'xx'; use one of: auto, chinese, english")
    # the OpenAPI document lists the codes as accepted values too
    schema = httpx.get(server_url + "/openapi.json", timeout=30).json()
    enum = schema["components"]["schemas"]["SpeechRequest"]["properties"]["language"]["anyOf"][0]["enum"]
    assert {"pt-br", "en", "zh-cn", "english"} <= set(enum) and enum == accepted_names(MODEL_LANGUAGES)
