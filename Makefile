# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv with pip (uv/poetry ignore the local torch wheels) and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint bench gpu-wheels gpu-bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[data,sim,quant,viz,lerobot,study,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m stamo_vla.cli demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) -m stamo_vla.cli bench

# GPU benchmarks on a bare CUDA machine whose python3 already holds torch, transformers, peft, timm and accelerate
# but nothing else of ours and no network: `make gpu-wheels` here (with PyPI) puts the pure-Python wheels it lacks,
# at the versions of constraints.txt, in $(GPU_WHEELS); copy the checkout there with that folder and run
# `make gpu-bench`, which installs them into $(GPU_SITE) (never into the machine's environment) and writes
# $(GPU_BENCH_DIR)/bench.json and bench.md (about 5 minutes on one H100).
GPU_WHEELS ?= .gpu-wheels
GPU_SITE ?= /tmp/stamo_vla_gpu_site
GPU_BENCH_DIR ?= runs/bench_cuda
GPU_PACKAGES := draccus mergedeep toml typing-inspect mypy_extensions diffusers importlib_metadata

gpu-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -c constraints.txt \
		-d $(GPU_WHEELS) $(GPU_PACKAGES)

gpu-bench:
	@if ls $(GPU_WHEELS)/*.whl >/dev/null 2>&1; then \
		$(PYTHON) -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target $(GPU_SITE) \
			$(GPU_WHEELS)/*.whl; \
	else echo "no wheels in $(GPU_WHEELS) (make gpu-wheels): using $(PYTHON)'s packages as they are"; fi
	PYTHONPATH=$(GPU_SITE):$(CURDIR) $(PYTHON) -m stamo_vla.cli bench --device cuda --output_dir $(GPU_BENCH_DIR)

clean-venv:
	rm -rf $(VENV)
