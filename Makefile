# The two commands (see README):
#   make demo   set up, load the demo data into ./workbench.db and start the annotation UI
#   make test   set up (Python packages, PostgreSQL, Chromium) and run the whole test suite
.PHONY: demo test setup bench clean-pg

demo:
	bash scripts/setup.sh run
	.venv/bin/workbench demo --serve

setup:
	bash scripts/setup.sh test

test:
	bash scripts/setup.sh test
	eval "$$(bash scripts/postgres.sh)" && .venv/bin/python -m pytest -q

bench:
	bash scripts/setup.sh bench
	@echo "run e.g.: .venv/bin/python benchmarks/choice.py"

clean-pg:
	bash scripts/postgres.sh stop || true
