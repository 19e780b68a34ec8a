"""Upload exported models to the Hugging Face Hub (`--push-to-hub REPO`, or UPLOAD_TO_HUB with
HUB_MODEL_ID_LAST / HUB_MODEL_ID_BEST in the .env).

The upload is the real `huggingface_hub` client (`HfApi.create_repo` + `upload_folder`; the
endpoint follows HF_ENDPOINT). It runs after training, in a thread bounded by `hub_timeout`,
and any failure (no network, a bad token, a refused repo) is one warning line: the run never
fails because of the hub, and the local folders stay as they are.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Optional


def push_folder(folder: Path, repo_id: str, token: Optional[str], private: bool, message: str) -> str:
    """Create `repo_id` if missing, then upload `folder` to it; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token or None)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=message)
    return str(getattr(info, "commit_url", info))


def push_all(folders: dict[str, tuple[Path, str]], token: Optional[str], private: bool, timeout: float,
             say: Callable[[str], None]) -> dict[str, str]:  # fmt: skip
    """{label: (folder, repo)} -> {label: "ok <url>" | "failed: <why>"}; never raises."""
    results: dict[str, str] = {}

    def work() -> None:
        for label, (folder, repo) in folders.items():
            try:
                url = push_folder(folder, repo, token, private, f"q3tts train: {label} model")
                results[label] = f"ok {url}"
                say(f"uploaded {label}/ to the hub: {repo}")
            except Exception as e:  # noqa: BLE001 (the hub must never break a finished run)
                why = " ".join(str(e).split())[:300] or type(e).__name__
                results[label] = f"failed: {why}"
                say(f"warning: hub upload of {label}/ to {repo} failed ({why}); the local copy stays at {folder}")

    thread = threading.Thread(target=work, name="q3tts-hub-upload", daemon=True)
    thread.start()
    thread.join(timeout if timeout > 0 else None)
    if thread.is_alive():
        for label, (folder, repo) in folders.items():
            if label not in results:
                results[label] = "failed: timed out"
                say(f"warning: hub upload of {label}/ to {repo} did not finish in {timeout:.0f} s (hub_timeout); "
                    f"the local copy stays at {folder}")  # fmt: skip
    return results
