"""Environment variables a command needs before the libraries read them.

Some variables are read once, early: the CUDA driver reads ``CUDA_VISIBLE_DEVICES`` when it
initialises, which ``import mmengine`` already causes (it asks ``torch.cuda.is_available()`` at
import, and ``import mmdet_focal_triton`` imports mmengine); Triton decides between compiling and
interpreting (``TRITON_INTERPRET``) when our kernels are decorated, at their first import. A
command of this package runs after ``import mmdet_focal_triton``, so such a variable set by the
command may come too late. ``set_environment`` then starts the command again in a fresh
interpreter with the variable in place (``os.execv`` of the same command line), which is what
setting it before importing torch did when the tools were scripts of the checkout. Where it does
not come too late (a CPU-only torch, kernels not imported yet), the variable is only set.
"""
from __future__ import annotations

import os
import sys
import warnings

REEXEC_MARK = 'MMDET_FOCAL_TRITON_REEXEC'  # set in the restarted process: never restart twice


def _torch_with_gpu_imported() -> bool:
    torch = sys.modules.get('torch')
    version = getattr(torch, 'version', None)
    return bool(getattr(version, 'cuda', None) or getattr(version, 'hip', None))


def _kernels_imported() -> bool:
    return any(m.startswith('mmdet_focal_triton.kernels') for m in sys.modules)


# variable -> whether, now, setting it can no longer take effect in this process
READ_EARLY = {'CUDA_VISIBLE_DEVICES': _torch_with_gpu_imported,
              'TRITON_INTERPRET': _kernels_imported}


def restart_command() -> list[str]:
    """The command line that started this interpreter, to run it again (``sys.orig_argv``: a
    console script, ``python -m ...`` or ``python tools/....py`` alike)."""
    return [sys.executable, *sys.orig_argv[1:]]


def set_environment(forced: dict | None = None, defaults: dict | None = None, *,
                    program: bool = False, execv=os.execv) -> list[str]:
    """Set ``forced`` variables and ``defaults`` (those only where unset). Returns the names of
    those that were set too late to take effect in this process (empty when none). If there are
    any and ``program`` is true (this process runs the command as its program, not a caller's
    function call), the command is started again in a fresh interpreter with them in place, and
    this function does not return; otherwise a RuntimeWarning names them."""
    again = os.environ.pop(REEXEC_MARK, None)
    changed = {k: str(v) for k, v in (forced or {}).items() if os.environ.get(k) != str(v)}
    changed.update({k: str(v) for k, v in (defaults or {}).items()
                    if k not in os.environ and k not in changed})
    os.environ.update(changed)
    if 'MPLBACKEND' in changed and 'matplotlib' in sys.modules:  # mmengine imports pyplot
        import matplotlib

        matplotlib.use(changed['MPLBACKEND'])
    late = sorted(k for k in changed if k in READ_EARLY and READ_EARLY[k]())
    if late and program and not again:
        os.environ[REEXEC_MARK] = '1'
        sys.stdout.flush()
        sys.stderr.flush()
        cmd = restart_command()
        execv(cmd[0], cmd)
        return late  # only a stand-in for os.execv returns
    if late:
        warnings.warn(f'{", ".join(late)} set after torch / the kernels were imported: it takes '
                      'effect in new processes only; set it before starting Python',
                      RuntimeWarning, stacklevel=2)
    return late
