# Two commands on a fresh machine: `make demo` and `make test`. Both bootstrap .venv first.
# Torch is installed before the package so pip never pulls a multi-GB CUDA build on a CPU machine;
# override the spec elsewhere, e.g. `make test TORCH_SPEC="torch --index-url https://.../cu124"`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# Test workers (pytest-xdist): one per logical core, each file's tests kept together on one worker, each
# worker (and every `dk` it starts) on one thread from the start: measured 198 s on 2 cores, against 282 s when
# the workers only lower their threads after torch has started and 309 s for one worker on two threads.
TEST_WORKERS ?= logical
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test,ray]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dk demo --out runs/demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

clean:
	rm -rf $(VENV) runs .cache .pytest_cache
