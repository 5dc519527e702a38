#!/usr/bin/env python
"""Compile the Triton kernels ahead of time for a GPU target, without a GPU (CI-safe).

Catches front-end and back-end compile errors of every constexpr combination the launchers can
request, for the focal kernel and the family's (quality focal, varifocal, Gaussian focal)
(`--quick`, `--smoke`: subsets).
`--sass`: instead, compile the training variant (class indices, per-row weights, avg_factor,
gradient) the way the JIT specialises it for real contiguous arguments (strides of 1 become
constants, multiples of 16 are marked), and count the SASS instructions per element of the
inner (column-chunk) loop, with registers per thread: the instruction count of notes/perf.md.
  python tools/dev/compile_kernels.py [--arch 90] [--quick | --smoke | --sass [--fast-math 0|1]]
"""
import argparse
import itertools
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # repo root


_BASE = dict(INDEX_TARGET=True, ACTIVATED=False, WEIGHT_MODE=1, GAMMA_MODE=2, HAS_AF=True,
             UPSTREAM=False, WRITE_LOSS=False, REDUCE=True, WRITE_GRAD=True, CHECK=True,
             BLOCK_P=1024)
SMOKE = [  # a few representative variants (CI: tests/test_tools.py)
    ('fp32', _BASE),
    ('bf16', dict(_BASE, WEIGHT_MODE=2, GAMMA_MODE=1)),
    ('fp16', dict(_BASE, INDEX_TARGET=False, ACTIVATED=True, HAS_AF=False, WRITE_LOSS=True,
                  REDUCE=False, WRITE_GRAD=False)),
    ('fp32', dict(_BASE, INDEX_TARGET=False, UPSTREAM=True, REDUCE=False, CHECK=False,
                  GAMMA_MODE=0)),
]


# The quality focal and varifocal kernels (kernels/quality_focal.py, kernels/varifocal.py).
_QFL_BASE = dict(INDEX_TARGET=True, ACTIVATED=False, WEIGHTED=True, MOD_MODE=2, HAS_AF=True,
                 UPSTREAM=False, WRITE_LOSS=False, REDUCE=True, WRITE_GRAD=True, CHECK=True,
                 BLOCK_P=1024)
_VFL_BASE = dict(IOU_WEIGHTED=True, WEIGHT_MODE=0, MOD_MODE=2, HAS_AF=True, UPSTREAM=False,
                 WRITE_LOSS=False, REDUCE=True, WRITE_GRAD=True, BLOCK_P=1024)
FAMILY_SMOKE = [  # (kernel, dtype, constexprs): training variants and a few others
    ('qfl', 'fp32', _QFL_BASE),
    ('qfl', 'bf16', dict(_QFL_BASE, INDEX_TARGET=False, ACTIVATED=True, MOD_MODE=1,
                         HAS_AF=False, WRITE_LOSS=True, REDUCE=False, WRITE_GRAD=False)),
    ('qfl', 'fp16', dict(_QFL_BASE, UPSTREAM=True, REDUCE=False, HAS_AF=False, MOD_MODE=0)),
    ('vfl', 'fp32', _VFL_BASE),
    ('vfl', 'bf16', dict(_VFL_BASE, WEIGHT_MODE=2, MOD_MODE=1, IOU_WEIGHTED=False,
                         HAS_AF=False, WRITE_LOSS=True, REDUCE=False, WRITE_GRAD=False)),
    ('vfl', 'fp32', dict(_VFL_BASE, WEIGHT_MODE=1, UPSTREAM=True, REDUCE=False, HAS_AF=False,
                         MOD_MODE=0)),
]


def _modes(red_mode):
    return dict(HAS_AF=red_mode.startswith('partial'), UPSTREAM=red_mode == 'upstream',
                WRITE_LOSS=red_mode == 'loss', REDUCE=red_mode.startswith('partial'),
                WRITE_GRAD=red_mode in ('partial+grad', 'upstream'), BLOCK_P=1024)


