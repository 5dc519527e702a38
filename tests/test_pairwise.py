"""tests/_pairwise.py: every pair of values in some row, deterministic, every backend crossed,
the full product where asked."""
import itertools

import pytest
from _pairwise import all_pairs, grid, is_cuda

FACTORS = [
    [list(range(4)), list(range(3)), list(range(5)), list(range(12))],
    [list('ab')] * 10,
    [list(range(15)), list(range(4)), list(range(2)), list(range(2))],
    [list(range(5))] * 6,
    [list(range(3))],
    [list(range(2)), list(range(7))],
]


@pytest.mark.parametrize('factors', FACTORS, ids=lambda f: 'x'.join(str(len(x)) for x in f))
def test_every_pair_is_covered(factors):
    rows = all_pairs(factors)
    assert rows == all_pairs(factors)  # deterministic
    assert all(len(r) == len(factors) for r in rows)
    assert all(v in f for r in rows for v, f in zip(r, factors))
    for i, j in itertools.combinations(range(len(factors)), 2):
        assert {(a, b) for a in factors[i] for b in factors[j]} <= {(r[i], r[j]) for r in rows}
    full = 1
    for f in factors:
        full *= len(f)
    largest = sorted(len(f) for f in factors)[-2:]
    assert len(rows) <= full
    if len(factors) > 1:
        assert len(rows) >= largest[0] * largest[1]


def test_grid_crosses_each_backend_and_runs_the_full_product_on_cuda():
    backends = [pytest.param('cpu', id='cpu'),
                pytest.param('cuda', id='cuda', marks=pytest.mark.cuda)]
    factors = {'a': [1, 2, 3], 'b,c': [('x', 0), ('y', 1)], 'd': [True, False]}
    params = grid(backends, factors, full=is_cuda)
    cpu = [p.values for p in params if p.values[0] == 'cpu']
    cuda = [p for p in params if p.values[0] == 'cuda']
    assert len(cuda) == 3 * 2 * 2 and all(p.marks == backends[1].marks for p in cuda)
    assert len(cpu) < 12 and all(len(v) == 5 for v in cpu)  # b and c are two arguments
    for i, j in itertools.combinations(range(1, 5), 2):
        if {i, j} != {2, 3}:  # b and c vary together
            have = {(v[i], v[j]) for v in cpu}
            assert len(have) == len({v[i] for v in cpu}) * len({v[j] for v in cpu})
    assert len({p.id for p in params}) == len(params)
