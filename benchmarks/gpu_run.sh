#!/bin/bash
# The one-shot GPU measurement behind the GPU figures of benchmarks/README.md.
#
# Runs from the repository root on a machine with one NVIDIA GPU, JAX (CUDA),
# PyTorch and Pillow but no TensorFlow and no network:
#   * .whl/ holds the wheels of keras==3.15.1, namex and optree;
#   * .gpudata/cifar10.npz is the CIFAR-10 split written here with
#     `python benchmarks/accuracy.py --write_bundle=.gpudata/cifar10.npz
#      --train_images=0` (45,000 training / 5,000 validation images).
# Steps: (1) throughput of PCL (fused views, the default on a GPU, and one
# pass per view) and vanilla, ResNet-32, batch 128, JAX, in float32,
# mixed_bfloat16 and mixed_float16 side by side (issue #14; up to
# THROUGHPUT_TIMEOUT seconds, 9 models to compile);
# (2) the accuracy benchmark, one process per method (the small ResNet-8
# leaves the GPU mostly idle, so methods share it), 3 seeds each, until the
# time budget; (3) everything packed into $OUT/gpu_results.tgz.
set -u
EPOCHS=${EPOCHS:-10}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-/tmp/out}
R=/tmp/gpu_results
mkdir -p "$R" "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$R/gpu.txt"
cat "$R/gpu.txt"
python3 -c "import keras, jax, torch; print(keras.__version__, jax.__version__, jax.devices(), torch.__version__)" 2>&1 | tail -1

echo "== throughput $(date +%T)"
KERAS_BACKEND=jax timeout "${THROUGHPUT_TIMEOUT:-360}" python3 \
    benchmarks/throughput.py --depth=32 --batch_size=128 --steps=20 --repeats=3 \
    --fusion=both --mixed_precision=none,bfloat16,float16 \
    --label="GPU, see benchmarks/gpu_run.sh" \
    --json="$R/throughput_jax_gpu_resnet32.json" > "$R/throughput_jax.log" 2>&1
tail -16 "$R/throughput_jax.log"

echo "== accuracy $(date +%T)"
# The core methods get 3 seeds, the PCL ablations one.
for m in vanilla dml kdcl one cl_ilr okddip pcl pcl_no_ensemble \
         pcl_no_mean_teachers pcl_shared_augmentation; do
  case $m in pcl_*) seeds=0 ;; *) seeds=0,1,2 ;; esac
  KERAS_BACKEND=jax timeout "${ACCURACY_TIMEOUT:-300}" python3 benchmarks/accuracy.py \
      --bundle=.gpudata/cifar10.npz --train_images=0 --epochs="$EPOCHS" \
      --methods=$m --seeds=$seeds --tag="gpu_$m" --output_dir="$R" \
      --export_dir="$R/exported" --time_budget="${TIME_BUDGET:-180}" \
      > "$R/accuracy_$m.log" 2>&1 &
done
wait
echo "== done $(date +%T)"
cat "$R"/gpu_*_runs.jsonl > "$R/accuracy_gpu_runs.jsonl" 2>/dev/null
python3 benchmarks/accuracy.py --report_only --tag=accuracy_gpu --output_dir="$R" \
    2>&1 | tail -20
grep -h "^== " "$R"/accuracy_*.log
tar czf "$OUT/gpu_results.tgz" -C /tmp gpu_results
ls -la "$OUT"
