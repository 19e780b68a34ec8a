"""`python -m q3tts.server --model PATH_OR_REPO [--host --port ...]` (also `q3tts serve`).

Every flag maps to a Settings field; unset flags fall back to the Q3TTS_* environment, then the defaults."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from pydantic import ValidationError

from .settings import Settings

FLAGS = [  # (flag, settings field, type, help)
    (
        "--model",
        "model",
        str,
        "checkpoint folder or Hugging Face repo id; or NAME=PATH, repeated, to serve several models "
        "(requests pick one with `model`; the first is the default)",
    ),
    ("--served-model-name", "served_model_name", str, "model id shown by /v1/models (default: --model)"),
    ("--host", "host", str, "address to listen on (default 127.0.0.1)"),
    ("--port", "port", int, "port, 1-65535 (default 8000)"),
    (
        "--allowed-host",
        "allowed_hosts",
        str,
        "serve this Host name too (repeat; *.example.com, or * behind a proxy "
        "that checks Host); served anyway: the bound host, localhost, this machine's names, IP addresses",
    ),
    (
        "--allowed-origin",
        "allowed_origins",
        str,
        "let web pages from this origin post and open the WebSocket (repeat; e.g. https://app.example.com, or *)",
    ),
    ("--device", "device", str, "auto, cpu, cuda, cuda:1, mps"),
    ("--dtype", "dtype", str, "auto, float32, bfloat16, float16"),
    ("--quantize", "quantize", str, "CPU weights: int8, q8, int4, or per network 'talker=int4,predictor=q8'"),
    ("--voices-dir", "voices_dir", str, "saved voices (default: as `q3tts voices`, ~/.local/share/q3tts/voices)"),
    (
        "--api-key",
        "api_keys",
        str,
        "require `Authorization: Bearer KEY` on /v1/* (repeat for several keys); "
        "visible to every user in the process list: prefer Q3TTS_API_KEYS=k1,k2 or --api-key-file",
    ),
    ("--api-key-file", "api_key_file", str, "read API keys from this file, one per line"),
    ("--max-batch", "max_batch", int, "requests generated together (default 16)"),
    ("--max-queue", "max_queue", int, "requests waiting before 429 (default 64)"),
    ("--max-text-chars", "max_text_chars", int, "longest input text (default 5000)"),
    ("--max-upload-bytes", "max_upload_bytes", int, "largest reference audio file (default 20 MB)"),
    ("--max-reference-seconds", "max_reference_seconds", float, "longest reference audio (default 60)"),
    (
        "--max-new-tokens",
        "max_new_tokens",
        int,
        "most codec frames (+1) a request may generate, and the default length cap (default: the checkpoint's, 2048)",
    ),
    ("--request-timeout", "request_timeout", float, "seconds a request may generate (default 600)"),
    ("--chunk-frames", "chunk_frames", int, "codec frames per streamed chunk (default 8 = 640 ms)"),
    ("--first-chunk-frames", "first_chunk_frames", int, "codec frames in the first chunk (default 1)"),
    ("--ui-model", "ui_models", str, "another checkpoint the web UI (and the API) may load, NAME=PATH (repeat)"),
    ("--ssl-certfile", "ssl_certfile", str, "serve HTTPS with this certificate (PEM)"),
    ("--ssl-keyfile", "ssl_keyfile", str, "the certificate's private key (PEM)"),
    ("--max-header-bytes", "max_header_bytes", int, "largest request head, 431 beyond (default 32768)"),
    ("--header-timeout", "header_timeout", float, "seconds a client has to send a request head (default 10)"),
    ("--keep-alive-timeout", "keep_alive_timeout", int, "seconds an idle connection stays open (default 5)"),
    ("--max-connections", "max_connections", int, "open connections before 503 (default 1024)"),
    ("--max-loaded-models", "max_loaded_models", int, "models loaded at once; the least recently used unloads"),
    ("--memory-budget", "memory_budget", str, "most weight bytes loaded at once, e.g. 8GiB (LRU unload beyond)"),
    ("--drain-timeout", "drain_timeout", float, "seconds requests in flight may finish after SIGTERM (default 30)"),
    ("--log-format", "log_format", str, "text or json (one JSON object per line, with request_id)"),
    (
        "--ref-audio-url-host",
        "ref_audio_url_hosts",
        str,
        "fetch ref_audio given as an http(s) URL from this host (repeat; *.example.com, or * for any); private "
        "and loopback addresses are refused all the same. Default: URLs are refused",
    ),
    ("--ref-audio-url-timeout", "ref_audio_url_timeout", float, "seconds for one ref_audio download (default 10)"),
    (
        "--ui-upload-max-age",
        "ui_upload_max_age",
        float,
        "seconds an unused reference upload stays on disk (default 600)",
    ),
    # issue 14: the shared voice store, consent, Ray Serve
    (
        "--voice-store",
        "voice_store",
        str,
        "where saved voices live: postgresql://user@host/db (shared by replicas) or a folder (default: --voices-dir)",
    ),
    ("--voice-store-timeout", "voice_store_timeout", float, "seconds a voice call waits for the database (default 5)"),
    ("--replicas", "replicas", int, "with --ray: replicas (default 1; the minimum when autoscaling)"),
    ("--max-replicas", "max_replicas", int, "with --ray: autoscale up to this many replicas on ongoing requests"),
    ("--target-ongoing-requests", "target_ongoing_requests", float, "with --ray: autoscaling target per replica (4)"),
    ("--replica-cpus", "replica_cpus", float, "with --ray: CPUs reserved per replica (default 1)"),
    ("--replica-gpus", "replica_gpus", float, "with --ray: GPUs per replica (default 0; 0.5 = two per GPU)"),
]
REPEATED = ("api_keys", "ui_models", "allowed_hosts", "allowed_origins", "model", "ref_audio_url_hosts")


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="q3tts serve", description="OpenAI-compatible speech server")
    for flag, field, kind, text in FLAGS:
        extra = {"action": "append"} if field in REPEATED else {}
        parser.add_argument(flag, dest=field, type=kind, default=None, help=text, **extra)
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", default=None, help="skip the warm-up")
    parser.add_argument("--no-ui", dest="ui", action="store_false", default=None, help="no web UI at /ui")
    parser.add_argument("--require-consent", dest="require_consent", action="store_true", default=None,
                        help="saving a cloned voice needs `consent` and `consent_by` (stored with the voice)")  # fmt: skip
    parser.add_argument("--ray", action="store_true", help="serve on Ray Serve (the `ray` extra): --replicas N")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = {field: getattr(args, field) for _, field, _, _ in FLAGS if getattr(args, field, None) is not None}
    specs = given.pop("model", None) or []
    if len(specs) == 1 and "=" not in specs[0]:  # one checkpoint, as before
        given["model"] = specs[0]
    elif specs:
        given["models"] = specs
    for flag in ("warmup", "ui", "require_consent"):
        if getattr(args, flag, None) is not None:
            given[flag] = getattr(args, flag)
    return Settings(**given)


def serve(args: argparse.Namespace) -> int:

    from .app import create_app
    from .listen import uvicorn_config
    from .ops import DrainingServer, configure_logging

    try:
        settings = settings_from_args(args)
    except ValidationError as e:  # a bad flag or Q3TTS_* value: one line, not a traceback
        problems = "; ".join(
            ": ".join(filter(None, (".".join(map(str, err["loc"])), err["msg"]))) for err in e.errors()
        )
        print(f"q3tts serve: error: {problems}", file=sys.stderr)
        return 2
    configure_logging(args.log_level, settings.log_format)
    if getattr(args, "ray", False):
        from .ray import run_ray

        return run_ray(settings, log_level=args.log_level)
    holder: dict = {}

    def stop() -> None:  # the model did not load: exit instead of serving 503s forever
        holder["failed"] = True
        holder["server"].should_exit = True

    app = create_app(settings, on_fatal=stop)
    # log_config=None: uvicorn's loggers write through the root handler (request ids, JSON);
    # after the drain, connections still open get 2 s before they are cut.
    config = uvicorn_config(app, settings, log_level=args.log_level, log_config=None, timeout_graceful_shutdown=2)
    server = DrainingServer(config, app.state.ops, settings.drain_timeout)
    holder["server"] = server
    server.run()
    return 1 if holder.get("failed") else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return serve(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
