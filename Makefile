# Two set-up commands on a fresh machine: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: demo test test-slow lint bench clean

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[cpu,train,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/normalcy demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The slow suite also runs the Ray engine: it adds the `ray` extra (about 30 s, 600 MB) to .venv.
RAY_STAMP := $(VENV)/.installed-ray-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
$(RAY_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[cpu,train,dev,ray]'
	touch $@

test-slow: $(STAMP) $(RAY_STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs build *.egg-info
