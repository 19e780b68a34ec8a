"""WS /v1/audio/speech/stream: text arrives in pieces, each sentence is spoken as soon as it is complete.

Client -> server (JSON text frames), named as vLLM-Omni names them:
  {"type": "session.config", model, voice, language, instructions, speed, response_format: "pcm"|"wav", ...}
      optional; any /v1/audio/speech model, voice or generation field; applies to sentences queued after it
  {"type": "input.text", "text": "..."}      more text; complete sentences start generating at once
  {"type": "input.done"}                     flush: speak the rest of the buffer, then `session.done`
  {"type": "session.close"}                  flush, finish, close the connection
Server -> client, per sentence, in order:
  {"type": "audio.start", utterance_index, sentence_index, sentence_text, format, sample_rate}
  binary frames: 16-bit little-endian PCM, 24 kHz mono (format "wav": a streaming WAV header first)
  {"type": "audio.done", utterance_index, sentence_index, total_bytes, error}
and {"type": "session.done", utterance_index, total_sentences} after each input.done;
{"type": "error", "message", "code"} for any bad message or failed sentence (the session goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Optional

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..audio import SAMPLE_RATE
from .encoders import PCMEncoder, WAVEncoder
from .errors import as_api_error
from .protocol import StreamSessionConfig, unicode_problem
from .routing import ModelRouter

log = logging.getLogger("q3tts.server")

# A sentence is complete at end punctuation followed by whitespace (so "3.14" and a word still being
# typed stay in the buffer), at CJK end punctuation, or at a line break.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*\s+|[。！？]+[”’」』）]*\s*|\n\s*")


def pop_sentences(buffer: str) -> tuple[list[str], str]:
    """(complete sentences, the incomplete rest) of `buffer`."""
    sentences, start = [], 0
    for m in _SENTENCE_END.finditer(buffer):
        if piece := buffer[start : m.end()].strip():
            sentences.append(piece)
        start = m.end()
    return sentences, buffer[start:]


class StreamSession:
    def __init__(self, ws: WebSocket, router: ModelRouter):
        self.ws, self.router = ws, router
        self.config = StreamSessionConfig()
        self.buffer = ""
        self.utterance_index = 0
        self.sentence_index = 0  # within the current utterance
        self.work: asyncio.Queue = asyncio.Queue()
        self.send_lock = asyncio.Lock()

    async def run(self) -> None:
        worker = asyncio.create_task(self._speak_queued())
        try:
            closed_by_client = await self._receive()
        except BaseException:
            worker.cancel()
            raise
        if not closed_by_client:  # the socket went away: stop generating now
            worker.cancel()
            return
        await self.work.put(None)
        await worker
        with contextlib.suppress(RuntimeError, OSError):  # the client may have closed first
            await self.ws.close()

    # -- input ------------------------------------------------------------------------------------
    async def _receive(self) -> bool:
        """Read messages until session.close (True) or a disconnect (False)."""
        while True:
            try:
                message = await self.ws.receive()
            except WebSocketDisconnect:
                return False
            if message["type"] == "websocket.disconnect":
                return False
            try:
                data = json.loads(message.get("text") or "")
                kind = data.get("type") if isinstance(data, dict) else None
            except json.JSONDecodeError:
                await self.error("messages must be JSON text frames", "invalid_json")
                continue
            if kind == "session.close":
                self._flush()
                return True
            await self._handle(kind, data)

    async def _handle(self, kind: Optional[str], data: dict) -> None:
        if kind == "session.config":
            if self.buffer.strip():
                return await self.error("send input.done before changing the session config", "text_pending")
            try:
                self.config = StreamSessionConfig.model_validate(data)
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(str(p) for p in first.get("loc", ()))
                await self.error(f"session.config {where}: {first.get('msg')}", "invalid_config")
        elif kind == "input.text":
            if not isinstance(data.get("text"), str):
                return await self.error('input.text needs a string "text"', "invalid_text")
            if problem := unicode_problem(data["text"]):
                return await self.error(f"input.text: {problem}", "invalid_text")
            self.buffer += data["text"]
            sentences, self.buffer = pop_sentences(self.buffer)
            if len(self.buffer) > self.router.settings.max_text_chars:  # no sentence end in sight
                sentences.append(self.buffer.strip())
                self.buffer = ""
            for text in sentences:
                self._queue_sentence(text)
        elif kind == "input.done":
            self._flush()
        else:
            await self.error(f"unknown message type {kind!r}", "unknown_type")

    def _queue_sentence(self, text: str) -> None:
        self.work.put_nowait(("sentence", self.config, text, self.utterance_index, self.sentence_index))
        self.sentence_index += 1

    def _flush(self) -> None:
        if self.buffer.strip():
            self._queue_sentence(self.buffer.strip())
        self.buffer = ""
        self.work.put_nowait(("done", self.utterance_index, self.sentence_index))
        self.utterance_index, self.sentence_index = self.utterance_index + 1, 0

    # -- output -----------------------------------------------------------------------------------
    async def _speak_queued(self) -> None:
        try:
            while (item := await self.work.get()) is not None:
                if item[0] == "done":
                    await self.send_json({"type": "session.done", "utterance_index": item[1],
                                          "total_sentences": item[2]})  # fmt: skip
                else:
                    await self._speak(*item[1:])
        except Exception as e:  # only sending can fail here: the client left while audio was being sent
            log.debug("websocket send failed: %s", e)

    async def _speak(self, config: StreamSessionConfig, text: str, utterance: int, sentence: int) -> None:
        ids = {"utterance_index": utterance, "sentence_index": sentence}
        rate = SAMPLE_RATE
        await self.send_json({"type": "audio.start", **ids, "sentence_text": text, "format": config.response_format,
                              "sample_rate": rate})  # fmt: skip
        encoder = WAVEncoder(rate) if config.response_format == "wav" else PCMEncoder()
        total, failed, audio, service = 0, False, None, None
        try:
            service = await self.router.open(config.model, config.task_type)  # each sentence holds its model
            _, audio = await service.start(config, text)
            async for chunk in audio:
                data = encoder.encode(chunk)
                total += len(data)
                async with self.send_lock:
                    await self.ws.send_bytes(data)
        except Exception as e:
            if isinstance(e, WebSocketDisconnect):
                raise
            failed = True
            err = as_api_error(e)
            await self.error(err.message, err.code)
        finally:
            if audio is not None:
                await audio.aclose()
            if service is not None:
                service.release()
        await self.send_json({"type": "audio.done", **ids, "total_bytes": total, "error": failed})

    async def send_json(self, payload: dict) -> None:
        async with self.send_lock:
            await self.ws.send_text(json.dumps(payload))

    async def error(self, message: str, code: Optional[str] = None) -> None:
        await self.send_json({"type": "error", "message": message, "code": code})
