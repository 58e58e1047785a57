#!/usr/bin/env bash
# Install everything espnet-hdmole needs into tools/venv, in one idempotent command.
#
#   bash tools/install.sh            # CPU build of torch (default)
#   TORCH_SPEC="torch==2.13.0" bash tools/install.sh   # e.g. a CUDA build from the registry
#
# Variables:
#   TORCH_SPEC   pip requirement for torch (default: torch==2.13.0+cpu, the local CPU wheel).
#                It is written into tools/venv/constraints.txt and pins torch for every later step.
#   PYTHON       interpreter used to create the venv (default: python3, must be >= 3.10).
#   HDMOLE_SKIP_APT=1  do not try to install Debian espeak-ng and sox.
#
# Every Python package but torch is pinned to the exact version of tools/requirements.lock (the
# versions the tests passed with), which joins TORCH_SPEC in tools/venv/constraints.txt.
# Re-running does nothing once tools/venv/.installed matches this script, setup.py and the lock;
# pass --force to reinstall the Python packages.
#
#   bash tools/install.sh --refresh-lock   # a new venv with the newest versions allowed, then rewrite
#                                          # tools/requirements.lock from them; run the tests
#                                          # (bash tools/test.sh) and commit the lock if they pass
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
venv="$here/venv"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
ESPNET_VERSION=202511
TORCHAUDIO_VERSION=2.11.0
lock="$here/requirements.lock"
force=0 refresh=0
for a in "$@"; do
  case "$a" in
    --force) force=1 ;;
    --refresh-lock) refresh=1; force=1 ;;
    -h|--help) sed -n '2,/^[^#]/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option '$a' (see --help)" >&2; exit 2 ;;
  esac
done

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (install.sh) $*"; }

# ---- system packages for the demo corpus (espeak-ng, sox) ----
if [ "${HDMOLE_SKIP_APT:-0}" != 1 ]; then
  if command -v espeak-ng >/dev/null 2>&1 && command -v sox >/dev/null 2>&1; then
    :
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian packages espeak-ng and sox"
    (apt-get install -y -qq espeak-ng sox >/dev/null 2>&1 || \
      { apt-get update -qq >/dev/null && apt-get install -y -qq espeak-ng sox >/dev/null; }) \
      || echo "install.sh: WARNING: could not install espeak-ng/sox with apt-get; the demo corpus (recipe stage 1) needs them" >&2
  else
    echo "install.sh: NOTE: espeak-ng and/or sox are missing and this is not root with apt-get." >&2
    echo "  The offline demo corpus (recipe stage 1) needs them: ask an administrator for" >&2
    echo "  'apt-get install espeak-ng sox' (Debian/Ubuntu). The package and the tests work without them." >&2
  fi
fi

