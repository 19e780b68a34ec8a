"""The speech service behind the routes: request -> validated utterance -> scheduler job -> audio bytes.

Responses start once the first audio chunk exists, so a request that fails before any audio gets a
proper JSON error; from then on bytes leave as the chunks are generated (see encoders.py)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import time
from typing import AsyncIterator, Callable, Optional

import numpy as np
import soundfile as sf

from ..api import Qwen3TTS
from ..audio import SAMPLE_RATE, load_audio
from ..generate.openmp import releasing_workers
from ..generate.prompt import Utterance
from ..serving import SpeechJob, SpeechScheduler
from ..timescale import TimeStretch
from ..url_fetch import FetchError, PublicAddressGuard, fetch_url, is_url
from ..voices import BadVoiceName
from .encoders import MEDIA_TYPES, STREAMED, make_encoder
from .errors import APIError, as_api_error, error_body
from .metrics import Metrics
from .protocol import TASK_OF_KIND, SpeechRequest, VoiceOptions
from .settings import Settings
from .voices import Consent, VoiceExists, VoiceNotFound, VoiceStore, check_name

log = logging.getLogger("q3tts.server")


class SpeechService:
    """One model's requests. The router (routing.py) makes one per request, holding a lease on the
    model that `release()` gives back once the response is sent (the model may then be unloaded)."""

    def __init__(self, settings: Settings, tts: Qwen3TTS, scheduler: SpeechScheduler, voices: VoiceStore,
                 metrics: Metrics, name: Optional[str] = None, release: Optional[Callable[[], None]] = None):  # fmt: skip
        self.settings, self.tts, self.scheduler, self.voices, self.metrics = settings, tts, scheduler, voices, metrics
        self.name = name or settings.model_id
        self.task = TASK_OF_KIND[tts.kind]
        self.speakers = tts.get_supported_speakers() or []
        self._release = release

    def release(self) -> None:
        """Give the model back (idempotent: the stream's end and the response's end both call it)."""
        if self._release is not None:
            self._release()

    async def released_after(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for data in stream:
                yield data
        finally:
            self.release()

    # -- requests -> utterances -----------------------------------------------------------------
    def builtin_voices(self) -> list[str]:
        return list(self.speakers)

    async def utterance(self, o: VoiceOptions, text: str) -> Utterance:
        if o.task_type and o.task_type != self.task:
            raise APIError(400, f"task_type {o.task_type} needs a {o.task_type} checkpoint; this server runs a "
                           f"{self.task} model", "wrong_task_type", "task_type")  # fmt: skip
        limit = self.settings.max_text_chars
        if len(text) > limit:
            raise APIError(400, f"input is {len(text)} characters; at most {limit} are allowed", "text_too_long",
                           "input")  # fmt: skip
        cap = self.settings.max_new_tokens
        for field in ("max_new_tokens", "min_new_tokens"):
            if cap is not None and (getattr(o, field) or 0) > cap:
                raise APIError(400, f"{field} is {getattr(o, field)}; this server allows at most {cap}",
                               "too_many_tokens", field)  # fmt: skip
        kwargs = await self._voice_kwargs(o)
        utts = await asyncio.to_thread(releasing_workers(self.tts.utterances), text, language=o.language, **kwargs)
        return utts[0]

    async def _voice_kwargs(self, o: VoiceOptions) -> dict:
        if self.task == "CustomVoice":
            voice = (o.voice or ("vivian" if "vivian" in self.speakers else self.speakers[0])).lower()
            if voice not in self.speakers:
                raise APIError(400, f"unknown voice '{o.voice}'; this model's voices: {', '.join(self.speakers)}",
                               "voice_not_found", "voice")  # fmt: skip
            return {"speaker": voice, "instruct": o.instructions}
        if self.task == "VoiceDesign":  # `voice` is ignored: the description is the voice
            return {"instruct": o.instructions}
        if o.ref_audio:
            if is_url(o.ref_audio):
                data = await asyncio.to_thread(self.fetch_reference, o.ref_audio)
            else:
                data = decode_base64_audio(o.ref_audio)
            wav = await asyncio.to_thread(self.reference_audio, data)
            return {"ref_audio": (wav, SAMPLE_RATE), "ref_text": o.ref_text, "x_vector_only_mode": o.x_vector_only_mode}
        if not o.voice:
            raise APIError(400, "a Base (voice cloning) model needs `voice` (a saved voice) or `ref_audio`",
                           "voice_required", "voice")  # fmt: skip
        try:
            return {"voice_clone_prompt": await asyncio.to_thread(self.voices.prompt, o.voice)}
        except VoiceNotFound:
            names = ", ".join(v.name for v in await asyncio.to_thread(self.voices.list)) or "none yet"
            raise APIError(400, f"unknown voice '{o.voice}'; saved voices: {names} (upload with POST /v1/audio/voices)",
                           "voice_not_found", "voice") from None  # fmt: skip

    def fetch_reference(self, url: str) -> bytes:
        """`ref_audio` as an http(s) URL: fetched only from the allowed hosts, at public addresses."""
        s = self.settings
        if not s.ref_audio_url_hosts:
            raise APIError(400, "this server does not fetch ref_audio URLs (start it with --ref-audio-url-host "
                           "HOST to allow a host); send the audio as base64 or a data: URL", "invalid_ref_audio",
                           "ref_audio")  # fmt: skip
        try:
            return fetch_url(
                url, s.ref_audio_url_timeout, s.max_upload_bytes, PublicAddressGuard(s.ref_audio_url_hosts)
            )
        except FetchError as e:
            raise APIError(400, str(e), "ref_audio_fetch_failed", "ref_audio") from None

    def reference_audio(self, data: bytes) -> np.ndarray:
        """Uploaded reference bytes -> float32 24 kHz, after the size, completeness and length checks."""
        s = self.settings
        if len(data) > s.max_upload_bytes:
            raise APIError(413, f"reference audio is {len(data)} bytes; at most {s.max_upload_bytes} are allowed",
                           "file_too_large")  # fmt: skip
        check_complete_wav(data)
        try:  # the header's length first: no need to decode a 10-minute file to refuse it
            info = sf.info(io.BytesIO(data))
            self._check_reference_length(info.frames / info.samplerate if info.samplerate else 0.0)
        except APIError:
            raise
        except Exception:
            pass  # not a format libsndfile can describe: load_audio says what is wrong
        wav = load_audio(data)
        self._check_reference_length(len(wav) / SAMPLE_RATE)
        return wav

    def _check_reference_length(self, seconds: float) -> None:
        limit = self.settings.max_reference_seconds
        if seconds > limit:
            raise APIError(400, f"reference audio is {seconds:.1f} s; at most {limit:g} s is allowed",
                           "reference_too_long")  # fmt: skip

    # -- generation -----------------------------------------------------------------------------
    def submit(self, utt: Utterance, o: VoiceOptions) -> SpeechJob:
        first = o.initial_codec_chunk_frames or self.settings.first_chunk_frames
        options = o.generation_kwargs()
        if self.settings.max_new_tokens is not None:
            options.setdefault("max_new_tokens", self.settings.max_new_tokens)
        return self.scheduler.submit(utt, chunk_frames=self.settings.chunk_frames, first_chunk_frames=first,
                                     **options)  # fmt: skip

    async def chunks(self, job: SpeechJob) -> AsyncIterator[np.ndarray]:
        """The job's audio, cut off after `request_timeout`; the job is cancelled if the consumer stops."""
        loop = asyncio.get_running_loop()
        started, deadline = time.perf_counter(), loop.time() + self.settings.request_timeout
        source = job.achunks()
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(source.__anext__(), max(0.0, deadline - loop.time()))
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    log.warning("request cut after request_timeout=%gs", self.settings.request_timeout)
                    self.metrics.errors.labels("timeout").inc()
                    raise RequestTimeout(self.settings.request_timeout) from None
                yield chunk
        except RequestTimeout:
            raise
        except Exception:
            self.metrics.errors.labels("generation").inc()
            raise
        finally:
            if job.finish_reason is None:
                job.cancel()
            self.metrics.observe_job(job.first_chunk_seconds, job.audio_seconds, time.perf_counter() - started,
                                     model=self.name, queue_seconds=job.queue_seconds)  # fmt: skip

    async def start(self, o: VoiceOptions, text: str) -> tuple[SpeechJob, AsyncIterator[np.ndarray]]:
        """Validate, submit, and wait for the first chunk: errors up to then raise here. The audio
        comes at `o.speed` (pitch kept: timescale.py), changed chunk by chunk as it streams."""
        utt = await self.utterance(o, text)
        job = await asyncio.to_thread(self.submit, utt, o)
        chunks = self.chunks(job)
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:  # no audio at all (end of speech at once)
            first = None
        except BaseException:
            await chunks.aclose()
            raise
        audio = _prepend(first, chunks)
        return job, audio if o.speed == 1.0 else _at_speed(audio, o.speed)

    async def speech(self, req: SpeechRequest) -> tuple[AsyncIterator[bytes], str, dict]:
        """POST /v1/audio/speech: (body, media type, headers)."""
        job, audio = await self.start(req, req.input)
        headers = {
            "X-Model": self.name,
            "X-Audio-Speed": f"{req.speed:g}",
            "X-Sample-Rate": str(self.tts.sample_rate),
            "X-Audio-Channels": "1",
            "X-Audio-Streamed": "true" if req.response_format in STREAMED else "false",
            "X-Time-To-First-Audio-Ms": f"{(job.first_chunk_seconds or 0.0) * 1000:.1f}",
            "Cache-Control": "no-store",
        }
        if req.response_format == "pcm":
            headers["X-Audio-Encoding"] = "pcm_s16le"
        if req.stream_format == "sse":
            return self._sse(req, job, audio), "text/event-stream", headers
        return self._audio(req.response_format, audio), MEDIA_TYPES[req.response_format], headers

    async def _audio(self, fmt: str, audio: AsyncIterator[np.ndarray]) -> AsyncIterator[bytes]:
        encoder = make_encoder(fmt, self.tts.sample_rate)
        try:
            try:
                async for chunk in audio:
                    if data := encoder.encode(chunk):
                        yield data
            except RequestTimeout:  # the audio so far, as a whole file (SSE and WebSocket say why)
                pass
            yield encoder.finish()
        except Exception as e:  # headers are sent: the best left to do is end the stream early
            log.error("speech stream failed: %s", e)
        finally:
            await audio.aclose()

    async def _sse(self, req: SpeechRequest, job: SpeechJob, audio: AsyncIterator[np.ndarray]) -> AsyncIterator[bytes]:
        """OpenAI's stream_format="sse": base64 pieces of the encoded file, then usage."""
        encoder = make_encoder(req.response_format, self.tts.sample_rate)
        try:
            async for chunk in audio:
                if data := encoder.encode(chunk):
                    yield sse("speech.audio.delta", {"audio": base64.b64encode(data).decode("ascii")})
            if data := encoder.finish():
                yield sse("speech.audio.delta", {"audio": base64.b64encode(data).decode("ascii")})
            text_tokens = len(self.tts.checkpoint.tokenizer.encode(req.input))
            usage = {"input_tokens": text_tokens, "output_tokens": job.frames_generated,
                     "total_tokens": text_tokens + job.frames_generated}  # fmt: skip
            yield sse("speech.audio.done", {"usage": usage})
        except Exception as e:
            err = as_api_error(e)
            yield sse("speech.audio.error", error_body(err.status, err.message, err.code))
        finally:
            await audio.aclose()

    # -- voices ---------------------------------------------------------------------------------
    def list_voices(self) -> dict:
        return list_voices(self.voices, self.task, self.builtin_voices())

    async def create_voice(self, name: str, audio: bytes, ref_text: Optional[str], x_vector_only_mode: bool,
                           consent: Optional[str] = None, consent_by: Optional[str] = None) -> dict:  # fmt: skip
        if self.task != "Base":
            raise APIError(400, f"saving a cloned voice needs a Base checkpoint; this server runs a {self.task} model",
                           "wrong_model_kind")  # fmt: skip
        try:
            check_name(name)
        except BadVoiceName as e:
            raise APIError(400, str(e), "invalid_voice_name", "name") from None
        statement = self._consent(consent, consent_by)
        if await asyncio.to_thread(self.voices.__contains__, name):
            raise APIError(409, f"a voice named '{name}' already exists; delete it first", "voice_exists", "name")
        wav = await asyncio.to_thread(self.reference_audio, audio)
        ref_text = (ref_text or "").strip() or None
        items = await asyncio.to_thread(releasing_workers(self.tts.create_voice_clone_prompt), (wav, SAMPLE_RATE), ref_text,
                                        x_vector_only_mode or ref_text is None)  # fmt: skip
        try:
            voice = await asyncio.to_thread(self.voices.add, name, items[0], len(wav) / SAMPLE_RATE, statement)
        except VoiceExists:
            raise APIError(409, f"a voice named '{name}' already exists; delete it first", "voice_exists",
                           "name") from None  # fmt: skip
        return voice.public()

    def _consent(self, text: Optional[str], by: Optional[str]) -> Optional[Consent]:
        """The consent statement of an upload (who, text, now); required with --require-consent."""
        text, by = (text or "").strip(), (by or "").strip()
        if self.settings.require_consent and not (text and by):
            missing = " and ".join(f for f, v in (("consent", text), ("consent_by", by)) if not v)
            raise APIError(400, f"this server saves cloned voices only with the speaker's consent: send {missing} "
                           "(the statement, and who gave it)", "consent_required", "consent")  # fmt: skip
        if bool(text) != bool(by):
            raise APIError(400, "send both consent (the statement) and consent_by (who gave it), or neither",
                           "incomplete_consent", "consent")  # fmt: skip
        for field, value in (("consent", text), ("consent_by", by)):
            if len(value) > 2000:
                raise APIError(400, f"{field} is {len(value)} characters; at most 2000 are allowed", "consent_too_long",
                               field)  # fmt: skip
        return Consent(by, text, time.time()) if text else None

    def delete_voice(self, name: str) -> dict:
        return delete_saved_voice(self.voices, name)


def delete_saved_voice(voices: VoiceStore, name: str) -> dict:
    """DELETE /v1/audio/voices/{name}: no model is needed."""
    try:
        voices.delete(name)
    except VoiceNotFound:
        raise APIError(404, f"voice '{name}' not found", "voice_not_found", "name") from None
    return {"id": name, "object": "voice", "deleted": True}


def list_voices(voices: VoiceStore, task: str, builtin: list[str]) -> dict:
    """GET /v1/audio/voices for a model of `task` with these built-in speakers."""
    saved = [v.public() for v in voices.list()]
    usable = list(builtin) if task == "CustomVoice" else [v["name"] for v in saved]
    if task == "VoiceDesign":
        usable = []
    return {"voices": usable, "builtin_voices": list(builtin), "uploaded_voices": saved}


async def _at_speed(audio: AsyncIterator[np.ndarray], speed: float) -> AsyncIterator[np.ndarray]:
    """The chunks time-scaled as they come (the same samples as scaling the whole clip at once)."""
    stretch = TimeStretch(speed)
    try:
        async for chunk in audio:
            if (out := stretch.push(chunk)).size:
                yield out
        if (out := stretch.finish()).size:
            yield out
    finally:
        await audio.aclose()


async def _prepend(first: Optional[np.ndarray], rest: AsyncIterator[np.ndarray]) -> AsyncIterator[np.ndarray]:
    try:
        if first is not None:
            yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()


