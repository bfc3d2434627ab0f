#!/usr/bin/env bash
# Prints the path of a uv binary, installing uv from PyPI first if the machine has none.
set -euo pipefail
find_uv() {
  command -v uv 2>/dev/null && return 0
  for c in "$HOME/.local/bin/uv" /usr/local/bin/uv; do [ -x "$c" ] && { echo "$c"; return 0; }; done
  return 1
}
if find_uv; then exit 0; fi
echo "[tagtrail/local] installing uv from PyPI" >&2
if ! python3 -m pip --version >/dev/null 2>&1; then
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >&2
fi
# Debian's own Python refuses user installs without --break-system-packages (PEP 668);
# uv is a single self-contained binary, so installing it this way touches nothing else.
python3 -m pip install -q --user uv >&2 2>/dev/null \
  || python3 -m pip install -q --user --break-system-packages uv >&2
hash -r
find_uv
