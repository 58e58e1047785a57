"""The recipe's Python scripts run as the README shows them (``local/tune_dev.py --ladder ...``,
``local/update_readme.py --check``): every script with a main block is executable and starts with a
shebang; the modules it imports are not executable."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

LOCAL = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1" / "local"
SCRIPTS = sorted(LOCAL.glob("*.py"))


def has_main(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    return 'if __name__ == "__main__"' in text or "if __name__ == '__main__'" in text


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_a_script_is_executable_with_a_shebang_and_a_module_is_not(path):
    if has_main(path):
        assert os.access(path, os.X_OK), f"{path.name} has a main block but is not executable"
        assert path.read_text(encoding="utf-8").startswith("#!/usr/bin/env python3\n"), path.name
    else:
        assert not os.access(path, os.X_OK), f"{path.name} is a module, not a command: it should not be executable"


@pytest.mark.parametrize("script", ["tune_dev.py", "update_readme.py"])
def test_the_readme_commands_run_as_written(script):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    p = subprocess.run([f"local/{script}", "--help"], cwd=LOCAL.parent, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "usage:" in p.stdout
