# Two entry points for a newcomer: `make demo` (offline quickstart) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?= -n 2 --dist loadfile --timeout=1200   # whole suite, ~9 min on 2 cores; module fixtures shared per file

.PHONY: install demo test test-fast bench bench-effect clean

install: $(VENV)/.installed

# torch first (the CPU wheel on a CPU machine), so that no dependency pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: install
	HF_HUB_OFFLINE=1 $(PY) -m dpo_exp experiment=quickstart

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install   # skips the end-to-end tests marked slow (~4 min)
	$(PY) -m pytest -n 2 -m "not slow"

bench: install
	$(PY) benchmarks/bench_generation.py
	$(PY) benchmarks/bench_sweep_cache.py

bench-effect: install   # the README's effect figures (issue-11 command, beta sweep, quickstart): ~30-40 min on 2 cores
	$(PY) benchmarks/bench_sentiment_effect.py

clean:
	rm -rf outputs multirun .cache
