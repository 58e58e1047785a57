"""Helpers of the recipe's local/recipe_lib.sh."""
import shlex
import subprocess
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "egs2" / "kespeech_hdmole" / "asr1" / "local" / "recipe_lib.sh"


def test_shell_words_round_trips_through_shlex_in_any_locale():
    """hdmole.sh passes model_info's options to the training process as one string
    (--model_info_args), which Python splits with shlex: every argument comes back as it was,
    also non-ASCII paths under the C locale (where bash's printf %q writes $'...')."""
    args = ["plain", "two words", "it's", 'say "hi"', "$HOME", "back\\slash", "", "ünï/códe dir", "a'b'c"]
    for locale in ("C", "C.UTF-8"):
        out = subprocess.run(["bash", "-c", f'. "{LIB}"; shell_words "$@"', "bash", *args],
                             capture_output=True, text=True, env={"LC_ALL": locale, "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        assert shlex.split(out.stdout) == args, (locale, out.stdout)
