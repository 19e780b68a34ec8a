"""Finding 7, the OpenAPI document: schemathesis found undocumented status codes and content types,
schema-valid requests that were rejected, and an Allow header mismatch. Now it runs clean (every
check, bounded examples) against a CustomVoice and a Base server on tiny checkpoints.

CustomVoice runs schemathesis' default checks unchanged. On Base, a schema-valid request can still
be a 400 for reasons no JSON schema can state (reference bytes that are not audio, a clip under a
second), so there `positive_data_acceptance` also expects 400: every other check is unchanged."""

from __future__ import annotations

import httpx
import pytest
from conftest import live, wav_bytes

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

from q3tts.server import Settings, create_app  # noqa: E402

EXAMPLES = 12  # per operation: the whole file stays under a minute on 2 cores
BASE_CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]
"""


def server_settings(tmp_path, model: str) -> Settings:
    # max_new_tokens: a schema-valid request of 8192 frames would generate for minutes on 2 cores.
    return Settings(model=model, voices_dir=tmp_path, warmup=False, ui=False, max_text_chars=200,
                    max_new_tokens=24)  # fmt: skip


@pytest.fixture(scope="module")
def cv_schema(custom_tts, tmp_path_factory):
    settings = server_settings(tmp_path_factory.mktemp("cv-openapi"), "tiny-cv")
    with live(create_app(settings, tts=custom_tts), settings) as url:
        yield schemathesis.openapi.from_url(url + "/openapi.json", config=SchemathesisConfig())


@pytest.fixture(scope="module")
def base_schema(base_tts, tmp_path_factory):
    settings = server_settings(tmp_path_factory.mktemp("base-openapi"), "tiny-base")
    with live(create_app(settings, tts=base_tts), settings) as url:
        r = httpx.post(url + "/v1/audio/voices", data={"name": "saved", "x_vector_only_mode": "true"},
                       files={"audio_sample": ("r.wav", wav_bytes(1.2), "audio/wav")}, timeout=60)  # fmt: skip
        assert r.status_code == 201, r.text
        yield schemathesis.openapi.from_url(url + "/openapi.json", config=SchemathesisConfig.from_str(BASE_CONFIG))


BOUNDED = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                   database=None)  # fmt: skip


def run_schemathesis(schema, before_call=None) -> dict:
    """Every operation, schema-valid and schema-invalid examples, every check; the statuses seen.
    (schemathesis' own pytest plugin does not load under this pytest, so this drives hypothesis.)"""
    seen: dict = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @BOUNDED
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case):
                if before_call:
                    before_call(case)
                response = case.call_and_validate(timeout=60)
                seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid (GET /health takes no input)
                assert mode == GenerationMode.NEGATIVE
    return seen


def test_custom_voice_server_matches_its_openapi(cv_schema):
    seen = run_schemathesis(cv_schema)
    assert not any(s >= 500 for statuses in seen.values() for s in statuses), seen
    assert 200 in seen["POST /v1/audio/speech"], seen  # schema-valid speech was generated and accepted


def test_base_server_matches_its_openapi(base_schema):
    def keep_the_saved_voice(case):
        if case.method == "DELETE":  # the speech examples use it
            case.path_parameters = {"name": "not-saved"}

    seen = run_schemathesis(base_schema, keep_the_saved_voice)
    assert not any(s >= 500 for statuses in seen.values() for s in statuses), seen
    assert seen["GET /v1/audio/voices"] == {200}, seen


def test_allow_names_every_method_of_a_path(base_tts, tmp_path):
    settings = server_settings(tmp_path, "tiny-base")
    with live(create_app(settings, tts=base_tts), settings) as url:
        paths = httpx.get(url + "/openapi.json").json()["paths"]
        for path, operations in paths.items():
            documented = {m.upper() for m in operations}
            for method in {"OPTIONS", "PUT", "PATCH", "GET", "POST", "DELETE"} - documented:
                r = httpx.request(method, url + path.replace("{name}", "x"))
                assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed", (path, method)
                assert set(r.headers["allow"].split(", ")) == documented, (path, method, r.headers["allow"])
