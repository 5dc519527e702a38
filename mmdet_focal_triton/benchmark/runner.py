"""One benchmark run: every (shape, dtype, implementation) of a loss family, measured in wall /
memory mode or host mode (host, then GPU time), with the rows appended to the CSV."""
from __future__ import annotations

import contextlib
import datetime
import os
import traceback
from dataclasses import dataclass, replace

import torch

from .environment import device_name, resolve_device, synchronize, versions
from .host import loss_backward_step, measure_host, paired_ratio
from .losses import get_family
from .profiling import ProfileWindows
from .references import FLOOR, REFERENCES
from .results import add_floor_ratio, append_csv, new_run_id
from .shapes import DTYPES, dtype_name
from .timing import copy_bandwidth
from .wall import measure_wall

MODES = ('wall', 'host')


@dataclass
class BenchConfig:
    """What to run. None = the default for the mode and device (see `resolve`)."""
    loss: str = 'focal'
    mode: str = 'wall'
    impls: list[str] | None = None
    shapes: list[tuple[str, int, int]] | None = None
    dtypes: list[str] | None = None
    device: str = 'auto'
    quick: bool = False
    # host mode
    avg_factor: str = 'float'
    host_iters: int = 50
    host_blocks: int = 5
    host_max_blocks: int = 20
    host_budget_s: float = 0.3


def available_impls(loss: str) -> dict:
    """The family's implementations, then the reference patterns."""
    return {**get_family(loss).impls, **REFERENCES}


def resolve(cfg: BenchConfig) -> BenchConfig:
    """Fill the defaults: on CUDA every implementation (host mode: and every reference
    pattern), dtypes fp32 fp16 bf16 (host: fp32 bf16), the family's default shapes; on CPU the
    implementations marked for CPU, fp32, tiny shapes."""
    if cfg.mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {cfg.mode!r}')
    fam = get_family(cfg.loss)
    device = resolve_device(cfg.device)
    cpu = device == 'cpu'
    pool = available_impls(cfg.loss) if cfg.mode == 'host' else fam.impls
    impls = cfg.impls or [n for n, i in pool.items() if i.on_cpu or not cpu]
    unknown = [n for n in impls if n not in available_impls(cfg.loss)]
    if unknown:
        raise ValueError(f'unknown implementation(s) {unknown} for loss {cfg.loss!r}')
    dtypes = cfg.dtypes or (['fp32'] if cpu else
                            ['fp32', 'bf16'] if cfg.mode == 'host' else ['fp32', 'fp16', 'bf16'])
    # on CPU the full-size shapes take minutes per call: small ones unless given
    shapes = cfg.shapes or fam.default_shapes(cfg.quick or cpu)
    return replace(cfg, device=device, impls=impls, dtypes=dtypes, shapes=shapes)


def _error(e: BaseException) -> str:
    msg = str(e).splitlines()[0] if str(e) else ''
    return f'{type(e).__name__}: {msg}'[:300]


def _measure(cfg, impl, inputs, N, C, dtype, copy_gbps) -> list[dict]:
    """Rows (without the run's common columns) of one implementation at one shape / dtype."""
    fam = get_family(cfg.loss)
    with impl.context():
        fn = impl.build()
        if cfg.mode == 'host':
            r = measure_host(fn, inputs, cfg.device, cfg.avg_factor, cfg.host_iters,
                             cfg.host_blocks, max_blocks=cfg.host_max_blocks,
                             budget_s=cfg.host_budget_s)
            return [dict(mode='host', avg_factor=cfg.avg_factor, **r)]
        rows = measure_wall(fn, inputs, cfg.device, cfg.quick)
    for r in rows:
        b = fam.fused_bytes(N, C, dtype, r['mode'])
        gbps = b / (r['ms'] * 1e-3) / 1e9 if r['ms'] > 0 else float('nan')
        r.update(bytes=b, gbps=gbps, frac_copy=gbps / copy_gbps,
                 floor_ms=b / (copy_gbps * 1e9) * 1e3)
    return rows


