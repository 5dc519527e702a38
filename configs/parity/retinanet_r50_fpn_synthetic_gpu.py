# RetinaNet R50-FPN on the synthetic shapes dataset at mmdet's full image size: the default config
# of `tools/parity.py` (`make parity`) on a machine with CUDA.
#
# It is mmdet's `retinanet_r50_fpn_1x_coco.py` unchanged (model, (1333, 800) train/test pipeline,
# SGD lr 0.01) except: the data point at the synthetic dataset (6 classes), a short
# iteration-based schedule (50-iteration warm-up), gradient clipping at norm 35 (a guard for
# training from random init), and no pretrained weights (`init_cfg=None`, so the stem and BN
# layers are trained from random init instead of frozen). In 300 iterations from random init
# this model barely starts to detect (mAP ~0); the run is about the losses staying equal.
# The loss stays mmdet's `FocalLoss`: tools/parity.py trains it once as it is and once with
# `swap_focal_loss()` (-> `TritonFocalLoss`), from the same initial weights and data order.
#
# Data: `data_root` below is a placeholder. tools/parity.py fills it in with the folder that
# `mmdet_focal_triton.datasets.make_synthetic_coco()` generates. To run on real COCO instead:
# set data_root = 'data/coco/', ann_file = 'annotations/instances_{train,val}2017.json',
# data_prefix = dict(img='{train,val}2017/'), drop `metainfo`, num_classes = 80, and (with
# network access) restore backbone.init_cfg = dict(type='Pretrained',
# checkpoint='torchvision://resnet50'), frozen_stages=1, norm_eval=True.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmdet_focal_triton'], allow_failed_imports=False)

data_root = 'data/synthetic_coco/'  # placeholder: tools/parity.py sets the generated dataset
classes = ('circle', 'rectangle', 'triangle', 'ellipse', 'cross', 'ring')
metainfo = dict(classes=classes)

# what tools/parity.py uses when its options are not given. trend_rtol: SGD from random init
# wanders in these 300 iterations; the means of the last 75 losses of two runs differing only by
# rounding moved by up to 5.4e-2 (mmdet's FocalLoss vs itself with loss_weight x (1 + 2^-20),
# H200), so the default 5e-2 is loosened to 0.15 for this config.
parity = dict(iters=300, num_train=1000, num_val=200, img_size=640,
              tolerances=dict(trend_rtol=0.15))

model = dict(
    backbone=dict(frozen_stages=-1, norm_eval=False, init_cfg=None),
    bbox_head=dict(num_classes=6))

# the base pipelines ((1333, 800), keep_ratio, RandomFlip) are kept as they are
train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True, seed=0),
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=0)))
val_dataloader = dict(
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# short iteration-based schedule: the base warm-up shortened to 50 iterations, then constant LR
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=300, val_interval=300)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=50),
]
optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=-1, save_last=False))
log_processor = dict(by_epoch=False)
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
auto_scale_lr = dict(enable=False, base_batch_size=16)
