# Two entry points for a newcomer: `make demo` (offline quickstart) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?= -n 2 --dist loadfile --timeout=1500 --durations=25   # two workers; module fixtures shared per file; the 25 slowest listed

.PHONY: install demo app lint test test-slow test-all docs docs-config docs-memory bench bench-effect bench-judge gpu-check gpu-profile gpu-kit clean

install: $(VENV)/.installed

# torch first (the CPU wheel on a CPU machine), so that no dependency pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: install
	HF_HUB_OFFLINE=1 $(PY) -m dpo_exp experiment=quickstart

app: install   # the Gradio app on the newest run under outputs/ (the demo's after `make demo`)
	@run=$$(ls -td outputs/*/*/ 2>/dev/null | head -n 1); \
	if [ -z "$$run" ]; then echo "error: no run under outputs/: run make demo first" >&2; exit 2; fi; \
	echo "opening $$run"; HF_HUB_OFFLINE=1 $(PY) -m dpo_exp.app "$$run"

lint: install   # ruff lint + format check, import-linter's layer contract (pyproject.toml; pre-commit runs the same)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: install lint   # lint, then every test not marked slow
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow"

test-slow: install   # the end-to-end runs marked slow (CI runs them after make test)
	$(PY) -m pytest $(PYTEST_ARGS) -m slow

test-all: test test-slow

docs: install   # the documentation site into site/ (git-ignored); strict: a broken link, anchor or page fails (make test builds it too: tests/test_docs.py)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-config: install   # regenerate docs/reference/configuration.md from conf/ (tests/test_docs.py fails while it is stale)
	$(PY) scripts/config_reference.py

docs-memory: install   # regenerate the memory tables of docs/clusters.md and README.md from dpo_exp/memory (tests/test_sharding.py checks it)
	$(PY) scripts/memory_table.py

bench: install   # 14.5 min on 2 cores (bench_methods --quick 6.3 of them): quick sizes, scaling at the issue sizes; each script without --quick runs the full size
	$(PY) benchmarks/bench_dpo_step.py --quick
	$(PY) benchmarks/bench_generation.py --quick
	$(PY) benchmarks/bench_sft.py --quick
	$(PY) benchmarks/bench_scaling.py
	$(PY) benchmarks/bench_gpu.py --quick
	$(PY) benchmarks/bench_sweep_cache.py
	$(PY) benchmarks/bench_methods.py --quick   # every training method, one setting each, smoke scale

bench-effect: install   # the effect figures of README.md and docs/results.md (issue-11 command, beta sweep, quickstart): ~30-40 min on 2 cores
	$(PY) benchmarks/bench_sentiment_effect.py

gpu-check: install   # the GPU path in one table (< 8 min on one GPU, no hub); without a GPU it says so and exits 0
	$(PY) benchmarks/gpu_check.py

gpu-profile: install   # trl vs a hand-written floor vs dpo_exp on the same UltraFeedback batches (< 8 min on one GPU): benchmarks/results/gpu_profile.json; without a GPU, --smoke on CPU
	@if $(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		$(PY) benchmarks/gpu_profile.py; \
	else \
		$(PY) benchmarks/gpu_profile.py --smoke; \
	fi

gpu-kit: install   # for a GPU machine without internet: wheels + data into .gpu_kit/ (~30 MiB); there: python3 benchmarks/gpu_kit.py run --out DIR
	$(PY) benchmarks/gpu_kit.py pack

bench-judge: install   # the trained-judge table of docs/results.md and frontiers on the preference samples: ~11 min on 2 cores
	$(PY) benchmarks/bench_preference_judge.py

clean:
	rm -rf outputs multirun .cache site
