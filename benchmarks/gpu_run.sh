#!/usr/bin/env bash
# One prepared GPU check for issue 6 (models): throughput at 64³ on CUDA and a short symmetry grid.
#
#   benchmarks/gpu_run.sh prepare   # on the CPU machine, with the repo's .venv: bundles the
#                                   # pure-Python dependencies (e3nn, opt_einsum(_fx), nibabel,
#                                   # pydantic, tqdm …) and the template arrays into work/gpu_deps
#   benchmarks/gpu_run.sh           # on the GPU machine (no network): uses whatever python there
#                                   # has a CUDA torch, fills missing modules from work/gpu_deps,
#                                   # writes everything to $OUT (default work/gpu_out)
#
# Fits in 5 minutes: throughput ≤ 100 s, grid ≤ 170 s (the grid saves its JSON after every cell,
# so a timeout still leaves the finished cells). Record the figures afterwards, here:
#   .venv/bin/python -m benchmarks.models_throughput --from-json OUT/throughput.json
#   .venv/bin/python -m benchmarks.symmetry_grid --scale gpu-short --from-json OUT/grid.json \
#       --device-name "$(tail -1 OUT/gpu_name.csv)"
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/work/gpu_deps"
PKGS=(e3nn opt_einsum opt_einsum_fx nibabel pydantic pydantic_core annotated_types
      typing_inspection typing_extensions.py tqdm packaging)

if [[ "${1:-run}" == "prepare" ]]; then
    VPY="$ROOT/.venv/bin/python"
    SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    rm -rf "$DEPS" && mkdir -p "$DEPS/site"
    for p in "${PKGS[@]}"; do cp -r "$SITE/$p" "$DEPS/site/"; done
    rm -rf "$DEPS"/site/*/tests "$DEPS"/site/nibabel/*/tests
    find "$DEPS" -name __pycache__ -type d -prune -exec rm -rf {} +
    PYTHONPATH="$ROOT" "$VPY" -m benchmarks.symmetry_grid --save-template-cache "$DEPS/grid_template.npz"
    "$VPY" -c 'import sys; print(sys.version_info[:2])' > "$DEPS/python_version.txt"
    du -sh "$DEPS"
    echo "prepared $DEPS (carry it: work/gpu_deps)"
    exit 0
fi

OUT="${OUT:-$ROOT/work/gpu_out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_run.log") 2>&1
cd "$ROOT"
nvidia-smi --query-gpu=name --format=csv | tee "$OUT/gpu_name.csv"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

PY=""
for cand in python3 python python3.11 python3.12 python3.10 /usr/bin/python3 /opt/conda/bin/python; do
    command -v "$cand" > /dev/null 2>&1 || continue
    if "$cand" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2> /dev/null; then
        PY="$(command -v "$cand")"
        break
    fi
done
if [[ -z "$PY" ]]; then
    echo "FAIL: no python with a CUDA-enabled torch on this machine"
    exit 2
fi
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda, "|", torch.cuda.get_device_name(0))'

# missing (or too old) modules come from the bundle, through an overlay of symlinks so that
# the machine's own packages keep precedence for everything else
OVERLAY="$(mktemp -d)"
NEED="$("$PY" - << 'PYEOF'
import importlib.util as u
need = []
for m in ["e3nn", "opt_einsum", "opt_einsum_fx", "nibabel", "tqdm", "packaging"]:
    if u.find_spec(m) is None:
        need.append(m)
try:
    import pydantic
    if int(pydantic.VERSION.split(".")[0]) < 2:
        raise ImportError
except ImportError:
    need += ["pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions.py"]
print(" ".join(need))
PYEOF
)"
if [[ -n "$NEED" ]]; then
    echo "filling from $DEPS/site: $NEED"
    for m in $NEED; do
        if [[ ! -e "$DEPS/site/$m" ]]; then
            echo "FAIL: module $m is missing here and not in $DEPS (run 'benchmarks/gpu_run.sh prepare' and carry work/gpu_deps)"
            exit 3
        fi
        ln -s "$DEPS/site/$m" "$OVERLAY/$m"
    done
fi
export PYTHONPATH="$ROOT:$OVERLAY${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import e3nn, pipeline.models, pipeline.models.training, benchmarks.symmetry_grid' ; then
    echo "FAIL: cannot import the models with $PY (bundle built for python $(cat "$DEPS/python_version.txt" 2> /dev/null); compiled pydantic_core must match)"
    exit 4
fi

echo "== throughput at 64^3 (cuda, AMP)"
timeout 100 "$PY" -m benchmarks.models_throughput --device cuda --size 64 --batch 4 --steps 5 \
    --json "$OUT/throughput.json" --no-write | tee "$OUT/throughput.md"
echo "== short symmetry grid (gpu-short scale)"
timeout 170 "$PY" -m benchmarks.symmetry_grid --scale gpu-short --device cuda \
    --template-cache "$DEPS/grid_template.npz" --json "$OUT/grid.json" --figure "$OUT/grid.png" \
    --no-write | tee "$OUT/grid.md"
rc=${PIPESTATUS[0]}
[[ $rc -eq 124 ]] && echo "grid stopped at its time limit; finished cells are in $OUT/grid.json"
rm -rf "$OVERLAY"
ls -l "$OUT"
