"""`q3tts serve`: an OpenAI-compatible speech server (FastAPI) over the continuous-batching scheduler.

    from q3tts.server import Settings, create_app
    app = create_app(Settings(model="Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"))

Names load on first use, so `q3tts.server.ui` and `python -m q3tts.server --help` stay light."""

__all__ = ["create_app", "Settings"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "Settings":
        from .settings import Settings

        return Settings
    raise AttributeError(f"module 'q3tts.server' has no attribute {name!r}")
