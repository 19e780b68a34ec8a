# The two commands of the README: `make demo` (main job) and `make test` (the test suite).
# Both set up a fresh machine themselves.
PY := .venv/bin/python

.PHONY: setup setup-oracle demo test

setup:
	bash tools/setup.sh dev server

setup-oracle:
	bash tools/oracle/setup.sh

demo: setup
	$(PY) -m q3tts.demo

test: setup setup-oracle
	Q3TTS_REQUIRE_ORACLE=1 $(PY) -m pytest -q
