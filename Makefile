# One command each: `make test` and `make demo` set everything up first.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,hub,dev
BIN := $(VENV)/bin

.PHONY: install test demo clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

# pytest exits 5 when it collected nothing: report it as the failure it is
test: install
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "no tests were collected" >&2; fi; exit $$status

demo: install
	OMP_NUM_THREADS=2 $(BIN)/python demo/transfer.py

clean:
	rm -rf $(VENV) *.egg-info
