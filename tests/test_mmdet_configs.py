"""Every config shipped in mmdet 3.3.0 (mmdet/.mim/configs) whose model uses FocalLoss,
QualityFocalLoss, VarifocalLoss or GaussianFocalLoss, after swap_focal_family, builds a model
whose losses are ours with the config's arguments, offline, on this machine's stack
(tools/bootstrap.sh).

Honest by construction: the configs that cannot build here are listed below by name, each with
its reason, which the build error must show; any other config that fails to build fails the
test, and so does a listed config that builds (the list and the counts must then be updated).
The numbers of configs found and built, per loss, are asserted exactly.

Cost (2-core dev machine): discovery loads the ~300 candidate configs (~8 s); configs whose
swapped, offline model dict is identical to one already built (1x / 2x / ms-train / amp
variants) are built once, without weight initialisation (~20 s for ~200 models)."""
import copy
import json
import time

import pytest
from _configs import (
    FAMILY,
    OUR_NAMES,
    build_offline,
    discover_family_configs,
    loss_dicts,
    offline_model_cfg,
)
from mmdet.models.losses import FocalLoss, QualityFocalLoss, VarifocalLoss
from mmdet.models.losses.ddq_detr_aux_loss import DDQAuxLoss
from mmdet.utils import register_all_modules
from mmengine.utils import import_modules_from_strings

from mmdet_focal_triton import (
    TritonFocalLoss,
    TritonQualityFocalLoss,
    TritonVarifocalLoss,
    swap_focal_family,
)

register_all_modules(init_default_scope=True)

pytestmark = pytest.mark.usefixtures('one_torch_thread')

OURS = {'FocalLoss': TritonFocalLoss, 'QualityFocalLoss': TritonQualityFocalLoss,
        'VarifocalLoss': TritonVarifocalLoss}
MMDETS = (FocalLoss, QualityFocalLoss, VarifocalLoss)

# Why a config cannot build here: (what its build error says, the reason).
TRANSFORMERS = ('transformers is not installed',
                "its language model is BERT through Hugging Face transformers, whose "
                "constructor downloads bert-base-uncased (tokenizer and weights) from the hub: "
                "no offline build, so transformers is not installed")
MMPRETRAIN = ('Failed to import mmpretrain.models',
              "its backbone comes from mmpretrain (custom_imports), whose models import "
              "torchvision; the only torchvision 0.28 wheel available offline is a CUDA build "
              "whose ops do not load with torch 2.13 CPU, so mmpretrain is not installed")
