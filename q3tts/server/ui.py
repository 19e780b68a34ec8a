"""The web UI: a Gradio app mounted on a FastAPI app at /ui.

    app = mount_ui(FastAPI(), ModelManager({"0.6B": path}), voices_dir)      # in the server
    python -m q3tts.server.ui --model 0.6B=PATH --model clone=PATH --port 7860  # the UI alone

Tabs: Custom Voice, Voice Design, Voice Clone, Design -> Clone (a designed voice kept as a cloned
voice), Voice Library (the same `NAME.safetensors` files as `q3tts voices`) and Models (load,
unload, switch, memory). Synthesis goes through each model's SpeechScheduler, so several users
share generation steps; audio plays while it is generated (gr.Audio(streaming=True), which needs
ffmpeg on the server; without it the result plays when done) and every run reports time to first
audio and real-time factor. Every failure shows as a message in the page, never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import io
import logging
import os
import re
import sys
import time
import wave
from pathlib import Path
from typing import Optional

import gradio as gr
import numpy as np
from gradio import processing_utils

from ..console import one_line
from ..errors import Q3TTSError
from ..generate.codec_stream import DEFAULT_CHUNK_FRAMES
from ..generate.openmp import releasing_workers
from ..voices import default_voices_dir
from .models import KINDS, ModelManager, ModelsBusy, ModelUnavailable, format_bytes, parse_model_specs
from .security import GuardMiddleware, HostPolicy
from .ui_files import UPLOAD_MAX_AGE, UIFileGuard, UploadRefused, UploadRegistry, client_token
from .voices import VoiceExists, VoiceLibrary, VoiceNotFound

log = logging.getLogger("q3tts.ui")

# System fonts only: the page makes no requests outside this server (offline and HTTPS friendly).
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
STREAMING = processing_utils.ffmpeg_installed()  # Gradio encodes streamed audio with ffmpeg
NO_VOICE = "(none: use the reference below)"
# The language lists offer the model's names; a typed code or spelling (en, zh-CN, Deutsch) is
# resolved by the API like any other (q3tts/languages.py).
LANGUAGE_FIELD = {"label": "Language (or a code: en, zh-CN, ...)", "allow_custom_value": True}


# ----------------------------------------------------------------------------------------------
# Errors: one line in the page
# ----------------------------------------------------------------------------------------------


def _expected() -> tuple[type[BaseException], ...]:
    from ..api import InputError
    from ..audio import AudioError
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..serving import QueueFull, SchedulerClosed

    return (InputError, AudioError, CheckpointError, ConfigError, QueueFull, SchedulerClosed, ModelUnavailable,
            ModelsBusy, UploadRefused, ValueError, OSError)  # fmt: skip


def _error(e: BaseException) -> gr.Error:
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, _expected()):
        return gr.Error(one_line(str(e)) or type(e).__name__)
    log.exception("UI request failed")
    return gr.Error(f"internal error ({type(e).__name__}: {one_line(str(e))}); see the server log")


def _guarded(fn):
    """Any exception of `fn` (a function or a generator function) -> gr.Error with one line."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                raise _error(e) from None

        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise _error(e) from None

    return call


# ----------------------------------------------------------------------------------------------
# Audio and run statistics
# ----------------------------------------------------------------------------------------------


def _int16(wav: np.ndarray) -> np.ndarray:
    return (np.clip(wav, -1.0, 1.0) * 32767).astype(np.int16)


def _wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(_int16(wav).tobytes())
    return buf.getvalue()


def _stats(job, wall: float, load_seconds: float, note: str = "") -> str:
    audio = job.audio_seconds
    parts = [f"time to first audio **{job.first_chunk_seconds or 0:.2f} s**"]
    if audio > 0:
        parts.append(f"{audio:.2f} s of audio in {wall:.2f} s · RTF **{wall / audio:.2f}** "
                     f"(wall / audio; {audio / wall:.2f}x real time)")  # fmt: skip
    if load_seconds:
        parts.append(f"model loaded first, in {load_seconds:.1f} s")
    if job.finish_reason == "length":
        parts.append("stopped at the max new tokens limit (no end of speech)")
    return " · ".join(parts) + (f" · {note}" if note else "")


# ----------------------------------------------------------------------------------------------
# Evaluation (q3tts.eval): measures after a clone, and the Evaluate tab
# ----------------------------------------------------------------------------------------------
EVAL_MAX_ITEMS = 20  # the tab runs in the request: a small list only (`q3tts eval` for real runs)