def family_variants(quick=False, smoke=False):
    """(kernel, dtype, constexprs) combinations the family's kernels are launched with."""
    if smoke:
        yield from FAMILY_SMOKE
        return
    red_modes = ('partial+grad', 'partial', 'loss', 'upstream')
    for dtype in (['fp32'] if quick else ['fp32', 'bf16', 'fp16']):
        for index, activated, weighted, mode in itertools.product(
                [True, False], [False, True], [False, True], [2, 1, 0]):
            if quick and (activated or mode == 0):
                continue
            for red_mode in red_modes:
                yield 'qfl', dtype, dict(INDEX_TARGET=index, ACTIVATED=activated,
                                         WEIGHTED=weighted, MOD_MODE=mode,
                                         CHECK=index or activated, **_modes(red_mode))
        for iou, wmode, mode in itertools.product([True, False], [0, 1, 2], [2, 1, 0]):
            if quick and (not iou or mode == 0):
                continue
            for red_mode in red_modes:
                yield 'vfl', dtype, dict(IOU_WEIGHTED=iou, WEIGHT_MODE=wmode, MOD_MODE=mode,
                                         **_modes(red_mode))


def compile_family(quick, smoke, arch) -> int:
    """Compile the family's kernel variants (even and masked column chunks, fast math on and
    off); print one line each; return the number of failures."""
    from mmdet_focal_triton.kernels.quality_focal import quality_focal_loss_kernel
    from mmdet_focal_triton.kernels.varifocal import varifocal_loss_kernel

    fails = 0
    for kernel, dtype, consts in family_variants(quick, smoke):
        if kernel == 'qfl':
            fn = quality_focal_loss_kernel
            ptrs = dict(X=f'*{dtype}', T='*i64' if consts['INDEX_TARGET'] else '*fp32',
                        S='*fp32', W='*fp32', UP='*fp32', LOSS='*fp32', GRAD=f'*{dtype}',
                        OUT='*fp32', PARTIAL='*fp32', COUNTER='*i32', FLAG='*i32', AF='*fp32')
            floats = {'beta': 'fp32', 'scale': 'fp32', 'eps': 'fp32'}
        else:
            fn = varifocal_loss_kernel
            ptrs = dict(X=f'*{dtype}', T='*fp32', W='*fp32', UP='*fp32', LOSS='*fp32',
                        GRAD=f'*{dtype}', OUT='*fp32', PARTIAL='*fp32', COUNTER='*i32',
                        AF='*fp32')
            floats = {'alpha': 'fp32', 'gamma': 'fp32', 'scale': 'fp32', 'eps': 'fp32'}
        shapes = [('even', dict(EVEN_C=True, BLOCK_R=128, BLOCK_C=16)),
                  ('masked', dict(EVEN_C=False, BLOCK_R=16, BLOCK_C=64))]
        for (kname, shape), fast in itertools.product(shapes, (True, False)):
            if (quick or smoke) and kname == 'masked' and not fast:
                continue
            fails += try_compile(f'{kernel} {kname}{"-fast" if fast else ""} {dtype}', fn, ptrs,
                                 floats, consts, dict(FAST_MATH=fast, **shape), arch)
    return fails


