#!/usr/bin/env bash
# `make gpu-bundle-check`: prove the .gpu/ bundle here, before any device time.
#   1. a fresh Python 3.12 virtual environment outside the repository (GPU_CHECK_VENV, default
#      /tmp/fastfc-gpu-check) with what the GPU machine has (torch 2.11 from the registry, numba,
#      opencv-python-headless, timm, scikit-image, ...): made once, reused after;
#   2. the bundle installed exactly as benchmarks/gpu.sh installs it (benchmarks/gpu_install.sh);
#   3. ldd on every carried .so (and the installed _libffcv): every library resolves into .gpu/ or
#      to the C/C++ runtime, none is missing;
#   4. import ffcv, fastfc.data.ffcv there, fastfc's native resize loaded, and a real round trip:
#      JPEGs -> beton (data_prep.imagenet) -> ffcv train loader (turbojpeg decode, OpenCV resize).
# Exits non-zero with a line naming what failed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .gpu/wheels ] || { echo "gpu-bundle-check: no .gpu/ here; run make gpu-bundle first" >&2; exit 1; }
VENV=${GPU_CHECK_VENV:-/tmp/fastfc-gpu-check}
if [ ! -x "$VENV/bin/python" ]; then
  source benchmarks/gpu_python312.sh
  "$PY312" -m venv "$VENV"
  # The GPU machine's versions where they matter (KINDS.md); torch's CUDA build imports on a CPU.
  "$VENV/bin/python" -m pip install -q torch==2.11.0 torchvision==0.26.0 numba numpy opencv-python-headless \
    tqdm pillow timm scikit-image scikit-learn matplotlib psutil packaging pyyaml regex huggingface_hub safetensors
fi
PY=$VENV/bin/python
source benchmarks/gpu_install.sh
trap 'rm -rf .gpu/site' EXIT  # what is installed here must not travel with .gpu (the size limit)
gpu_install
echo "gpu-bundle-check: installed into .gpu/site for $("$PY" -c 'import sys; print(sys.version.split()[0])')"

RUNTIME='^(linux-vdso|ld-linux|libc\.|libm\.|libstdc\+\+|libgcc_s|libpthread|libdl|librt)'
bad=0
for so in .gpu/site/ffcv/_libffcv*.so fastfc/data/_resize.cpython-312*.so .gpu/lib/*.so*; do
  deps=$(ldd "$so" | awk '$2 == "=>" {print $1, ($3 ~ /^\// ? $3 : "NOT-FOUND")}' |
         while read -r name path; do echo "$name $([ "$path" = NOT-FOUND ] && echo "$path" || realpath "$path")"; done)
  outside=$(echo "$deps" | awk -v gpu="$PWD/.gpu/" -v rt="$RUNTIME" '$1 !~ rt && index($2, gpu) != 1')
  echo "  ldd $so: $(echo "$deps" | awk -v rt="$RUNTIME" '$1 !~ rt' | wc -l) libraries from .gpu/lib," \
       "runtime: $(echo "$deps" | awk -v rt="$RUNTIME" '$1 ~ rt {printf "%s ", $1}')"
  [ -z "$outside" ] || { echo "$outside" | sed 's/^/    OUTSIDE .gpu: /'; bad=1; }
done
[ $bad = 0 ] || { echo "gpu-bundle-check: FAILED: a carried library resolves outside .gpu/ (above)" >&2; exit 1; }
echo "gpu-bundle-check: ldd: every carried .so resolves only into .gpu/lib or the C/C++ runtime"
ldd .gpu/site/ffcv/_libffcv*.so | sed 's/^/  /'

"$PY" - <<'EOF'
import tempfile
from pathlib import Path

import ffcv
import fastfc.data.ffcv as fd
from data_prep.beton import WriterSettings
from data_prep.imagenet import convert
from fastfc.data import resize
from fastfc.fixtures.photos import make_imagenet_tree

assert resize.AVAILABLE, "fastfc's native resize did not load (fastfc/data/_resize.cpython-312*.so)"
assert Path(ffcv.__file__).is_relative_to(Path(".gpu/site").resolve()), ffcv.__file__
with tempfile.TemporaryDirectory() as tmp:
    make_imagenet_tree(Path(tmp) / "src", n_classes=2, train_per_class=8, val_per_class=1, quirks=False)
    convert(Path(tmp) / "src", Path(tmp) / "out", splits=("train",), workers=1, settings=WriterSettings(short_side=80))
    loader = fd.make_loader(Path(tmp) / "out" / "train.beton", train=True, batch_size=4, resolution=64,
                            mean=(0.5,) * 3, std=(0.25,) * 3, num_workers=1)
    shapes = {tuple(x.shape) for x, _ in loader}
assert shapes == {(4, 3, 64, 64)}, shapes
print(f"gpu-bundle-check: import ffcv ({ffcv.__file__}), fastfc.data.ffcv: ok; 16 JPEGs -> beton -> "
      f"ffcv loader with fastfc's resize: {len(shapes)} batch shape {shapes.pop()}")
EOF
echo "gpu-bundle-check: passed"
