"""A local stand-in for the part of the Hugging Face Hub HTTP API that `HfApi.create_repo` and
`HfApi.upload_folder` use, so the real client can be tested with HF_ENDPOINT pointed here.

    POST /api/repos/create                          {"name", "organization", "type", "private"}
    POST /api/validate-yaml                         the model card's front matter
    POST /api/models/{repo}/preupload/{revision}    -> every file "regular" (no LFS round trip)
    POST /api/models/{repo}/commit/{revision}       ndjson: a header line, then one line per file

Uploaded files are kept in `HubStub.repos[repo][path] = bytes`; every request is in `log`.
A real server on localhost (ThreadingHTTPServer), not a mock of the client."""

from __future__ import annotations

import base64
import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubStub:
    def __init__(self, token: str = "hf_test_token"):
        self.token = token
        self.repos: dict[str, dict[str, bytes]] = {}
        self.created: list[dict] = []
        self.commits: list[dict] = []
        self.log: list[str] = []
        self.cards: list[str] = []  # README.md texts sent to /api/validate-yaml
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def body(self) -> bytes:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                return gzip.decompress(data) if self.headers.get("Content-Encoding") == "gzip" else data

            def do_GET(self):
                stub.log.append(f"GET {self.path}")
                self.reply(404, {"error": "not in the stand-in"})

            def do_POST(self):
                stub.log.append(f"POST {self.path}")
                if self.headers.get("Authorization") != f"Bearer {stub.token}":
                    return self.reply(401, {"error": "Invalid credentials in Authorization header"})
                raw = self.body()
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    req = json.loads(raw)
                    repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    stub.created.append(req)
                    stub.repos.setdefault(repo, {})
                    return self.reply(200, {"url": f"{stub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":  # the model card's front matter, checked before the commit
                    import yaml

                    content = json.loads(raw).get("content", "")
                    stub.cards.append(content)
                    try:
                        yaml.safe_load(content.split("---")[1] if content.startswith("---") else "")
                    except (yaml.YAMLError, IndexError) as e:
                        return self.reply(400, {"error": f"invalid model card metadata: {e}"})
                    return self.reply(200, {"errors": [], "warnings": []})
                if path.startswith("/api/models/") and "/preupload/" in path:
                    files = json.loads(raw)["files"]
                    return self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False, "oid": None} for f in files]})  # fmt: skip
                if path.startswith("/api/models/") and "/commit/" in path:
                    repo = path[len("/api/models/") :].split("/commit/")[0]
                    if repo not in stub.repos:
                        return self.reply(404, {"error": f"Repository {repo} not found"})
                    lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
                    header = next(x["value"] for x in lines if x["key"] == "header")
                    for x in lines:
                        if x["key"] == "file":
                            stub.repos[repo][x["value"]["path"]] = base64.b64decode(x["value"]["content"])
                    stub.commits.append({"repo": repo, **header})
                    n = len(stub.commits)
                    return self.reply(200, {"commitUrl": f"{stub.url}/{repo}/commit/{n:040x}",
                                            "commitOid": f"{n:040x}", "pullRequestUrl": None})  # fmt: skip
                self.reply(404, {"error": "not in the stand-in"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HubStub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
