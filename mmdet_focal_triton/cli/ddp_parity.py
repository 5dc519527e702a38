"""Data-parallel parity: RetinaNet (FocalLoss) or RTMDet-tiny (QualityFocalLoss, ``--model
rtmdet-tiny``) trained by `tools/dist_train.sh` on 1 and on 2 processes (GPUs, or CPU processes
over gloo) at the same total batch, with our loss and with mmdet's, compared iteration by
iteration.

    python tools/ddp_parity.py                   # CUDA if available (needs 2 GPUs), else CPU
    python tools/ddp_parity.py --device cpu --iters 4 --img-size 128 \
        --runs ours:1 ours:2 mmdet:2                                    # the CI run, ~35 s
    python tools/ddp_parity.py --device cpu --model rtmdet-tiny --iters 3 --img-size 128 \
        --runs ours:1 ours:2 mmdet:2                                    # the family's CI run
    python tools/ddp_parity.py --device cuda --iters 30 --control   # 2 GPUs, R50 at 1333x800

Installed: ``mmdet-focal-triton ddp-parity ...`` (trainings through the package's launcher,
``mmdet-focal-triton dist-train``'s; tools/ddp_parity.py passes the checkout's dist_train.sh).

The command line of ``mmdet_focal_triton.parity.run_ddp_parity``, whose docstring explains why
1 vs 2 processes are comparable here and what is checked. The terminal shows one progress bar per
training and a table of the comparisons; everything else (per-iteration tables, the derived
configs, each training's log) is in ``--work-dir``. Exit code 0 = every check passed, 1 = a check
or a run failed, 2 = cannot run here (e.g. ``--device cuda`` with fewer than 2 GPUs).
"""
import argparse
import sys
import warnings

ALL_RUNS = ('ours:1', 'ours:2', 'mmdet:1', 'mmdet:2')  # mmdet_focal_triton.parity.ddp.ALL_RUNS
MODELS = ('retinanet', 'rtmdet-tiny')  # mmdet_focal_triton.parity.ddp.MODELS


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None / False ones (their help says what happens)."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def _run_spec(spec: str) -> str:
    loss, _, world = spec.partition(':')
    if (loss in ('ours', 'mmdet') and world in ('1', '2')) or spec == 'control:1':
        return spec
    raise argparse.ArgumentTypeError(f'{spec!r}: expected LOSS:PROCESSES with LOSS ours or '
                                     'mmdet and PROCESSES 1 or 2, e.g. ours:2 (or control:1)')


