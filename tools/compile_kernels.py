#!/usr/bin/env python
"""Compile the Triton kernels ahead of time for a GPU target, without a GPU (CI-safe).

Catches front-end and back-end compile errors of every constexpr combination the launcher can
request, and prints each variant's registers / spills (the resource report METHOD.md asks for).
  python tools/compile_kernels.py [--arch 90] [--quick]
"""
import argparse
import itertools
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


_BASE = dict(INDEX_TARGET=True, ACTIVATED=False, WEIGHT_MODE=1, GAMMA_MODE=2, HAS_AF=True,
             UPSTREAM=False, WRITE_LOSS=False, WRITE_PARTIAL=True, WRITE_GRAD=True, CHECK=True)
SMOKE = [  # a few representative variants (CI: tests/test_tools.py)
    ('fp32', _BASE),
    ('bf16', dict(_BASE, WEIGHT_MODE=2, GAMMA_MODE=1)),
    ('fp16', dict(_BASE, INDEX_TARGET=False, ACTIVATED=True, HAS_AF=False, WRITE_LOSS=True,
                  WRITE_PARTIAL=False, WRITE_GRAD=False)),
    ('fp32', dict(_BASE, INDEX_TARGET=False, UPSTREAM=True, WRITE_PARTIAL=False, CHECK=False,
                  GAMMA_MODE=0)),
]


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
                    WRITE_LOSS=red_mode == 'loss', WRITE_PARTIAL=red_mode.startswith('partial'),
                    WRITE_GRAD=red_mode in ('partial+grad', 'upstream'),
                    CHECK=index or activated)


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--arch', type=int, default=90)
    ap.add_argument('--quick', action='store_true', help='a subset (fp32, common flags)')
    ap.add_argument('--smoke', action='store_true', help='four representative variants')
    args = ap.parse_args(argv)
    if os.environ.get('TRITON_INTERPRET') == '1':
        ap.error('unset TRITON_INTERPRET: the interpreter does not compile kernels')
    from mmdet_focal_triton import kernels as K

    fails = 0
    floats = {'gamma': 'fp32', 'alpha': 'fp32', 'grad_scale': 'fp32', 'eps': 'fp32',
              'out_scale': 'fp32'}
    for dtype, consts in variants(args.quick, args.smoke):
        ptrs = dict(X=f'*{dtype}', T='*i64' if consts['INDEX_TARGET'] else '*fp32', W='*fp32',
                    UP='*fp32', LOSS='*fp32', GRAD=f'*{dtype}', PARTIAL='*fp32', BAD='*i32',
                    AF='*fp32')
        for kname, fn, extra in [
                ('even', K.focal_loss_kernel, dict(EVEN_C=True, BLOCK_R=128, BLOCK_C=16)),
                ('masked', K.focal_loss_kernel, dict(EVEN_C=False, BLOCK_R=16, BLOCK_C=64))]:
            if (args.quick or args.smoke) and kname == 'masked' and consts['WEIGHT_MODE'] != 1:
                continue
            try:
                compile_one(fn, ptrs, floats, dict(consts, **extra), args.arch)
                info = 'ok'
            except Exception as e:  # noqa: BLE001
                fails += 1
                info = f'FAILED {type(e).__name__}: {str(e)[-600:]}'
            short = ','.join(f'{k}={int(v)}' for k, v in consts.items())
            print(f'{kname} {dtype} {short}: {info}', flush=True)
    for name, fn, ptrs, consts in [
        ('finalize', K.finalize_kernel, dict(PARTIAL='*fp32', BAD='*i32', OUT='*fp32',
                                             BAD_OUT='*i32', AF='*fp32'),
         dict(HAS_AF=True, CHECK=True, BLOCK=1024)),
        ('check', K.check_kernel, dict(BAD='*i32', BAD_OUT='*i32'), dict(BLOCK=1024)),
        ('scale', K.scale_kernel, dict(G='*bf16', S='*fp32'), dict(BLOCK=4096)),
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
