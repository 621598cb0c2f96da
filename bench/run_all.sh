#!/bin/sh
# Every benchmark, one after the other (about 35 minutes on 2 cores); tables on stdout.
# Run from anywhere: bench/run_all.sh [> bench/results/all.md]
set -eu
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
sh bench/setup.sh >&2
$PY bench/overhead.py
$PY bench/concurrency.py --seconds 20
$PY bench/memory.py --sizes 100000 1000000 10000000
$PY bench/reader.py --format csv
$PY bench/resume.py
$PY bench/rate.py
$PY bench/images.py
$PY bench/micro.py