def gaussian_variants(quick=False, smoke=False):
    """(kernel, dtype, constexprs) combinations of the Gaussian focal loss's two kernels: the
    elementwise skeleton with its element function ('main': kernels/flat.py, modes by name) and
    kernels/gaussian_focal.py's positives kernel."""
    main = 'flat_loss_kernel'
    base = dict(ALPHA_MODE=2, GAMMA_MODE=4, NEG_ONLY=False, WEIGHTED=False, CHECK=True,
                BLOCK=2048, **_modes('partial+grad'))
    pos = dict(ALPHA_MODE=2, HAS_AF=True, WRITE_GRAD=True, CHECK=True, BLOCK=128)
    if smoke:
        yield from [(main, 'fp32', base), (main, 'bf16', dict(base, NEG_ONLY=True, ALPHA_MODE=1,
                                                                GAMMA_MODE=1)),
                    (main, 'fp16', dict(base, WEIGHTED=True, **_modes('upstream'))),
                    ('gaussian_positives_kernel', 'fp32', pos)]
        return
    for dtype in (['fp32'] if quick else ['fp32', 'bf16', 'fp16']):
        for amode, gmode, neg_only, weighted, red_mode in itertools.product(
                [2, 1, 0, 4], [4, 2, 1, 0], [False, True], [False, True],
                ['partial+grad', 'partial', 'loss', 'upstream']):
            if quick and (amode, gmode) not in ((2, 4), (1, 1)):
                continue
            yield main, dtype, dict(base, ALPHA_MODE=amode, GAMMA_MODE=gmode, NEG_ONLY=neg_only,
                                    WEIGHTED=weighted, **_modes(red_mode))
        for amode, has_af, grad in itertools.product([2, 1, 0], [True, False], [True, False]):
            yield ('gaussian_positives_kernel', dtype,
                   dict(pos, ALPHA_MODE=amode, HAS_AF=has_af, WRITE_GRAD=grad))


def compile_gaussian(quick, smoke, arch) -> int:
    """Compile the Gaussian focal kernels' variants; print one line each; return the number
    of failures."""
    from mmdet_focal_triton.kernels import flat as F
    from mmdet_focal_triton.kernels import gaussian_focal as G

    fails = 0
    floats = {k: 'fp32' for k in ('alpha', 'scale', 'eps', 'factor', 'P0', 'P1', 'P2', 'P3')}
    for kernel, dtype, consts in gaussian_variants(quick, smoke):
        ptrs = dict(P=f'*{dtype}', T='*fp32', W='*fp32', UP=f'*{dtype}', LOSS='*fp32',
                    GRAD=f'*{dtype}', OUT='*fp32', PARTIAL='*fp32', COUNTER='*i32',
                    FLAG='*i32', AF='*fp32', ROWS='*i64', LABELS='*i64', IDX='*i64',
                    PG=f'*{dtype}')
        fn = G.gaussian_positives_kernel
        if kernel == 'flat_loss_kernel':  # the element's modes in the skeleton's slots
            fn = F.flat_loss_kernel
            consts = dict(consts, ELEMENT=G.gaussian_focal_element, **{
                f'MODE{i}': consts.pop(k) for i, k in enumerate(('ALPHA_MODE', 'GAMMA_MODE',
                                                                 'NEG_ONLY'))})
        fails += try_compile(f'{kernel} {dtype}', fn, ptrs, floats, consts, {}, arch)
    return fails


def variants(quick=False, smoke=False):
    """(dtype, constexprs) combinations focal_loss_kernel is launched with."""
    if smoke:
        yield from SMOKE
        return
    for dtype in (['fp32'] if quick else ['fp32', 'bf16', 'fp16']):
        for index, activated, wmode, gmode in itertools.product(
                [True, False], [False, True], [0, 1, 2], [2, 1, 0]):
            if quick and (activated or gmode == 0):
                continue
            for red_mode in ('partial+grad', 'partial', 'loss', 'upstream'):
                yield dtype, dict(
                    INDEX_TARGET=index, ACTIVATED=activated, WEIGHT_MODE=wmode, GAMMA_MODE=gmode,
                    HAS_AF=red_mode.startswith('partial'), UPSTREAM=red_mode == 'upstream',
                    WRITE_LOSS=red_mode == 'loss', REDUCE=red_mode.startswith('partial'),
                    WRITE_GRAD=red_mode in ('partial+grad', 'upstream'),
                    CHECK=index or activated, BLOCK_P=1024)


def try_compile(label, fn, ptrs, floats, consts, extra, arch) -> int:
    """Compile one variant (`consts` plus `extra` constexprs); print `label`, the variant's
    flags and 'ok' or the error; return 1 on failure, else 0."""
    try:
        compile_one(fn, ptrs, floats, dict(consts, **extra), arch)
        info, failed = 'ok', 0
    except Exception as e:  # noqa: BLE001
        info, failed = f'FAILED {type(e).__name__}: {str(e)[-600:]}', 1
    short = ','.join(f'{k}={int(v)}' for k, v in consts.items() if not callable(v))
    print(f'{label} {short}: {info}', flush=True)
    return failed


