# The two commands of the README. Both install what they need on a fresh
# Debian machine (root): Docker engine, base images, pinned Python tooling.
.PHONY: demo demo-clean test bench docs

demo:            ## Boot Debian and Ubuntu containers with Redis and provision them
	bash tests/harness/demo.sh

demo-clean:      ## Remove the demo's containers
	bash tests/harness/demo.sh --destroy

test:            ## Run every test: lint, unit, sanity and every Molecule scenario
	bash tests/harness/run-tests.sh

bench:           ## Benchmark release switches (pause, loss, wall time) and print the table
	bash benchmarks/run.sh

docs:            ## Regenerate docs/ from the module docs and role argument specs
	bash tests/harness/docs.sh --update
