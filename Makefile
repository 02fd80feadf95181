# One command each: `make test` and `make demo` set everything up first.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,hub,dev
BIN := $(VENV)/bin

.PHONY: install test demo clean fashion-mnist

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
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "no tests were collected" >&2; fi; exit $$status

demo: install
	OMP_NUM_THREADS=2 $(BIN)/python demo/transfer.py

clean:
	rm -rf $(VENV) *.egg-info
