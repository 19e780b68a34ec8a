"""The `q3tts` command line. Every expected failure prints one line and exits non-zero.

    q3tts speak "Hello!" --model M --speaker vivian -o hello.wav        # CustomVoice
    q3tts design "Hello!" --model M --instruct "a calm, low voice" -o hello.flac
    q3tts clone "Hello!" --model M --ref-audio me.wav --ref-text "..." -o hello.mp3
    q3tts voices save me --model M --ref-audio me.wav --ref-text "..."; q3tts clone ... --voice me
    q3tts encode clip.wav --model M -o codes.npy; q3tts decode codes.npy --model M -o clip.wav

Torch and the model code are imported inside the commands, so `q3tts --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from .cli_progress import Status, clear_status, note, one_line, seconds, size
from .errors import Q3TTSError
from .voices import VOICE_SUFFIX, check_voice_name, default_voices_dir, read_voice_header

FRAME_SAMPLES = 1920  # samples per 12.5 Hz codec frame at 24 kHz
AUDIO_EXTENSIONS = ("wav", "flac", "mp3", "ogg", "opus")
CODES_EXTENSIONS = ("npy", "safetensors", "pt")


class UsageError(Q3TTSError):
    pass


def _error_text(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return one_line(str(e)) or type(e).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    clear_status()
    print(f"q3tts: warning: {one_line(str(message))}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# make-checkpoint, info
# ----------------------------------------------------------------------------------------------


def cmd_make_checkpoint(args) -> None:
    import torch

    from .presets import make_checkpoint

    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    out = make_checkpoint(args.out, preset=args.preset, kind=args.kind, seed=args.seed, dtype=dtype)
    total = sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
    print(f"wrote random-weight {args.preset} {args.kind} checkpoint to {out} ({total / 1e6:.1f} MB)")


def checkpoint_info(path: str) -> dict:
    import torch

    from .checkpoint import MAIN_FILES, read_safetensors_header, require_files, resolve
    from .config import ModelConfig, SpeechTokenizerConfig

    folder = resolve(path)
    require_files(folder, MAIN_FILES)
    cfg = ModelConfig.from_file(folder / "config.json")
    header = read_safetensors_header(folder / "model.safetensors")
    params = sum(int(torch.Size(v["shape"]).numel()) for v in header.values())
    speech = SpeechTokenizerConfig.from_file(folder / "speech_tokenizer" / "config.json")
    t = cfg.talker
    languages = ["auto"] + sorted(k for k in t.codec_language_id if "dialect" not in k)
    return {
        "path": str(folder),
        "kind": cfg.tts_model_type,
        "size": cfg.tts_model_size,
        "parameters": params,
        "dtypes": sorted({v["dtype"] for v in header.values()}),
        "talker": {
            "hidden": t.hidden_size,
            "layers": t.num_hidden_layers,
            "heads": t.num_attention_heads,
            "kv_heads": t.num_key_value_heads,
            "intermediate": t.intermediate_size,
        },  # fmt: skip
        "code_predictor": {"hidden": t.code_predictor.hidden_size, "layers": t.code_predictor.num_hidden_layers},
        "codebooks": t.num_code_groups,
        "sample_rate": speech.output_sample_rate,
        "frame_rate": speech.output_sample_rate / speech.decode_upsample_rate,
        "speakers": sorted(t.spk_id),
        "dialect_speakers": {k: v for k, v in t.spk_is_dialect.items() if v},
        "languages": languages,
    }


def cmd_info(args) -> None:
    info = checkpoint_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"{info['path']}")
    print(
        f"  kind        {info['kind']} ({info['size']}), {info['parameters'] / 1e6:.1f} M parameters, {'/'.join(info['dtypes'])}"
    )
    tk = info["talker"]
    print(f"  talker      {tk['layers']} layers, hidden {tk['hidden']}, {tk['heads']}/{tk['kv_heads']} heads")
    print(
        f"  codec       {info['codebooks']} codebooks, {info['frame_rate']:g} Hz frames, {info['sample_rate']} Hz audio"
    )
    print(f"  languages   {', '.join(info['languages'])}")
    if info["speakers"]:
        print(f"  speakers    {', '.join(info['speakers'])}")


# ----------------------------------------------------------------------------------------------
# Inputs: text, output paths, the model
# ----------------------------------------------------------------------------------------------


def _read_text(args) -> str:
    if args.text is not None and args.text_file is not None:
        raise UsageError("give the text as an argument or with --text-file, not both")
    if args.text_file is not None:
        try:
            text = sys.stdin.read() if args.text_file == "-" else Path(args.text_file).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{args.text_file}: not UTF-8 text") from None
    elif args.text == "-":
        text = sys.stdin.read()
    elif args.text is not None:
        text = args.text
    else:
        raise UsageError("no text: pass TEXT, '-' to read standard input, or --text-file FILE")
    text = text.strip()
    if not text:
        raise UsageError("text is empty")
    return text


@dataclass
class Output:
    """Where a result goes: a file path (format from its extension) or standard output ("-")."""

    path: Optional[Path]  # None: stdout
    ext: str

    @property
    def name(self) -> str:
        return "<stdout>" if self.path is None else str(self.path)


def _check_writable(path: Path) -> None:
    if path.is_dir():
        raise UsageError(f"{path}: is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"{path}: cannot write, folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{path}: cannot write, permission denied")


def _output(spec: str, extensions: Iterable[str], what: str, stdout_ext: Optional[str] = None) -> Output:
    """Check an output path before any work is done: known extension, writable place."""
    extensions = tuple(extensions)
    if spec == "-":
        if stdout_ext is None:
            raise UsageError(f"{what} cannot be written to standard output; give a file name")
        return Output(None, stdout_ext)
    path = Path(spec).expanduser()
    ext = path.suffix.lower().lstrip(".")
    if ext not in extensions:
        shown = f"'.{ext}'" if ext else "no extension"
        known = ", ".join("." + e for e in extensions)
        raise UsageError(f"{spec}: unknown {what} format ({shown}); use one of {known}")
    _check_writable(path)
    return Output(path, ext)


def _audio_output(spec: str) -> Output:
    import soundfile as sf

    from .audio import SAVE_FORMATS

    out = _output(spec, AUDIO_EXTENSIONS, "audio", stdout_ext="wav")
    container, subtype = SAVE_FORMATS[out.ext]
    if not sf.check_format(container, subtype):
        raise UsageError(
            f"the installed libsndfile ({sf.__libsndfile_version__}) cannot write .{out.ext}; use .wav or .flac"
        )
    return out


def _load_tts(args, command: str, kind: str):
    """Check the checkpoint's kind from its config (cheap), then load it."""
    from .checkpoint import require_files, resolve
    from .config import ModelConfig

    folder = resolve(args.model)
    require_files(folder, ("config.json",))
    found = ModelConfig.from_file(folder / "config.json").tts_model_type
    if found != kind:
        use = {"custom_voice": "speak", "voice_design": "design", "base": "clone"}.get(found, "another command")
        raise UsageError(f"'{command}' needs a {kind} checkpoint, but {args.model} is {found} (use '{use}')")
    _check_device(args)
    _set_threads(args)
    from .api import Qwen3TTS

    with Status(not args.quiet) as status:
        status.update(f"loading {args.model} ...", force=True)
        t0 = time.perf_counter()
        model = Qwen3TTS.from_pretrained(folder, device=args.device, dtype=args.dtype,
                                         quantize=getattr(args, "quantize", None))  # fmt: skip
    note(f"loaded {args.model} ({model.kind}, {model.device.type}, {str(model.dtype).split('.')[-1]}) "
         f"in {seconds(time.perf_counter() - t0)}", args.quiet)  # fmt: skip
    return model


