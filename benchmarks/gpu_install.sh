# Sourced by benchmarks/gpu.sh (first thing on the GPU machine) and benchmarks/gpu_bundle_check.sh:
# installs the bundle that `make gpu-bundle` built (benchmarks/gpu_bundle.sh) for the Python "$PY".
#   .gpu/wheels/*.whl  -> .gpu/site (pip --target, offline, no dependencies: the machine has the rest);
#   .gpu/ext/_resize*  -> fastfc/data/ (fastfc's native resize for this Python).
# The native libraries stay in .gpu/lib: ffcv's _libffcv finds them by its RPATH ($ORIGIN/../../lib,
# i.e. .gpu/site/ffcv -> .gpu/lib), fastfc's resize by its own, each library in .gpu/lib by $ORIGIN;
# LD_LIBRARY_PATH is left alone, so no other program there picks up these copies.
# Sets PYTHONPATH to .gpu/site and the repository. Returns non-zero with one line if it cannot.
gpu_install() {
  [ -d .gpu/wheels ] || { echo "no .gpu/ bundle here: run make gpu-bundle, and carry [\".gpu\"]" >&2; return 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .gpu/site \
    .gpu/wheels/*.whl || return 1
  cp .gpu/ext/_resize*.so fastfc/data/ || return 1
  export PYTHONPATH="$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
}
