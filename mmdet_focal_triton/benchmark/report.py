"""Summary tables of a run (rich), from its rows (as measured, or as read back from the CSV)."""
from __future__ import annotations

import math

from .results import num


class _Titled:
    """A table with a title line that is not wrapped to the table's width."""

    def __init__(self, title, columns):
        from rich.table import Table

        self.title = title
        self.table = Table(show_edge=False, pad_edge=False)
        for i, c in enumerate(columns):
            self.table.add_column(c, justify='left' if i < 2 else 'right', no_wrap=i < 2)

    def add_row(self, *cells):
        self.table.add_row(*cells)

    def __rich__(self):
        from rich.console import Group
        from rich.text import Text

        return Group(Text(self.title, style='bold'), self.table)


def _groups(rows):
    out = []
    for r in rows:
        if (r['shape'], r['dtype']) not in out:
            out.append((r['shape'], r['dtype']))
    return out


def _index(rows, modes):
    return {(r['shape'], r['dtype'], r['impl']): r for r in rows if r['mode'] in modes}


def _ok(r):
    return r is not None and r.get('status') == 'ok'


def _f(x, spec):
    return '-' if not math.isfinite(x) else format(x, spec)


def failures(rows) -> list[str]:
    """'impl dtype: error' once each, for the failed rows."""
    return sorted({f"{r['impl']} {r['dtype']}: {r['error']}" for r in rows
                   if r.get('status') != 'ok'})


def wall_table(rows, impls, device=''):
    """Loss + backward per shape / dtype: median ms, peak MiB above the inputs, x the
    memory-bandwidth floor, for each implementation."""
    t = _Titled(f'loss + backward, median ms / peak MiB above inputs / x floor ({device})',
               ['shape', 'dtype', *impls])
    idx = _index(rows, ('fwd_bwd',))
    for shape, dt in _groups(rows):
        cells = []
        for impl in impls:
            r = idx.get((shape, dt, impl))
            if not _ok(r):
                cells.append('failed' if r is not None else '')
                continue
            ms, floor = num(r['ms']), num(r.get('floor_ms'))
            ratio = ms / floor if floor > 0 else float('nan')
            x = f'{ratio:.1f}x' if math.isfinite(ratio) else '-'
            cells.append(f"{ms:.3f} / {_f(num(r['peak_mib']), '.0f')} / {x}")
        t.add_row(shape, dt, *cells)
    return t


def host_table(rows, impls, ours='ours', floor='floor', device=''):
    """Host mode: for ours, host / wall / GPU µs per call and host / floor pattern's host; for
    every other implementation, host / wall µs per call."""
    others = [i for i in impls if i != ours]
    mine = ([f'{ours} host', 'wall', 'GPU', f'{ours} / {floor}', 'paired'] if ours in impls
            else [])
    t = _Titled(f'loss + backward, µs per call: host (no synchronisation) / wall ({device})',
               ['shape', 'dtype', *mine, *others])
    idx = _index(rows, ('host',))
    for shape, dt in _groups(rows):
        cells = []
        if mine:
            r = idx.get((shape, dt, ours))
            if _ok(r):
                cells += [_f(num(r['host_us']), '.0f'), _f(num(r['wall_us']), '.0f'),
                          _f(num(r.get('gpu_us')), '.0f'), _f(num(r['host_x_floor']), '.2f'),
                          _f(num(r.get('paired_x_floor')), '.2f')]
            else:
                cells += ['failed' if r is not None else '', '', '', '', '']
        for impl in others:
            r = idx.get((shape, dt, impl))
            cells.append(f"{num(r['host_us']):.0f} / {num(r['wall_us']):.0f}" if _ok(r)
                         else 'failed' if r is not None else '')
        t.add_row(shape, dt, *cells)
    return t


def share_cell(share: dict | None) -> str:
    """'+2.61 % [+1.10, +4.02]' for a resolved step - zero, 'not resolved [-0.8, +1.4]' where
    the 95 % interval holds 0 (the difference is below what the rounds can tell apart)."""
    if not share:
        return 'n/a'
    if share['low'] is None:
        return f"{share['pct']:+.2f} % (1 round)"
    iv = f"[{share['low']:+.2f}, {share['high']:+.2f}]"
    return f"{share['pct']:+.2f} % {iv}" if share['resolved'] else f'not resolved {iv}'


def e2e_table(results, loss_ms, batches, precisions, variants, title='', shares=None):
    """Training step, median ms per variant; step - zero as a share of the step with its 95 %
    interval over the paired rounds (mmdet, ours): 'not resolved' where the interval holds 0;
    the loss kernels' GPU time as a share of the step."""
    shares = shares or {}
    t = _Titled(title, ['batch', 'prec', *variants, 'step - zero, 95 % CI (mmdet; ours)',
                       'loss kernels / step (mmdet*, ours)'])
    for b in batches:
        for p in precisions:
            share, kshare = [], []
            for v in ('mmdet', 'ours'):
                s, k = results.get((b, p, v)), loss_ms.get((b, p, v))
                share.append(share_cell(shares.get((b, p, v))))
                kshare.append(f'{100 * k / s:.2f}%' if s and k is not None else 'n/a')
            cells = [f'{results[(b, p, v)]:.2f}' if (b, p, v) in results else 'failed'
                     for v in variants]
            t.add_row(str(b), p, *cells, '; '.join(share), ', '.join(kshare))
    return t