CANNOT_BUILD = {
    'glip/glip_atss_swin-l_fpn_dyhead_16xb2_ms-2x_funtune_coco.py': TRANSFORMERS,
    'glip/glip_atss_swin-t_a_fpn_dyhead_16xb2_ms-2x_funtune_coco.py': TRANSFORMERS,
    'glip/glip_atss_swin-t_b_fpn_dyhead_16xb2_ms-2x_funtune_coco.py': TRANSFORMERS,
    'glip/glip_atss_swin-t_c_fpn_dyhead_16xb2_ms-2x_funtune_coco.py': TRANSFORMERS,
    'glip/glip_atss_swin-t_fpn_dyhead_16xb2_ms-2x_funtune_coco.py': TRANSFORMERS,
    'grounding_dino/dod/grounding_dino_swin-b_pretrain_zeroshot_concat_dod.py': TRANSFORMERS,
    'grounding_dino/dod/grounding_dino_swin-b_pretrain_zeroshot_parallel_dod.py': TRANSFORMERS,
    'grounding_dino/dod/grounding_dino_swin-t_pretrain_zeroshot_concat_dod.py': TRANSFORMERS,
    'grounding_dino/dod/grounding_dino_swin-t_pretrain_zeroshot_parallel_dod.py': TRANSFORMERS,
    'grounding_dino/flickr30k/grounding_dino_swin-t-pretrain_zeroshot_flickr30k.py': TRANSFORMERS,
    'grounding_dino/grounding_dino_r50_scratch_8xb2_1x_coco.py': TRANSFORMERS,
    'grounding_dino/grounding_dino_swin-b_finetune_16xb2_1x_coco.py': TRANSFORMERS,
    'grounding_dino/grounding_dino_swin-b_pretrain_mixeddata.py': TRANSFORMERS,
    'grounding_dino/grounding_dino_swin-t_finetune_16xb2_1x_coco.py': TRANSFORMERS,
    'grounding_dino/grounding_dino_swin-t_finetune_8xb2_20e_cat.py': TRANSFORMERS,
    'grounding_dino/grounding_dino_swin-t_pretrain_obj365_goldg_cap4m.py': TRANSFORMERS,
    'grounding_dino/lvis/grounding_dino_swin-b_pretrain_zeroshot_lvis.py': TRANSFORMERS,
    'grounding_dino/lvis/grounding_dino_swin-b_pretrain_zeroshot_mini-lvis.py': TRANSFORMERS,
    'grounding_dino/lvis/grounding_dino_swin-t_pretrain_zeroshot_lvis.py': TRANSFORMERS,
    'grounding_dino/lvis/grounding_dino_swin-t_pretrain_zeroshot_mini-lvis.py': TRANSFORMERS,
    'grounding_dino/odinw/grounding_dino_swin-b_pretrain_odinw13.py': TRANSFORMERS,
    'grounding_dino/odinw/grounding_dino_swin-b_pretrain_odinw35.py': TRANSFORMERS,
    'grounding_dino/odinw/grounding_dino_swin-t_pretrain_odinw13.py': TRANSFORMERS,
    'grounding_dino/odinw/grounding_dino_swin-t_pretrain_odinw35.py': TRANSFORMERS,
    'grounding_dino/refcoco/grounding_dino_swin-b_pretrain_zeroshot_refexp.py': TRANSFORMERS,
    'grounding_dino/refcoco/grounding_dino_swin-t_pretrain_zeroshot_refexp.py': TRANSFORMERS,
    'mm_grounding_dino/brain_tumor/grounding_dino_swin-t_finetune_8xb4_50e_brain_tumor.py':
        TRANSFORMERS,
    'mm_grounding_dino/cityscapes/grounding_dino_swin-t_finetune_8xb4_50e_cityscapes.py':
        TRANSFORMERS,
    'mm_grounding_dino/coco/grounding_dino_swin-t_finetune_16xb4_1x_coco.py': TRANSFORMERS,
    'mm_grounding_dino/coco/grounding_dino_swin-t_finetune_16xb4_1x_coco_48_17.py': TRANSFORMERS,
    'mm_grounding_dino/coco/grounding_dino_swin-t_finetune_16xb4_1x_sft_coco.py': TRANSFORMERS,
    'mm_grounding_dino/dod/grounding_dino_swin-t_pretrain_zeroshot_concat_dod.py': TRANSFORMERS,
    'mm_grounding_dino/dod/grounding_dino_swin-t_pretrain_zeroshot_parallel_dod.py': TRANSFORMERS,
    'mm_grounding_dino/flickr30k/grounding_dino_swin-t-pretrain_flickr30k.py': TRANSFORMERS,
    'mm_grounding_dino/grounding_dino_swin-l_pretrain_all.py': TRANSFORMERS,
    'mm_grounding_dino/grounding_dino_swin-t_finetune_8xb4_20e_cat.py': TRANSFORMERS,
    'mm_grounding_dino/grounding_dino_swin-t_pretrain_obj365.py': TRANSFORMERS,
    'mm_grounding_dino/grounding_dino_swin-t_pretrain_obj365_goldg.py': TRANSFORMERS,
    'mm_grounding_dino/grounding_dino_swin-t_pretrain_obj365_goldg_grit9m.py': TRANSFORMERS,
    'mm_grounding_dino/grounding_dino_swin-t_pretrain_obj365_goldg_grit9m_v3det.py': TRANSFORMERS,
    'mm_grounding_dino/grounding_dino_swin-t_pretrain_obj365_goldg_v3det.py': TRANSFORMERS,
    'mm_grounding_dino/grounding_dino_swin-t_pretrain_pseudo-labeling_cat.py': TRANSFORMERS,
    'mm_grounding_dino/grounding_dino_swin-t_pretrain_pseudo-labeling_flickr30k.py': TRANSFORMERS,
    'mm_grounding_dino/lvis/grounding_dino_swin-t_finetune_16xb4_1x_lvis.py': TRANSFORMERS,
    'mm_grounding_dino/lvis/grounding_dino_swin-t_finetune_16xb4_1x_lvis_866_337.py': TRANSFORMERS,
    'mm_grounding_dino/lvis/grounding_dino_swin-t_pretrain_zeroshot_lvis.py': TRANSFORMERS,
    'mm_grounding_dino/lvis/grounding_dino_swin-t_pretrain_zeroshot_mini-lvis.py': TRANSFORMERS,
    'mm_grounding_dino/odinw/grounding_dino_swin-t_pretrain_odinw13.py': TRANSFORMERS,
    'mm_grounding_dino/odinw/grounding_dino_swin-t_pretrain_odinw35.py': TRANSFORMERS,
    'mm_grounding_dino/people_in_painting/grounding_dino_swin-t_finetune_8xb4_50e_people_in_painting.py':
        TRANSFORMERS,
    'mm_grounding_dino/refcoco/grounding_dino_swin-t_finetune_8xb4_5e_grefcoco.py': TRANSFORMERS,
    'mm_grounding_dino/refcoco/grounding_dino_swin-t_finetune_8xb4_5e_refcoco.py': TRANSFORMERS,
    'mm_grounding_dino/refcoco/grounding_dino_swin-t_finetune_8xb4_5e_refcoco_plus.py':
        TRANSFORMERS,
    'mm_grounding_dino/refcoco/grounding_dino_swin-t_finetune_8xb4_5e_refcocog.py': TRANSFORMERS,
    'mm_grounding_dino/refcoco/grounding_dino_swin-t_pretrain_zeroshot_refexp.py': TRANSFORMERS,
    'mm_grounding_dino/rtts/grounding_dino_swin-t_finetune_8xb4_1x_rtts.py': TRANSFORMERS,
    'mm_grounding_dino/ruod/grounding_dino_swin-t_finetune_8xb4_1x_ruod.py': TRANSFORMERS,
    'rtmdet/rtmdet_l_convnext_b_4xb32-100e_coco.py': MMPRETRAIN,
    'timm_example/retinanet_timm-efficientnet-b1_fpn_1x_coco.py': MMPRETRAIN,
    'timm_example/retinanet_timm-tv-resnet50_fpn_1x_coco.py': MMPRETRAIN,
}

