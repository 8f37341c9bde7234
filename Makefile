# Two entry points (see README): `make run` and `make test`. Both set up .venv from
# requirements.txt, build moekit once into build/python (the op library, its gtest suite and the
# torch extension, in one CMake build) and install it editable into .venv; they need nothing
# installed by hand beyond Debian's build tools (g++, cmake, ninja, libgtest-dev, python3-dev), which
# tools/install_deps.sh adds.

SHELL  := /bin/bash
VENV   := .venv
PY     := $(VENV)/bin/python
BUILD  := build/python
JOBS   ?= $(shell nproc)
NPROC  ?= 2
# NPROC if it is a whole number >= 1, else empty (`make run` then says so and stops).
NPROC_OK := $(shell echo '$(NPROC)' | grep -xE '[1-9][0-9]{0,3}')
# CPU threads per rank: the cores shared among the ranks (torch's pool runs moekit's loops too).
THREADS ?= $(shell n=$$(( $(JOBS) / $(or $(NPROC_OK),1) )); echo $$(( n > 0 ? n : 1 )))
# What the build reads: a change here rebuilds and reinstalls the op library; Python files need
# neither (the editable install imports them from python/moekit).
BUILD_INPUTS := $(shell find src include python/csrc tests/cpp -type f) CMakeLists.txt pyproject.toml
RUN_ARGS = $(if $(PROMPT),--prompt "$(PROMPT)") $(if $(DEVICE),--device $(DEVICE)) \
           $(if $(BACKEND),--backend $(BACKEND)) $(ARGS)

.PHONY: setup install test test-cpp test-install test-python test-sanitize run clean gpu-wheels

$(VENV)/.installed: requirements.txt requirements-parallel-tests.txt requirements-headers.txt
	@bash tools/install_deps.sh
	@echo "== moekit: creating $(VENV) with the pinned packages of requirements.txt (the first time this downloads" \
	      "PyTorch, a 4.8 GB CUDA build: PyPI has no CPU-only one)"
	python3 -m venv $(VENV)
	$(PY) -m pip install --progress-bar on --upgrade pip
	$(PY) -m pip install --progress-bar on -r requirements.txt
	$(PY) -m pip install --progress-bar on --no-deps -r requirements-headers.txt
	@touch $@

setup: $(VENV)/.installed

$(BUILD)/.installed: $(VENV)/.installed $(BUILD_INPUTS)
	@echo "== moekit: building the op library, its tests and the torch extension into $(BUILD), installing" \
	      "into $(VENV) (log: $(BUILD)/install.log)"
	@mkdir -p $(BUILD)
	@set -o pipefail; CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(PY) -m pip install -v --no-build-isolation --no-deps -e . \
	  -Ccmake.define.MOEKIT_BUILD_TESTS=ON -Cbuild.verbose=true 2>&1 | tee $(BUILD)/install.log \
	  | { sed -unE 's#^ *(\[[0-9]+/[0-9]+\]) .* -c $(CURDIR)/([^ ]+).*#  \1 \2#p' || true; } \
	  || { tail -40 $(BUILD)/install.log; echo "moekit: the build failed (log: $(BUILD)/install.log)"; exit 1; }
	@touch $@

install: $(BUILD)/.installed

test-cpp: install
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# The C++ package: installed from the same build, then examples/ built against it and run.
test-install: install
	cmake --install $(BUILD) --component dev --prefix build/prefix > /dev/null
	cmake -S examples -B build/examples -G Ninja -DCMAKE_PREFIX_PATH=$(CURDIR)/build/prefix > /dev/null
	cmake --build build/examples
	build/examples/moe_layer

test-python: install
	$(PY) -m pytest -q -rs tests/python

test: test-cpp test-install test-python

# ASan + UBSan over the CPU backend: the gtest suite, the bad-input matrix and the property test.
test-sanitize: setup
	bash tools/sanitize.sh $(PY)

# The main job: the shipped tiny gpt-oss model, tensor-parallel over NPROC ranks (gloo on CPU,
# NCCL on GPUs; each rank needs its own GPU, or pass DEVICE=cuda:0 BACKEND=gloo to share one).
# The preflight reports a bad argument or device in one line, before torchrun starts.
run: install
	@test -n "$(NPROC_OK)" || { echo "make run: NPROC expected a whole number of ranks >= 1, got '$(NPROC)'" >&2; exit 2; }
	@$(PY) -m moekit.generate --preflight $(NPROC) $(RUN_ARGS)
	@echo "== torchrun: $(NPROC) rank(s), $(THREADS) CPU thread(s) each"
	@OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/torchrun --standalone --nproc-per-node $(NPROC) -m moekit.generate \
	  $(RUN_ARGS)

# The wheels an offline GPU machine needs beyond its image, installed there from build/wheels:
# requirements-headers.txt's (CuTe's headers; tools/gpu_build.sh) and requirements-parallel-tests.txt's
# (tools/gpu_check.sh).
gpu-wheels: setup
	$(PY) -m pip download -q --no-deps -d build/wheels -r requirements-headers.txt \
	  -r requirements-parallel-tests.txt

clean:
	rm -rf build $(VENV)