def _check_device(args) -> None:
    """Refuse a device this machine lacks with one line, before torch raises deep inside loading."""
    import torch

    from .api import resolve_device

    try:
        device = resolve_device(args.device)
    except RuntimeError as e:
        raise UsageError(f"bad --device '{args.device}': {one_line(str(e))}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {args.device}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise UsageError(f"--device {args.device}: unsupported device type (use cpu, cuda, mps or xpu)")


def _set_threads(args) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _generation_kwargs(args) -> dict:
    kw: dict = {}
    if args.greedy:
        kw.update(do_sample=False, subtalker_dosample=False)
    for name in ("temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "seed", "max_piece_tokens"):
        value = getattr(args, name)
        if value is not None:
            kw[name] = value
    return kw


# ----------------------------------------------------------------------------------------------
# Writing audio, all at once or while it is generated
# ----------------------------------------------------------------------------------------------


def _stdout_buffer():
    return getattr(sys.stdout, "buffer", sys.stdout)


def _pcm16(chunk, sample_rate: int) -> bytes:
    """Float samples -> 16-bit PCM bytes, converted by libsndfile itself (as in a written .wav)."""
    import io

    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(chunk, -1.0, 1.0), sample_rate, format="RAW", subtype="PCM_16", endian="LITTLE")
    return buf.getvalue()


def _wav_header(sample_rate: int, data_bytes: Optional[int]) -> bytes:
    """A 44-byte mono PCM_16 WAV header; `data_bytes=None` marks an open-ended stream."""
    import struct

    data = 0xFFFFFFFF - 36 if data_bytes is None else data_bytes
    riff = min(36 + data, 0xFFFFFFFF)
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", riff, b"WAVE", b"fmt ", 16, 1, 1, sample_rate,
                       sample_rate * 2, 2, 16, b"data", data)  # fmt: skip


