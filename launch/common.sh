# Sourced by every launcher (single_node.sh, multi_node.sh, slurm.sbatch, probe_and_eval.sh): the
# GPU count, the python, DRY=1 (print the commands only) and the one-line refusal of a bad input.
#   NGPU  processes per node: the caller's NGPU, else the GPUs nvidia-smi lists, at least 1
#   PY    the python that runs fastfc (.venv/bin/python)

# gpu_count prints the number of GPUs nvidia-smi lists, and 0 where there is no nvidia-smi or it
# fails (a CPU-only machine): under `set -o pipefail` a bare `nvidia-smi -L | wc -l` would end the
# calling script with status 127 before any fallback ran.
gpu_count() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        { nvidia-smi -L 2>/dev/null || true; } | grep -c '^GPU' || true
    else
        echo 0
    fi
}

NGPU=${NGPU:-$(gpu_count)}
NGPU=$(( NGPU > 0 ? NGPU : 1 ))
PY=${PY:-.venv/bin/python}
LAUNCH_DIR=$(dirname "${BASH_SOURCE[0]}")

# die MESSAGE: one line on stderr naming the launcher, exit status 2
die() {
    echo "${0##*/}: $*" >&2
    exit 2
}

# need_config FILE: refuse a config that is not there, before anything starts
need_config() {
    [ -f "$1" ] || die "config $1 not found; pass one of launch/configs/*.toml (or your own TOML file)"
}

# config_value FILE SECTION KEY: the value of [SECTION] KEY in a TOML file, read by $PY's tomllib
# (empty when unset). A file with an older name of the key (fastfc/config.py RENAMED: [model] arch
# for [encoder] name) gives that one's value. A file that is no TOML: one line, exit status 2.
config_value() {
    PYTHONPATH="$LAUNCH_DIR/..${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c '
import sys
from fastfc.config import RENAMED, read
path, key = sys.argv[1], sys.argv[2] + "." + sys.argv[3]
try:
    data = read(path)
except (OSError, ValueError) as e:
    sys.exit(f"{sys.argv[4]}: {e}")
for name in [key] + [old for renamed in RENAMED.values() for old, new in renamed.items() if new == key]:
    *sections, leaf = name.split(".")
    node = data
    for section in sections:
        node = node.get(section, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict) and leaf in node:
        print(node[leaf])
        break
' "$1" "$2" "$3" "${0##*/}" || exit 2
}

# arch_config ARCH: the launch config (launch/configs/distill_*.toml) whose [encoder] name is ARCH;
# one line naming the known architectures otherwise. A new architecture is known once its config is there.
arch_config() {
    local config name known=()
    for config in "$LAUNCH_DIR"/configs/distill_*.toml; do
        name=$(config_value "$config" encoder name)
        [ "$name" != "$1" ] || { echo "$config"; return; }
        known+=("$name")
    done
    die "unknown architecture '$1'; known: ${known[*]} (one launch/configs/distill_<arch>.toml each)"
}

# run CMD...: print it, then run it unless DRY is set
run() {
    echo "+ $*"
    [ -n "${DRY:-}" ] || "$@"
}

# launch CMD...: print it, then replace this shell with it unless DRY is set
launch() {
    echo "+ $*"
    [ -n "${DRY:-}" ] || exec "$@"
}
