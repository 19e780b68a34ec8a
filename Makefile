# The commands of the README: `make demo` (main job), `make check` (lint, format and the tests that
# need neither the oracle venv nor a browser: the quick check before a commit) and `make test` (the
# whole suite). Each sets up a fresh machine itself.
PY := .venv/bin/python
RUFF := $(PY) -m ruff

.PHONY: setup setup-oracle setup-browser setup-eval setup-postgres setup-peers demo check test

setup:
	bash tools/setup.sh dev server ui train wandb eval

setup-oracle:
	bash tools/oracle/setup.sh

setup-browser:
	bash tools/setup_browser.sh

setup-eval:
	bash tools/setup_eval.sh

demo: setup
	$(PY) -m q3tts.demo

check: setup
	$(RUFF) check q3tts tests tools
	$(RUFF) format --check q3tts tests tools
	$(PY) -m pytest -q -m "not oracle and not browser"

test: setup setup-oracle setup-browser setup-eval setup-postgres setup-peers
	Q3TTS_REQUIRE_PEER=1 Q3TTS_REQUIRE_ORACLE=1 Q3TTS_REQUIRE_BROWSER=1 Q3TTS_REQUIRE_ESPEAK=1 Q3TTS_REQUIRE_POSTGRES=1 $(PY) -m pytest -q

# The replica tests (tests/replicas): PostgreSQL's binaries, psycopg and Ray Serve.
setup-postgres:
	bash tools/setup_postgres.sh
	bash tools/setup.sh postgres ray

# The CPU peer engines `q3tts bench --peer` runs, each in its own venv (tests/test_bench_peer.py).
setup-peers:
	bash tools/peers/setup_vox.sh
