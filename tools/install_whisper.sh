#!/usr/bin/env bash
# Install a pretrained Whisper as a transformers directory for the Whisper speech encoder
# (encoder: whisper, encoder_conf.whisper_dir). The work is done by tools/install_whisper.py,
# which says where the weights come from and how they are checked.
#
#   bash tools/install_whisper.sh base [DIR]   # DIR defaults to tools/whisper-base
#
# Needs tools/venv (bash tools/install.sh); PYTHON=/path/to/python overrides it.
# Idempotent; on failure it prints one line starting with ERROR: and exits with 1.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/venv_python.sh"   # $root, $python
exec "$python" "$root/tools/install_whisper.py" "$@"
