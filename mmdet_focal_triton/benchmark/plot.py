"""Plots of one run from the CSV (matplotlib, Agg): grouped bars per (shape, dtype), log scale.
Wall mode: loss + backward ms with the memory-bandwidth floor dashed; host mode: host µs per
call with the floor pattern dashed."""
from __future__ import annotations

from .results import num, read_csv, run_rows


def _bars(rows, value, floor_of, ylabel, title, png_path, order):
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    groups = []
    for r in rows:
        if (r['shape'], r['dtype']) not in groups:
            groups.append((r['shape'], r['dtype']))
    impls = [i for i in order if any(r['impl'] == i for r in rows)]
    impls += sorted({r['impl'] for r in rows} - set(impls))
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(groups) + 2), 5))
    width = 0.8 / max(len(impls), 1)
    for k, impl in enumerate(impls):
        xs, ys = [], []
        for gi, (shape, dt) in enumerate(groups):
            for r in rows:
                if (r['impl'], r['shape'], r['dtype']) == (impl, shape, dt) and \
                        r['status'] == 'ok' and num(value(r)) > 0:
                    xs.append(gi + k * width)
                    ys.append(num(value(r)))
        ax.bar(xs, ys, width=width, label=impl)
    for gi, (shape, dt) in enumerate(groups):
        f = floor_of(shape, dt)
        if f == f and f > 0:
            ax.hlines(f, gi - width / 2, gi + 0.8 - width / 2, colors='k', linestyles='dashed',
                      linewidth=1)
    ax.set_xticks([gi + 0.4 - width / 2 for gi in range(len(groups))])
    ax.set_xticklabels([f'{s}\n{d}' for s, d in groups], rotation=60, fontsize=7, ha='right')
    ax.set_yscale('log')
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


def plot_wall(rows, png_path, order=()):
    rows = [r for r in rows if r['mode'] == 'fwd_bwd']
    if not rows:
        return None

    def floor_of(shape, dt):
        f = [num(r['floor_ms']) for r in rows if (r['shape'], r['dtype']) == (shape, dt)]
        return next((x for x in f if x == x), float('nan'))
    return _bars(rows, lambda r: r['ms'], floor_of, 'loss + backward, median ms (log)',
                 f"{rows[0].get('loss') or 'focal'} loss + backward on {rows[0]['device']} "
                 '(dashed: memory-bandwidth floor)',
                 png_path, order)


def plot_host(rows, png_path, order=(), floor='floor'):
    rows = [r for r in rows if r['mode'] == 'host']
    if not rows:
        return None

    def floor_of(shape, dt):
        f = [num(r['host_us']) for r in rows if (r['shape'], r['dtype'], r['impl']) ==
             (shape, dt, floor) and r['status'] == 'ok']
        return f[0] if f else float('nan')
    return _bars(rows, lambda r: r['host_us'], floor_of,
                 'loss + backward, host µs per call (log)',
                 f"Host time per call on {rows[0]['device']} (dashed: the floor pattern)",
                 png_path, order)


def plot_run(csv_path, out_dir, run_id=None, order=()) -> list[str]:
    """The PNGs of one run (default: the CSV's last), per loss and mode present in it:
    OUT_DIR/{loss}_loss_benchmark.png (wall mode) and OUT_DIR/{loss}_loss_host.png."""
    import os.path as osp

    rows = run_rows(read_csv(csv_path), run_id)
    out = []
    for loss in dict.fromkeys(r.get('loss') or 'focal' for r in rows):
        mine = [r for r in rows if (r.get('loss') or 'focal') == loss]
        for fn, suffix in ((plot_wall, 'benchmark'), (plot_host, 'host')):
            png = fn(mine, osp.join(out_dir, f'{loss}_loss_{suffix}.png'), order)
            if png:
                out.append(png)
    return out
