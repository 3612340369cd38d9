# The two commands of the README: `make demo` and `make test` (each sets up .venv first).
.PHONY: setup demo test bench
setup:
	bash scripts/setup.sh
demo: setup
	.venv/bin/adamllm demo
# pytest's exit code 5 ("no tests collected") is a failure here: no tests must never pass.
test: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc
