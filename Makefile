# Two commands do everything on a fresh machine:  `make parity`  and  `make test`.
# Both create or reuse the project virtualenv (.venv) through tools/bootstrap.sh, which installs
# the pinned OpenMMLab stack (mmcv built once per machine and cached) and this package.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bootstrap-stamp
PYTEST_ARGS ?=
PARITY_ARGS ?=
BENCH_ARGS ?=

.PHONY: venv test parity benchmark lint wheel clean distclean

# Rebuilt only when the install recipe or the package metadata changes.
$(STAMP): tools/bootstrap.sh setup.cfg pyproject.toml
	@bash tools/bootstrap.sh $(VENV)
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

# The wheel users install (configs and the console script inside; docs/install.md), into dist/.
# build/ is removed first: setuptools would carry stale files from it into the wheel.
wheel: $(STAMP)
	rm -rf build
	$(PY) -m pip wheel --no-deps --no-build-isolation -w dist .

clean:
	rm -rf work_dirs .pytest_cache build dist

distclean: clean
	rm -rf $(VENV)
