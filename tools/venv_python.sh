# Sourced by the tools/install_*.sh wrappers: $root (the checkout) and $python (tools/venv's, or
# $PYTHON), or one ERROR line and exit 1 when there is none.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$root/tools/venv/bin/python}
if [ ! -x "$python" ]; then
    echo "ERROR: $python not found: run 'bash tools/install.sh' first (or set PYTHON)" >&2
    exit 1
fi
