# Sourced by the launchers. gpu_count prints the number of GPUs nvidia-smi lists, and 0 where there
# is no nvidia-smi or it fails (a CPU-only machine): under `set -o pipefail` a bare
# `nvidia-smi -L | wc -l` would end the calling script with status 127 before any fallback ran.
gpu_count() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        { nvidia-smi -L 2>/dev/null || true; } | grep -c '^GPU' || true
    else
        echo 0
    fi
}
