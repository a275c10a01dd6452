#!/usr/bin/env bash
# factsmith's one entry point for newcomers and CI: sets everything up, then runs the demo or the tests.
#   bash dev.sh demo     set up, then run the main job on the embedded default (factsmith demo)
#   bash dev.sh test     set up, then run the whole test suite (what .ci/run calls)
#   bash dev.sh setup    set up only (.venv with factsmith and its dev tools)
set -euo pipefail
cd "$(dirname "$0")"

setup() {
  local py=${PYTHON:-python3}
  if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "factsmith needs Python >= 3.11 (found $("$py" --version 2>&1)); set PYTHON=..." >&2
    exit 2
  fi
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  local want have
  want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
  have=$(cat .venv/.factsmith-installed 2>/dev/null || true)
  if [ "$want" != "$have" ]; then
    echo "setting up .venv (first time: a few minutes)..." >&2
    # The CPU build of torch first, pinned: a bare 'torch' requirement would pull a CUDA build (GBs).
    # --no-compile: byte-compiling every installed module took half the set-up (3.5 min -> 1.7 min on 2 cores);
    # Python compiles what it imports on first use instead.
    { .venv/bin/pip install --quiet --disable-pip-version-check --no-compile "torch==2.13.0" &&
      .venv/bin/pip install --quiet --disable-pip-version-check --no-compile -e '.[dev]'; } 2>&1 |
      { grep -v 'is ignored: it is neither a file nor a directory' || true; }
    echo "$want" > .venv/.factsmith-installed
  fi
}

# Bytecode: Python compiles each module it imports on first use (setup installs with --no-compile) and keeps it
# under .venv/pycache, out of the source tree, whatever PYTHONDONTWRITEBYTECODE says: with that variable set
# (this machine's shells set it) every process compiled torch, transformers, MLflow and Prefect from source again
# -- 11 s to import the four instead of 6, 22 s for `factsmith registry init` instead of 9, in each of the
# test suite's many processes.
bytecode() {
  unset PYTHONDONTWRITEBYTECODE
  export PYTHONPYCACHEPREFIX="$PWD/.venv/pycache"
}

case "${1:-}" in
  demo)  shift; setup; bytecode; exec .venv/bin/factsmith demo "$@" ;;
  test)  shift; setup; bytecode; export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1; exec .venv/bin/python -m pytest "$@" ;;
  setup) setup ;;
  *) echo "usage: bash dev.sh demo|test|setup" >&2; exit 2 ;;
esac
