"""Train the same detector with mmdet's focal-family loss and with ours, and judge the swap.

``mmdet-focal-triton parity`` (installed), ``python tools/parity.py`` (a checkout):

    python tools/parity.py                       # CPU default: RetinaNet, FocalLoss
    python tools/parity.py --device cuda         # GPU default: + ours under AMP bf16
    python tools/parity.py --control perturbed   # always measure mmdet's own spread
    python tools/parity.py --inject-fault alpha  # a deliberately wrong loss: must FAIL
    python tools/parity.py --model rtmdet-tiny   # RTMDet-tiny, QualityFocalLoss
    python tools/parity.py --model rtmdet-tiny --inject-fault score

The command line of ``mmdet_focal_triton.parity.run_parity`` (what is checked and why: its
docstring and the README's Parity section). The terminal shows what runs, one progress bar per
training (with its learning curve's last point), and two tables: the verdict with every check,
and each run's accuracy and time; the full log, ``report.json``, ``summary.md`` and
``curves.png`` are in ``--work-dir``. ``--verbose`` prints everything. Exit code: 0 pass, 1 fail,
2 mmdet's run failed while ours completed and passed its checks (e.g. ``--amp bf16``, which
mmcv's CUDA op does not implement), 3 broken recipe: mmdet's own training did not reach the
config's target mAP, so nothing is proven.
"""
import argparse
import sys
import warnings

from .environment import set_environment

# known before torch is imported (--device cpu must hide CUDA first); tests check they match
MODELS = ('retinanet', 'rtmdet-tiny')  # mmdet_focal_triton.parity.config.MODEL_CONFIGS
FAULTS = ('alpha', 'background', 'beta', 'gamma', 'loss_weight', 'score')  # faults.ALL_FAULTS


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description='Train a detector (RetinaNet: FocalLoss; RTMDet-tiny: QualityFocalLoss) with '
                    "mmdet's loss and with ours (TritonFocalLoss, TritonQualityFocalLoss) from "
                    "the same init and data order; check every call of ours against mmdet's "
                    'formula in float64, and compare the two trainings.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--model', choices=MODELS, default='retinanet',
                   help='the detector, i.e. its config in configs/parity/ by device: retinanet '
                        '(retinanet_r18_fpn_synthetic_cpu.py / retinanet_r18_fpn_synthetic_gpu.py'
                        ', FocalLoss) or rtmdet-tiny (rtmdet_tiny_synthetic_{cpu,gpu}.py, '
                        'QualityFocalLoss); ignored when --config is given')
    p.add_argument('--config', default=None,
                   help="parity config (default: --model's, by device); the loss types are read "
                        'from it')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    p.add_argument('--amp', choices=('none', 'fp16', 'bf16'), default='none',
                   help='mixed precision (mmengine AmpOptimWrapper); CUDA only')
    p.add_argument('--losses', choices=('both', 'ours', 'mmdet'), default='both',
                   help='which trainings to run ("mmdet": calibrate a recipe)')
    p.add_argument('--extra-amp', nargs='*', choices=('bf16', 'fp16'), default=None,
                   help="more trainings of ours under AMP, judged against mmdet's fp32 "
                        "training (default: the config's parity.extra_amp on CUDA, none in the "
                        'shipped configs; e.g. --extra-amp bf16: ours under AMP bf16, which '
                        "mmcv's op cannot run)")
    # what the config's `parity` dict sets, overridden
    for flag, kind, what in (
            ('--iters', int, "training iterations per run (default: the config's parity.iters)"),
            ('--eval-interval', int, 'evaluate every so many iterations: the learning curve '
                                     "(default: the config's parity.eval_interval)"),
            ('--target-map', float, "bbox_mAP mmdet's own training must reach, or the run is a "
                                    "broken recipe (exit 3) (default: the config's "
                                    'parity.target_map)'),
            ('--img-size', int, 'long side of the generated images, and the train/test '
                                 "Resize scale (N, N) (default: the config's parity.img_size "
                                 'and Resize scale)'),
            ('--batch-size', int, "training batch size (default: the config's)"),
            ('--num-train', int, "synthetic train images (default: the config's "
                                 'parity.num_train)'),
            ('--num-val', int, "synthetic val images (default: the config's parity.num_val)")):
        p.add_argument(flag, type=kind, default=None, help=what)
    p.add_argument('--data-root', default=None,
                   help='use this COCO-layout dataset instead of generating the synthetic one '
                        '(the config must then match it: classes, ann files, prefixes)')
    p.add_argument('--work-dir', default='work_dirs/parity')
    p.add_argument('--control', choices=('auto', 'none', 'repeat', 'perturbed'), default=None,
                   help="another training of mmdet's loss: 'perturbed' = loss_weight x "
                        '(1 + 2^-20): the run-to-run spread of its accuracy, of which the '
                        "verdict allows 3x; 'repeat' = identical (is the device deterministic?); "
                        "'auto' = 'perturbed', trained only when an mAP difference exceeds the "
                        "floor (default: the config's parity.control, else auto)")
    p.add_argument('--inject-fault', choices=FAULTS, default=None, dest='fault',
                   help='make our loss deliberately, slightly wrong, to see the run fail; '
                        'FocalLoss: alpha 0.26, gamma 2.05, loss_weight x 1.001, or background '
                        'taken as class 0 on one level; QualityFocalLoss: beta 2.05, '
                        "loss_weight x 1.001, or score: the positives' quality scores taken as 1 "
                        'on one level')
    tol = p.add_argument_group('tolerances (default: by device and precision, see '
                               'mmdet_focal_triton/parity/config.py)')
    for flag, what in (('--check-rtol', "every call of ours vs the float64 evaluation of "
                                        "mmdet's formula, loss and gradient (1e-5 fp32, 1e-2 AMP)"),
                       ('--first-rtol', 'iteration 1 (same weights, same batch), loss_cls and '
                                        'loss_bbox (1e-5 fp32, 1e-2 AMP)'),
                       ('--update-rtol', 'the first weight update (1e-4 fp32, 5e-2 AMP)'),
                       ('--map-floor', "final bbox_mAP of ours vs mmdet's: passes within "
                                       "max(floor, 3 x the spread of mmdet's own training, "
                                       'measured by the control) (0.02)')):
        tol.add_argument(flag, type=float, default=None, help=what)
    p.add_argument('--seed', type=int, default=0, help='training seed (init, sampler, augment)')
    p.add_argument('--data-seed', type=int, default=0, help='synthetic dataset seed')
    p.add_argument('--backend', choices=('auto', 'torch', 'triton'), default='auto',
                   help="our losses' backend: 'auto' = Triton kernels on CUDA, the PyTorch "
                        "implementation on CPU; 'triton' on CPU runs the Triton kernels in "
                        "Triton's interpreter (slow, but it is the kernel code)")
    p.add_argument('--no-share-cpu', dest='share_cpu', action='store_false',
                   help="CPU: keep torch's thread count while other processes use the cores "
                        '(default: it follows the cores they leave, parity.cpu_share)')
    p.add_argument('--verbose', action='store_true',
                   help='print everything (mmengine, pycocotools, warnings) instead of progress '
                        'bars; the full log is written either way')
    return p.parse_args(argv)