# What the discovery finds and what builds (update both with the list above)
EXPECTED = {'configs': 304, 'built': 244,
            'FocalLoss configs': 257, 'FocalLoss built': 198,
            'QualityFocalLoss configs': 31, 'QualityFocalLoss built': 30,
            'VarifocalLoss configs': 13, 'VarifocalLoss built': 13,
            'GaussianFocalLoss configs': 10, 'GaussianFocalLoss built': 10}


@pytest.fixture(scope='module')
def family_configs():
    t0 = time.perf_counter()
    uses, others, errors, n_files = discover_family_configs()
    print(f'\n{n_files} mmdet configs, {len(uses) + len(others) + len(errors)} candidates '
          f'loaded in {time.perf_counter() - t0:.1f} s: {len(uses)} use the focal family')
    return uses, others, errors, n_files


def _our_modules(model):
    """The family's loss modules of a built model, outside a distillation teacher (a frozen model
    built by the detector from its own config file: its losses never run) and outside
    DDQAuxLoss (which builds its QualityFocalLoss from its own defaults, out of a config's
    reach: `replace_mmdet_focal_loss` replaces that one, tests/test_registry_and_configs.py)."""
    skip = set()
    for m in model.modules():
        if isinstance(m, DDQAuxLoss) or m is getattr(model, 'teacher_model', None):
            skip |= {id(x) for x in m.modules()}
    return [m for m in model.modules() if id(m) not in skip and isinstance(m, (*MMDETS,
                                                                               TritonFocalLoss))]


def _check_losses(model, model_cfg):
    """None if every family loss of `model` is ours, one per swapped kind at least, each with
    the arguments of a dict of its kind; otherwise what is wrong."""
    modules = _our_modules(model)
    names = [type(m).__name__ for m in modules]
    if any(type(m) not in OURS.values() for m in modules):
        return f'loss modules after the swap: {names}'
    for name, cls in OURS.items():
        dicts = [{k: v for k, v in d.items() if k != 'type'}
                 for d in loss_dicts(model_cfg, (OUR_NAMES[name], f'mmdet.{OUR_NAMES[name]}'))]
        built = [m for m in modules if type(m) is cls]
        if dicts and not built:
            return f'no {cls.__name__} built from {len(dicts)} dict(s)'
        for m in built:
            if not any(all(getattr(m, k, None) == v for k, v in d.items()) for d in dicts):
                return f'a {cls.__name__} lost its config arguments'
    return None