def _clone_measures(tts, wav: np.ndarray, sr: int, ref: Optional[tuple], text: str) -> str:
    """Similarity to the reference (the model's own speaker encoder) and the speech rate, one line."""
    from ..eval.errors import EvalError
    from ..eval.pacing import pacing
    from ..eval.speaker import CheckpointEmbedder, similarity

    parts = [f"speech rate **{pacing(wav, sr, text).words_per_second:.1f} words/s**"]
    if ref is not None:
        try:
            embedder = CheckpointEmbedder(tts)
            sim = similarity(embedder.embed(wav, sr), embedder.embed(*ref))
            parts.insert(0, f"similarity to the reference **{sim:.2f}** (the model's speaker encoder)")
        except EvalError as e:
            parts.insert(0, f"similarity not measured: {e}")
    return " · ".join(parts)


def _evaluate(tts, list_path: str, options: dict) -> tuple[Optional[np.ndarray], str]:
    import tempfile

    from ..eval.errors import EvalError
    from ..eval.report import write_report
    from ..eval.runner import NATURALNESS_NOTE, Scorers, evaluate_model
    from ..eval.testlist import load_test_list

    items = load_test_list(list_path)
    if len(items) > EVAL_MAX_ITEMS:
        raise EvalError(f"the list has {len(items)} items; the web UI runs at most {EVAL_MAX_ITEMS} (use `q3tts eval`)")
    try:
        import resemblyzer  # noqa: F401

        backend = "resemblyzer"
    except ImportError:
        backend = "none"
    with tempfile.TemporaryDirectory(prefix="q3tts-eval-") as out:
        rows = evaluate_model(tts, tts.kind, items, Scorers(speaker_backend=backend), **options)
        paths = write_report(Path(out), rows, [NATURALNESS_NOTE])
        plot = None
        if "png" in paths:
            import matplotlib.pyplot as plt

            plot = (plt.imread(paths["png"])[..., :3] * 255).astype(np.uint8)
        report = paths["markdown"].read_text(encoding="utf-8").replace("![distributions](distributions.png)", "")
    return plot, report


# ----------------------------------------------------------------------------------------------
# The voice library
# ----------------------------------------------------------------------------------------------


def _language_choices(info: Optional[dict]) -> list[tuple[str, str]]:
    return [(lang.title(), lang) for lang in (info["languages"] if info else ["auto"])]


def _speaker_choices(info: Optional[dict]) -> list[tuple[str, str]]:
    return [(s.replace("_", " ").title(), s) for s in (info or {}).get("speakers", [])]


# ----------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------


