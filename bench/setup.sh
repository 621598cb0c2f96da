#!/bin/sh
# Installs what the benchmarks need and the project does not depend on:
#   nginx (+ the echo module, for a fixed-latency nginx) and GNU time from Debian;
#   aiohttp, httpx-aiohttp, psutil and py-spy into the project's .venv (not into pyproject.toml).
# `sh bench/setup.sh rivals` also makes the rivals' venv for bench/rivals.py ($RIVALS_VENV,
# default bench/.venv-rivals): curator from PyPI (with litellm, datasets, openai, ...), aiohttp and
# tiktoken for the OpenAI cookbook's processor. Never into .venv: none of it is batchrun's.
set -eu
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || make install
missing=""
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx"
[ -e /usr/lib/nginx/modules/ngx_http_echo_module.so ] || missing="$missing libnginx-mod-http-echo"
[ -x /usr/bin/time ] || missing="$missing time"
if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq $missing
fi
"$VENV/bin/python" -m pip install --quiet aiohttp httpx-aiohttp psutil py-spy
echo "bench setup: ok ($("$VENV/bin/python" -c 'import aiohttp, httpx_aiohttp, psutil; print("aiohttp", aiohttp.__version__)'); $(nginx -v 2>&1))"
if [ "${1:-}" = rivals ]; then
    RIVALS_VENV=${RIVALS_VENV:-bench/.venv-rivals}
    CURATOR=${CURATOR:-bespokelabs-curator==0.1.31}  # the version rivals.py was checked against offline
    [ -x "$RIVALS_VENV/bin/python" ] || "$VENV/bin/python" -m venv "$RIVALS_VENV"
    "$RIVALS_VENV/bin/python" -m pip install --quiet "$CURATOR" aiohttp tiktoken
    echo "bench setup: rivals ok ($("$RIVALS_VENV/bin/python" -c 'from importlib.metadata import version as v; print("curator", v("bespokelabs-curator"), "litellm", v("litellm"), "tiktoken", v("tiktoken"))'))"
fi