def run_environment(args) -> tuple[dict, dict]:
    """What the run needs in the environment before torch / triton read it: (variables to set,
    variables to set where unset)."""
    forced, defaults = {}, {}
    if args.device == 'cpu':
        forced['CUDA_VISIBLE_DEVICES'] = ''  # mmengine puts the model on CUDA if it sees one
    if args.backend == 'triton' and args.device != 'cuda':
        defaults['TRITON_INTERPRET'] = '1'
    defaults['CUBLAS_WORKSPACE_CONFIG'] = ':4096:8'  # deterministic cuBLAS
    defaults['MPLBACKEND'] = 'Agg'
    return forced, defaults


def main(argv=None, program: bool = False) -> int:
    """``program``: this process runs the command (console script, ``python -m``, tools/), so it
    may restart itself when a variable of ``run_environment`` comes too late (cli.environment)."""
    args = parse_args(argv)
    set_environment(*run_environment(args), program=program)
    if not args.verbose:  # the pinned stack's known warnings, quiet: mmengine imports
        # pkg_resources (setuptools 81 warns); on Python 3.12 mmdet 3.3.0's docstrings hold
        # invalid escape sequences (SyntaxWarning when its sources are compiled at first import)
        warnings.filterwarnings('ignore', 'pkg_resources is deprecated', UserWarning)
        warnings.filterwarnings('ignore', 'invalid escape sequence', SyntaxWarning)
    from mmdet_focal_triton.parity import ParityOptions, run_parity

    try:
        report = run_parity(ParityOptions(**vars(args)))
    except (ValueError, FileNotFoundError) as e:
        print(f'[parity] {e}', file=sys.stderr)
        return 1
    return report['exit_code']


if __name__ == '__main__':
    sys.exit(main(program=True))
