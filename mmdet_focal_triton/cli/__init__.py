"""The command line of the package: ``mmdet-focal-triton COMMAND [OPTIONS]`` (a console script
installed with it), the same as ``python -m mmdet_focal_triton COMMAND [OPTIONS]``.

One module per command; a checkout's ``tools/*.py`` are thin wrappers over the same modules
(``python tools/parity.py`` = ``mmdet-focal-triton parity``). A command's module is imported
only when that command runs.
"""
from __future__ import annotations

import importlib
import inspect
import sys

PROG = 'mmdet-focal-triton'
# command -> (module of this package, one line of help)
COMMANDS = {
    'parity': ('parity', "train a detector with mmdet's focal-family loss and with ours from "
                         'the same start, check every call, judge the swap'),
    'train': ('train', "train any mmdet config (mmdet's tools/train.py; --triton-focal swaps "
                       'the focal-family losses for ours)'),
    'dist-train': ('dist_train', 'train on N GPUs (or CPU processes) through torchrun, as '
                                 "mmdet's tools/dist_train.sh"),
    'ddp-parity': ('ddp_parity', 'data-parallel parity: 1 against 2 processes, either loss'),
    'benchmark': ('benchmark', 'time and memory of the losses against their peers'),
    'benchmark-e2e': ('benchmark_e2e', "the loss's share of a detector's training step"),
    'configs': ('configs', 'list the configs shipped with the package, or print the path of '
                           'one'),
}


def usage() -> str:
    from .. import __version__

    width = max(map(len, COMMANDS))
    lines = [f'usage: {PROG} COMMAND [OPTIONS]   (or: python -m mmdet_focal_triton COMMAND ...)',
             '', f'Fused Triton focal losses for mmdetection 3.x, version {__version__}.', '',
             'commands:']
    lines += [f'  {name:<{width}}  {text}' for name, (_, text) in COMMANDS.items()]
    lines += ['', f"'{PROG} COMMAND --help' shows a command's options."]
    return '\n'.join(lines)


def main(argv=None) -> int:
    """Run a command; its exit code. ``argv=None`` reads the process's arguments: this process
    runs the command as its program (a command may then restart it, see ``cli.environment``)."""
    program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == '--version':
        from .. import __version__

        print(f'{PROG} {__version__}')
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f'{PROG}: unknown command {name!r}\n\n{usage()}', file=sys.stderr)
        return 2
    module = importlib.import_module(f'{__name__}.{COMMANDS[name][0]}')
    kwargs = {'program': program} if 'program' in inspect.signature(module.main).parameters \
        else {}
    prog0 = sys.argv[0]
    sys.argv[0] = f'{PROG} {name}'  # argparse's prog: the usage line names the command
    try:
        code = module.main(rest, **kwargs)
    finally:
        sys.argv[0] = prog0
    return 0 if code is None else int(code)
