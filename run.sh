#!/usr/bin/env bash
# fastflow's quick start on a CPU-only Linux machine with Python >= 3.10:
#   bash run.sh train   train a small flow on the built-in digits (bits/dim as it trains, PNG samples)
#   bash run.sh test    run the test suite
# Both create (or reuse) the virtual environment .venv and install fastflow into it first. Extra arguments
# go to `fastflow train` or to pytest. FASTFLOW_VENV chooses another environment folder.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
venv=${FASTFLOW_VENV:-.venv}
python=${PYTHON:-python3}

install() {
    # Reinstall when the build inputs change, so that the compiled extension matches csrc/.
    local stamp
    stamp=$(cat setup.py pyproject.toml constraints.txt csrc/*.cpp csrc/*.h csrc/*/* 2>/dev/null | sha256sum | cut -c1-16)
    if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.fastflow-stamp" 2>/dev/null)" = "$stamp" ]; then
        return
    fi
    echo "run.sh: installing fastflow into $venv (a few minutes the first time: it compiles fastflow._C)" >&2
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    # torch first, pinned by constraints.txt: a bare `torch` requirement would pull a multi-GB CUDA build.
    "$venv/bin/python" -m pip install -q -c constraints.txt torch setuptools wheel ninja
    # No build isolation: the extension compiles against the torch just installed, with no network.
    "$venv/bin/python" -m pip install -q -c constraints.txt --no-build-isolation -e ".[test,triton,bench]"
    echo "$stamp" >"$venv/.fastflow-stamp"
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
    train)
        install
        exec "$venv/bin/fastflow" train "$@"
        ;;
    test)
        install
        "$venv/bin/fastflow" info
        exec "$venv/bin/python" -m pytest -q "$@"
        ;;
    *)
        echo "usage: bash run.sh train [fastflow train options] | bash run.sh test [pytest options]" >&2
        exit 2
        ;;
esac
