#!/usr/bin/env bash
# The GPU checks of the Ray path in one run, for a machine with an NVIDIA GPU and PyTorch:
#   1. tests/test_cuda.py: the CUDA code paths give the CPU's numbers;
#   2. bench/bench_tagging.py on the GPU with pretrained-xl (200 generated 30 s MP3s): predict_many with files
#      sharing passes (the default on CUDA) beside one thread per file, and the front end;
#   3. bench/bench_ray.py on the GPU (FILES generated 30 s MP3s, default 2000): predict_many, then one GPU
#      worker decoding its own files, then one fed by CPU decode tasks.
# Exits non-zero if PyTorch sees no GPU or a step fails.
#
#   bash bench/gpu_check.sh OUT_DIR [FILES]
#
# Python packages the machine lacks (on a bare PyTorch image: soundfile, cffi, pycparser, soxr, tomli-w, ray,
# jsonschema, jsonschema-specifications, referencing, rpds-py) are installed, without an index, from the wheels in
# the folders .whl*/ of the repository root, when there are any; they take precedence over the machine's own. A
# wheel too large to travel in one piece may come as NAME.whl.part-aa, -ab ... (`split -b 30M`), in one folder or
# several (brought over several calls); the parts are joined and checked first.
set -uo pipefail
out=${1:?give an output folder}
files=${2:-2000}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
if compgen -G ".whl*/*" >/dev/null; then
    wheels=$(mktemp -d)
    trap 'rm -rf "$wheels"' EXIT
    cp .whl*/* "$wheels"/
    for first in "$wheels"/*.whl.part-aa; do
        [ -e "$first" ] || continue
        whole=${first%.part-aa}
        cat "$whole".part-* > "$whole" && rm "$whole".part-*
        python3 -m zipfile -t "$whole" >/dev/null || { echo "$whole: a part is missing or damaged" >&2; exit 1; }
    done
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src:$PWD/tests" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'PyTorch sees no CUDA GPU')" || exit 1
rc=0
python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log" || rc=1
python3 bench/bench_tagging.py --device cuda --model pretrained-xl --clips 200 --skip-hour 2>&1 | tee "$out/bench_tagging.log" || rc=1
python3 bench/bench_ray.py --files "$files" --workers 1 --device cuda --decode both 2>&1 | tee "$out/bench_ray.log" || rc=1
exit $rc
