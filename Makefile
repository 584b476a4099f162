# lipstep: set-up and everyday commands. `make demo` and `make test` do all set-up themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lipstep-installed
DEMO_DIR ?= demo_out
export HF_HUB_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: setup system-deps demo test test-fast lint clean teacher

setup: system-deps $(STAMP)

# libespeak-ng (speech with phoneme timing) is a system library: install it when missing.
system-deps:
	@if ldconfig -p 2>/dev/null | grep -q 'libespeak-ng\.so'; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing espeak-ng (apt-get)"; \
		SUDO=""; [ "$$(id -u)" = "0" ] || SUDO="sudo"; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq espeak-ng >/dev/null; \
	else \
		echo "error: libespeak-ng not found and apt-get is unavailable; install espeak-ng with your package manager" >&2; exit 1; \
	fi

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/lipstep demo --out $(DEMO_DIR)

test: setup
	$(VENV)/bin/pytest -q -n 2 tests

# The suite without the tests marked slow (end-to-end runs of a few seconds each).
test-fast: setup
	$(VENV)/bin/pytest -q -n 2 -m "not slow" tests

# Retrain the bundled default teacher from scratch (about 58 minutes on 2 CPU cores).
teacher: setup
	LIPSTEP=$(VENV)/bin/lipstep bash experiments/teacher/train_default.sh runs/default_teacher

lint: setup
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