@contextlib.contextmanager
def _backend_for(device):
    """On CPU under the Triton interpreter, our loss runs its kernels (not the PyTorch path)."""
    import mmdet_focal_triton as mft

    if device != 'cpu' or os.environ.get('TRITON_INTERPRET') != '1':
        yield
        return
    old = mft.get_backend()
    mft.set_backend('triton')
    try:
        yield
    finally:
        mft.set_backend(old)


def group_line(group: list[dict], ours: str, mode: str) -> str:
    """One line about a finished (shape, dtype): our numbers, or what failed."""
    r0 = group[0]
    head = f"{r0['shape']} {r0['dtype']}"
    mine = [r for r in group if r['impl'] == ours and r['status'] == 'ok'
            and r['mode'] in ('host', 'fwd_bwd')]
    failed = sorted({r['impl'] for r in group if r['status'] != 'ok'})
    tail = f"; failed: {', '.join(failed)}" if failed else ''
    if not mine:
        return head + tail
    r = mine[0]
    if mode == 'host':
        return (f"{head}: {ours} host {r['host_us']:.0f} us ({r['host_x_floor']:.2f} x floor, "
                f"{r.get('paired_x_floor', float('nan')):.2f} paired), "
                f"wall {r['wall_us']:.0f} us{tail}")
    return f"{head}: {ours} {r['ms']:.3f} ms{tail}"


def run_benchmark(cfg: BenchConfig, csv_path, progress=None, log=print) -> list[dict]:
    """Run `cfg` (resolved here), append every row to `csv_path` and return the rows.
    Wall mode appends group by group; host mode times every group first, then measures the
    GPU times of all of them in one profiler session, and appends at the end (also when
    interrupted: Ctrl-C or SIGTERM keep what was measured).
    `progress`: a `console.RunProgress` (or None). `log`: prints the run's header line."""
    cfg = resolve(cfg)
    impls = available_impls(cfg.loss)
    ours = get_family(cfg.loss).ours
    ver = versions()
    dev = device_name(cfg.device)
    copy_gbps = copy_bandwidth(cfg.device) if cfg.mode == 'wall' else float('nan')
    run_id = new_run_id()
    log(f'{cfg.loss} loss, {cfg.mode} mode on {dev}'
        + (f', copy bandwidth {copy_gbps:.0f} GB/s' if copy_gbps == copy_gbps else '')
        + '; ' + ', '.join(f'{k} {v}' for k, v in ver.items() if v))
    if progress is not None:
        progress.start(len(cfg.shapes) * len(cfg.dtypes) * len(cfg.impls), cfg.mode)
    common = dict(run_id=run_id, device=dev, copy_gbps=copy_gbps, **ver)
    all_rows = []
    try:
        with _backend_for(cfg.device):
            for name, N, C in cfg.shapes:
                for dt in cfg.dtypes:
                    group = _run_group(cfg, impls, name, N, C, DTYPES[dt], common, progress)
                    if cfg.mode == 'wall':
                        append_csv(csv_path, group)
                    all_rows += group
                    if progress is not None:
                        progress.note(group_line(group, ours, cfg.mode))
            if cfg.mode == 'host':
                try:
                    _gpu_times(cfg, impls, all_rows, progress)
                except Exception as e:  # noqa: BLE001  host times stand without them
                    log(f'GPU times not measured: {_error(e)}')
    except KeyboardInterrupt:
        log(f'interrupted: {len(all_rows)} rows measured, all in the CSV')
    finally:
        if cfg.mode == 'host' and all_rows:
            append_csv(csv_path, all_rows)
    return all_rows