class _Sink:
    """Writes audio chunks as they come: a soundfile.SoundFile for files, an open-ended WAV on stdout."""

    def __init__(self, out: Output, sample_rate: int):
        import soundfile as sf

        from .audio import SAVE_FORMATS, AudioError

        self.out, self.sample_rate, self.samples = out, sample_rate, 0
        self.file = None
        if out.path is None:
            self.stream = _stdout_buffer()
            self.start = self._patchable_position()
            self.stream.write(_wav_header(sample_rate, None))
            self.stream.flush()
            return
        container, subtype = SAVE_FORMATS[out.ext]
        try:
            self.file = sf.SoundFile(str(out.path), "w", samplerate=sample_rate, channels=1, format=container,
                                     subtype=subtype)  # fmt: skip
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError(f"cannot write {out.path}: {one_line(str(e))}") from None

    def write(self, chunk) -> None:
        import numpy as np

        self.samples += chunk.shape[0]
        if self.file is not None:
            self.file.write(np.clip(chunk, -1.0, 1.0))
            self.file.flush()
        else:
            self.stream.write(_pcm16(chunk, self.sample_rate))
            self.stream.flush()

    def _patchable_position(self) -> Optional[int]:
        """Where the header starts, if it can be rewritten with the real sizes at the end (stdout
        redirected to a file, not in append mode); None for pipes and terminals."""
        try:
            if not self.stream.seekable():
                return None
            try:
                import fcntl

                if fcntl.fcntl(self.stream.fileno(), fcntl.F_GETFL) & os.O_APPEND:
                    return None
            except (ImportError, OSError, ValueError, AttributeError):
                pass  # no file descriptor (an in-memory buffer), or no fcntl: seeking still works
            return self.stream.tell()
        except (OSError, ValueError, AttributeError):
            return None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        elif self.out.path is None and self.start is not None:
            try:
                end = self.stream.tell()
                self.stream.seek(self.start)
                self.stream.write(_wav_header(self.sample_rate, self.samples * 2))
                self.stream.seek(end)
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self.start = None


