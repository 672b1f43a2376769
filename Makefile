# Convenience targets; each calls the scripts the README documents.
.PHONY: staging staging-deploy staging-check staging-down test lint unit scenario bench bench-noop bench-load docs bundle

staging:            ## set up everything, create the staging containers and deploy
	scripts/staging.sh up
staging-deploy:     ## deploy staging again after a change
	scripts/staging.sh deploy
staging-check:      ## end-to-end client checks against staging
	scripts/staging.sh check
staging-down:       ## remove the staging containers
	scripts/staging.sh down
test:               ## the whole test command (what .ci/run runs)
	scripts/test.sh
lint:               ## yamllint + ansible-lint
	scripts/test.sh lint
unit:               ## repository tests (bad inventories, docs in step, pins)
	scripts/test.sh unit
scenario:           ## one Molecule scenario: make scenario S=default
	scripts/test.sh scenario $(S)
bench:              ## cold converge against the no-Ansible floor
	scripts/bench-converge.sh
bench-noop:         ## no-op re-runs of BASE (a revision) and this checkout side by side: make bench-noop BASE=main~3
	scripts/bench-noop.sh "$(BASE)"
bench-load:         ## load benchmark, stock Synapse vs the toolkit (docs/capacity.md): make bench-load USERS="50 100 200"
	scripts/bench-load.sh --users "$(or $(USERS),50 100 200)"
docs:               ## regenerate the role README variable tables
	.venv/bin/python scripts/role-docs.py
bundle:             ## the offline bundle of a toolkit version: make bundle REF=v1.4.0 (default HEAD)
	scripts/bundle.sh --ref $(or $(REF),HEAD)
