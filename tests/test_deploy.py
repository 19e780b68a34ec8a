"""deploy/ kept true: every command, flag, port, route and Q3TTS_* variable the Dockerfile, the compose
file, nginx.conf and the Kubernetes manifests use exists in the CLI and the settings, and the files
pass the validators that install here (the Kubernetes 1.37 schemas, strict; the compose spec)."""

from __future__ import annotations

import json
import re
import shlex
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import tomllib
import yaml

pytest.importorskip("fastapi")
from q3tts.cli.parser import build_parser as build_cli_parser
from q3tts.server.__main__ import build_parser as build_serve_parser
from q3tts.server.__main__ import settings_from_args
from q3tts.server.routes import ops, v1
from q3tts.server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
ROUTES = {route.path for route in (*ops.routes, *v1.routes)}


def dockerfile():
    dockerfile_parse = pytest.importorskip("dockerfile_parse")
    parser = dockerfile_parse.DockerfileParser(str(DEPLOY / "Dockerfile"))
    return parser


def check_env(env: dict[str, str], monkeypatch) -> Settings:
    """Each Q3TTS_* name is a Settings field, and the values parse (as the server would read them)."""
    fields = set(Settings.model_fields)
    for name, value in env.items():
        assert name.startswith("Q3TTS_"), name
        field = name.removeprefix("Q3TTS_").lower()
        assert field in fields, f"{name} is no setting (q3tts/server/settings.py)"
        if value is not None:
            monkeypatch.setenv(name, value)
    return Settings()


def check_serve_args(args: list[str]) -> Settings:
    """The arguments parse as `q3tts serve` flags (argparse exits on an unknown one) into Settings."""
    try:
        parsed = build_serve_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"`q3tts serve {shlex.join(args)}` does not parse")
    return settings_from_args(parsed)


def route_of(url: str) -> str:
    path = urlsplit(url).path
    assert path in ROUTES, f"{path} is no route of the server"
    return path


