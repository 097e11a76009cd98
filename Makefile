# bulkwrites developer entry points. The logic lives in scripts/services.sh.
#
#   eval "$$(make -s services)"   start Postgres, Redis, DynamoDB Local, S3 (moto); export their env
#   make run                      migrate, demo data, web server + worker (http://127.0.0.1:8000/admin/)
#   make test                     lint + pytest (PYTEST_ARGS="-k foo" to narrow)
#   make bench BENCH_ARGS="--quick"  every way, then issue 15's targets in one table (bench/results.json)
#   make lint | worker | bench | stop | clean | venv | env
#
# Ports: PG_PORT=54329 REDIS_PORT=63799 DYNAMODB_PORT=8770 WEB_PORT=8000 S3_PORT=8790

SHELL := /bin/bash
SERVICES := ./scripts/services.sh
PYTEST_ARGS ?=
BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help services env venv run test lint worker stop bench clean

help:
	@sed -n '1,9p' Makefile | sed 's/^# \{0,1\}//; s/\$$\$$/$$/'

services:
	@$(SERVICES) services

env:
	@$(SERVICES) env

venv:
	@$(SERVICES) venv

run:
	@$(SERVICES) run

test:
	@$(SERVICES) test $(PYTEST_ARGS)

lint:
	@$(SERVICES) lint

worker:
	@$(SERVICES) worker

bench:
	@$(SERVICES) bench $(BENCH_ARGS)

stop:
	@$(SERVICES) stop

clean:
	@$(SERVICES) clean
