#!/usr/bin/env bash
# One-step, idempotent set-up. Usage: scripts/setup.sh [EXTRAS]   (default: dev)
#   EXTRAS is a comma list of pyproject extras: dev, labelers, train.
# Installs into the active virtualenv/conda env if there is one, else into ./.venv, with the
# versions the project is tested with (constraints.txt; LAVIN_CONSTRAINTS=none resolves freely).
# torch (only for the labelers/train extras): an importable torch is kept as it is; otherwise
# torch==${TORCH_VERSION:-2.13.0} is installed:
#   - from ${TORCH_INDEX_URL} if set (e.g. https://download.pytorch.org/whl/cu128);
#   - on a machine with an NVIDIA driver (nvidia-smi or /proc/driver/nvidia), pip's default (CUDA) build;
#   - otherwise the CPU build: a wheel in pip's find-links if one is there, else from
#     https://download.pytorch.org/whl/cpu (PyPI's default Linux build is several GB of CUDA).
# It installs no system package (the browser for the report tests: scripts/install_browser.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
cpu_index=https://download.pytorch.org/whl/cpu

if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
    py=python
else
    [ -x .venv/bin/python ] || python3 -m venv .venv
    py=.venv/bin/python
fi

constraints=constraints.txt
[ "${LAVIN_CONSTRAINTS:-}" = none ] && constraints=/dev/null

stamp_dir=$($py -c 'import sys; print(sys.prefix)')
stamp="$stamp_dir/.lavin-setup-$(cat pyproject.toml "$constraints" | sha256sum | cut -c1-12)-${extras//,/_}"
if [ -f "$stamp" ]; then exit 0; fi

has_nvidia_driver() { command -v nvidia-smi >/dev/null 2>&1 || [ -e /proc/driver/nvidia/version ]; }

pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
torch_deps=""
case ",$extras," in
  *,labelers,*|*,train,*)
    if have=$($py -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null); then
        if ! $py -c 'import sys, torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 5))'; then
            echo "setup: the installed torch $have is older than 2.5 (J-DiT uses scaled_dot_product_attention's enable_gqa);" >&2
            echo "       upgrade it (e.g. pip install torch==${TORCH_VERSION:-2.13.0} --index-url https://download.pytorch.org/whl/cu128)" >&2
            exit 1
        fi
        echo "setup: keeping the installed torch $have"
    else
        want="${TORCH_VERSION:-2.13.0}"
        if [ -n "${TORCH_INDEX_URL:-}" ]; then
            echo "setup: installing torch==$want from TORCH_INDEX_URL=$TORCH_INDEX_URL"
            $py -m pip install -q --index-url "$TORCH_INDEX_URL" "torch==$want"
        elif has_nvidia_driver; then
            echo "setup: an NVIDIA driver is present: installing torch==$want, pip's default (CUDA) build"
            $py -m pip install -q "torch==$want"
        elif $py -m pip install -q --no-index --no-deps "torch==$want" >/dev/null 2>&1; then
            echo "setup: no NVIDIA driver: installed torch==$want from a wheel in pip's find-links"
            $py -m pip install -q "torch==$want"  # its dependencies
        else
            echo "setup: no NVIDIA driver: installing the CPU build of torch==$want from $cpu_index"
            $py -m pip install -q --index-url "$cpu_index" "torch==$want"
        fi
        have="$want"
    fi
    built=$($py -c 'import torch; print(torch.__version__, "(CPU build)" if torch.version.cuda is None else f"(CUDA {torch.version.cuda} build)")')
    echo "setup: torch $built"
    # Pin it so that no dependency's resolver swaps it for the registry's newest build, and leave
    # torch's own dependencies to it: a kept torch (2.5, say) may need another sympy than ours.
    echo "torch==$have" >"$pins"
    torch_deps=$($py -c 'import importlib.metadata as m, re; print(" ".join(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0].lower().replace("_", "-") for r in m.requires("torch") or [] if "extra ==" not in r))')
    ;;
esac

if [ -n "${torch_deps:-}" ] && [ "$constraints" != /dev/null ]; then
    kept=$(mktemp)
    trap 'rm -f "$pins" "$kept"' EXIT
    # constraints.txt without the packages torch itself pins (names compared case- and _/- blind)
    awk -v deps=" $torch_deps " '{ n = tolower($0); sub(/[=<>!~ ].*/, "", n); gsub(/_/, "-", n) }
        n == "" || index(deps, " " n " ") == 0' "$constraints" >"$kept"
    constraints=$kept
fi

$py -m pip install -q -c "$pins" -c "$constraints" -e ".[${extras}]"
touch "$stamp"
echo "setup: ready ($py, extras: $extras)"
