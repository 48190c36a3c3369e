# pyqmail: `make run` starts the MTA on ./var/qmail, `make test` proves it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
QHOME ?= ./var/qmail
STAMP := $(VENV)/.installed

.PHONY: run test bench lint deps venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,fast]'
	touch $(STAMP)

venv: $(STAMP)

run: venv
	test -f $(QHOME)/control/me || $(BIN)/pyqmail init --home $(QHOME)
	exec $(BIN)/pyqmail start --home $(QHOME)

# Debian packages the tests talk to (installed only when root, as in CI)
deps:
	sh scripts/install-debs.sh

lint: venv
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src tests

test: venv deps lint
	$(BIN)/python -bb -m pytest -q -p no:cacheprovider

# pyqmail and Postfix side by side (Postfix only when root); BENCH_ARGS=--quick for a minute.
# uvloop (the fast extra) is in the venv already; the check is for older venvs
bench: venv
	$(BIN)/python -c 'import uvloop' 2>/dev/null || $(BIN)/python -m pip install -q -e '.[fast]'
	$(BIN)/python bench/compare.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache
