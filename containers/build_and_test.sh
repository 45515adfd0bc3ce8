#!/usr/bin/env bash
# Build the symprep image for real with podman and test it (`make test-container`):
# hadolint, `symprep --version`, and the tiny demo's participant stage inside the container as a
# non-root user with the data bind-mounted; where Apptainer is installed, the .sif that
# containers/symprep.def builds from this image. Where no registry is reachable, the base image is a
# Debian bookworm made locally with debootstrap from the mirror apt already uses.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/symprep:0.1.0}
BASE=${BASE_IMAGE:-localhost/debian-base:bookworm}
PY=${PYTHON:-.venv/bin/python}
export DEBIAN_FRONTEND=noninteractive

need=()
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -f /etc/containers/containers.conf ] || ! grep -q default_ulimits /etc/containers/containers.conf; then
  mkdir -p /etc/containers
  cat > /etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
CONF
fi

.venv/bin/hadolint containers/Dockerfile

if [[ "$BASE" == localhost/* ]] && ! podman image exists "$BASE"; then
  # the Debian archive apt already uses (deb822 .sources or one-line .list files)
  mirror=$( { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
              grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
                | sed -E 's/\[[^]]*\] //' | awk '{print $2}'; } | grep -E '/debian/?$' | head -n1 || true)
  rootfs=$(mktemp -d)
  echo "debootstrap bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
  tar -C "$rootfs" -c . | podman import - "$BASE" >/dev/null
  rm -rf "$rootfs"
fi

# prefer a CPU torch wheel lying on this machine (the CUDA build from PyPI is several GB)
for wheel in /opt/wheels/torch-2.13.*cpu*cp311*.whl; do
  [ -f "$wheel" ] && cp -n "$wheel" containers/wheels/
done

build_args=(--build-arg BASE_IMAGE="$BASE")
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then  # this machine's CA bundle (TLS proxy)
  build_args+=(--volume "$PIP_CERT:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
podman build --format docker "${build_args[@]}" -f containers/Dockerfile -t "$IMAGE" .
version=$(podman run --rm "$IMAGE" --version)
echo "in the container: $version"
[ "$version" = "symprep $($PY -c 'import pipeline; print(pipeline.__version__)')" ]

data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
$PY -m pipeline demo-data "$data/bids" --size tiny --seed 0 --quiet
mkdir -p "$data/out" && chown 1000:1000 "$data/out"
podman run --rm --user 1000:1000 -v "$data/bids:/data/bids:ro" -v "$data/out:/data/out" "$IMAGE" \
  /data/bids /data/out participant --participant-label 01 --nprocs 2 --work-dir /data/out/work
test -f "$data/out/logs/sub-01_participant.json"
test -f "$data/out/sub-01/anat/sub-01_space-MNI152NLin2009aSym_res-2_desc-preproc_T1w.nii.gz"
owner=$(stat -c %u "$data/out/logs/sub-01_participant.json")
[ "$owner" = 1000 ] || { echo "outputs owned by uid $owner, expected 1000" >&2; exit 1; }
# a bad input gets the same one-line error inside the container
if podman run --rm --user 1000:1000 "$IMAGE" /nonexistent /tmp/out participant 2>"$data/err"; then
  echo "expected a failure" >&2; exit 1
fi
grep -q "symprep: error: /nonexistent: input directory does not exist" "$data/err"
# the Apptainer image, from this image's OCI archive (containers/symprep.def), where Apptainer exists
if command -v apptainer >/dev/null; then
  podman save --format oci-archive -o "$data/symprep.tar" "$IMAGE"
  def="$PWD/containers/symprep.def"  # its From: symprep.tar is relative to the build directory
  (cd "$data" && apptainer build --force symprep.sif "$def")
  apptainer test "$data/symprep.sif"
  [ "$(apptainer run "$data/symprep.sif" --version)" = "$version" ]
  echo "apptainer: OK"
fi
echo "container: OK ($IMAGE)"
