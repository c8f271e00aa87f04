# Sourced by scripts/demo and scripts/test: make sure the project's virtualenv
# exists and has the project installed, then activate it.
# VENV chooses where it lives (default .venv); EXTRAS which extras to install.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
EXTRAS=${EXTRAS:-}
PYTHON=$(command -v python3.11 || command -v python3 || true)
if [ -z "$PYTHON" ]; then
  echo "Python 3.11 is needed (python3.11 or python3 on PATH)" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "Python 3.11 is needed; $PYTHON is $("$PYTHON" --version)" >&2
  exit 1
fi
STAMP="$VENV/.installed${EXTRAS:+-$EXTRAS}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating a virtualenv in $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "Installing the project${EXTRAS:+ with [$EXTRAS]} (once; a few minutes on a new machine)" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  touch "$STAMP"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
export DO_NOT_TRACK=${DO_NOT_TRACK:-1}
cd "$ROOT"
