"""The CSV the benchmarks append to: columns, formatting of a row, appending (the header grows
when a newer version adds columns), reading back one run."""
from __future__ import annotations

import csv
import datetime
import math
import os

#: columns of results.csv; older files are upgraded in place when they lack newer columns
FIELDS = ['run_id', 'timestamp', 'device', 'torch', 'triton', 'mmcv', 'mmdet', 'impl', 'shape',
          'N', 'C', 'dtype', 'mode', 'ms', 'peak_mib', 'grad_mib', 'bytes', 'gbps', 'frac_copy',
          'floor_ms', 'copy_gbps', 'status', 'error',
          # added with host mode and loss families
          'loss', 'host_us', 'wall_us', 'gpu_us', 'launches', 'iters', 'blocks', 'avg_factor',
          'host_x_floor', 'paired_x_floor']

#: columns of e2e.csv
E2E_FIELDS = ['timestamp', 'device', 'torch', 'batch', 'precision', 'variant', 'step_ms',
              'peak_mib', 'loss_gpu_ms', 'status', 'error',
              # added with the model choice (empty in older rows: RetinaNet)
              'model',
              # added with the paired rounds (empty in older rows): step - zero as a share of
              # the variant's step, its 95 % interval over the rounds, and whether it excludes 0
              'rounds', 'vs_zero_pct', 'vs_zero_low', 'vs_zero_high', 'vs_zero_resolved']

def new_run_id() -> str:
    """The id of a benchmark run in results.csv: its start time to the microsecond (two runs in
    one second, one process, get two ids), sorting as the runs were made."""
    global _last_run_id
    run_id = _last_run_id
    while run_id <= _last_run_id:  # at most a microsecond
        run_id = datetime.datetime.now().strftime('%Y%m%d-%H%M%S-%f')
    _last_run_id = run_id
    return run_id


_last_run_id = ''


_FORMATS = {'ms': '.4f', 'floor_ms': '.4f', 'peak_mib': '.1f', 'grad_mib': '.1f', 'gbps': '.1f',
            'frac_copy': '.3f', 'copy_gbps': '.1f', 'host_us': '.1f', 'wall_us': '.1f',
            'gpu_us': '.1f', 'launches': '.1f', 'host_x_floor': '.3f', 'paired_x_floor': '.3f'}


def fmt(row: dict) -> dict:
    """Floats of known columns to fixed decimals ('nan' stays 'nan'), others to str."""
    out = {}
    for k, v in row.items():
        if isinstance(v, float) and k in _FORMATS:
            out[k] = 'nan' if math.isnan(v) else format(v, _FORMATS[k])
        else:
            out[k] = '' if v is None else str(v)
    return out


def num(v) -> float:
    """A CSV cell as a float; NaN for '', 'nan' or a missing cell."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float('nan')


def _header(path) -> list[str]:
    with open(path, newline='') as f:
        return next(csv.reader(f), [])


def append_csv(path, rows: list[dict], fields: list[str] = FIELDS) -> None:
    """Append `rows` to the CSV at `path`, writing the header if the file is new. When the file's
    header lacks some of `fields`, it is rewritten first with those columns added at the end
    (older rows get empty cells); columns the file has and `fields` lacks are kept."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        header = _header(path)
        missing = [k for k in fields if k not in header]
        if missing:
            old = read_csv(path)
            header = header + missing
            with open(path, 'w', newline='') as f:
                w = csv.DictWriter(f, fieldnames=header, restval='')
                w.writeheader()
                w.writerows(old)
    else:
        header = list(fields)
        with open(path, 'w', newline='') as f:
            csv.DictWriter(f, fieldnames=header).writeheader()
    with open(path, 'a', newline='') as f:
        w = csv.DictWriter(f, fieldnames=header, restval='', extrasaction='ignore')
        w.writerows(fmt(r) for r in rows)


def read_csv(path) -> list[dict]:
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def run_rows(rows: list[dict], run_id: str | None = None) -> list[dict]:
    """The rows of one run (default: the last run in the file)."""
    if not rows:
        return []
    run_id = run_id or rows[-1]['run_id']
    return [r for r in rows if r['run_id'] == run_id]


def add_floor_ratio(rows: list[dict], floor: str) -> None:
    """host_x_floor = host_us / the `floor` impl's host_us, within each (loss, shape, dtype)."""
    base = {(r.get('loss'), r['shape'], r['dtype']): num(r.get('host_us')) for r in rows
            if r['impl'] == floor and r.get('status') == 'ok'}
    for r in rows:
        f = base.get((r.get('loss'), r['shape'], r['dtype']), float('nan'))
        h = num(r.get('host_us'))
        r['host_x_floor'] = h / f if f > 0 else float('nan')
