#!/usr/bin/env bash
# One-step, idempotent set-up. Usage: scripts/setup.sh [EXTRAS]   (default: dev)
#   EXTRAS is a comma list of pyproject extras: dev, labelers, train.
# Installs into the active virtualenv/conda env if there is one, else into ./.venv.
# torch (only for the labelers/train extras): an importable torch is kept as it is;
# otherwise torch==${TORCH_VERSION:-2.13.0} is installed, from ${TORCH_INDEX_URL} if set
# (e.g. https://download.pytorch.org/whl/cpu or .../cu128), else from pip's configured indexes.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"

if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
    py=python
else
    [ -x .venv/bin/python ] || python3 -m venv .venv
    py=.venv/bin/python
fi

# tests/test_report.py renders the build report in headless Chromium (Debian's `chromium`). Checked
# on every run, before the stamp: an environment set up before this step gets it too.
case ",$extras," in
  *,dev,*)
    if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
        apt_log=$(mktemp)
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && {
            DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >"$apt_log" 2>&1
        then
            echo "setup: installed chromium (for tests/test_report.py)"
        else
            tail -n 5 "$apt_log" >&2 || true
            echo "setup: could not install chromium with apt-get (it needs root and apt); the browser tests of" >&2
            echo "       tests/test_report.py skip without it, and fail under CI=true. Install it yourself:" >&2
            echo "       apt-get install -y --no-install-recommends chromium" >&2
        fi
        rm -f "$apt_log"
    fi
    ;;
esac

stamp_dir=$($py -c 'import sys; print(sys.prefix)')
stamp="$stamp_dir/.lavin-setup-$(cat pyproject.toml | sha256sum | cut -c1-12)-${extras//,/_}"
if [ -f "$stamp" ]; then exit 0; fi

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
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
        echo "setup: installing torch==$want"
        $py -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==$want"
        have="$want"
    fi
    # Pin it so that no dependency's resolver swaps it for the registry's newest build.
    echo "torch==$have" >"$constraints"
    ;;
esac

$py -m pip install -q -c "$constraints" -e ".[${extras}]"
touch "$stamp"
echo "setup: ready ($py, extras: $extras)"
