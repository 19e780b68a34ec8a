"""Output paths checked before any work, and writing audio: all at once, or while it is generated."""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..console import Status, note, one_line, seconds
from .common import AUDIO_EXTENSIONS, FRAME_SAMPLES, UsageError, _generation_kwargs


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

    from ..audio import SAVE_FORMATS

    out = _output(spec, AUDIO_EXTENSIONS, "audio", stdout_ext="wav")
    container, subtype = SAVE_FORMATS[out.ext]
    if not sf.check_format(container, subtype):
        raise UsageError(
            f"the installed libsndfile ({sf.__libsndfile_version__}) cannot write .{out.ext}; use .wav or .flac"
        )
    return out


def _stdout_buffer():
    return getattr(sys.stdout, "buffer", sys.stdout)


def check_reader_got_everything(stream) -> None:
    """Raise BrokenPipeError if `stream` is a pipe whose reader went away leaving our bytes unread.

    A write into a pipe succeeds as soon as the bytes fit in its buffer (64 KiB on Linux), so
    `q3tts speak ... -o - | head -c 10` would otherwise end with every write done and exit 0 although
    the audio was lost. The write end of a pipe polls POLLERR once no reader is left, and FIONREAD
    counts what is still in it: a reader that took everything and closed is no error."""
    try:
        import fcntl
        import select
        import stat
        import struct
        import termios

        fd = stream.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poll.poll(0))
        unread = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except (ImportError, OSError, ValueError, AttributeError):
        return  # no file descriptor, or not POSIX: nothing to check
    if gone and unread:
        raise BrokenPipeError(f"the reader of standard output went away with {unread} bytes unread")


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

        from ..audio import SAVE_FORMATS, AudioError

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

    from ..audio import save_audio

    if out.path is None:
        buf = io.BytesIO()
        save_audio(buf, wav, sample_rate, format="wav")
        _stdout_buffer().write(buf.getvalue())
        _stdout_buffer().flush()
        check_reader_got_everything(_stdout_buffer())
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
        elif out.path is None:
            check_reader_got_everything(_stdout_buffer())
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
