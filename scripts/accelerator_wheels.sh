#!/usr/bin/env bash
# Wheels that the accelerator recipe (scripts/accelerator_recipe.py) installs offline on a GPU
# machine whose image lacks them (DESIGN.md: one such image has jax, flax, optax, xarray,
# tensorstore, numpy, scipy, but not dinosaur and its dependencies). Run on a machine with a
# package registry; about 14 MB into data/wheels (for CPython 3.12 on x86_64 Linux by default),
# then carry data/wheels to the GPU machine with the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
.venv/bin/pip download --quiet --no-deps --only-binary=:all: --implementation cp \
  --python-version "$PYTHON_VERSION" --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_28_x86_64 --dest data/wheels \
  dinosaur==1.5.1 pint flexcache flexparser platformdirs tree-math scikit-learn joblib \
  threadpoolctl narwhals dask cloudpickle fsspec partd locket toolz pyyaml click \
  importlib_metadata zipp packaging xarray-tensorstore
du -sh data/wheels
