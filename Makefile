# Quick start: `make demo` runs the main job on real clips; `make test` runs the test suite.
# Both create .venv with Python 3.10 (lava-nc 0.10 / lava-dl 0.6 need >=3.10,<3.11) when missing.
SHELL := /bin/bash
DATA ?= ../shared/data
PY310 := $(shell for c in python3.10 $$HOME/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do \
	  $$c -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && { echo $$c; break; }; done)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all venv clean

$(BIN)/.installed: pyproject.toml
	@test -n "$(PY310)" || { echo "error: no Python 3.10 found (lava-nc 0.10 needs >=3.10,<3.11); install python3.10 and retry" >&2; exit 1; }
	test -x $(BIN)/python || $(PY310) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/mksgn-data stats $(DATA)/nw-ucla
	$(BIN)/mksgn-export models/mksgn_ucla_joint.pt --target lava -o out/demo/mksgn_lava --calib-data $(DATA)/nw-ucla --force
	$(BIN)/mksgn-sim out/demo/mksgn_lava --data $(DATA)/nw-ucla --clips 8 --report out/demo/mksgn_sim.json --plots out/demo/mksgn
	$(BIN)/mksgn-export models/base_sgn_ucla_joint.pt --target lava -o out/demo/base_sgn_lava --calib-data $(DATA)/nw-ucla --force
	$(BIN)/mksgn-sim out/demo/base_sgn_lava --data $(DATA)/nw-ucla --clips 8 --report out/demo/base_sgn_sim.json --plots out/demo/base_sgn
	$(BIN)/mksgn-energy out/demo/base_sgn_sim.json out/demo/mksgn_sim.json --plot out/demo/energy_comparison.png

test: venv
	$(BIN)/python -m pytest -q -m "not slow" tests

test-all: venv
	$(BIN)/python -m pytest -q -m "slow or not slow" tests

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