def build_ui(models: ModelManager, voices_dir, uploads: Optional[UploadRegistry] = None,
             generation: Optional[dict] = None) -> gr.Blocks:  # fmt: skip
    """The UI over `models`. `generation`: sampling options of every run (`q3tts demo --top-p ...`);
    max_new_tokens, temperature and top_k among them are the sliders' starting values. `voices_dir`: the voice library, a folder (as `q3tts voices` keeps it)
    or a library object with list(), prompt(name), add(name, item, duration), delete(name).
    `uploads`: the files each browser uploaded, as UIFileGuard records them (ui_files.py); the
    only files an input may name. Serve the UI through `mount_ui`, which installs that guard:
    without it no upload is recorded, so every reference clip is refused."""
    voices = VoiceLibrary(voices_dir) if isinstance(voices_dir, (str, os.PathLike)) else voices_dir
    uploads = uploads if uploads is not None else UploadRegistry()

    def uploaded_audio(request: Optional[gr.Request], path: str) -> tuple[np.ndarray, int]:
        """A reference clip this browser uploaded, as (24 kHz audio, rate); never another server file."""
        from ..audio import SAMPLE_RATE, load_audio

        token = client_token({"headers": request.headers.raw}) if request is not None else None
        return uploads.read_audio(token, path, load_audio), SAMPLE_RATE

    # -- helpers over the model manager and the voice library ------------------------------------
    def info(kind: str) -> Optional[dict]:
        return models.info(kind) if models.has(kind) else None

    def kind_status(kind: str) -> str:
        i = info(kind)
        if i is None:
            return (f"⚠️ **No {KINDS[kind]} model is configured**, so this tab cannot run. Start the app with "
                    f"a {KINDS[kind]} checkpoint too (`--model NAME=PATH`).")  # fmt: skip
        size = i["size"] or ""
        size = f", {size.replace('b', '.').upper()}B" if re.fullmatch(r"\d+b\d+", size) else f", {size}" * bool(size)
        state = "loaded" if i["loaded"] else "not loaded: it loads on the first run, or load it in the Models tab"
        return f"Model **{i['name']}** ({KINDS[kind]}{size}): {state}."

    def library(action: str, name: str, *args):
        """A voice library call; its errors (whatever their class) become one-line messages."""
        if not (name or "").strip():
            raise gr.Error("give a voice name" if action == "add" else "choose a voice first")
        name = name.strip()
        try:
            return getattr(voices, action)(name, *args)
        except VoiceExists:
            raise gr.Error(f"a voice named '{name}' already exists; delete it first in the Voice Library tab") from None
        except VoiceNotFound:
            raise gr.Error(f"no voice named '{name}'") from None
        except Exception as e:
            raise gr.Error(f"voice '{name}': {one_line(str(e.args[0] if e.args else e))}") from None

    def save_voice(name: str, item, duration: float) -> str:
        library("add", name, item, duration)
        mode = "x-vector only" if item.x_vector_only_mode else "in-context"
        return f"Saved voice **{name.strip()}** ({mode}, {duration:.1f} s reference)."

    generation = dict(generation or {})

    def gen_kwargs(max_new_tokens, temperature, top_k, seed) -> dict:
        kw = {**generation, "max_new_tokens": int(max_new_tokens), "temperature": float(temperature),
              "top_k": int(top_k)}  # fmt: skip
        if seed is not None and int(seed) >= 0:
            kw["seed"] = int(seed)
        return kw

    def speak(kind: str, settings: tuple, keep: Optional[list] = None, note: str = "", after=None, **call):
        """Stream one utterance: yields (stream chunk, full audio, stats) updates; `after(tts, wav, sr)`
        adds a line of measurements to the stats (run while the model is still in use)."""
        *sampling, chunk_frames = settings
        t0, loaded = time.perf_counter(), (info(kind) or {}).get("loaded")
        if not loaded:
            yield gr.skip(), gr.skip(), f"Loading the {KINDS[kind]} model ..."
        with models.use(kind) as (tts, scheduler):
            load_seconds = 0.0 if loaded else time.perf_counter() - t0
            utt = tts.utterances(call.pop("text"), **call)[0]
            t1 = time.perf_counter()
            job = scheduler.submit(utt, chunk_frames=int(chunk_frames), first_chunk_frames=1,
                                   **gen_kwargs(*sampling))  # fmt: skip
            sr, parts = tts.sample_rate, []
            yield gr.skip(), None, "Generating ..."
            for chunk in job.chunks():
                parts.append(chunk)
                if STREAMING:
                    yield _wav_bytes(chunk, sr), gr.skip(), f"Generating ... {job.audio_seconds:.1f} s of audio"
            wall = time.perf_counter() - t1
            if after is not None and parts:
                note = " · ".join(n for n in (note, after(tts, np.concatenate(parts), sr)) if n)
        if not parts:
            raise gr.Error("the model produced no audio; try again or raise max new tokens")
        wav = np.concatenate(parts)
        if keep is not None:
            keep[:] = [wav, sr]
        yield gr.skip(), (sr, _int16(wav)), _stats(job, wall, load_seconds, note)

    # Outputs (result clips) leave Gradio's cache after an hour, checked every 10 minutes.
    with gr.Blocks(title="Qwen3-TTS", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown("## Qwen3-TTS")
        with gr.Accordion("Generation settings", open=False, elem_id="settings"):
            with gr.Row():
                max_new_tokens = gr.Slider(2, 4096, value=generation.get("max_new_tokens", 2048), step=1,
                                           label="Max new tokens (80 ms each)",
                                           elem_id="max-new-tokens")  # fmt: skip
                temperature = gr.Slider(0.0, 1.5, value=generation.get("temperature", 0.9), step=0.05,
                                        label="Temperature (0: greedy)")  # fmt: skip
                top_k = gr.Slider(0, 100, value=generation.get("top_k", 50), step=1, label="Top k (0: off)")
                seed = gr.Number(-1, precision=0, label="Seed (-1: random)")
                chunk_frames = gr.Slider(1, 25, value=DEFAULT_CHUNK_FRAMES, step=1, label="Frames per streamed chunk")
        settings = [max_new_tokens, temperature, top_k, seed, chunk_frames]

        def outputs(prefix: str):
            stream = gr.Audio(label="Live playback", streaming=True, autoplay=True, interactive=False,
                              visible=STREAMING, elem_id=f"{prefix}-stream")  # fmt: skip
            full = gr.Audio(label="Result" if STREAMING else "Result (plays when done: ffmpeg is not installed)",
                            interactive=False, elem_id=f"{prefix}-audio")  # fmt: skip
            stats = gr.Markdown(elem_id=f"{prefix}-stats")
            return [stream, full, stats]

        with gr.Tabs(elem_id="tabs") as tabs:
            # -- Custom Voice ------------------------------------------------------------------------
            with gr.Tab("Custom Voice", id="custom"):
                cv_status = gr.Markdown(kind_status("custom_voice"), elem_id="custom-status")
                with gr.Row():
                    speakers = _speaker_choices(info("custom_voice"))
                    cv_speaker = gr.Dropdown(speakers, value=speakers[0][1] if speakers else None, label="Speaker")
                    cv_lang = gr.Dropdown(_language_choices(info("custom_voice")), value="auto", **LANGUAGE_FIELD)
                cv_instruct = gr.Textbox(label="Instruction (optional; 1.7B models)",
                                         placeholder="e.g. speak cheerfully")  # fmt: skip
                cv_text = gr.Textbox(label="Text", lines=3, elem_id="custom-text")
                cv_run = gr.Button("Speak", variant="primary", elem_id="custom-run")
                cv_out = outputs("custom")

                @_guarded
                def run_custom(speaker, language, instruct, text, *settings):
                    yield from speak("custom_voice", settings, text=text, speaker=speaker, language=language,
                                     instruct=instruct.strip() or None)  # fmt: skip

                runs = [cv_run.click(run_custom, [cv_speaker, cv_lang, cv_instruct, cv_text, *settings], cv_out)]

            # -- Voice Design ------------------------------------------------------------------------
            with gr.Tab("Voice Design", id="design"):
                vd_status = gr.Markdown(kind_status("voice_design"), elem_id="design-status")
                vd_desc = gr.Textbox(label="Voice description", lines=2, elem_id="design-description",
                                     placeholder="e.g. a calm middle-aged man with a low, warm voice")  # fmt: skip
                vd_lang = gr.Dropdown(_language_choices(info("voice_design")), value="auto", **LANGUAGE_FIELD)
                vd_text = gr.Textbox(label="Text", lines=3, elem_id="design-text")
                vd_run = gr.Button("Speak", variant="primary", elem_id="design-run")
                vd_out = outputs("design")

                @_guarded
                def run_design(description, language, text, *settings):
                    if not (description or "").strip():
                        raise gr.Error("describe the voice first")
                    yield from speak("voice_design", settings, text=text, instruct=description.strip(),
                                     language=language)  # fmt: skip

                runs.append(vd_run.click(run_design, [vd_desc, vd_lang, vd_text, *settings], vd_out))

            # -- Voice Clone -------------------------------------------------------------------------
            with gr.Tab("Voice Clone", id="clone"):
                vc_status = gr.Markdown(kind_status("base"), elem_id="clone-status")
                vc_voice = gr.Dropdown([NO_VOICE], value=NO_VOICE, label="Saved voice", elem_id="clone-voice")
                vc_ref = gr.Audio(sources=["upload", "microphone"], type="filepath", elem_id="clone-ref",
                                  label="Reference audio, 1-60 s (the microphone needs HTTPS)")  # fmt: skip
                vc_ref_text = gr.Textbox(label="Transcript of the reference", elem_id="clone-ref-text")
                vc_xvec = gr.Checkbox(label="x-vector only (no transcript; the timbre only, lower quality)")
                vc_lang = gr.Dropdown(_language_choices(info("base")), value="auto", **LANGUAGE_FIELD)
                vc_text = gr.Textbox(label="Text", lines=3, elem_id="clone-text")
                vc_run = gr.Button("Speak", variant="primary", elem_id="clone-run")
                vc_out = outputs("clone")
                with gr.Accordion("Save this reference to the voice library", open=False):
                    with gr.Row():
                        vc_name = gr.Textbox(label="Voice name", placeholder="letters, digits, - _ .")
                        vc_save = gr.Button("Save voice")
                    vc_msg = gr.Markdown()

                @_guarded
                def run_clone(request: gr.Request, voice, ref, ref_text, xvec, language, text, *settings):
                    if voice and voice != NO_VOICE:
                        prompt = library("prompt", voice)
                        yield from speak("base", settings, text=text, language=language, voice_clone_prompt=prompt,
                                         note=f"saved voice '{voice}'",
                                         after=lambda tts, wav, sr: _clone_measures(tts, wav, sr, None, text))  # fmt: skip
                        return
                    if not ref:
                        raise gr.Error("upload or record a reference clip, or choose a saved voice")
                    ref_text = (ref_text or "").strip() or None
                    ref_audio = uploaded_audio(request, ref)
                    yield from speak("base", settings, text=text, language=language, ref_audio=ref_audio,
                                     ref_text=ref_text, x_vector_only_mode=bool(xvec),
                                     after=lambda tts, wav, sr: _clone_measures(tts, wav, sr, ref_audio, text))  # fmt: skip

                vc_inputs = [vc_voice, vc_ref, vc_ref_text, vc_xvec, vc_lang, vc_text, *settings]
                runs.append(vc_run.click(run_clone, vc_inputs, vc_out))

            # -- Design -> Clone ---------------------------------------------------------------------
            with gr.Tab("Design → Clone", id="design-clone"):
                dc_status = gr.Markdown(elem_id="design-clone-status")
                gr.Markdown("Design a voice, listen, then keep it: the designed clip and its text become a cloned "
                            "voice in the library, for the Voice Clone tab (with a Base model).")  # fmt: skip
                dc_desc = gr.Textbox(label="Voice description", lines=2)
                dc_lang = gr.Dropdown(_language_choices(info("voice_design")), value="auto", **LANGUAGE_FIELD)
                dc_text = gr.Textbox(label="Text to design with (it becomes the reference transcript)", lines=2,
                                     value="Hello! This is the voice I designed, and I want to keep it.")  # fmt: skip
                dc_run = gr.Button("Design", variant="primary")
                dc_out = outputs("design-clone")
                designed = gr.State(None)  # [wav, sample rate, text]
                with gr.Row():
                    dc_name = gr.Textbox(label="Voice name", placeholder="letters, digits, - _ .")
                    dc_save = gr.Button("Keep as a cloned voice")
                dc_msg = gr.Markdown()

                @_guarded
                def run_design_clone(description, language, text, *settings):
                    if not (description or "").strip():
                        raise gr.Error("describe the voice first")
                    keep: list = []
                    for update in speak("voice_design", settings, keep=keep, text=text, instruct=description.strip(),
                                        language=language):  # fmt: skip
                        yield *update, gr.skip()
                    yield gr.skip(), gr.skip(), gr.skip(), [*keep, text]

                @_guarded
                def keep_designed(state, name):
                    if not state:
                        raise gr.Error("design a voice first")
                    if not (name or "").strip():
                        raise gr.Error("give a voice name")
                    if not models.has("base"):
                        raise gr.Error("keeping a designed voice needs a Base model; none is configured")
                    wav, sr, text = state
                    with models.use("base") as (tts, _):
                        item = releasing_workers(tts.create_voice_clone_prompt)((wav, sr), ref_text=text)[0]
                    return save_voice(name, item, len(wav) / sr)

                runs.append(dc_run.click(run_design_clone, [dc_desc, dc_lang, dc_text, *settings], [*dc_out, designed]))

            # -- Voice Library -----------------------------------------------------------------------
            with gr.Tab("Voice Library", id="library"):
                gr.Markdown(f"Saved voices in `{getattr(voices, 'folder', '')}`.")
                lib_table = gr.Dataframe(headers=["name", "mode", "reference", "transcript"],
                                         interactive=False, elem_id="library-table")  # fmt: skip
                with gr.Row():
                    lib_name = gr.Dropdown([], label="Voice", elem_id="library-voice")
                    lib_use = gr.Button("Use in Voice Clone")
                    lib_delete = gr.Button("Delete", variant="stop")
                    lib_refresh = gr.Button("Refresh")
                lib_msg = gr.Markdown()

            # -- Models ------------------------------------------------------------------------------
            # -- Evaluate ----------------------------------------------------------------------------
            with gr.Tab("Evaluate", id="evaluate"):
                gr.Markdown("Score the active model of a kind on a small test list (JSONL: `text`, `language`, "
                            "`speaker` / `instruct`; see `q3tts eval`): WER, pace, stability; the plots below.")  # fmt: skip
                with gr.Row():
                    ev_kind = gr.Dropdown([(v, k) for k, v in KINDS.items() if k != "base"], value="custom_voice",
                                          label="Model kind", elem_id="eval-kind")  # fmt: skip
                    ev_list = gr.File(label="Test list (.jsonl, at most 20 items)", file_types=[".jsonl"],
                                      elem_id="eval-list")  # fmt: skip
                ev_run = gr.Button("Evaluate", variant="primary", elem_id="eval-run")
                ev_plot = gr.Image(label="Distributions", type="numpy", interactive=False, elem_id="eval-plot")
                ev_report = gr.Markdown(elem_id="eval-report")

                @_guarded
                def run_eval(request: gr.Request, kind, test_list, *settings):
                    if not test_list:
                        raise gr.Error("upload a test list (.jsonl)")
                    path = test_list if isinstance(test_list, str) else test_list.name
                    with models.use(kind) as (tts, _):
                        return _evaluate(tts, path, gen_kwargs(*settings[:-1]))

                ev_run.click(run_eval, [ev_kind, ev_list, *settings], [ev_plot, ev_report])

            with gr.Tab("Models", id="models"):
                gr.Markdown("**Switch** makes a model the active one of its kind (the tabs use it) and unloads the "
                            "model it replaces; **Load** and **Unload** only load or free a model.")  # fmt: skip
                mdl_table = gr.Dataframe(headers=["name", "kind", "size", "active", "loaded", "path"],
                                         interactive=False, elem_id="models-table")  # fmt: skip
                with gr.Row():
                    mdl_name = gr.Dropdown(models.names, value=(models.names or [None])[0], label="Model")
                    mdl_load = gr.Button("Load")
                    mdl_switch = gr.Button("Switch")
                    mdl_unload = gr.Button("Unload")
                    mdl_refresh = gr.Button("Refresh")
                mdl_memory = gr.Markdown(elem_id="models-memory")
                mdl_msg = gr.Markdown()

        # -- refreshing what depends on the models and the library ------------------------------------
        def design_clone_status() -> str:
            lines = [kind_status("voice_design")]
            if not models.has("base"):
                lines.append("⚠️ **No Base model is configured**, so a designed voice cannot be kept.")
            else:
                lines.append(kind_status("base"))
            return "\n\n".join(lines)

        def statuses():
            rows = [[e["name"], KINDS[e["kind"]], e["size"] or "", "yes" if e["active"] else "",
                     "yes" if e["loaded"] else "", e["path"]] for e in models.entries()]  # fmt: skip
            mem = models.memory()
            text = f"Memory in use: **{format_bytes(mem['rss_bytes'])}** resident (this process)"
            if "cuda_allocated_bytes" in mem:
                text += (f" · CUDA {format_bytes(mem['cuda_allocated_bytes'])} allocated, "
                         f"{format_bytes(mem['cuda_reserved_bytes'])} reserved, "
                         f"{format_bytes(mem['cuda_total_bytes'])} total")  # fmt: skip
            return (rows, text, kind_status("custom_voice"), kind_status("voice_design"), kind_status("base"),
                    design_clone_status())  # fmt: skip

        status_outputs = [mdl_table, mdl_memory, cv_status, vd_status, vc_status, dc_status]

        def model_views():
            cv, vd = info("custom_voice"), info("voice_design")
            return (*statuses(), gr.update(choices=_speaker_choices(cv)), gr.update(choices=_language_choices(cv)),
                    gr.update(choices=_language_choices(vd)), gr.update(choices=_language_choices(info("base"))),
                    gr.update(choices=_language_choices(vd)))  # fmt: skip

        model_outputs = [*status_outputs, cv_speaker, cv_lang, vd_lang, vc_lang, dc_lang]
        for event in runs:
            event.then(_guarded(statuses), None, status_outputs)

        def voice_views():
            rows = [[v.name, v.mode, f"{v.duration:.1f} s" if v.duration else "", v.ref_text or ""]
                    for v in voices.list()]  # fmt: skip
            names = [r[0] for r in rows]
            return rows, gr.update(choices=names, value=None), gr.update(choices=[NO_VOICE, *names])

        voice_outputs = [lib_table, lib_name, vc_voice]

        @_guarded
        def model_action(action: str, name: str):
            if not name:
                raise gr.Error("choose a model")
            t0 = time.perf_counter()
            if action == "load":
                models.load(name)
                msg = f"Loaded **{name}** in {time.perf_counter() - t0:.1f} s."
            elif action == "switch":
                left = [n for n in models.loaded_names() if n != name]
                models.switch(name)  # frees the model it replaces, or refuses before changing anything
                freed = [n for n in left if n not in models.loaded_names()]
                msg = f"**{name}** is now the active {KINDS[models.info(name)['kind']]} model (loaded)."
                msg += f" Unloaded **{', '.join(freed)}**." if freed else ""
            else:
                msg = f"Unloaded **{name}**." if models.unload(name) else f"**{name}** was not loaded."
            return msg, *model_views()

        for button, action in ((mdl_load, "load"), (mdl_switch, "switch"), (mdl_unload, "unload")):
            button.click(functools.partial(model_action, action), [mdl_name], [mdl_msg, *model_outputs],
                         concurrency_limit=1, concurrency_id="models")  # fmt: skip
        mdl_refresh.click(_guarded(model_views), None, model_outputs)

        @_guarded
        def delete_voice(name):
            library("delete", name)
            return f"Deleted voice **{name}**.", *voice_views()

        @_guarded
        def save_reference(request: gr.Request, ref, ref_text, xvec, name):
            if not ref:
                raise gr.Error("upload or record a reference clip first")
            if not (name or "").strip():
                raise gr.Error("give a voice name")
            if not models.has("base"):
                raise gr.Error("saving a voice needs a Base model; none is configured")
            (wav, sr), ref_text = uploaded_audio(request, ref), (ref_text or "").strip() or None
            with models.use("base") as (tts, _):
                item = releasing_workers(tts.create_voice_clone_prompt)((wav, sr), ref_text, bool(xvec))[0]
            return save_voice(name, item, len(wav) / sr), *voice_views()

        @_guarded
        def keep_and_list(state, name):
            return keep_designed(state, name), *voice_views()

        def use_voice(name):
            if not name:
                raise gr.Error("choose a voice")
            return gr.update(value=name), gr.Tabs(selected="clone")

        lib_delete.click(delete_voice, [lib_name], [lib_msg, *voice_outputs])
        lib_refresh.click(_guarded(voice_views), None, voice_outputs)
        lib_use.click(use_voice, [lib_name], [vc_voice, tabs])
        vc_save.click(save_reference, [vc_ref, vc_ref_text, vc_xvec, vc_name], [vc_msg, *voice_outputs]).then(
            _guarded(statuses), None, status_outputs
        )
        dc_save.click(keep_and_list, [designed, dc_name], [dc_msg, *voice_outputs]).then(
            _guarded(statuses), None, status_outputs
        )
        demo.load(_guarded(lambda: (*model_views(), *voice_views())), None, [*model_outputs, *voice_outputs])
    demo.queue(default_concurrency_limit=max(1, models.max_batch))
    return demo


def mount_ui(app, models: ModelManager, voices_dir, path: str = "/ui", generation: Optional[dict] = None,
             upload_max_age: float = UPLOAD_MAX_AGE, **kwargs):  # fmt: skip
    """Mount the UI on a FastAPI `app` at `path`, behind UIFileGuard (ui_files.py: each browser reads
    and names only its own files, and uploads leave the disk once used, when their page closes, or
    after `upload_max_age` seconds unused); `kwargs` go to gr.mount_gradio_app (e.g. auth=...)."""
    uploads = UploadRegistry(max_age=upload_max_age)
    uploads.start_sweeper()
    # Gradio serves only the files named here besides its own cache; nothing outside is added.
    kwargs = {"theme": THEME, "ssr_mode": False, "show_error": True, "allowed_paths": [], **kwargs}
    mounted = gr.mount_gradio_app(app, build_ui(models, voices_dir, uploads, generation), path=path, **kwargs)
    app.add_middleware(UIFileGuard, path=path, uploads=uploads)
    return mounted


# ----------------------------------------------------------------------------------------------
# The UI alone: `q3tts demo MODEL --ip 0.0.0.0 --port 8000` (the official demo's command line), or
# python -m q3tts.server.ui --model NAME=PATH --port P
# ----------------------------------------------------------------------------------------------

DEMO_GENERATION = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "subtalker_top_k",
                   "subtalker_top_p", "subtalker_temperature")  # fmt: skip


