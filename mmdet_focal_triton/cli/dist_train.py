"""``mmdet-focal-triton dist-train CONFIG GPUS [train arguments]``: training on GPUS processes
through torchrun, as mmdet's tools/dist_train.sh. It runs the package's launcher script
``dist_train.sh`` (beside this module, shipped with the package) with this interpreter as
``PYTHON`` unless the environment names another."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().with_name('dist_train.sh')


def command(argv) -> list[str]:
    """The command line that runs the launcher with ``argv``."""
    bash = shutil.which('bash')
    if bash is None:
        raise FileNotFoundError('dist-train needs bash (the launcher is a bash script)')
    return [bash, str(SCRIPT), *argv]


def main(argv=None, program: bool = False) -> int:
    """Run the launcher; with ``program`` (the process is this command) it replaces this process,
    as running the script would; else its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    cmd = command(argv)
    env = dict(os.environ)
    env.setdefault('PYTHON', sys.executable)
    if program:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(cmd[0], cmd, env)
    import subprocess

    return subprocess.call(cmd, env=env)


if __name__ == '__main__':
    sys.exit(main(program=True))
