# Two commands do everything on a fresh machine:  `make parity`  and  `make test`.
# Both create or reuse the project virtualenv (.venv) through tools/bootstrap.sh, which installs
# the pinned OpenMMLab stack (mmcv built once per machine and cached) and this package.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bootstrap-stamp
PYTEST_ARGS ?=
PARITY_ARGS ?=
BENCH_ARGS ?=

.PHONY: venv test parity benchmark lint clean distclean

# Rebuilt only when the install recipe or the package metadata changes.
$(STAMP): tools/bootstrap.sh setup.cfg pyproject.toml
	bash tools/bootstrap.sh $(VENV)
	@touch $@

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

parity: $(STAMP)
	$(PY) tools/parity.py $(PARITY_ARGS)

benchmark: $(STAMP)
	$(PY) tools/benchmark.py $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check mmdet_focal_triton tools tests

clean:
	rm -rf work_dirs .pytest_cache

distclean: clean
	rm -rf $(VENV)
