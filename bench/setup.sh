#!/bin/sh
# Installs what the benchmarks need and the project does not depend on:
#   nginx (+ the echo module, for a fixed-latency nginx) and GNU time from Debian;
#   aiohttp, httpx-aiohttp, psutil and py-spy into the project's .venv (not into pyproject.toml).
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
