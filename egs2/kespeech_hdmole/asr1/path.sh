# Activate the project's environment (created by tools/install.sh) and set up the recipe's paths.
_recipe_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MAIN_ROOT=$(cd "${_recipe_dir}/../../.." && pwd)
if [ ! -x "${MAIN_ROOT}/tools/venv/bin/python" ]; then
    echo "path.sh: ${MAIN_ROOT}/tools/venv is missing: run 'bash ${MAIN_ROOT}/tools/install.sh' first" >&2
    return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
. "${MAIN_ROOT}/tools/venv/bin/activate"
export PYTHONIOENCODING=UTF-8
export PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
export LC_ALL=C.UTF-8
# the recipe uses the package of its own checkout
export PYTHONPATH=${MAIN_ROOT}${PYTHONPATH:+:${PYTHONPATH}}
