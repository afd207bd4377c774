# The two commands of the README quick start, plus helpers.
#   make demo   install what is missing, then run the demo
#   make test   install what is missing, then run every test (and the linters)

PY := .venv/bin/python
PYTEST_ARGS ?=
# Two workers, one test file each at a time: the lab tests mostly wait on the
# daemons while the policy's random and exhaustive searches keep a core busy.
# Every lab names its namespaces and files after its own process, so workers
# never see each other's parts.
PYTEST_WORKERS ?= -n 2 --dist loadfile

.PHONY: demo test bootstrap lint unit clean

bootstrap:
	@bash scripts/bootstrap.sh

demo: bootstrap
	@$(PY) -m clever_cluster.sim.demo

test: bootstrap lint
	@$(PY) -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: bootstrap
	@bash scripts/lint.sh

clean:
	rm -rf .venv .mypy-src .mypy_cache .pytest_cache .ruff_cache build *.egg-info
