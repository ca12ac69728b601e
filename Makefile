# The two commands of the README: `make demo` (install + the whole pipeline on the tiny K2) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,bench,plugins,quant

.PHONY: install demo test unit e2e clean

$(VENV)/.k2trt-installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first; the project's torch range accepts it, so nothing heavier is pulled in.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.k2trt-installed

demo: install
	$(VENV)/bin/k2trt demo

test: install
	$(VENV)/bin/pytest -q

unit: install
	$(VENV)/bin/pytest -q tests/unit

e2e: install
	$(VENV)/bin/pytest -q tests/e2e

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