class DemoUsageError(Q3TTSError):
    """A demo command line that cannot run (one line, exit 2)."""


def build_demo_parser(parser: Optional[argparse.ArgumentParser] = None, prog: str = "q3tts demo",
                      default_port: int = 8000) -> argparse.ArgumentParser:  # fmt: skip
    """The official `qwen-tts-demo` flags (checkpoint, --ip, --port, --ssl-*, --device, --dtype, ...)
    plus ours (--model NAME=PATH for more models, --voices-dir, --threads)."""
    p = parser or argparse.ArgumentParser(prog=prog, description="The q3tts web UI on its own.")
    p.add_argument("checkpoint_pos", nargs="?", metavar="MODEL", help="checkpoint folder or Hugging Face repo id")
    p.add_argument("-c", "--checkpoint", help="the same as MODEL")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="a (further) checkpoint under a name; repeat for more")  # fmt: skip
    # 127.0.0.1 unless asked: the official demo listens on every interface by default.
    p.add_argument("--ip", "--host", dest="host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")  # fmt: skip
    p.add_argument("--port", type=int, default=default_port)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--dtype", default="auto", choices=("auto", "bfloat16", "bf16", "float16", "fp16", "float32", "fp32")
    )
    p.add_argument("--flash-attn", dest="flash_attn", action=argparse.BooleanOptionalAction, default=None,
                   help="accepted for the official demo's sake: attention always runs PyTorch's SDPA")  # fmt: skip
    p.add_argument("--voices-dir", help="voice library folder (default: as `q3tts voices`)")
    p.add_argument("--max-batch", "--concurrency", dest="max_batch", type=int, default=8,
                   help="requests generated together per model (the official --concurrency)")  # fmt: skip
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--ssl-certfile", help="serve HTTPS (browsers allow the microphone only on secure pages)")
    p.add_argument("--ssl-keyfile")
    p.add_argument("--ssl-verify", dest="ssl_verify", action=argparse.BooleanOptionalAction, default=None,
                   help="accepted for the official demo's sake: this server never fetches its own page, so there "
                   "is no certificate to verify")  # fmt: skip
    p.add_argument("--share", action=argparse.BooleanOptionalAction, default=False,
                   help="a public gradio.live link: not supported (the UI is served by this process only)")  # fmt: skip
    p.add_argument("--inbrowser", action=argparse.BooleanOptionalAction, default=False,
                   help="open the page in a browser once it is served")  # fmt: skip
    g = p.add_argument_group("generation (every run; the first three start the sliders)")
    for name in DEMO_GENERATION:
        kind = int if name.endswith(("tokens", "top_k")) else float
        g.add_argument("--" + name.replace("_", "-"), dest=name, type=kind)
    return p


