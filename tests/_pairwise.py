"""Pairwise (all-pairs) test grids.

Most bugs of a loss show with one parameter value, or with two values together (a weight with
'sum', float64 with a tensor avg_factor, ...). A pairwise grid holds every pair of values of any
two parameters in at least one case, in a fraction of the full product's cases. The backend
(where the op runs: PyTorch on CPU, the Triton interpreter, CUDA) is not one of the pairwise
parameters: every backend gets its own pairwise grid over the others, and the CUDA backends the
full product (the GPU machine has the time, and a GPU-only bug may need three values together).
"""
import itertools

import pytest


def all_pairs(factors):
    """Rows (tuples, one value per factor, in the factors' order) that hold every pair of values
    of any two factors. Deterministic: the same factors give the same rows, in the same order.

    IPOG-style: the product of the two largest factors, then one factor at a time, first
    extending the existing rows (each row takes the value that covers the most uncovered pairs),
    then adding rows for the pairs still uncovered."""
    factors = [list(f) for f in factors]
    n = len(factors)
    if n == 0:
        return [()]
    if any(not f for f in factors):
        return []
    if n == 1:
        return [(v,) for v in factors[0]]
    order = sorted(range(n), key=lambda i: -len(factors[i]))  # stable: ties keep their order
    sizes = [len(factors[i]) for i in order]
    rows = [[a, b] for a in range(sizes[0]) for b in range(sizes[1])]
    for k in range(2, n):
        uncovered = {(j, a, b) for j in range(k) for a in range(sizes[j]) for b in range(sizes[k])}
        for row in rows:
            best, best_gain = 0, -1
            for v in range(sizes[k]):
                gain = sum((j, row[j], v) in uncovered for j in range(k) if row[j] is not None)
                if gain > best_gain:
                    best, best_gain = v, gain
            row.append(best)
            uncovered -= {(j, row[j], best) for j in range(k)}
        added = []
        for j, a, b in sorted(uncovered):
            for row in added:
                if row[k] == b and row[j] in (None, a):
                    row[j] = a
                    break
            else:
                row = [None] * (k + 1)
                row[j], row[k] = a, b
                added.append(row)
        rows += added
    # don't-care slots: the values in turn (spreads the cases over every value)
    for r, row in enumerate(rows):
        for j in range(n):
            if row[j] is None:
                row[j] = r % sizes[j]
    out = []
    for row in rows:
        values = [None] * n
        for pos, i in enumerate(order):
            values[i] = factors[i][row[pos]]
        out.append(tuple(values))
    return out


def _value_id(v):
    if isinstance(v, str):
        return v
    if v is None:
        return 'None'
    name = getattr(v, 'name', None) or str(v)
    return name.replace('torch.', '')


def grid(backends, factors, full=lambda backend: False):
    """pytest params (backend, *values): for each backend (a pytest.param with id and marks), a
    pairwise grid over `factors` (a dict name -> values; a value may itself be a tuple of
    several arguments, as `('mean', 'int')`), or the full product where `full(backend)` is
    true. Ids: the backend's id and each value's."""
    names = list(factors)
    params = []
    for b in backends:
        (value,) = b.values
        rows = (itertools.product(*factors.values()) if full(b)
                else all_pairs(list(factors.values())))
        for row in rows:
            args = []
            for name, v in zip(names, row, strict=True):
                args.extend(v if ',' in name else (v,))
            ident = '-'.join([b.id] + ['_'.join(map(_value_id, v)) if isinstance(v, tuple)
                                       else _value_id(v) for v in row])
            params.append(pytest.param(value, *args, id=ident, marks=b.marks))
    return params


def is_cuda(backend):
    """Whether a backend param runs on the GPU (marked `cuda`): such backends get full grids."""
    return any(m.name == 'cuda' for m in backend.marks)