@pytest.fixture(scope='module')
def family_builds(family_configs):
    """{config: (counts of swapped dicts per loss, None if it built right, or the error)}."""
    uses = family_configs[0]
    t0 = time.perf_counter()
    results, by_dict = {}, {}
    for rel, cfg in uses.items():
        cfg = copy.deepcopy(cfg)
        counts = swap_focal_family(cfg)
        model_cfg = offline_model_cfg(cfg.model.to_dict())
        assert not loss_dicts(model_cfg), rel  # nothing of mmdet's family left
        key = json.dumps(model_cfg, sort_keys=True, default=repr)
        if key not in by_dict:
            try:
                if cfg.get('custom_imports'):
                    import_modules_from_strings(**cfg.custom_imports)
                model = build_offline(model_cfg)
            except Exception as e:  # noqa: BLE001 - sorted out by the tests
                by_dict[key] = e
            else:
                by_dict[key] = _check_losses(model, model_cfg)
                del model
        results[rel] = (counts, by_dict[key])
    print(f'\n{len(uses)} configs, {len(by_dict)} distinct model dicts built in '
          f'{time.perf_counter() - t0:.1f} s')
    return results


def test_discovery(family_configs):
    uses, others, errors, n_files = family_configs
    assert n_files > 800, 'mmdet/.mim/configs not found or incomplete'
    assert not errors, '\n'.join(f'{k}: {e!r}' for k, e in sorted(errors.items()))
    for name in ('retinanet/retinanet_r50_fpn_1x_coco.py',
                 'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py', 'atss/atss_r50_fpn_1x_coco.py',
                 'dino/dino-4scale_r50_8xb2-12e_coco.py',
                 'deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
                 'solo/solo_r50_fpn_1x_coco.py', 'maskformer/maskformer_r50_ms-16xb1-75e_coco.py',
                 'rtmdet/rtmdet_tiny_8xb32-300e_coco.py', 'rtmdet/rtmdet-ins_s_8xb32-300e_coco.py',
                 'gfl/gfl_r50_fpn_1x_coco.py', 'tood/tood_r50_fpn_1x_coco.py',
                 'vfnet/vfnet_r50_fpn_1x_coco.py', 'ld/ld_r18-gflv1-r101_fpn_1x_coco.py',
                 'grounding_dino/grounding_dino_swin-t_finetune_16xb2_1x_coco.py'):
        assert name in uses, name
    for name in ('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
                 'mask2former/mask2former_r50_8xb2-lsj-50e_coco.py'):
        assert name not in uses, name


def test_every_config_builds_with_ours_or_is_listed(family_builds):
    failures, wrong_reason, listed_but_built = {}, {}, []
    for rel, (_, err) in sorted(family_builds.items()):
        if err is None:
            if rel in CANNOT_BUILD:
                listed_but_built.append(rel)
        elif rel not in CANNOT_BUILD:
            failures[rel] = err
        elif CANNOT_BUILD[rel][0] not in ' '.join(str(err).split()):
            wrong_reason[rel] = err
    assert not failures, 'configs that do not build after swap_focal_family:\n' + '\n'.join(
        f'{rel}: {type(e).__name__ if isinstance(e, Exception) else ""}: {e}'
        for rel, e in failures.items())
    assert not wrong_reason, 'listed configs failing for another reason:\n' + '\n'.join(
        f'{rel}: {e!r}' for rel, e in wrong_reason.items())
    assert not listed_but_built, ('listed as unbuildable, but built (update CANNOT_BUILD and '
                                  f'EXPECTED): {listed_but_built}')


def test_counts(family_builds):
    uses = {name: [rel for rel, (counts, _) in family_builds.items() if counts[name]]
            for name in FAMILY}
    built = {name: [rel for rel in rels if family_builds[rel][1] is None]
             for name, rels in uses.items()}
    got = {'configs': len(family_builds),
           'built': sum(err is None for _, err in family_builds.values())}
    for name in FAMILY:
        got[f'{name} configs'] = len(uses[name])
        got[f'{name} built'] = len(built[name])
    print('\n' + json.dumps(got))
    assert got == EXPECTED
