# Two entry points for a fresh machine with Python 3.11 and the package registries:
#   make demo   set up .venv, then pretrain -> probe -> cluster report on the embedded digits
#   make test   set up .venv, then run the test suite (what CI runs)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
# torch/torchvision are pinned to the builds this project is tested with; override on other platforms,
# e.g. make test TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# the CUDA build of torch takes 5.5 GB in .venv: stop before pip does, with the reason, when the disk is short
MIN_FREE_GIB ?= 6
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo
# pytest-xdist workers for make test (auto: one per core; tests/conftest.py splits torch's threads among them)
TEST_WORKERS ?= auto

.PHONY: demo test test-all setup data ci-extras clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c "import os, shutil, sys; where = os.path.dirname(os.path.abspath('$(VENV)')); \
	free = shutil.disk_usage(where).free / 2**30; \
	sys.exit(0 if free >= $(MIN_FREE_GIB) else f'setup: only {free:.1f} GiB free on the disk of {where}; installing \
	$(TORCH_SPEC) needs about $(MIN_FREE_GIB) GiB (torch is a CUDA build, 5.5 GB in $(VENV)). \
	Free some space, or run with MIN_FREE_GIB=0 to try anyway.')"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/python -m ssl_rep.demo --out $(DEMO_OUT)

test: setup $(if $(CI),ci-extras)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# CI (CI=true, as root): Fashion-MNIST and headless Chromium too, so the tests that need them run instead of
# skipping; best effort, never fatal (pytest's -ra summary names whatever still skipped and why)
ci-extras:
	-@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (command -v chromium >/dev/null && [ -d /usr/share/datasets/fashion-mnist ]) || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    dataset-fashion-mnist chromium chromium-driver >/dev/null; } ; fi

test-all: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m "slow or not slow"

# Fashion-MNIST, the real CPU benchmark data (Debian/Ubuntu; needs root)
data:
	apt-get update && apt-get install -y dataset-fashion-mnist

clean:
	rm -rf $(VENV) runs *.egg-info
