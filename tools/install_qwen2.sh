#!/usr/bin/env bash
# Install a real Qwen2 LLM (Qwen2.5-Coder-0.5B-Instruct from a GGUF Q4_K_M, saved in float32) as a
# transformers directory for the LLM-based ASR model (model_conf.llm_dir). The work is done by
# tools/install_qwen2.py, which says where the weights come from and how they are checked.
#
#   bash tools/install_qwen2.sh [DIR] --extra-path /tmp/ggufpkg   # DIR defaults to tools/qwen2-0.5b
#
# Loading the GGUF needs gguf, accelerate and psutil, which are not in tools/venv; put them in a
# side directory first (nothing is added to the venv or the lock):
#   tools/venv/bin/python -m pip install --no-deps --target /tmp/ggufpkg gguf accelerate psutil
# (or set HDMOLE_GGUF_PATH=/tmp/ggufpkg instead of --extra-path).
# Needs tools/venv (bash tools/install.sh); PYTHON=/path/to/python overrides it.
# Idempotent; on failure it prints one line starting with ERROR: and exits with 1.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/venv_python.sh"   # $root, $python
exec "$python" "$root/tools/install_qwen2.py" "$@"
