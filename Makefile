# tagtrail: `make run` for the demo on the in-process bus, `make test` for the full suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export UV_PYTHON_DOWNLOADS := never
VENV := .venv
BIN := $(VENV)/bin

.PHONY: help setup venv db kafka run test lint stop status schemas bench-proximity bench-throughput bench-trail-indexes bench-copy-batches bench-ingest-path bench-wire

help:
	@echo "make run    - set up everything and run the pipeline with a demo fleet"
	@echo "make test   - set up everything plus Kafka and run the whole test suite"
	@echo "make lint   - ruff and mypy"
	@echo "make stop   - stop the local PostgreSQL and Kafka"
	@echo "make bench-proximity - proximity search over 50 million fixes (docs/benchmarks.md)"
	@echo "make bench-throughput - fixes a second end to end against raw COPY"
	@echo "make bench-trail-indexes - what each index of the trail costs the store's COPY"
	@echo "make bench-copy-batches - what a batch's size and tags cost the store's COPY"
	@echo "make bench-ingest-path - the CPU a fix of taking a request of fixes"
	@echo "make bench-wire - the CPU a fix of the points topics' messages, written and read"

$(VENV)/.synced: pyproject.toml uv.lock
	@UV=$$(bash deploy/local/uv.sh) && $$UV sync --frozen --python python3
	@touch $@

venv: $(VENV)/.synced

db:
	@bash deploy/local/postgres.sh start

setup: venv db
	@$(BIN)/tagtrail migrate

kafka:
	@bash deploy/local/kafka.sh start

run: setup
	@$(BIN)/tagtrail run --demo

test: setup kafka
	@$(BIN)/pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests were collected"; exit 1; fi; exit $$rc

lint: venv
	@$(BIN)/ruff format --check services tests migrations bench
	@$(BIN)/ruff check services tests migrations bench
	@$(BIN)/mypy services bench

schemas: venv
	@$(BIN)/tagtrail schemas

# Benchmarks run on demand, never in CI (which runs each one's --smoke mode as a test).
bench-proximity: setup
	@$(BIN)/python -m bench.proximity $(ARGS)

bench-throughput: setup kafka
	@$(BIN)/python -m bench.throughput $(ARGS)

bench-trail-indexes: setup
	@$(BIN)/python -m bench.trail_indexes $(ARGS)

bench-copy-batches: setup
	@$(BIN)/python -m bench.copy_batches $(ARGS)

bench-ingest-path: setup kafka
	@$(BIN)/python -m bench.ingest_path $(ARGS)

bench-wire: setup
	@$(BIN)/python -m bench.wire $(ARGS)

stop:
	@bash deploy/local/kafka.sh stop
	@bash deploy/local/postgres.sh stop

status:
	@bash deploy/local/postgres.sh status
	@bash deploy/local/kafka.sh status
