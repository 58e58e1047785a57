#!/usr/bin/env bash
# Run the test suite on any machine: installs tools/venv first when it is missing or stale
# (tools/install.sh is idempotent), then runs pytest. Extra arguments go to pytest.
#
#   bash tools/test.sh            # everything
#   bash tools/test.sh -k adapter # a subset
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/tools/install.sh"
cd "$root"
exec "$root/tools/venv/bin/python" -m pytest "$@"