def _demo_models(args) -> dict[str, str]:
    checkpoints = [c for c in (args.checkpoint, args.checkpoint_pos) if c]
    if len(set(checkpoints)) > 1:
        raise DemoUsageError(f"two checkpoints given ({' and '.join(checkpoints)}): use MODEL or --checkpoint")
    try:
        specs = parse_model_specs([*checkpoints[:1], *args.model])
    except ValueError as e:
        raise DemoUsageError(str(e)) from None
    if not specs:
        raise DemoUsageError("no model: give MODEL (a checkpoint folder or Hugging Face repo id)")
    return specs


def _demo_notes(args) -> list[str]:
    """One line for each official flag that changes nothing here (none is dropped silently)."""
    notes = []
    if args.flash_attn:
        notes.append("--flash-attn: attention runs PyTorch's scaled_dot_product_attention, which picks its flash "
                     "kernel on CUDA by itself")  # fmt: skip
    if args.ssl_verify is False:
        notes.append("--no-ssl-verify: nothing to verify (this server does not fetch its own page)")
    return notes


def _check_ssl(args) -> None:
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise DemoUsageError("--ssl-certfile and --ssl-keyfile go together")
    for flag, path in (("--ssl-certfile", args.ssl_certfile), ("--ssl-keyfile", args.ssl_keyfile)):
        if path and not os.path.isfile(os.path.expanduser(path)):
            raise DemoUsageError(f"{flag} {path}: file not found")