def test_dockerfile_runs_q3tts_serve_with_real_flags_settings_and_ports(monkeypatch):
    df = dockerfile()
    entry = json.loads(next(i["value"] for i in df.structure if i["instruction"] == "ENTRYPOINT"))
    cmd = json.loads(next(i["value"] for i in df.structure if i["instruction"] == "CMD"))
    assert entry == ["q3tts", "serve"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["q3tts"] == "q3tts.cli:main"
    parsed, extra = build_cli_parser().parse_known_args(["serve", *cmd])  # as q3tts.cli.main reads it
    assert parsed.command == "serve" and parsed.takes_extra and extra == cmd
    check_serve_args(cmd)
    env = {k: v for k, v in df.envs.items() if k.startswith("Q3TTS_")}
    settings = check_env(env, monkeypatch)
    assert settings.host == "0.0.0.0" and settings.log_format == "json"
    exposed = [i["value"] for i in df.structure if i["instruction"] == "EXPOSE"]
    assert exposed == [str(settings.port)]
    health = next(i["value"] for i in df.structure if i["instruction"] == "HEALTHCHECK")
    url = re.search(r"http://[^'\"]+", health).group(0)
    assert urlsplit(url).port == settings.port and route_of(url) == "/health"
    # The build arguments: a real extra of pyproject, the torch the set-up scripts pin, a CUDA switch.
    args = {i["value"].split("=")[0]: i["value"].partition("=")[2] for i in df.structure if i["instruction"] == "ARG"}
    extras = set(pyproject["project"]["optional-dependencies"])
    assert set(args["EXTRAS"].split(",")) <= extras
    assert f"torch=={args['TORCH_VERSION']}" in (ROOT / "tools" / "setup.sh").read_text()
    assert args["TORCH_VARIANT"] == "cpu" and "whl/${TORCH_VARIANT}" in df.content
    assert "STOPSIGNAL SIGTERM" in df.content


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_passes_the_compose_spec():
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("check_jsonschema")
    spec = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    jsonschema.validate(compose(), json.loads(spec.read_text()))


def test_compose_runs_two_replicas_on_postgres_behind_the_balancer(monkeypatch):
    services = compose()["services"]
    assert set(services) == {"postgres", "q3tts", "lb"}
    app, db, lb = services["q3tts"], services["postgres"], services["lb"]
    assert app["deploy"]["replicas"] == 2
    check_serve_args(app["command"])
    settings = check_env(app["environment"], monkeypatch)
    store = urlsplit(app["environment"]["Q3TTS_VOICE_STORE"])
    assert store.scheme == "postgresql" and store.hostname == "postgres"
    assert (store.username, store.password, store.path.strip("/")) == (
        db["environment"]["POSTGRES_USER"], db["environment"]["POSTGRES_PASSWORD"], db["environment"]["POSTGRES_DB"])  # fmt: skip
    route_of(re.search(r"http://[^'\"]+", " ".join(app["healthcheck"]["test"])).group(0))
    df = dockerfile()
    args = {i["value"].split("=")[0] for i in df.structure if i["instruction"] == "ARG"}
    assert set(app["build"]["args"]) <= args and app["build"]["dockerfile"] == "deploy/Dockerfile"
    grace = float(app["stop_grace_period"].rstrip("s"))
    assert grace > settings.drain_timeout  # docker's SIGKILL never lands on a draining replica
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"] and "q3tts" in lb["depends_on"]


def nginx_blocks(text: str) -> list[str]:
    """Directives of nginx.conf, checking the syntax on the way: balanced braces, `;` after each."""
    text = re.sub(r"#[^\n]*", "", text)
    depth, directives = 0, []
    for token in re.findall(r"[^;{}]+[;{]|}", text):
        if token == "}":
            depth -= 1
            assert depth >= 0, "unbalanced }"
            continue
        body = token.strip()
        directives.append(body)
        if body.endswith("{"):
            depth += 1
    leftover = re.sub(r"[^;{}]+[;{]|}", "", text).strip()
    assert depth == 0 and not leftover, f"nginx.conf: unclosed block or a directive without ';': {leftover!r}"
    return directives


def test_nginx_balances_over_the_replicas_port_and_retries_a_draining_one(monkeypatch):
    directives = nginx_blocks((DEPLOY / "nginx.conf").read_text())
    app = compose()["services"]["q3tts"]
    port = check_env({"Q3TTS_PORT": app["environment"].get("Q3TTS_PORT", "8000")}, monkeypatch).port
    servers = [d.split()[1] for d in directives if d.startswith("server ") and not d.endswith("{")]
    assert servers == [f"q3tts:{port}"]  # the compose service, on the port the image listens on
    assert "proxy_pass http://q3tts;" in directives and "proxy_buffering off;" in directives
    retry = next(d for d in directives if d.startswith("proxy_next_upstream"))
    assert "http_503" in retry  # a replica draining after SIGTERM answers 503 before doing anything
    listen = next(d for d in directives if d.startswith("listen"))
    assert compose()["services"]["lb"]["ports"] == [f"{listen.split()[1].rstrip(';')}:8080"]


def k8s() -> dict[str, dict]:
    docs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def test_kubernetes_manifests_pass_the_schemas():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for doc in k8s().values():
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_kubernetes_probes_flags_env_and_disruption_budget(monkeypatch):
    docs = k8s()
    assert {"Deployment", "Service", "PodDisruptionBudget"} <= set(docs)
    deployment, service, pdb = docs["Deployment"], docs["Service"], docs["PodDisruptionBudget"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    check_serve_args(container["args"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    settings = check_env(env, monkeypatch)
    (port,) = container["ports"]
    assert port["containerPort"] == settings.port
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": port["name"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        route_of(container[probe]["httpGet"]["path"])
    assert pod["terminationGracePeriodSeconds"] > settings.drain_timeout
    assert container["resources"]["requests"] and container["resources"]["limits"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items() and pdb["spec"]["minAvailable"] >= 1
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert deployment["spec"]["replicas"] > pdb["spec"]["minAvailable"]  # a node drain can proceed
