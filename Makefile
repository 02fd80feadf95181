# One command each: `make test` and `make demo` set everything up first.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,hub,dev
BIN := $(VENV)/bin
# OMP_NUM_THREADS for the test targets
THREADS ?= 2

.PHONY: install test test-paddle26 demo clean fashion-mnist wheel wheel-check

install: $(VENV)/.installed

$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	@$(MAKE) --no-print-directory fashion-mnist
	touch $@

# Optional: Fashion-MNIST from Debian (a second embedded source/target).
# Without root or apt it only prints how to get it; nothing else needs it.
fashion-mnist:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: found in /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	  || echo "note: could not install dataset-fashion-mnist; the demo's fashion-mnist option will say how to get it"; \
	else \
	  echo "note: optional Fashion-MNIST: sudo apt-get install dataset-fashion-mnist (or --source-root <idx files>)"; \
	fi

# pytest exits 5 when it collected nothing: report it as the failure it is
test: install
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "no tests were collected" >&2; fi; exit $$status

# The same suite on the oldest supported Paddle, 2.6.2 (CPU build), in its own
# venv with its own pins; tests that need Paddle 3 are skipped by the
# `paddle3` marker, each with its reason, and -rs lists them and their number
VENV26 ?= .venv-paddle26
EXTRAS26 ?= hub,dev
$(VENV26)/.installed: setup.py constraints-paddle26.txt
	$(PYTHON) -m venv $(VENV26)
	$(VENV26)/bin/pip install --quiet --upgrade pip
	$(VENV26)/bin/pip install --quiet -c constraints-paddle26.txt "paddlepaddle==2.6.2" -e ".[$(EXTRAS26)]"
	touch $@

test-paddle26: $(VENV26)/.installed
	OMP_NUM_THREADS=$(THREADS) $(VENV26)/bin/python -m pytest -rs; status=$$?; \
	if [ $$status -eq 5 ]; then echo "no tests were collected" >&2; fi; exit $$status

demo: install
	OMP_NUM_THREADS=2 $(BIN)/python demo/transfer.py

# a wheel and an sdist in dist/, built in an isolated environment
wheel: install
	rm -rf dist
	$(BIN)/python -m build --outdir dist . >/dev/null
	@ls dist

# the wheel as users install it: a fresh venv, not editable, the cpu and hub
# extras and the constraints; then the README quickstart and the PaddleHub
# module from an empty directory, so nothing can come from the source tree
WHEEL_VENV ?= .venv-wheel
wheel-check: wheel
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/pip install --quiet --upgrade pip
	$(WHEEL_VENV)/bin/pip install --quiet -c constraints.txt "$$(ls dist/*.whl)[cpu,hub]"
	cd "$$(mktemp -d)" && OMP_NUM_THREADS=2 $(CURDIR)/$(WHEEL_VENV)/bin/python $(CURDIR)/tools/wheel_smoke.py $(CURDIR)/README.md

clean:
	rm -rf $(VENV) $(VENV26) $(WHEEL_VENV) dist build *.egg-info