def _run_group(cfg, impls, name, N, C, dtype, common, progress) -> list[dict]:
    """Every implementation at one (shape, dtype), on one set of inputs."""
    fam = get_family(cfg.loss)
    inputs, group = None, []
    for impl_name in cfg.impls:
        if progress is not None:
            progress.update(f'{cfg.mode} {name} {dtype_name(dtype)} {impl_name}')
        base = dict(common, timestamp=datetime.datetime.now().isoformat(timespec='seconds'),
                    loss=cfg.loss, impl=impl_name, shape=name, N=N, C=C,
                    dtype=dtype_name(dtype), grad_mib=N * C * dtype.itemsize / 2 ** 20,
                    status='ok', error='')
        try:
            if inputs is None:
                inputs = fam.make_inputs(N, C, dtype, cfg.device)
            results = _measure(cfg, impls[impl_name], inputs, N, C, dtype,
                               common['copy_gbps'])
        except Exception as e:  # noqa: BLE001  a failing peer is a result
            results = [dict(mode='host' if cfg.mode == 'host' else 'fwd_bwd',
                            status='failed', error=_error(e))]
            if os.environ.get('BENCH_DEBUG'):
                traceback.print_exc()
        group += [dict(base, **r) for r in results]
        if inputs is not None:
            inputs[0].grad = None
        if progress is not None:
            progress.advance()
        if cfg.device == 'cuda':
            torch.cuda.empty_cache()
    if cfg.mode == 'host':
        add_floor_ratio(group, FLOOR)
        if inputs is not None:
            _paired_floor_ratio(cfg, impls, group, inputs)
    return group


def _paired_floor_ratio(cfg, impls, group, inputs) -> None:
    """paired_x_floor of ours: its host time over the floor pattern's, in alternating blocks."""
    ours = get_family(cfg.loss).ours
    rows = {r['impl']: r for r in group if r.get('status') == 'ok'}
    for r in group:
        r['paired_x_floor'] = float('nan')
    if ours not in rows or FLOOR not in rows:
        return
    a, b = impls[ours], impls[FLOOR]
    with a.context(), b.context():
        step_a = loss_backward_step(a.build(), inputs, cfg.avg_factor)
        step_b = loss_backward_step(b.build(), inputs, cfg.avg_factor)
        iters = min(rows[ours]['iters'], rows[FLOOR]['iters'])
        rows[ours]['paired_x_floor'] = paired_ratio(
            step_a, step_b, lambda: synchronize(cfg.device), iters)
    inputs[0].grad = None


def _gpu_times(cfg, impls, rows, progress, iters: int = 10) -> None:
    """gpu_us and launches of every measured host-mode row, from one profiler session."""
    fam = get_family(cfg.loss)
    ok = [r for r in rows if r['status'] == 'ok']
    for r in rows:
        r.update(gpu_us=float('nan'), launches=float('nan'))
    if not ok:
        return
    if progress is not None:
        progress.start(len(ok), 'GPU time')
    groups = list(dict.fromkeys((r['shape'], r['N'], r['C'], r['dtype']) for r in ok))
    with ProfileWindows(enabled=cfg.device == 'cuda') as pw:
        for name, N, C, dt in groups:
            inputs = fam.make_inputs(N, C, getattr(torch, dt), cfg.device)
            for r in ok:
                if (r['shape'], r['dtype']) != (name, dt):
                    continue
                if progress is not None:
                    progress.update(f"GPU time {name} {dt} {r['impl']}")
                impl = impls[r['impl']]
                try:
                    with impl.context():
                        step = loss_backward_step(impl.build(), inputs, cfg.avg_factor)
                        pw.measure((name, dt, r['impl']), step, iters)
                except Exception as e:  # noqa: BLE001  leaves this row's GPU time NaN
                    r['error'] = f'GPU time: {_error(e)}'
                inputs[0].grad = None
                if progress is not None:
                    progress.advance()
            del inputs
            if cfg.device == 'cuda':
                torch.cuda.empty_cache()
    for r in ok:
        t = pw.results.get((r['shape'], r['dtype'], r['impl']))
        if t is not None:
            r.update(gpu_us=t.ms * 1e3, launches=t.launches)
        elif pw.error:
            r['error'] = pw.error
