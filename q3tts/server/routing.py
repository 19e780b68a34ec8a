"""Which model serves a request: `model` names one of the served models (`--model NAME=PATH`),
`task_type` picks its kind's active model, neither means the default (the first served).

    svc = await router.open(body.model, body.task_type)   # a SpeechService holding a lease on its model
    ...; svc.release()                                    # when its response has been sent

The model loads on first use (ModelManager, models.py); while a request holds its lease the model is
not unloaded to make room for another. OpenAI's model names (tts-1, ...) mean the default model."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Optional

from .errors import APIError
from .metrics import Metrics
from .models import KINDS, ModelManager, ModelsBusy, ModelUnavailable
from .protocol import OPENAI_MODEL_NAMES
from .settings import Settings
from .speech import SpeechService, list_voices
from .voices import VoiceStore

log = logging.getLogger("q3tts.server")
KIND_OF_TASK = {task: kind for kind, task in KINDS.items()}


class ModelRouter:
    def __init__(self, settings: Settings, models: ModelManager, voices: VoiceStore, metrics: Metrics, default: str):
        self.settings, self.models, self.voices, self.metrics = settings, models, voices, metrics
        self.default = default

    def resolve(self, model: Optional[str], task_type: Optional[str]) -> str:
        """The served model's name for a request's `model` and `task_type` (404 / 400 otherwise)."""
        if model and model not in OPENAI_MODEL_NAMES and not self._is_default_alias(model):
            if model not in self.models.names:
                raise APIError(404, f"model '{model}' is not served here; served models: "
                               f"{', '.join(self.models.names)}", "model_not_found", "model")  # fmt: skip
            name = model
        elif task_type and KINDS[self.models.info(self.default)["kind"]] != task_type:
            kind = KIND_OF_TASK[task_type]
            if not self.models.has(kind):
                raise APIError(400, f"task_type {task_type} needs a {task_type} checkpoint; this server serves "
                               f"{self._served()}", "wrong_task_type", "task_type")  # fmt: skip
            return self.models.info(kind)["name"]
        else:
            name = self.default
        served_task = KINDS[self.models.info(name)["kind"]]
        if task_type and task_type != served_task:
            raise APIError(400, f"task_type {task_type} does not match model '{name}', a {served_task} model",
                           "wrong_task_type", "task_type")  # fmt: skip
        return name

    def _is_default_alias(self, model: str) -> bool:
        """The single-model server's `--model` path (as given) names its model too."""
        return not self.settings.models and model == str(self.settings.model)

    def _served(self) -> str:
        return ", ".join(f"{e['name']} ({KINDS[e['kind']]})" for e in self.models.entries())

    async def open(self, model: Optional[str], task_type: Optional[str]) -> SpeechService:
        """A SpeechService on the model that serves this request, loading it if needed."""
        name = self.resolve(model, task_type)
        try:
            lease = await asyncio.to_thread(self.models.acquire, name)
        except ModelsBusy as e:
            raise APIError(503, str(e), "models_busy", "model") from None
        except ModelUnavailable as e:
            raise APIError(404, str(e), "model_not_found", "model") from None
        except Exception as e:  # a checkpoint that cannot load: this request fails, the server runs on
            log.error("model %s failed to load: %s", name, e)
            raise APIError(503, f"model '{name}' failed to load: {type(e).__name__}: {e}", "model_load_failed",
                           "model") from None  # fmt: skip
        return SpeechService(self.settings, lease.tts, lease.scheduler, self.voices, self.metrics, name=name,
                             release=lease.release)  # fmt: skip

    async def open_kind(self, kind: str) -> SpeechService:
        """The kind's active model if one is served, else the default (whose service says what it lacks)."""
        name = self.models.info(kind)["name"] if self.models.has(kind) else self.default
        return await self.open(name, None)

    # -- what needs no loaded model ---------------------------------------------------------------
    def list_voices(self) -> dict:
        info = self.models.info(self.default)
        return list_voices(self.voices, KINDS[info["kind"]], info["speakers"])

    def schema_view(self) -> SimpleNamespace:
        """What the OpenAPI document narrows request fields to: the default model's, read from its config.
        With several models served, requests may name any of them; the fields follow the default."""
        info = self.models.info(self.default)
        names = [*self.models.names] + ([str(self.settings.model)] if not self.settings.models else [])
        return SimpleNamespace(settings=self.settings, task=KINDS[info["kind"]], speakers=info["speakers"],
                               languages=info["languages"], size=info["size"], voices=self.voices, names=names,
                               tasks=sorted({KINDS[e["kind"]] for e in self.models.entries()}),
                               several=len(self.models.names) > 1)  # fmt: skip

    def model_cards(self, created: int) -> list[dict]:
        return [{"id": e["name"], "object": "model", "created": created, "owned_by": "q3tts",
                 "kind": KINDS[e["kind"]], "size": e["size"], "loaded": e["loaded"],
                 "weights_bytes": e["weights_bytes"], "default": e["name"] == self.default}
                for e in self.models.entries()]  # fmt: skip
