"""Test configuration.

Without a CUDA GPU, the Triton kernels run through the Triton interpreter on CPU tensors: it must
be switched on before triton is first imported (kernel decoration reads TRITON_INTERPRET), so it
is set here, before any test module imports the package.
"""
import os

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
    # pytest-xdist (addopts: a worker per core, a test file per worker): each worker one intra-op
    # thread, so that the workers do not oversubscribe the cores
    torch.set_num_threads(1)

INTERPRETER = os.environ.get('TRITON_INTERPRET') == '1'

requires_cuda = pytest.mark.skipif(not HAS_CUDA,
                                   reason='needs a CUDA GPU (runs on the GPU machine)')


# The test files that take longest on the 2-core CI machine (30-150 s each), longest first: they
# run first, so that pytest-xdist's workers (pyproject.toml: a test file per worker, in collection
# order) do not end with one of them running alone. The other files follow in their order.
LONGEST_FIRST = ('test_tools.py', 'parity/test_run.py', 'test_family_numbers.py',
                 'parity/test_ddp_cpu.py', 'parity/test_family_parity.py', 'test_mmdet_configs.py',
                 'test_family_autograd.py')


def _file_rank(item):
    path = item.nodeid.split('::')[0]
    return next((i for i, name in enumerate(LONGEST_FIRST) if path == f'tests/{name}'),
                len(LONGEST_FIRST))


def pytest_collection_modifyitems(config, items):
    # the marker, not the keywords: a parametrize id 'cuda' is a keyword of a CPU test too
    for item in items:
        if item.get_closest_marker('cuda') is not None and not HAS_CUDA:
            item.add_marker(requires_cuda)
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
