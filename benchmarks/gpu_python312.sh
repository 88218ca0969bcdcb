# Sourced: sets PY312 to a Python 3.12 (the GPU machine's version): $PY312 if given, else python3.12
# on PATH, else pyenv's; exits with one line if there is none. (pyenv's shim for python3.12 exists
# but fails when 3.12 is not selected, hence the version check.)
for c in "${PY312:-}" python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3; do
  if [ -n "$c" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    PY312=$(command -v "$c"); break
  fi
  PY312=
done
[ -n "$PY312" ] || { echo "no Python 3.12 found: set PY312=/path/to/python3.12" >&2; exit 1; }
