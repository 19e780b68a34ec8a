# The two commands of the README: `make demo` (main job) and `make test` (the test suite).
# Both set up a fresh machine themselves.
PY := .venv/bin/python

.PHONY: setup setup-oracle setup-browser demo test

setup:
	bash tools/setup.sh dev server ui train

setup-oracle:
	bash tools/oracle/setup.sh

setup-browser:
	bash tools/setup_browser.sh

demo: setup
	$(PY) -m q3tts.demo

test: setup setup-oracle setup-browser
	Q3TTS_REQUIRE_ORACLE=1 Q3TTS_REQUIRE_BROWSER=1 $(PY) -m pytest -q
