# Two entry points (see README): `make run` and `make test`. Both set up .venv from
# requirements.txt, build and install moekit into it, and need nothing installed by hand
# beyond Debian's build tools (g++, cmake, ninja, libgtest-dev), which tools/install_deps.sh adds.

VENV   := .venv
PY     := $(VENV)/bin/python
BUILD  := build/cpp
JOBS   ?= $(shell nproc)
NPROC  ?= 2
PROMPT ?= The old man walked into the city and

.PHONY: setup install cpp test test-cpp test-python test-sanitize run clean

$(VENV)/.installed: requirements.txt
	bash tools/install_deps.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

setup: $(VENV)/.installed

install: setup
	$(PY) -m pip install -q --no-build-isolation --no-deps .

cpp: setup
	cmake -S . -B $(BUILD) -G Ninja -DMOEKIT_BUILD_TESTS=ON
	cmake --build $(BUILD) -j $(JOBS)

test-cpp: cpp
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

test-python: install
	$(PY) -m pytest -q tests/python

test: test-cpp test-python

# ASan + UBSan over the CPU backend: the gtest suite, the bad-input matrix and the property test.
test-sanitize: setup
	bash tools/sanitize.sh $(PY)

# The main job: the shipped tiny gpt-oss model, tensor-parallel over NPROC ranks (gloo on CPU,
# NCCL on GPUs; each rank needs its own GPU, or pass DEVICE=cuda:0 BACKEND=gloo to share one).
run: install
	$(VENV)/bin/torchrun --standalone --nproc-per-node $(NPROC) -m moekit.generate --prompt "$(PROMPT)" \
	  $(if $(DEVICE),--device $(DEVICE)) $(if $(BACKEND),--backend $(BACKEND))

clean:
	rm -rf build $(VENV)