def demo_app(args):
    """The FastAPI app of the standalone UI for parsed demo `args` (see build_demo_parser)."""
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse, Response

    if args.share:
        raise DemoUsageError("--share (a public gradio.live link) is not supported; serve with --ip 0.0.0.0 "
                             "(and --ssl-certfile/--ssl-keyfile) instead")  # fmt: skip
    _check_ssl(args)
    specs = _demo_models(args)
    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(args.dtype, args.dtype)
    try:
        models = ModelManager(specs, args.device, dtype, max_batch=args.max_batch)
    except Exception as e:  # a missing folder or config: the CheckpointError/ConfigError line
        raise DemoUsageError(one_line(str(e)) or type(e).__name__) from None
    generation = {n: getattr(args, n) for n in DEMO_GENERATION if getattr(args, n) is not None}
    app = FastAPI(title="q3tts UI")
    app.get("/", include_in_schema=False)(lambda: RedirectResponse("ui/"))
    app.get("/favicon.ico", include_in_schema=False)(lambda: Response(status_code=204))
    mount_ui(app, models, Path(args.voices_dir) if args.voices_dir else default_voices_dir(), generation=generation)
    app.add_middleware(GuardMiddleware, policy=HostPolicy(args.host), max_headers=100)  # as `q3tts serve`
    app.state.models, app.state.first_model = models, next(iter(specs))
    return app


