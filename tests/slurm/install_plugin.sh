#!/usr/bin/env bash
# Install snakemake-executor-plugin-slurm into a separate directory (NOT into the main venv).
#
# Why: Snakemake imports every installed executor plugin at start-up. With the SLURM client
# tools installed and no slurmctld answering, `import snakemake_executor_plugin_slurm` blocks
# ~9 s, so every `snakemake` call (even --version) would get 10x slower.  Keeping the plugin in
# its own directory means only runs with `PYTHONPATH=<dir>` pay for / see it.
#
# Usage:  tests/slurm/install_plugin.sh [TARGET_DIR]
#   TARGET_DIR defaults to $SLURM_PLUGIN_DIR or <repo>/.slurm-plugin (git-ignored).
#   Env PYTHON: the interpreter of the main venv (default <repo>/.venv/bin/python).
# Then:   PYTHONPATH=<repo>/.slurm-plugin snakemake --profile profiles/slurm ...
#
# Only the packages the main venv does not already satisfy are put into TARGET_DIR (with
# --no-deps), so nothing in the venv (snakemake-interface-*, pandas, ...) gets shadowed.
# Idempotent: does nothing when the pinned versions are already there.
set -euo pipefail

# Pinned versions (seen working with snakemake 9.27).
PLUGIN_PIN="snakemake-executor-plugin-slurm==2.8.0"
JOBSTEP_PIN="snakemake-executor-plugin-slurm-jobstep==0.6.1"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TARGET="${1:-${SLURM_PLUGIN_DIR:-$REPO/.slurm-plugin}}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"

if [[ ! -x "$PYTHON" ]]; then
    echo "install_plugin.sh: no python at $PYTHON (set PYTHON=...)" >&2
    exit 1
fi

# Prints the requirement specs (of the given distributions, found in TARGET or the venv)
# that are not satisfied by TARGET + the venv.  Exit 0 always; empty output = all good.
unsatisfied() {
    PYTHONPATH="$TARGET" "$PYTHON" - "$@" <<'EOF'
import sys
from importlib import metadata
from packaging.requirements import Requirement

missing = []
for name in sys.argv[1:]:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        missing.append(name)
        continue
    for spec in dist.requires or []:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing.append(str(req))
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            missing.append(str(req))
print("\n".join(dict.fromkeys(missing)))
EOF
}

installed_version() {
    PYTHONPATH="$TARGET" "$PYTHON" -c \
        'import sys; from importlib import metadata as m
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass' "$1"
}

want_plugin="${PLUGIN_PIN#*==}"
want_jobstep="${JOBSTEP_PIN#*==}"

if [[ "$(installed_version snakemake-executor-plugin-slurm)" == "$want_plugin" \
      && "$(installed_version snakemake-executor-plugin-slurm-jobstep)" == "$want_jobstep" \
      && -z "$(unsatisfied snakemake-executor-plugin-slurm snakemake-executor-plugin-slurm-jobstep)" ]]; then
    echo "install_plugin.sh: $PLUGIN_PIN already in $TARGET"
    exit 0
fi

# Fresh install (a partial/old one is replaced).
rm -rf "$TARGET"
mkdir -p "$TARGET"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$TARGET" "$PLUGIN_PIN" "$JOBSTEP_PIN"

# Anything else the plugins need that the venv lacks goes into TARGET as well (no deps each
# round, repeated until the closure is satisfied).
for _round in 1 2 3 4 5; do
    mapfile -t missing < <(unsatisfied snakemake-executor-plugin-slurm \
        snakemake-executor-plugin-slurm-jobstep | sed '/^$/d')
    [[ ${#missing[@]} -eq 0 ]] && break
    echo "install_plugin.sh: also installing into $TARGET: ${missing[*]}"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
        --target "$TARGET" "${missing[@]}"
done
left="$(unsatisfied snakemake-executor-plugin-slurm snakemake-executor-plugin-slurm-jobstep)"
if [[ -n "$left" ]]; then
    echo "install_plugin.sh: requirements still unsatisfied: $left" >&2
    exit 1
fi

# pip --target may drop console scripts into TARGET/bin; not needed.
rm -rf "$TARGET/bin"

# Sanity check: the modules are found with PYTHONPATH set (find_spec, not import: importing the
# plugin queries SLURM and blocks ~9 s when no slurmctld answers).
if ! PYTHONPATH="$TARGET" "$PYTHON" -c 'import importlib.util as u, sys
sys.exit(0 if all(u.find_spec(m) for m in ("snakemake_executor_plugin_slurm",
    "snakemake_executor_plugin_slurm_jobstep")) else 1)'; then
    echo "install_plugin.sh: the plugin does not import from $TARGET" >&2
    exit 1
fi
echo "install_plugin.sh: installed $PLUGIN_PIN and $JOBSTEP_PIN into $TARGET"