class RequestTimeout(APIError):
    """Generation ran past `request_timeout`: the audio is cut there."""

    def __init__(self, seconds: float):
        super().__init__(504, f"generation was cut after request_timeout ({seconds:g} s)", "request_timeout")


def sse(event: str, payload: dict) -> bytes:
    body = json.dumps({"type": event, **payload}, separators=(",", ":"))
    return f"event: {event}\ndata: {body}\n\n".encode()


def decode_base64_audio(text: str) -> bytes:
    """`ref_audio` as sent in JSON: base64 or a data: URL. Files are never opened (http(s) URLs: fetch_reference)."""
    text = text.strip()
    if text.startswith(("http://", "https://", "file:")):
        raise APIError(400, "ref_audio must be base64 or a data: URL; the server does not open files",
                       "invalid_ref_audio", "ref_audio")  # fmt: skip
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "ref_audio is not valid base64", "invalid_ref_audio", "ref_audio") from None


def check_complete_wav(data: bytes) -> None:
    """A RIFF/WAVE file shorter than its header says was cut off in transfer: refuse it rather than
    clone half a voice. (Streaming writers' 0 / 0xFFFFFFFF "unknown" sizes pass.)"""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        declared = int.from_bytes(data[4:8], "little") + 8
        if declared not in (8, 0xFFFFFFFF + 8) and declared > len(data):
            raise APIError(400, f"the WAV file is truncated: its header announces {declared} bytes, {len(data)} "
                           "arrived", "truncated_audio")  # fmt: skip
