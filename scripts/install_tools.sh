#!/usr/bin/env bash
# Test tools kept out of the project's .venv because their pins clash with it: mitmproxy, the flaky-GCS proxy of
# tests/e2e/test_faults_e2e.py (mitmproxy 11.0.2, the last release for Python 3.11, pins ruamel-yaml<=0.18.6;
# the project has 0.19.1). Idempotent: does nothing when the right version is there.
set -euo pipefail
VENV="${1:-.venv}"
DEST="${2:-.state/tools/mitmproxy}"
PIN="mitmproxy==11.0.2"
PYTHON="${PYTHON:-python3}"
if [[ -x "$DEST/bin/mitmdump" ]] && "$DEST/bin/mitmdump" --version 2>/dev/null | grep -q "Mitmproxy: ${PIN#*==}$"; then
  exit 0
fi
echo "tools: installing $PIN into $DEST"
[[ -x "$DEST/bin/python" ]] || "$PYTHON" -m venv "$DEST"
if [[ -x "$VENV/bin/uv" ]]; then
  "$VENV/bin/uv" pip install --quiet --python "$DEST/bin/python" "$PIN"
else
  "$DEST/bin/python" -m pip install --quiet --disable-pip-version-check "$PIN"
fi
"$DEST/bin/mitmdump" --version | head -1