def parse_args(argv=None):
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(
        description='Train RetinaNet (or RTMDet-tiny) with tools/dist_train.sh on 1 and on 2 '
                    'processes at the same total batch (paired synthetic data), with our loss '
                    "and with mmdet's, and compare the per-iteration losses and gradient norms.",
        epilog='Exit code: 0 pass, 1 fail (a check or a run), 2 cannot run here.',
        formatter_class=_HelpFormatter)
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto',
                   help="'auto': cuda if a GPU is visible, else cpu; the 2-process runs need 2 "
                        'GPUs on cuda, and 2 processes over gloo on cpu')
    p.add_argument('--model', choices=MODELS, default='retinanet',
                   help="the shipped parity config's detector: 'retinanet' (FocalLoss) or "
                        "'rtmdet-tiny' (QualityFocalLoss)")
    p.add_argument('--config', default=None,
                   help='base config (default: the --model one of configs/parity/, e.g. '
                        'retinanet_r18_fpn_synthetic_cpu.py on cpu, '
                        'retinanet_r18_fpn_synthetic_gpu.py on cuda)')
    p.add_argument('--iters', type=int, default=None,
                   help='training iterations (default: 20 on cuda, 6 on cpu, where the R18 '
                        'config (AdamW from random init) turns rounding differences into 1e-3 '
                        'differences in grad_norm from about iteration 7 on, with or without '
                        'DDP: see --control)')
    p.add_argument('--img-size', type=int, default=None,
                   help='long side of the generated images and the Resize scale (N, N) '
                        "(default: the config's parity.img_size and Resize scale)")
    p.add_argument('--num-train', type=int, default=None,
                   help='paired synthetic train images (even; default 2 x --iters)')
    p.add_argument('--losses', choices=('both', 'ours', 'mmdet'), default='both',
                   help='which losses to train (on 1 and 2 processes each)')
    p.add_argument('--runs', nargs='+', type=_run_spec, default=None, metavar='LOSS:N',
                   help=f'exactly these runs instead, from {" ".join(ALL_RUNS)} (overrides '
                        '--losses); comparisons whose two runs are there are made')
    p.add_argument('--control', action='store_true',
                   help='one more run: ours on 1 process with the two images of every batch in '
                        'swapped order (the same training in exact arithmetic), compared with '
                        'ours on 1 process and reported, not checked: how fast rounding '
                        'differences grow in this training, without DDP')
    p.add_argument('--norm', choices=('sync', 'local'), default='sync',
                   help="'sync': BatchNorm becomes synchronized batch norm (SyncBN on cuda, "
                        "CPUSyncBN on cpu); 'local': per-rank statistics (for demonstration)")
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                   metavar='KEY=VALUE',
                   help='override settings of the derived configs (mmengine syntax, as '
                        'tools/train.py), applied last, e.g. optim_wrapper.optimizer.type=SGD')
    p.add_argument('--work-dir', default='work_dirs/ddp_parity')
    p.add_argument('--first-rtol', type=float, default=None,
                   help='iteration 1 tolerance (default: 1e-5, SPEC fp32)')
    p.add_argument('--rtol', type=float, default=None,
                   help='per-iteration tolerance over the first --horizon iterations (default '
                        '1e-3)')
    p.add_argument('--horizon', type=int, default=None,
                   help='iterations checked against --rtol (0: all; default 20)')
    p.add_argument('--seed', type=int, default=0, help='training seed (same on every rank)')
    p.add_argument('--data-seed', type=int, default=0, help='synthetic dataset seed')
    p.add_argument('--threads', type=int, default=1,
                   help='cpu: OMP_NUM_THREADS of every training process')
    p.add_argument('--allow-tf32', action='store_true',
                   help='cuda: keep TF32 convolutions (default: NVIDIA_TF32_OVERRIDE=0)')
    p.add_argument('--timeout', type=float, default=900, help='seconds per training run')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.add_argument('--verbose', action='store_true',
                   help='print everything instead of progress bars (the full log is written '
                        'either way)')
    args = p.parse_args(argv)
    if args.iters is not None and args.iters < 1:
        p.error('--iters must be >= 1')
    if args.num_train is not None and (args.num_train < 2 or args.num_train % 2):
        p.error('--num-train must be even and >= 2 (pairs of images)')
    return args


def main(argv=None, dist_train=None) -> int:
    """``dist_train``: the launcher script of the trainings (None: the package's,
    ``mmdet_focal_triton.parity.ddp.default_dist_train``)."""
    args = parse_args(argv)
    if not args.verbose:  # the pinned stack's known warnings, quiet: mmengine imports
        # pkg_resources (setuptools 81 warns); on Python 3.12 mmdet 3.3.0's docstrings hold
        # invalid escape sequences (SyntaxWarning when its sources are compiled at first import)
        warnings.filterwarnings('ignore', 'pkg_resources is deprecated', UserWarning)
        warnings.filterwarnings('ignore', 'invalid escape sequence', SyntaxWarning)
    from mmdet_focal_triton.parity import DDPParityOptions, run_ddp_parity

    opts = vars(args)
    opts['progress'] = not opts.pop('no_progress')
    opts['dist_train'] = str(dist_train) if dist_train else None
    return run_ddp_parity(DDPParityOptions(**opts))['exit_code']


if __name__ == '__main__':
    sys.exit(main())
