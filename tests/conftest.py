"""Test configuration.

Without a CUDA GPU, the Triton kernels run through the Triton interpreter on CPU tensors: it must
be switched on before triton is first imported (kernel decoration reads TRITON_INTERPRET), so it
is set here, before any test module imports the package.
"""
import os

import _resume
import pytest

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    torch = None
    HAS_CUDA = False

if not HAS_CUDA:
    os.environ.setdefault('TRITON_INTERPRET', '1')

if torch is not None and os.environ.get('PYTEST_XDIST_WORKER') and not HAS_CUDA:
    # pytest-xdist (addopts: a worker per core, a test file per worker): one intra-op thread per
    # worker and per process a test starts (trainings, tools), so that they do not
    # oversubscribe the cores (two 2-thread torch jobs on 2 cores run many times slower)
    torch.set_num_threads(1)
    os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = '1'

INTERPRETER = os.environ.get('TRITON_INTERPRET') == '1'


def _patch_interpreter_language_once():
    """Triton 3.6's interpreter patches triton.language anew at every call of a @triton.jit
    helper inside a kernel (inspect.getmembers of five namespaces and ~30 attributes set again,
    never undone: ~30 % of an interpreted kernel test on the CI machine). Here:
    - which names of those namespaces are builtins never changes: they are listed once, where
      nothing is patched yet, and each patching sets the same attributes as Triton's own;
    - a helper called inside a launch whose namespaces the launch has patched patches nothing.
    A launch still patches and unpatches as Triton does (tests/test_conftest.py). A Triton
    without these internals is left alone."""
    import inspect

    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    is_builtin = getattr(tl.core, 'is_builtin', None)
    original = getattr(interpreter, '_patch_builtin', None)
    patch_attr = getattr(interpreter, '_patch_attr', None)
    if not (is_builtin and original and patch_attr):
        return
    packages = (tl, tl.tensor, tl.math, tl.core, getattr(tl.core, 'tensor_descriptor_base', None))
    names = {pkg: [name for name, member in inspect.getmembers(pkg) if is_builtin(member)]
             for pkg in packages if pkg is not None}

    def patch_builtin(pkg, builder, scope):
        if pkg not in names:
            return original(pkg, builder, scope)
        for name in names[pkg]:
            member = getattr(pkg, name)
            if is_builtin(member):
                patch_attr(pkg, name, member, builder, scope)

    patch_builtin.original, patch_builtin.names = original, names  # tests/test_conftest.py
    interpreter._patch_builtin = patch_builtin

    # Inside a launch, a helper whose namespaces the launch has patched needs nothing more:
    # Triton's own call would set the same patches again and never undo them.
    patch_lang = getattr(interpreter, '_patch_lang', None)
    scope_type = getattr(interpreter, '_LangPatchScope', None)
    if not (patch_lang and scope_type):
        return

    def patched(lang):
        member = getattr(lang, names[lang][0], None) if names.get(lang) else None
        return member is not None and not is_builtin(member)

    def patch_lang_once(fn):
        langs = [v for v in fn.__globals__.values()
                 if inspect.ismodule(v) and any(v is lang for lang in (tl, tl.core))]
        if langs and all(patched(lang) for lang in langs):
            return scope_type()
        return patch_lang(fn)

    patch_lang_once.original = patch_lang  # tests/test_conftest.py
    interpreter._patch_lang = patch_lang_once


if INTERPRETER:
    _patch_interpreter_language_once()



# The test files that take longest on the 2-core CI machine (30-95 worker-seconds each on
# 2026-12-05), longest first: they run first, so that pytest-xdist's workers (pyproject.toml: a
# test file per worker, in collection order) do not end with one of them running alone. The
# other files follow in their order.
LONGEST_FIRST = ('parity/test_ddp_cpu.py', 'test_family_numbers.py',
                 'parity/test_ddp_cpu_rtmdet.py', 'test_wheel.py', 'test_tools.py',
                 'test_mmdet_configs.py',
                 'parity/test_family_parity.py', 'parity/test_run.py', 'test_family_autograd.py')


def _file_rank(item):
    path = item.nodeid.split('::')[0]
    return next((i for i, name in enumerate(LONGEST_FIRST) if path == f'tests/{name}'),
                len(LONGEST_FIRST))


def _deselect(config, items, drop) -> None:
    keep, gone = [], []
    for item in items:
        (gone if drop(item) else keep).append(item)
    if gone:
        config.hook.pytest_deselected(items=gone)
        items[:] = keep


def pytest_collection_modifyitems(config, items):
    """Without a GPU, the tests marked `cuda` are collected and deselected (the summary line
    counts them: "N deselected"); they run on the GPU machine (README, Tests). The marker
    decides, not the keywords: a parametrize id 'cuda' is a keyword of a CPU test too.
    With `PYTEST_RESUME_JUNIT` set, the cases those JUnit reports record as passed are
    deselected as well (`_resume.py`: a stopped run's remainder)."""
    if not HAS_CUDA:
        _deselect(config, items, lambda item: item.get_closest_marker('cuda') is not None)
    resume = _resume.resume_paths(os.environ.get('PYTEST_RESUME_JUNIT'))
    if resume:
        done = _resume.passed_in(resume)
        _deselect(config, items, lambda item: _resume.junit_address(item.nodeid) in done)
    items.sort(key=_file_rank)  # stable: each file's tests keep their order


@pytest.fixture
def poison():
    """Fill every tensor torch allocates uninitialised (torch.empty) with NaN (ints: max value),
    so an output element a kernel forgot to write shows up as NaN."""
    import torch

    old = torch.are_deterministic_algorithms_enabled()
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old)
    torch.utils.deterministic.fill_uninitialized_memory = old_fill


@pytest.fixture
def mmdet_scope():
    """mmdet's registry scope for a test, whatever an earlier test module left current (a Runner
    built elsewhere makes 'mmengine' the current scope, where mmdet's names are not found)."""
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


@pytest.fixture(scope='module')
def one_torch_thread():
    """CPU CI has 2 cores shared with pytest itself: with 2 intra-op threads the OpenMP pool
    oversubscribes and small convolutions run up to 10x slower than with one."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    """The synthetic dataset in a cache of the test module's own (the user's stays clean): the
    parity runs of tests/parity/."""
    path = tmp_path_factory.mktemp('cache')
    old = os.environ.get('MMDET_FOCAL_TRITON_CACHE')
    os.environ['MMDET_FOCAL_TRITON_CACHE'] = str(path)
    yield path
    if old is None:
        os.environ.pop('MMDET_FOCAL_TRITON_CACHE')
    else:
        os.environ['MMDET_FOCAL_TRITON_CACHE'] = old
