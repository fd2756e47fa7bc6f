#!/usr/bin/env bash
# One check of every benchmark at its GPU sizes (about 5 minutes on one GPU, within 8), ending in one
# table with the device name. `--small` runs the same at CPU-sized shapes (what tests/test_gpu_check.py
# runs). Uses $PYTHON (default: python) and this checkout's cfl_jax.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --small    # anywhere, in under a minute
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
records="$(mktemp -d)"
trap 'rm -rf "$records"' EXIT

if [[ "${1:-}" == "--small" ]]; then
  # Tiny shapes, one round, XLA's cheapest CPU code generation: compilation is most of the time.
  export XLA_FLAGS="--xla_backend_optimization_level=0"
  loss_args=(--shapes 32x100:float32 --sigmoid_shapes 32x100:float32 --rounds 1)
  train_args=(--model digits_cnn --batch_size 4 --rounds 1 --steps_per_round 1)
  vocab_args=(--batch 16 --dim 8 --vocab 512 --rounds 1 --chunk_size 128)
  # The vocabulary-parallel loss on 8 CPU devices.
  sharded_args=(--batch 16 --dim 8 --vocab 512 --rounds 1 --chunk_size 64 --mesh 2x4)
  sharded_env=(XLA_FLAGS="$XLA_FLAGS --xla_force_host_platform_device_count=8")
elif [[ -z "${1:-}" ]]; then
  loss_args=(--shapes 8192x32768:float32 8192x32768:bfloat16 --sigmoid_shapes 8192x32768:float32
             --rounds 50)
  train_args=(--model resnet18_cifar --dtype bfloat16 --batch_size 256 --rounds 10
              --steps_per_round 10)
  vocab_args=(--batch 8192 --dim 4096 --vocab 131072 --dtype bfloat16 --rounds 10)
  # The vocabulary-parallel loss over every device on 'model' (one GPU: the shard_map path alone).
  devices="$("$python" -c 'import jax; print(jax.device_count())')"
  sharded_args=(--batch 8192 --dim 4096 --vocab 131072 --dtype bfloat16 --rounds 10
                --mesh "1x$devices")
  sharded_env=(XLA_FLAGS="${XLA_FLAGS:-}")
else
  echo "usage: $0 [--small]" >&2
  exit 2
fi

"$python" benchmarks/loss_benchmark.py "${loss_args[@]}" --record "$records/1_loss.json"
"$python" benchmarks/train_step_benchmark.py "${train_args[@]}" --record "$records/2_train_step.json"
"$python" benchmarks/large_vocab_benchmark.py "${vocab_args[@]}" --record "$records/3_large_vocab.json"
env "${sharded_env[@]}" "$python" benchmarks/large_vocab_benchmark.py "${sharded_args[@]}" \
  --record "$records/4_large_vocab_sharded.json"

"$python" - "$records" <<'PY'
import json, pathlib, sys

records = [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json"))]
print(f"\ngpu_check: {records[0]['device']} ({records[0]['backend']}), jax {records[0]['jax']}")
print(f"| {'benchmark':<44} | {'case':<42} | {'loss':<34} | {'ms':>10} | {'x CE':>5} | {'temp MiB':>8} |")
print(f"|{'-' * 46}|{'-' * 44}|{'-' * 36}|{'-' * 12}|{'-' * 7}|{'-' * 10}|")
for record in records:
  for row in record["rows"]:
    temp = f"{row['temp_mib']:.0f}" if "temp_mib" in row else ""
    print(f"| {record['title']:<44} | {row['case']:<42} | {row['loss']:<34} | "
          f"{row['ms']:>10.2f} | {row['x_ce']:>5.2f} | {temp:>8} |")
PY
