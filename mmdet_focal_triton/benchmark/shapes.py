"""Problem sizes: dtypes by name, 'N x C' strings, the per-level prior counts of mmdet's dense
heads (RetinaNet R50-FPN, RTMDet, GFL, VFNet) from their own prior generators."""
from __future__ import annotations

import math

import torch

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}

#: RetinaNet R50-FPN input of the benchmarks (mmdet's 1x COCO schedule pads 1333x800 to this)
RETINANET_IMG = (800, 1344)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> 'float32' (the CSV's spelling)."""
    return str(dtype).replace('torch.', '')


def parse_shape(s: str) -> tuple[str, int, int]:
    """'2.4Mx80' -> ('2.4Mx80', 2400000, 80); 'k' and 'M' suffixes, any case."""
    n, c = s.lower().split('x')
    mult = {'k': 1_000, 'm': 1_000_000}.get(n[-1], 1)
    n = float(n[:-1]) if n[-1] in 'km' else float(n)
    return (s, int(n * mult), int(c))


def fpn_feature_sizes(img_hw=RETINANET_IMG, levels: int = 5) -> list[tuple[int, int]]:
    """Feature-map sizes of FPN levels P3.. for a ResNet + FPN at `img_hw`: every stride-2 conv
    with 'same'-style padding rounds up (800 -> 100, 50, 25, 13, 7 for strides 8 .. 128)."""
    h, w = img_hw
    for _ in range(2):  # stem conv + max-pool: stride 4
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    sizes = []
    for _ in range(levels):  # C3, C4, C5, P6, P7: strides 8 .. 128
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.append((h, w))
    return sizes


def _prior_generator(config: str):
    """The prior generator of `config`'s bbox head, as the head builds it: the config's
    `anchor_generator` where it names one, else the head's own (VFNet's default)."""
    from mmdet.registry import MODELS, TASK_UTILS
    from mmdet.utils import register_all_modules

    from mmdet_focal_triton.mm_utils import load_mmdet_config

    register_all_modules()
    head = load_mmdet_config(config).model.bbox_head
    if 'anchor_generator' in head:
        return TASK_UTILS.build(head.anchor_generator)
    return MODELS.build(head).prior_generator


def level_rows(config: str, batch: int, img_hw) -> list[int]:
    """Rows of the classification loss per FPN level of mmdet's `config` (e.g.
    'gfl/gfl_r50_fpn_1x_coco.py') at `img_hw` and `batch` images: the priors of the head's own
    generator on the feature maps of `fpn_feature_sizes` (as many levels as it has strides)."""
    gen = _prior_generator(config)
    priors = gen.grid_priors(fpn_feature_sizes(img_hw, gen.num_levels), device='cpu')
    return [batch * p.shape[0] for p in priors]


def retinanet_level_rows(batch: int, img_hw=RETINANET_IMG) -> list[int]:
    """Rows of the classification loss per FPN level (P3 .. P7) for RetinaNet R50-FPN at
    `img_hw` and `batch` images: anchors from mmdet's own anchor generator of the config."""
    return level_rows('retinanet/retinanet_r50_fpn_1x_coco.py', batch, img_hw)


def retinanet_shapes(batches=(2, 16), num_classes: int = 80) -> list[tuple[str, int, int]]:
    """('retina-b2-P3', 302400, 80), ... for each batch size."""
    return [(f'retina-b{b}-P{lvl + 3}', n, num_classes) for b in batches
            for lvl, n in enumerate(retinanet_level_rows(b))]


#: large problems of SPEC §4: a batch of dense anchors, and LVIS's 1203 classes
LARGE_SHAPES = [('2.4Mx80', 2_400_000, 80), ('300kx1203', 300_000, 1203)]
#: what a CPU run (the Triton interpreter, or CI) can afford
TINY_SHAPES = [('tiny-300x80', 300, 80), ('tiny-64x1203', 64, 1203)]


def default_shapes(quick: bool = False) -> list[tuple[str, int, int]]:
    """RetinaNet's levels at batch 2 and 16, then the large problems; tiny ones if `quick`."""
    if quick:
        return list(TINY_SHAPES)
    return retinanet_shapes() + LARGE_SHAPES
