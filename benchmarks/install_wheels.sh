#!/usr/bin/env bash
# The GPU machine's half of benchmarks/carry_wheels.py (whose docstring has the whole sequence).
#
#   bash benchmarks/install_wheels.sh stash LOAD_DIR          # every call: keep what it carried
#   bash benchmarks/install_wheels.sh install [STASH [VENV]]  # once all loads are there
#
# stash: moves a carried load (its wheels or wheel parts, and the manifest) out of the working
# tree into STASH (default /tmp/dlkit-wheels), which survives between calls while the machine
# is warm.
# install: joins each split wheel's parts with `cat` in order, checks every wheel and part
# against the manifest with `sha256sum -c` (a missing or damaged one stops it, by name), makes
# the virtual environment VENV (default /tmp/dlkit-venv) over this python3's own packages, and
# installs the wheels into it with `pip install --no-index --no-deps`. The machine's packages
# (torch, its CUDA libraries) come after the venv's own on sys.path, so what was carried
# (numpy < 2 for Triton's python stub, onnxruntime-gpu over the CPU build) takes precedence,
# and the machine's environment itself is left as it was. Prints VENV/bin/python last.
set -euo pipefail

PYTHON=${PYTHON:-python3}
DEFAULT_STASH=/tmp/dlkit-wheels
DEFAULT_VENV=/tmp/dlkit-venv

stash() {
    local load=${1:?stash needs the carried load folder}
    local to=${2:-$DEFAULT_STASH}
    if [[ ! -f $load/manifest.txt ]]; then
        echo "no manifest.txt in $load: name the load in the call's carry" >&2
        exit 2
    fi
    mkdir -p "$to"
    local files=("$load"/*)
    mv -f "${files[@]}" "$to"/
    echo "stashed ${#files[@]} file(s) from $load in $to ($(du -sh "$to" | cut -f1) there)"
}

join_parts() {  # in the current folder: NAME.whl from NAME.whl.part00, .part01, ...
    local first wheel
    for first in *.part00; do
        [[ -e $first ]] || continue
        wheel=${first%.part00}
        cat "$wheel".part[0-9][0-9] > "$wheel.joining"
        mv "$wheel.joining" "$wheel"
    done
}

install() {
    local from=${1:-$DEFAULT_STASH} venv=${2:-$DEFAULT_VENV}
    cd "$from"
    join_parts
    if ! sha256sum --check --quiet --strict manifest.txt; then
        echo "a carried wheel is missing or damaged (above): carry its load again" >&2
        exit 3
    fi
    local wheels
    mapfile -t wheels < <(awk '$2 ~ /\.whl$/ { print $2 }' manifest.txt)
    "$PYTHON" -m venv --without-pip "$venv"
    local site
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # The machine's packages after the venv's (their own .pth files processed too).
    "$PYTHON" - "$site/dlkit_machine_packages.pth" << 'EOF'
import site, sys
folders = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
lines = [f"import site; site.addsitedir({folder!r})" for folder in folders]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
EOF
    "$venv/bin/python" -m pip install --quiet --no-index --no-deps --no-compile \
        --no-cache-dir --disable-pip-version-check "${wheels[@]}"
    echo "installed ${#wheels[@]} wheel(s) into $venv"
    echo "$venv/bin/python"
}

case ${1:-} in
    stash) stash "${@:2}" ;;
    install) install "${@:2}" ;;
    *)
        echo "usage: $0 stash LOAD_DIR [STASH] | install [STASH [VENV]]" >&2
        exit 2
        ;;
esac