def _write_audio(out: Output, wav, sample_rate: int) -> None:
    """Write a whole waveform; files go through a temporary name, so a failure leaves no half file."""
    import io

    from .audio import save_audio

    if out.path is None:
        buf = io.BytesIO()
        save_audio(buf, wav, sample_rate, format="wav")
        _stdout_buffer().write(buf.getvalue())
        _stdout_buffer().flush()
        return
    tmp = out.path.with_name(f".{out.path.name}.{os.getpid()}.tmp")
    try:
        save_audio(tmp, wav, sample_rate, format=out.ext)
        os.replace(tmp, out.path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _render(args, model, out: Output, **call) -> None:
    """Drive `model.stream` to `out`: progressively with --stream, else written once at the end.

    Both paths ask for the same chunks (--chunk-frames), so their output is the same audio even where
    the codec decoder is not bit-exact across chunk sizes: on full-size checkpoints a oneDNN conv over
    5120 samples rounds differently from two calls over 2560 (measured, 2 threads), and one float bit
    moves about 1% of the samples to the next 16-bit step."""
    import numpy as np

    sr = model.sample_rate
    stream = args.stream
    chunks = model.stream(**call, chunk_frames=args.chunk_frames, first_chunk_frames=1, **_generation_kwargs(args))
    sink: Optional[_Sink] = None
    parts = []
    samples = 0
    first = None
    t0 = time.perf_counter()
    try:
        with Status(not args.quiet) as status:
            for chunk in chunks:  # the first next() validates speaker, language, ...: open the file after it
                if first is None:
                    first = time.perf_counter() - t0
                    if stream:
                        sink = _Sink(out, sr)
                        note(f"first audio after {seconds(first)}", args.quiet)
                if sink is not None:
                    sink.write(chunk)
                else:
                    parts.append(chunk)
                samples += chunk.shape[0]
                elapsed = time.perf_counter() - t0
                status.update(f"generating: {samples // FRAME_SAMPLES} frames, {samples / sr:.1f} s of audio "
                              f"in {elapsed:.1f} s")  # fmt: skip
            if stream and sink is None:
                sink = _Sink(out, sr)
        if not stream:
            _write_audio(out, np.concatenate(parts) if parts else np.zeros(0, np.float32), sr)
    finally:
        if sink is not None:
            sink.close()
    elapsed = time.perf_counter() - t0
    if samples == 0:
        warnings.warn("no audio was generated (end of speech came first); the output is empty", stacklevel=2)
    audio_s = samples / sr
    rtf = f", RTF {elapsed / audio_s:.2f}" if audio_s else ""
    note(f"wrote {out.name}: {seconds(audio_s)} of audio ({samples // FRAME_SAMPLES} frames) "
         f"in {seconds(elapsed)}{rtf}", args.quiet)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# speak, design, clone
# ----------------------------------------------------------------------------------------------


def cmd_speak(args) -> None:
    text, out = _read_text(args), _audio_output(args.output)
    model = _load_tts(args, "speak", "custom_voice")
    _render(args, model, out, text=text, speaker=args.speaker, instruct=args.instruct, language=args.language)


def cmd_design(args) -> None:
    text, out = _read_text(args), _audio_output(args.output)
    if not args.instruct.strip():
        raise UsageError("--instruct is empty: describe the voice")
    model = _load_tts(args, "design", "voice_design")
    _render(args, model, out, text=text, instruct=args.instruct, language=args.language)


def _check_reference(args) -> None:
    if args.x_vector_only and args.ref_text:
        raise UsageError("--ref-text and --x-vector-only exclude each other")
    if not args.x_vector_only and not (args.ref_text and args.ref_text.strip()):
        raise UsageError("--ref-audio needs --ref-text (its transcript) for in-context cloning, or --x-vector-only")


def _read_reference(path: str):
    """Read and check the reference clip before the model is loaded; -> (samples, 24000)."""
    from .audio import SAMPLE_RATE, load_audio

    if not os.path.isfile(os.path.expanduser(path)):
        raise UsageError(f"{path}: reference audio file not found")
    return load_audio(os.path.expanduser(path)), SAMPLE_RATE


def cmd_clone(args) -> None:
    text, out = _read_text(args), _audio_output(args.output)
    call: dict = {"text": text, "language": args.language}
    if args.voice is not None:
        if args.ref_text or args.x_vector_only:
            raise UsageError("--ref-text/--x-vector-only go with --ref-audio; a saved --voice has its own")
        from .api import VoiceClonePromptItem

        call["voice_clone_prompt"] = VoiceClonePromptItem.load(_voice_file(args, args.voice))
    else:
        _check_reference(args)
        call.update(ref_audio=_read_reference(args.ref_audio), ref_text=args.ref_text,
                    x_vector_only_mode=args.x_vector_only)  # fmt: skip
    model = _load_tts(args, "clone", "base")
    _render(args, model, out, **call)


# ----------------------------------------------------------------------------------------------
# The voice library
# ----------------------------------------------------------------------------------------------


def voices_dir(args=None) -> Path:
    return default_voices_dir(getattr(args, "voices_dir", None) if args is not None else None)


def _voice_file(args, spec: str) -> Path:
    """`--voice`: a library name, or the path of a .safetensors voice file."""
    if "/" in spec or os.sep in spec or spec.endswith(VOICE_SUFFIX):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UsageError(f"{spec}: voice file not found")
        return path
    check_voice_name(spec)
    path = voices_dir(args) / f"{spec}{VOICE_SUFFIX}"
    if not path.is_file():
        raise UsageError(f"no voice named '{spec}' in {voices_dir(args)} (see 'q3tts voices list')")
    return path


def voice_summary(path: Path) -> dict:
    """Mode, reference length and model width of a voice file, from its header only."""
    header = read_voice_header(path)
    info: dict = {"name": path.name[: -len(VOICE_SUFFIX)], "path": str(path), "size": path.stat().st_size,
                  "mode": "invalid", "ref_seconds": None, "hidden_size": None, "ref_text": None}  # fmt: skip
    if header is not None:
        info.update(mode="x-vector" if header.mode == "x_vector" else "in-context", ref_seconds=header.duration,
                    hidden_size=header.hidden_size, ref_text=header.ref_text)  # fmt: skip
    return info


def cmd_voices_save(args) -> None:
    name = check_voice_name(args.name)
    folder = voices_dir(args)
    path = folder / f"{name}{VOICE_SUFFIX}"
    if path.exists() and not args.force:
        raise UsageError(f"voice '{name}' already exists in {folder}; pass --force to replace it")
    _check_reference(args)
    ref = _read_reference(args.ref_audio)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    _check_writable(path)
    model = _load_tts(args, "voices save", "base")
    with Status(not args.quiet) as status:
        status.update("analysing the reference ...", force=True)
        item = model.create_voice_clone_prompt(ref, args.ref_text, args.x_vector_only)[0]
    item.save(path)
    mode = "x-vector only" if args.x_vector_only else "in-context"
    note(f"saved voice '{name}' ({mode}, {ref[0].shape[0] / ref[1]:.1f} s reference) to {path}", args.quiet)


def cmd_voices_list(args) -> None:
    folder = voices_dir(args)
    files = sorted(p for p in folder.glob(f"*{VOICE_SUFFIX}") if not p.name.startswith(".")) if folder.is_dir() else []
    voices = [voice_summary(p) for p in files]
    if args.json:
        print(json.dumps(voices, indent=2))
        return
    if not voices:
        note(f"no voices in {folder}", args.quiet)
        return
    width = max(4, *(len(v["name"]) for v in voices))
    print(f"{'NAME':<{width}}  {'MODE':<10}  {'REF':>7}  {'HIDDEN':>6}  {'SIZE':>8}")
    for v in voices:
        ref = f"{v['ref_seconds']:.1f} s" if v["ref_seconds"] is not None else "-"
        hidden = str(v["hidden_size"]) if v["hidden_size"] else "-"
        print(f"{v['name']:<{width}}  {v['mode']:<10}  {ref:>7}  {hidden:>6}  {size(v['size']):>8}")
    note(f"{len(voices)} voice(s) in {folder}", args.quiet)


def cmd_voices_delete(args) -> None:
    name = check_voice_name(args.name)
    path = voices_dir(args) / f"{name}{VOICE_SUFFIX}"
    if not path.is_file():
        raise UsageError(f"no voice named '{name}' in {voices_dir(args)}")
    path.unlink()
    note(f"deleted voice '{name}'", args.quiet)


# ----------------------------------------------------------------------------------------------
# encode, decode
# ----------------------------------------------------------------------------------------------


def _load_tokenizer(args, with_encoder: bool):
    from .api import resolve_device
    from .speech_tokenizer import Qwen3TTSTokenizer

    _check_device(args)
    _set_threads(args)
    with Status(not args.quiet) as status:
        status.update(f"loading the speech tokenizer of {args.model} ...", force=True)
        device = resolve_device(args.device)
        return Qwen3TTSTokenizer.from_pretrained(args.model, device=device, with_encoder=with_encoder)


def _save_codes(out: Output, codes) -> None:
    """[T, 16] int64 codes -> .npy (the array), .safetensors or .pt (key/object 'audio_codes')."""
    import numpy as np

    tmp = out.path.with_name(f".{out.path.name}.{os.getpid()}.tmp")
    try:
        if out.ext == "npy":
            with open(tmp, "wb") as fh:
                np.save(fh, codes.numpy().astype(np.int64), allow_pickle=False)
        elif out.ext == "safetensors":
            from safetensors.torch import save_file

            save_file({"audio_codes": codes.contiguous()}, str(tmp), metadata={"format": "q3tts-codes"})
        else:
            import torch

            torch.save(codes, tmp)
        os.replace(tmp, out.path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_codes(path: str):
    """A codes file written by `encode` (or by hand) -> [T, G] int64 tensor. Checks the shape and
    type; the id range is checked against the codebook when decoding."""
    import numpy as np
    import torch

    from .speech_tokenizer import CodesError

    p = Path(path).expanduser()
    ext = p.suffix.lower().lstrip(".")
    if ext not in CODES_EXTENSIONS:
        raise UsageError(f"{path}: unknown codes format; use one of {', '.join('.' + e for e in CODES_EXTENSIONS)}")
    if not p.is_file():
        raise UsageError(f"{path}: codes file not found")
    try:
        if ext == "npy":
            value = torch.from_numpy(np.load(p, allow_pickle=False))
        elif ext == "safetensors":
            from safetensors.torch import load_file

            value = load_file(str(p))
        else:
            value = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CodesError(f"{path}: not a readable .{ext} codes file ({one_line(str(e)) or type(e).__name__})") from None
    if isinstance(value, dict):
        if "audio_codes" in value:
            value = value["audio_codes"]
        elif len(value) == 1:
            value = next(iter(value.values()))
        else:
            raise CodesError(f"{path}: holds {sorted(value)}; expected one array named 'audio_codes'")
    if not isinstance(value, torch.Tensor):
        raise CodesError(f"{path}: holds a {type(value).__name__}, not an array of codes")
    if value.dim() == 3 and value.shape[0] == 1:
        value = value[0]
    if value.dim() != 2:
        raise CodesError(f"{path}: codes must be [frames, codebooks], got shape {list(value.shape)}")
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        raise CodesError(f"{path}: codes must be integers, got {str(value.dtype).split('.')[-1]}")
    return value.long()


def cmd_encode(args) -> None:
    from .audio import SAMPLE_RATE, load_audio

    out = _output(args.output, CODES_EXTENSIONS, "codes")
    if not os.path.isfile(os.path.expanduser(args.audio)):
        raise UsageError(f"{args.audio}: audio file not found")
    wav = load_audio(os.path.expanduser(args.audio))
    tok = _load_tokenizer(args, with_encoder=True)
    with Status(not args.quiet) as status:
        status.update("encoding ...", force=True)
        codes = tok.encode((wav, SAMPLE_RATE)).audio_codes[0].cpu()
    _save_codes(out, codes)
    note(f"wrote {out.name}: {wav.shape[0] / SAMPLE_RATE:.2f} s of audio -> {codes.shape[0]} frames x "
         f"{codes.shape[1]} codebooks", args.quiet)  # fmt: skip


def cmd_decode(args) -> None:
    out = _audio_output(args.output)
    codes = read_codes(args.codes)
    tok = _load_tokenizer(args, with_encoder=False)
    with Status(not args.quiet) as status:
        status.update("decoding ...", force=True)
        wavs, sr = tok.decode(codes)
    _write_audio(out, wavs[0], sr)
    note(f"wrote {out.name}: {codes.shape[0]} frames -> {wavs[0].shape[0] / sr:.2f} s of audio", args.quiet)


# ----------------------------------------------------------------------------------------------
# bench (q3tts/bench.py, imported only when used)
# ----------------------------------------------------------------------------------------------


def cmd_bench(args) -> int:
    import importlib

    try:
        bench = importlib.import_module(f"{__package__ or 'q3tts'}.bench")
    except ModuleNotFoundError as e:
        if e.name == f"{__package__ or 'q3tts'}.bench":
            raise UsageError("the bench command is not available: q3tts/bench.py is missing") from None
        raise UsageError(f"the bench command cannot start: {e}") from None
    except ImportError as e:
        raise UsageError(f"the bench command cannot start: {one_line(str(e))}") from None
    parser = _Parser(prog="q3tts bench", description="Measure synthesis speed and memory.")
    bench.add_arguments(parser)
    return bench.run(parser.parse_args(args.extra))


# ----------------------------------------------------------------------------------------------
# train, dataset (q3tts/train, imported only when used)
# ----------------------------------------------------------------------------------------------


def _train_entry(module: str, argv: list[str]) -> int:
    import importlib

    try:
        entry = importlib.import_module(f"{__package__ or 'q3tts'}.train.{module}").main
    except ImportError as e:
        raise UsageError(
            f"fine-tuning needs the `train` extra (pip install 'q3tts[train]'): {one_line(str(e))}"
        ) from None
    try:
        return entry(argv) or 0
    except SystemExit as e:  # the entry points exit with a one-line "q3tts: ..." message
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 1
        raise


def cmd_train(args) -> int:
    return _train_entry("__main__", args.extra)


def cmd_dataset(args) -> int:
    return _train_entry("dataset", args.extra)


# ----------------------------------------------------------------------------------------------
# serve (q3tts/server, imported only when used)
# ----------------------------------------------------------------------------------------------


def cmd_serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401

        from .server.__main__ import build_parser as build_serve_parser
        from .server.__main__ import serve
    except ImportError as e:
        raise UsageError(f"the serve command needs the server extra (pip install 'q3tts[server]'): {e}") from None
    parser = build_serve_parser(_Parser(prog="q3tts serve", description="OpenAI-compatible speech server."))
    return serve(parser.parse_args(args.extra))


# ----------------------------------------------------------------------------------------------
# The parser
# ----------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors in the one-line form of every other error."""

    def error(self, message: str):
        self.exit(2, f"q3tts: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _common(quiet_only: bool = False) -> argparse.ArgumentParser:
    p = _Parser(add_help=False)
    p.add_argument("-q", "--quiet", action="store_true", help="no informational messages or progress")
    if quiet_only:
        return p
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch (torch.set_num_threads)")
    return p


def _model_args(p: argparse.ArgumentParser, what: str = "checkpoint folder or Hugging Face repo id") -> None:
    p.add_argument("-m", "--model", required=True, help=what)


def _synthesis_parent() -> argparse.ArgumentParser:
    p = _Parser(add_help=False)
    p.add_argument("text", nargs="?", help="text to speak; '-' reads standard input")
    p.add_argument("--text-file", metavar="FILE", help="read the text from FILE ('-': standard input)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output audio: .wav, .flac, .mp3, .ogg or .opus ('-': WAV on standard output)")  # fmt: skip
    p.add_argument("--language", help="language of the text (default: auto)")
    _model_args(p)
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="weights dtype (auto: bfloat16 on GPU, float32 on CPU)")  # fmt: skip
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="int8 weights for the talker and code predictor (CPU: about 3x less memory traffic)")  # fmt: skip
    g = p.add_argument_group("generation")
    g.add_argument("--seed", type=int, help="seed the sampler, for repeatable output")
    g.add_argument("--greedy", action="store_true", help="no sampling: argmax for every codebook")
    g.add_argument("--temperature", type=float, help="talker (codebook 0) sampling temperature")
    g.add_argument("--top-k", type=int, help="talker top-k (0: off)")
    g.add_argument("--top-p", type=float, help="talker top-p (1: off)")
    g.add_argument("--repetition-penalty", type=float, help="talker repetition penalty (1: off)")
    g.add_argument("--max-new-tokens", type=_positive_int, help="cap on generated frames + 1")
    g.add_argument(
        "--max-piece-tokens",
        type=_count,
        metavar="N",
        help="generate long texts in sentence-aware pieces of at most N text tokens (0: never split)",
    )
    g.add_argument("--stream", action="store_true", help="write the output while it is generated")
    g.add_argument("--chunk-frames", type=_positive_int, default=4, help="frames per decoded chunk (default 4)")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="q3tts", description="Qwen3-TTS: synthesis, streaming, serving, fine-tuning.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common, quiet, synth = _common(), _common(quiet_only=True), _synthesis_parent()

    speak = sub.add_parser("speak", parents=[synth, common], help="speak with a built-in speaker (CustomVoice)")
    speak.add_argument("--speaker", required=True, help="a built-in speaker (see 'q3tts info')")
    speak.add_argument("--instruct", help="style instruction (1.7B CustomVoice only)")
    speak.set_defaults(func=cmd_speak)

    design = sub.add_parser("design", parents=[synth, common], help="speak in a described voice (VoiceDesign)")
    design.add_argument("--instruct", required=True, help="description of the voice")
    design.set_defaults(func=cmd_design)

    clone = sub.add_parser("clone", parents=[synth, common], help="speak in a cloned voice (Base)")
    src = clone.add_mutually_exclusive_group(required=True)
    src.add_argument("--ref-audio", metavar="FILE", help="reference clip of the voice (1-60 s)")
    src.add_argument("--voice", metavar="NAME_OR_FILE", help="a saved voice: library name or .safetensors file")
    _reference_args(clone, required=False)
    clone.add_argument("--voices-dir", metavar="DIR", help="voice library folder")
    clone.set_defaults(func=cmd_clone)

    voices = sub.add_parser("voices", help="the saved voice library (save, list, delete)")
    vsub = voices.add_subparsers(dest="voices_command", required=True, metavar="ACTION")
    library = _Parser(add_help=False)
    library.add_argument("--voices-dir", metavar="DIR",
                         help="library folder (default: $Q3TTS_VOICES_DIR or ~/.local/share/q3tts/voices)")  # fmt: skip
    save = vsub.add_parser("save", parents=[library, common], help="analyse a reference clip and save it as NAME")
    save.add_argument("name")
    _model_args(save, "Base checkpoint folder or Hugging Face repo id")
    save.add_argument("--ref-audio", metavar="FILE", required=True, help="reference clip of the voice (1-60 s)")
    _reference_args(save, required=False)
    save.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    save.add_argument("--force", action="store_true", help="replace an existing voice of that name")
    save.set_defaults(func=cmd_voices_save)
    lst = vsub.add_parser("list", parents=[library, quiet], help="list saved voices")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_voices_list)
    delete = vsub.add_parser("delete", parents=[library, quiet], help="delete a saved voice")
    delete.add_argument("name")
    delete.set_defaults(func=cmd_voices_delete)

    enc = sub.add_parser("encode", parents=[common], help="audio -> speech codes [frames, 16]")
    enc.add_argument("audio")
    _model_args(enc, "model folder, speech tokenizer folder, or Hugging Face repo id")
    enc.add_argument("-o", "--output", required=True, metavar="CODES", help="codes file: .npy, .safetensors or .pt")
    enc.set_defaults(func=cmd_encode)

    dec = sub.add_parser("decode", parents=[common], help="speech codes -> audio")
    dec.add_argument("codes", help="codes file (.npy, .safetensors, .pt) holding [frames, 16] integers")
    _model_args(dec, "model folder, speech tokenizer folder, or Hugging Face repo id")
    dec.add_argument("-o", "--output", required=True, metavar="OUT",
                     help="output audio (.wav, .flac, .mp3, .ogg, .opus, '-')")  # fmt: skip
    dec.set_defaults(func=cmd_decode)

    bench = sub.add_parser("bench", add_help=False, help="benchmark synthesis (see 'q3tts bench --help')")
    bench.set_defaults(func=cmd_bench, takes_extra=True)

    serve = sub.add_parser("serve", add_help=False, help="OpenAI-compatible speech server (see 'q3tts serve --help')")
    serve.set_defaults(func=cmd_serve, takes_extra=True)

    train = sub.add_parser("train", add_help=False, help="fine-tune a checkpoint (see 'q3tts train --help')")
    train.set_defaults(func=cmd_train, takes_extra=True)
    dataset = sub.add_parser("dataset", add_help=False, help="prepare fine-tuning data (see 'q3tts dataset --help')")
    dataset.set_defaults(func=cmd_dataset, takes_extra=True)

    mk = sub.add_parser("make-checkpoint", help="write a random-weight checkpoint in the official layout")
    mk.add_argument("out", help="output folder")
    mk.add_argument("--preset", choices=("tiny", "0.6b", "1.7b"), default="tiny")
    mk.add_argument("--kind", choices=("base", "custom_voice", "voice_design"), default="custom_voice")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                    help="storage dtype of model.safetensors (the official files are bfloat16)")  # fmt: skip
    mk.set_defaults(func=cmd_make_checkpoint)

    info = sub.add_parser("info", help="describe a checkpoint: kind, size, speakers, languages")
    info.add_argument("model", help="checkpoint folder or Hugging Face repo id")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)
    return p


def _reference_args(p: argparse.ArgumentParser, required: bool) -> None:
    how = p.add_mutually_exclusive_group(required=required)
    how.add_argument("--ref-text", help="transcript of the reference clip (in-context cloning, best quality)")
    how.add_argument("--x-vector-only", action="store_true",
                     help="clone from the speaker embedding alone (no transcript needed)")  # fmt: skip


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "takes_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # --help, or a usage error already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    args.extra = extra
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            code = args.func(args)
    except KeyboardInterrupt:
        clear_status()
        return 130
    except BrokenPipeError:  # the reader of our stdout went away: stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except SystemExit as e:  # bench's own parser
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except (Q3TTSError, OSError) as e:  # the user's input, files or settings: one line, no traceback
        clear_status()
        print(f"q3tts: error: {_error_text(e)}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
