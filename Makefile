# kdnb: two commands on a fresh machine.
#   make book   create the environment if needed, execute every chapter (default profile) and build the HTML book
#   make test   create the environment if needed and run the whole test suite
# Also: make lab, make smoke, make bench, make clean.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
READY  := $(VENV)/.kdnb-installed

.PHONY: env book test lab smoke bench clean

env: $(READY)

# The environment is rebuilt when the pins change. torch is pinned (a plain `torch` pulls GBs of CUDA wheels).
$(READY): requirements.txt constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@
	@echo "[kdnb] environment ready in $(VENV)"

book: env
	$(PY) book/build.py

test: env
	$(PY) -m pytest

# JupyterLab refuses to start as root unless told: containers and CI machines often run as root.
lab: env
	$(VENV)/bin/jupyter lab $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) notebooks/

smoke: env
	@mkdir -p _build/smoke
	@set -e; for nb in notebooks/*.ipynb; do \
		echo "[kdnb] $$nb (smoke)"; \
		KDNB_CLAIMS_DIR=_build/smoke/claims $(VENV)/bin/papermill --cwd notebooks -p profile smoke \
			"$$nb" "_build/smoke/$$(basename $$nb)"; \
	done

bench: env
	$(PY) benchmarks/run.py

clean:
	rm -rf _build .pytest_cache .hypothesis