def run_demo(args) -> int:
    """Serve the standalone UI until interrupted. Raises DemoUsageError for a command line that cannot run."""
    import torch
    import uvicorn

    from .listen import uvicorn_config
    from .settings import Settings

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        limits = Settings(host=args.host, port=args.port, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    except ValueError as e:  # pydantic's ValidationError: e.g. a port out of range
        raise DemoUsageError(one_line(str(e))) from None
    app = demo_app(args)
    for note in _demo_notes(args):
        print(f"q3tts demo: note: {note}", file=sys.stderr, flush=True)
    # As the official demo: the model is loaded before the page is served (its errors show here).
    print(f"q3tts demo: loading {app.state.first_model} ...", file=sys.stderr, flush=True)
    try:
        app.state.models.load(app.state.first_model)
    except Exception as e:
        raise DemoUsageError(f"cannot load {app.state.first_model}: {one_line(str(e)) or type(e).__name__}") from None
    scheme = "https" if args.ssl_certfile else "http"
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"{scheme}://{shown}:{args.port}/ui/"
    print(f"q3tts demo: serving the web UI at {url}", file=sys.stderr, flush=True)
    if args.inbrowser:
        import threading
        import webbrowser

        threading.Timer(2.0, webbrowser.open, (url,)).start()
    uvicorn.Server(uvicorn_config(app, limits, log_level="warning")).run()  # the limits of `q3tts serve`
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    p = build_demo_parser(prog="python -m q3tts.server.ui", default_port=7860)
    args = p.parse_args(argv)
    try:
        return run_demo(args)
    except DemoUsageError as e:
        p.error(str(e))


if __name__ == "__main__":
    raise SystemExit(main())
