# The two commands of README.md: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall whenever the package metadata changes.
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | sha1sum | cut -c1-12)
OUT ?= runs/quickstart
# The browser runtimes of the app's device mode (pinned in demo/device/package-lock.json; never committed).
NODE_STAMP := demo/device/node_modules/.package-lock.json

.PHONY: demo test lint format clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --progress-bar off -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

$(NODE_STAMP): demo/device/package.json demo/device/package-lock.json
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix demo/device --no-audit --no-fund --ignore-scripts --loglevel=error; \
	else echo "npm not found: the app's device mode is unavailable (apt-get install npm; make)"; fi

demo: $(STAMP) $(NODE_STAMP)
	$(BIN)/pocketswap quickstart --out $(OUT)

test: $(STAMP) $(NODE_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf runs build *.egg-info demo/device/node_modules
