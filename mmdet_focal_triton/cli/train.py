# Copyright (c) OpenMMLab. All rights reserved.
# Adapted from mmdetection 3.3.0 tools/train.py (Apache-2.0): the same command line and the same
# Runner set-up, plus `--triton-focal`, which swaps every FocalLoss of the loaded config for
# TritonFocalLoss (and QualityFocalLoss / VarifocalLoss for ours:
# mmdet_focal_triton.swap_focal_loss), so any mmdet config trains with them;
# distributed runs also work on CPU (gloo) and end with a clean process-group shutdown.
"""Train a detector with mmengine's Runner, as mmdet's tools/train.py does.

    python tools/train.py configs/retinanet/retinanet_r50_fpn_triton-focal_1x_coco.py
    python tools/train.py mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py --triton-focal
    bash tools/dist_train.sh CONFIG 8 [--triton-focal] [--amp] ...

Installed: ``mmdet-focal-triton train CONFIG`` (CONFIG may name a shipped config,
``mmdet_focal_triton::retinanet/retinanet_r50_fpn_triton-focal_1x_coco.py``) and
``mmdet-focal-triton dist-train CONFIG 8 ...``.
"""
import argparse
import logging
import os
import os.path as osp
import sys

from mmdet.utils import setup_cache_size_limit_of_dynamo
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmdet_focal_triton

from ..shipped_configs import config_path, is_shipped_name

# `import mmdet_focal_triton` registers TritonFocalLoss, TritonQualityFocalLoss and
# TritonVarifocalLoss in mmdet's MODELS registry (and applies the package's compatibility
# fixes); the swap helpers are exported next to them.
swap_focal_loss = mmdet_focal_triton.swap_focal_loss
swap_focal_family = mmdet_focal_triton.swap_focal_family
FOCAL_FAMILY = mmdet_focal_triton.config_utils.FOCAL_FAMILY


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='enable automatic-mixed-precision training')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='enable automatically scaling LR.')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='If specify checkpoint path, resume from it, while if not '
        'specify, try to auto resume from the latest checkpoint '
        'in the work directory.')
    parser.add_argument(
        '--triton-focal',
        action='store_true',
        default=False,
        help='replace every FocalLoss, QualityFocalLoss and VarifocalLoss in the '
        'model config with TritonFocalLoss, TritonQualityFocalLoss and '
        'TritonVarifocalLoss (same arguments, same results, fused Triton '
        'kernels); applied after --cfg-options')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file. If the value to '
        'be overwritten is a list, it should be like key="[a,b]" or key=a,b '
        'It also allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" '
        'Note that the quotation marks are necessary and that no white space '
        'is allowed.')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # When using PyTorch version >= 2.0.0, the `torch.distributed.launch`
    # will pass the `--local-rank` parameter to `tools/train.py` instead
    # of `--local_rank`.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)

    return args


def resolve_config(path):
    """A config file path; also accepts `mmdet::fcos/xxx.py`, a config shipped inside an
    installed package (the syntax `_base_` accepts), so a packaged mmdet config can be trained
    without a checkout of the mmdet repository, and `mmdet_focal_triton::retinanet/xxx.py`, a
    config shipped with this package (mmdet_focal_triton.shipped_configs)."""
    if is_shipped_name(path) and not osp.isfile(path):
        return str(config_path(path))
    if '::' in path and not osp.isfile(path):
        return Config._get_cfg_path(path, '')[0]
    return path


def build_cfg(args):
    """The config the Runner is built from: mmdet's steps in mmdet's order, plus the swap."""
    # load config
    cfg = Config.fromfile(resolve_config(args.config))
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    if args.triton_focal:
        counts = swap_focal_family(cfg)
        for name, n in counts.items():
            if n:
                print_log(
                    f'--triton-focal: {n} {name} replaced by {FOCAL_FAMILY[name]}',
                    logger='current')
        if not any(counts.values()):
            print_log(
                '--triton-focal: this config has no FocalLoss, QualityFocalLoss '
                'or VarifocalLoss; nothing replaced', logger='current',
                level=logging.WARNING)

    # work_dir is determined in this priority: CLI > segment in file > filename
    if args.work_dir is not None:
        # update configs according to CLI args if args.work_dir is not None
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        # use config filename as default work_dir if cfg.work_dir is None
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])

    # enable automatic-mixed-precision training
    if args.amp is True:
        optim_wrapper = cfg.optim_wrapper.type
        if optim_wrapper == 'AmpOptimWrapper':
            print_log(
                'AMP training is already enabled in your config.',
                logger='current',
                level=logging.WARNING)
        else:
            assert optim_wrapper == 'OptimWrapper', (
                '`--amp` is only supported when the optimizer wrapper type is '
                f'`OptimWrapper` but got {optim_wrapper}.')
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'

    # enable automatically scaling LR
    if args.auto_scale_lr:
        if 'auto_scale_lr' in cfg and \
                'enable' in cfg.auto_scale_lr and \
                'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            raise RuntimeError('Can not find "auto_scale_lr" or '
                               '"auto_scale_lr.enable" or '
                               '"auto_scale_lr.base_batch_size" in your'
                               ' configuration file.')

    # resume is determined in this priority: resume from > auto_resume
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    return cfg


def setup_cpu_distributed(cfg):
    """torchrun on a machine without CUDA: train in CPU processes over gloo.

    mmengine's own `init_dist('pytorch')` calls `torch.cuda.set_device`, and its DDP wrapper
    passes `device_ids=[LOCAL_RANK]`, both of which fail without a GPU; so the process group is
    initialised here (the Runner then skips its own) and DDP gets no device ids. Lets the
    distributed path (`tools/dist_train.sh CONFIG 2`) run, and be tested, on CPU."""
    import torch
    import torch.distributed as dist

    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    wrapper = dict(type='MMDistributedDataParallel', broadcast_buffers=False,
                   find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper.update(cfg.get('model_wrapper_cfg') or {})
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    return True


def shutdown_distributed():
    """Leave the process group cleanly once training is over: wait for every rank, then destroy
    the group. mmengine leaves it alive at exit, and a rank that finished first then tears gloo
    down in the C++ destructors at interpreter exit, which sometimes aborts it ("terminate called
    without an active exception", SIGABRT, and torchrun reports the run as failed): seen on CPU
    in 3 of about 40 two-process runs with a per-iteration all-reduce of the logged losses
    (mmdet_focal_triton.AverageLogVarsHook), after the last iteration had completed; 0 of 24
    with this shutdown."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def build_runner(cfg):
    # build the runner from config
    if 'runner_type' not in cfg:
        # build the default runner
        return Runner.from_cfg(cfg)
    # build customized runner from the registry
    # if 'runner_type' is set in the cfg
    return RUNNERS.build(cfg)


def main(argv=None):
    args = parse_args(argv)

    # Reduce the number of repeated compilations and improve
    # training speed.
    setup_cache_size_limit_of_dynamo()

    cfg = build_cfg(args)
    cpu_distributed = setup_cpu_distributed(cfg)
    runner = build_runner(cfg)

    # start training
    runner.train()
    shutdown_distributed()
    if cpu_distributed:
        # skip the interpreter's teardown: gloo's C++ destructors still aborted a rank at exit
        # now and then after a clean shutdown ("terminate called without an active exception",
        # SIGABRT: 1 of ~18 two-process CPU trainings), failing a run whose training had
        # completed. Logs and checkpoints are written by then; flush what is buffered.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == '__main__':
    main()