def compile_one(fn, ptr_types, scalar_types, consts, arch):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = fn.arg_names
    sig = {}
    for n in names:
        if n in consts:
            sig[n] = 'constexpr'
        elif n in ptr_types:
            sig[n] = ptr_types[n]
        else:
            sig[n] = scalar_types.get(n, 'i32')
    src = ASTSource(fn=fn, signature=sig,
                    constexprs={(names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=GPUTarget('cuda', arch, 32), options=dict(num_warps=8))


def jit_like_compile(C, dtype, arch=90, **overrides):
    """Compile focal_loss_kernel as `ops/focal.py` launches it on contiguous (N, C) logits,
    int64 labels and per-row weights, with the JIT's argument specialisation."""
    import torch
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource

    from mmdet_focal_triton.kernels import focal as K
    from mmdet_focal_triton.ops.tuning import launch_config

    N = 300_000
    cfg = launch_config(C, dtype)
    x = torch.empty(0, dtype=dtype)
    vals = dict(X=x, stride_xr=C, stride_xc=1, T=torch.empty(0, dtype=torch.int64), stride_tr=1,
                stride_tc=0, W=torch.empty(0), stride_wr=1, stride_wc=0, UP=x, stride_ur=C,
                stride_uc=1, LOSS=x, GRAD=x, OUT=torch.empty(0), PARTIAL=torch.empty(0),
                COUNTER=torch.empty(0, dtype=torch.int32), FLAG=torch.empty(0, dtype=torch.int32),
                AF=torch.empty(0), R=N, C=C, num_row_blocks=triton.cdiv(N, cfg['block_r']),
                gamma=2.0, alpha=0.25, scale=1.0, eps=1e-7)
    consts = dict(_BASE, EVEN_C=C % cfg['block_c'] == 0, BLOCK_R=cfg['block_r'],
                  BLOCK_C=cfg['block_c'], FAST_MATH=bool(cfg['fast_math']))
    consts.update(overrides)
    fn = K.focal_loss_kernel
    sig, cx, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name], cx[(i,)] = 'constexpr', consts[name]
        elif isinstance(vals[name], float):
            sig[name] = 'fp32'
        else:
            specialize = name not in fn.do_not_specialize
            ty, spec = native_specialize_impl(BaseBackend, vals[name], False, specialize, True)
            if ty == 'constexpr':
                sig[name], cx[(i,)] = ty, spec
            else:
                sig[name] = ty
                if spec and 'D' in spec:
                    attrs[(i,)] = [['tt.divisibility', 16]]
    src = ASTSource(fn=fn, signature=sig, constexprs=cx, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget('cuda', arch, 32), options=cfg['options'])
    return compiled, cfg


def sass_counts(compiled, cfg):
    """(instructions per element in the innermost loop, registers per thread), from cuobjdump."""
    import re
    import subprocess
    import tempfile

    import triton

    tool = osp.join(osp.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump')
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(compiled.asm['cubin'])
        f.flush()
        sass = subprocess.run([tool, '-sass', f.name], capture_output=True, text=True,
                              check=True).stdout
        usage = subprocess.run([tool, '--dump-resource-usage', f.name], capture_output=True,
                               text=True, check=True).stdout
    ins = [(int(m.group(1), 16), m.group(2)) for m in
           re.finditer(r'/\*([0-9a-f]{4,})\*/\s+([^;]*);', sass)]
    index = {a: i for i, (a, _) in enumerate(ins)}
    loops = []  # (first, last) instruction index of each loop body
    for i, (a, text) in enumerate(ins):
        m = re.search(r'BRA\s.*?(0x[0-9a-f]+)', text)
        if m and int(m.group(1), 16) < a:  # a backward branch closes a loop
            loops.append((index[int(m.group(1), 16)], i))
    # the column-chunk loop: an innermost loop that evaluates the loss (MUFU.EX2 in its body);
    # the reduction's loop over partial sums at the end of the kernel is innermost too
    inner = [(b, e) for b, e in loops
             if not any(b <= b2 and e2 <= e and (b2, e2) != (b, e) for b2, e2 in loops)
             and any('MUFU.EX2' in t for _, t in ins[b:e + 1])]
    loops = [e + 1 - b for b, e in inner]
    per_thread = cfg['block_r'] * cfg['block_c'] // (32 * cfg['num_warps'])
    regs = int(re.search(r'REG:(\d+)', usage).group(1))
    return min(loops) / per_thread, regs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--arch', type=int, default=90)
    ap.add_argument('--quick', action='store_true', help='a subset (fp32, common flags)')
    ap.add_argument('--smoke', action='store_true', help='four representative variants')
    ap.add_argument('--sass', action='store_true',
                    help='instructions per element of the training variant (C = 80, 1203)')
    ap.add_argument('--fast-math', type=int, choices=[0, 1], default=None,
                    help='with --sass: force FAST_MATH off / on (default: as launched)')
    args = ap.parse_args(argv)
    if os.environ.get('TRITON_INTERPRET') == '1':
        ap.error('unset TRITON_INTERPRET: the interpreter does not compile kernels')
    if args.sass:
        import torch

        extra = {} if args.fast_math is None else dict(FAST_MATH=bool(args.fast_math))
        for C in (80, 1203):
            for dtype in (torch.float32, torch.bfloat16):
                compiled, cfg = jit_like_compile(C, dtype, args.arch, **extra)
                per_elem, regs = sass_counts(compiled, cfg)
                print(f"C={C} {str(dtype)[6:]} BLOCK {cfg['block_r']}x{cfg['block_c']}: "
                      f'{per_elem:.1f} instructions per element (inner loop), {regs} registers',
                      flush=True)
        return 0
    from mmdet_focal_triton.kernels import common
    from mmdet_focal_triton.kernels import focal as K

    fails = 0
    floats = {'gamma': 'fp32', 'alpha': 'fp32', 'scale': 'fp32', 'eps': 'fp32'}
    for dtype, consts in variants(args.quick, args.smoke):
        ptrs = dict(X=f'*{dtype}', T='*i64' if consts['INDEX_TARGET'] else '*fp32', W='*fp32',
                    UP='*fp32', LOSS='*fp32', GRAD=f'*{dtype}', OUT='*fp32', PARTIAL='*fp32',
                    COUNTER='*i32', FLAG='*i32', AF='*fp32')
        shapes = [('even', dict(EVEN_C=True, BLOCK_R=128, BLOCK_C=16)),
                  ('masked', dict(EVEN_C=False, BLOCK_R=16, BLOCK_C=64))]
        for (kname, shape), fast in itertools.product(shapes, (True, False)):
            extra = dict(shape, FAST_MATH=fast)
            fn = K.focal_loss_kernel
            if (args.quick or args.smoke) and kname == 'masked' and consts['WEIGHT_MODE'] != 1:
                continue
            kname = f'{kname}{"-fast" if fast else ""}'
            fails += try_compile(f'{kname} {dtype}', fn, ptrs, floats, consts, extra, args.arch)
    fails += compile_family(args.quick, args.smoke, args.arch)
    fails += compile_gaussian(args.quick, args.smoke, args.arch)
    for name, fn, ptrs, consts in [
        ('scale', common.scale_kernel, dict(G='*bf16', S='*fp32'), dict(BLOCK=4096)),
    ]:
        try:
            compile_one(fn, ptrs, floats, consts, args.arch)
            print(f'{name}: ok')
        except Exception as e:  # noqa: BLE001
            fails += 1
            print(f'{name}: FAILED {type(e).__name__}: {str(e)[-600:]}')
    print(f'{fails} failures')
    return 1 if fails else 0


if __name__ == '__main__':
    sys.exit(main())
