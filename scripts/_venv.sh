# Sourced by scripts/*: create .venv/ at the repo root on first use and install jbp into it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.jbp-installed"
if [ ! -x "$VENV/bin/python" ]; then
  echo "jbp: creating $VENV (first run only)" >&2
  python3 -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "jbp: installing jbp and its dependencies into .venv (first run only)" >&2
  # pip's and the build backend's notices go to a log, shown only if the install fails
  LOG="$VENV/install.log"
  if ! { "$VENV/bin/python" -m pip install --quiet --upgrade pip \
         && "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]"; } >"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "jbp: installing into $VENV failed (the log above is kept in $LOG)" >&2
    exit 1
  fi
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