stamp="$venv/.installed"
[ "$refresh" = 1 ] || [ -f "$lock" ] || { echo "install.sh: $lock is missing (restore it from git, or pass --refresh-lock)" >&2; exit 1; }
want=$( (cat "${BASH_SOURCE[0]}" "$root/setup.py"; echo "$TORCH_SPEC"; [ "$refresh" = 1 ] || cat "$lock") | sha256sum | cut -d' ' -f1)
if [ $force = 0 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  log "tools/venv is up to date (delete $stamp or pass --force to reinstall)"
  exit 0
fi

# ---- venv ----
if [ "$refresh" = 1 ] && [ -d "$venv" ]; then
  log "removing $venv: a refresh starts from an empty venv (pip keeps what is installed)"
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || {
    echo "install.sh: $PYTHON is $("$PYTHON" --version 2>&1); Python >= 3.10 is needed (set PYTHON=...)" >&2; exit 1; }
  log "creating $venv"
  "$PYTHON" -m venv "$venv"
fi
py="$venv/bin/python"
pip() { "$py" -m pip --disable-pip-version-check "$@"; }

log "pip<26.3 (26.3 rejects ci_sdr's direct-URL requirement)"
pip install -q "pip<26.3" packaging

echo "$TORCH_SPEC" > "$venv/constraints.txt"
if [ "$refresh" = 1 ]; then
  log "refreshing the lock: the newest versions allowed, not those of $lock"
else
  grep -v '^#' "$lock" | grep . >> "$venv/constraints.txt"
  log "versions pinned by $lock ($(grep -vc '^#' "$lock") packages)"
fi
log "torch: $TORCH_SPEC"
pip install -q -c "$venv/constraints.txt" "$TORCH_SPEC"

log "espnet==$ESPNET_VERSION (without its setuptools<74 pin, which torch>=2.9 contradicts)"
pip install -q --no-deps "espnet==$ESPNET_VERSION"
reqs=$("$py" - <<'PY'
from importlib.metadata import requires
from packaging.requirements import Requirement
out = []
for r in requires("espnet") or []:
    req = Requirement(r)
    if req.marker is not None and "extra" in str(req.marker):
        continue
    if req.name.lower() in ("setuptools", "torch"):
        continue
    out.append(str(req))
print("\n".join(out))
PY
)
echo "$reqs" > "$venv/espnet-requirements.txt"
pip install -q -c "$venv/constraints.txt" -r "$venv/espnet-requirements.txt"

log "torchaudio==$TORCHAUDIO_VERSION as pure Python (espnet2 imports it; no CPU build exists)"
pip install -q --no-deps "torchaudio==$TORCHAUDIO_VERSION"
"$py" - <<'PY'
import glob, os, importlib.util
spec = importlib.util.find_spec("torchaudio")
d = os.path.dirname(spec.origin)
for f in glob.glob(os.path.join(d, "lib", "*.so")) + glob.glob(os.path.join(d, "*.so")):
    os.remove(f)
PY

log "project dependencies"
# Import time: typeguard 4 rewrites and recompiles each function espnet2 decorates with
# @typechecked when it is imported (about 2.5 s per process here, for each training and decoding
# job); typeguard<3 checks the same annotations with a plain wrapper. inflect<6 (espnet2's text
# frontends import it): 7.x decorates its own functions with typeguard 4 (another 1.6 s).
pip install -q -c "$venv/constraints.txt" loralib "transformers>=4.45" sentencepiece kaldiio jiwer pyyaml "pytest>=7" \
  kaldi-native-fbank soundfile snownlp "pypinyin<=0.44.0" matplotlib opencc "inflect<6" "typeguard<3"
pip install -q -c "$venv/constraints.txt" --no-deps -e "$root"

"$py" -c "import torch, espnet2, transformers, espnet_hdmole; print('torch', torch.__version__, '| transformers', transformers.__version__)"
if [ "$refresh" = 1 ]; then
  "$py" - "$TORCH_SPEC" > "$lock.tmp" <<'PY'
import platform, sys, time
from importlib.metadata import distributions
skip = {"torch", "pip", "espnet-hdmole"}  # torch: TORCH_SPEC; the project itself
pins = {}
for d in distributions():
    name = (d.metadata["Name"] or "").strip()
    key = name.lower().replace("_", "-").replace(".", "-")
    if name and key not in skip:
        pins[key] = f"{name}=={d.version}"
print(f"# The exact versions tools/install.sh installs (torch: TORCH_SPEC, {sys.argv[1]} when written).")
print(f"# Written by 'bash tools/install.sh --refresh-lock' on {time.strftime('%Y-%m-%d')}, Python "
      f"{platform.python_version()}; refresh it that way, run bash tools/test.sh, commit it if they pass.")
print("\n".join(pins[k] for k in sorted(pins)))
PY
  mv "$lock.tmp" "$lock"
  want=$( (cat "${BASH_SOURCE[0]}" "$root/setup.py"; echo "$TORCH_SPEC"; cat "$lock") | sha256sum | cut -d' ' -f1)
  log "wrote $lock ($(grep -vc '^#' "$lock") packages): run bash tools/test.sh, then commit it"
fi
echo "$want" > "$stamp"
log "done: activate with 'source tools/venv/bin/activate'"
