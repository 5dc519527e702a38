"""The focal family at scale on a GPU: more than 2**31 elements, AMP (bf16 / fp16 autocast) as
RTMDet / VFNet / CenterNet heads run it, bitwise determinism at an RTMDet-s level, a tensor on
another device than the current one. Marked `cuda`: deselected (and counted) without a GPU.
Each test prints its numbers (`-s`), one JSON line each, also appended to $GPU_VALIDATION_REPORT
when set.
"""
import json
import math
import os

import pytest
import torch
from _family_inputs import level_inputs
from reference import rel_err
from reference_family import reference_quality_focal_loss, reference_varifocal_loss

from mmdet_focal_triton import quality_focal_loss, varifocal_loss

pytestmark = pytest.mark.cuda

REPORT = os.environ.get('GPU_VALIDATION_REPORT')
EPS = torch.finfo(torch.float32).eps


def report(name, **values):
    line = dict(test=name, device=torch.cuda.get_device_name(), torch=torch.__version__, **values)
    print('\n' + json.dumps(line))
    if REPORT:
        with open(REPORT, 'a') as f:
            f.write(json.dumps(line) + '\n')


def _big_qfl(N, C, g):
    pred = torch.randn(N, C, generator=g, device='cuda', dtype=torch.bfloat16).mul_(3)
    lab = torch.full((N,), C, device='cuda')
    pos = torch.rand(N, generator=g, device='cuda') < 0.05
    lab[pos] = torch.randint(0, C, (N,), generator=g, device='cuda')[pos]
    score = torch.rand(N, generator=g, device='cuda')
    return pred, lab, score, torch.rand(N, generator=g, device='cuda')


@pytest.mark.skipif(not torch.cuda.is_available() or
                    torch.cuda.get_device_properties(0).total_memory < 60 * 2 ** 30,
                    reason='needs a GPU with >= 60 GiB')
def test_more_than_2_pow_31_elements():
    """28M x 80 bf16 = 2.24e9 elements, QFL then VFL (one at a time: ~14 GiB each): loss and
    gradient against float64, evaluated in chunks of 1M rows; the last rows' gradient is
    written."""
    N, C = 28_000_000, 80
    assert N * C > 2 ** 31
    g = torch.Generator(device='cuda').manual_seed(11)
    chunk = 1_000_000
    af = torch.tensor(12345.0, device='cuda')
    res = {}
    # ---- QFL: (labels, scores), per-row weights
    pred, lab, score, w = _big_qfl(N, C, g)
    pred.requires_grad_(True)
    loss = quality_focal_loss(pred, (lab, score), w, avg_factor=af)
    loss.backward()
    grad = pred.grad
    ref_sum, err2, ref2 = 0.0, 0.0, 0.0
    for s in range(0, N, chunk):
        xs = pred.detach()[s:s + chunk].double().requires_grad_(True)
        part = reference_quality_focal_loss(xs, (lab[s:s + chunk], score[s:s + chunk]),
                                            w[s:s + chunk], reduction='sum')
        ref_sum += part.item()
        (gs,) = torch.autograd.grad(part / (af.double() + EPS), xs)
        err2 += (grad[s:s + chunk].double() - gs).pow(2).sum().item()
        ref2 += gs.pow(2).sum().item()
    ref = ref_sum / (af.item() + EPS)
    res['qfl_loss_rel_err'] = abs(loss.item() - ref) / abs(ref)
    res['qfl_grad_rel_err'] = (err2 / ref2) ** 0.5
    res['qfl_last_row_written'] = bool(grad[-1].float().abs().sum().item() > 0)
    res['qfl_grad_finite'] = bool(torch.isfinite(grad).all())
    del pred, grad, lab, score, w, loss
    torch.cuda.empty_cache()
    # ---- VFL: dense IoU target (bf16), no weight
    pred = torch.randn(N, C, generator=g, device='cuda', dtype=torch.bfloat16).mul_(3)
    target = torch.zeros(N, C, device='cuda', dtype=torch.bfloat16)
    pos = torch.rand(N, generator=g, device='cuda') < 0.05
    rows = pos.nonzero().squeeze(1)
    cols = torch.randint(0, C, (rows.numel(),), generator=g, device='cuda')
    target[rows, cols] = torch.rand(rows.numel(), generator=g, device='cuda').to(torch.bfloat16)
    pred.requires_grad_(True)
    loss = varifocal_loss(pred, target, avg_factor=af)
    loss.backward()
    grad = pred.grad
    ref_sum, err2, ref2 = 0.0, 0.0, 0.0
    for s in range(0, N, chunk):
        xs = pred.detach()[s:s + chunk].double().requires_grad_(True)
        part = reference_varifocal_loss(xs, target[s:s + chunk], reduction='sum')
        ref_sum += part.item()
        (gs,) = torch.autograd.grad(part / (af.double() + EPS), xs)
        err2 += (grad[s:s + chunk].double() - gs).pow(2).sum().item()
        ref2 += gs.pow(2).sum().item()
    ref = ref_sum / (af.item() + EPS)
    res['vfl_loss_rel_err'] = abs(loss.item() - ref) / abs(ref)
    res['vfl_grad_rel_err'] = (err2 / ref2) ** 0.5
    res['vfl_last_row_written'] = bool(grad[-1].float().abs().sum().item() > 0)
    res['vfl_grad_finite'] = bool(torch.isfinite(grad).all())
    report('family_more_than_2^31_elements', N=N, C=C, elements=N * C, dtype='bfloat16', **res)
    for k in ('qfl', 'vfl'):
        assert res[f'{k}_grad_finite'] and res[f'{k}_last_row_written']
        assert res[f'{k}_loss_rel_err'] <= 1e-2 and res[f'{k}_grad_rel_err'] <= 1e-2


@pytest.mark.parametrize('amp', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
@pytest.mark.parametrize('loss', ['qfl', 'vfl'])
def test_amp_head(amp, loss):
    """A classification conv under torch.autocast gives bf16 / fp16 logits; the loss takes them
    with fp32 targets (RTMDet's assign metrics, VFNet's IoU targets) and the backward reaches the
    conv. Loss and d loss / d logits within 1e-2 of float64 on the same logits, finite; mmdet's
    own loss under the same autocast agrees to 1e-2 where it computes (it upcasts to fp32)."""
    from mmdet.models.losses import QualityFocalLoss, VarifocalLoss

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 80, 3, padding=1).cuda()
    feat = torch.randn(32, 32, 40, 40, device='cuda') * 4
    N = 32 * 40 * 40
    _, target, weight, af = level_inputs(loss, N, 80, torch.float32, 'cuda', seed=5)
    with torch.autocast('cuda', dtype=amp):
        logits = conv(feat).permute(0, 2, 3, 1).reshape(-1, 80)
        assert logits.dtype == amp
        logits.retain_grad()
        if loss == 'qfl':
            ours = quality_focal_loss(logits, target, weight, avg_factor=af)
            theirs = QualityFocalLoss()(logits.detach().requires_grad_(True), target, weight,
                                        avg_factor=af)
        else:
            ours = varifocal_loss(logits, target, weight, avg_factor=af)
            theirs = VarifocalLoss()(logits.detach().requires_grad_(True), target, weight,
                                     avg_factor=af)
    ours.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    xr = logits.detach().double().requires_grad_(True)
    if loss == 'qfl':
        ref = reference_quality_focal_loss(xr, target, weight, avg_factor=af)
    else:
        ref = reference_varifocal_loss(xr, target, weight, avg_factor=af)
    (gref,) = torch.autograd.grad(ref, xr)
    le, ge = rel_err(ours, ref), rel_err(logits.grad, gref)
    report('family_amp', loss=loss, amp=str(amp), ours=ours.item(), ref=ref.item(),
           mmdet=theirs.item(), loss_rel_err=le, grad_rel_err=ge,
           mmdet_rel_err=rel_err(theirs, ref))
    assert torch.isfinite(ours) and torch.isfinite(logits.grad).all()
    assert le <= 1e-2 and ge <= 1e-2
    assert rel_err(ours, theirs.float()) <= 1e-2


@pytest.mark.parametrize('loss', ['qfl', 'vfl'])
def test_bitwise_deterministic_rtmdet_level(loss):
    """RTMDet-s batch 32, P3 (204,800 x 80): 20 runs, the same bits."""
    pred, target, weight, af = level_inputs(loss, 204_800, 80, torch.float32, 'cuda', seed=3)
    fn = quality_focal_loss if loss == 'qfl' else varifocal_loss
    outs = []
    for _ in range(20):
        out = fn(pred, target, weight, avg_factor=af)
        (g,) = torch.autograd.grad(out * 0.5, pred)
        outs.append((out.detach().clone(), g.clone()))
    same = all(torch.equal(o[0], outs[0][0]) and torch.equal(o[1], outs[0][1]) for o in outs)
    report('family_determinism_20_runs', loss=loss, N=204_800, C=80, identical=same)
    assert same


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs 2 GPUs')
@pytest.mark.parametrize('loss', ['qfl', 'vfl'])
def test_tensor_on_cuda1_while_cuda0_current(loss):
    pred, target, weight, _ = level_inputs(loss, 51_200, 80, torch.float32, 'cuda:1', seed=2)
    torch.cuda.set_device(0)
    fn = quality_focal_loss if loss == 'qfl' else varifocal_loss
    af = torch.tensor(77.0, device='cuda:1')
    out = fn(pred, target, weight, avg_factor=af)
    out.backward()
    assert out.device == torch.device('cuda:1') and pred.grad.device == torch.device('cuda:1')
    xr = pred.detach().double().cpu().requires_grad_(True)
    tc = tuple(t.cpu() for t in target) if isinstance(target, tuple) else target.cpu()
    ref = (reference_quality_focal_loss(xr, tc, weight.cpu(), avg_factor=77.0) if loss == 'qfl'
           else reference_varifocal_loss(xr, tc, None, avg_factor=77.0))
    ref.backward()
    assert rel_err(out, ref) <= 1e-5 and rel_err(pred.grad, xr.grad) <= 1e-5


@pytest.mark.skipif(not torch.cuda.is_available() or
                    torch.cuda.get_device_properties(0).total_memory < 60 * 2 ** 30,
                    reason='needs a GPU with >= 60 GiB')
def test_gaussian_more_than_2_pow_31_elements():
    """A 2.16e9-element bf16 heatmap (132 x 80 x 448 x 456): GaussianFocalLoss's loss and
    gradient against float64 in chunks, the last elements' gradient written, determinism of two
    calls."""
    from reference_family import reference_gaussian_focal_loss

    from mmdet_focal_triton import gaussian_focal_loss

    shape = (132, 80, 448, 456)
    n = math.prod(shape)
    assert n > 2 ** 31  # (the first version's 448 x 452 fell 9.1e6 elements short)
    g = torch.Generator(device='cuda').manual_seed(13)
    pred = torch.rand(shape, generator=g, device='cuda', dtype=torch.bfloat16)
    pred = pred.clamp_(0.004, 0.996).requires_grad_(True)
    target = torch.rand(shape, generator=g, device='cuda', dtype=torch.bfloat16).pow_(8)
    target[torch.rand(shape, generator=g, device='cuda') < 1e-4] = 1
    af = torch.tensor(54321.0, device='cuda')
    loss = gaussian_focal_loss(pred, target, avg_factor=af)
    (grad,) = torch.autograd.grad(loss, pred)
    again = gaussian_focal_loss(pred, target, avg_factor=af)
    ref_sum, err2, ref2 = 0.0, 0.0, 0.0
    for s in range(0, shape[0], 4):
        xs = pred.detach()[s:s + 4].double().requires_grad_(True)
        part = reference_gaussian_focal_loss(xs, target[s:s + 4], reduction='sum')
        ref_sum += part.item()
        (gs,) = torch.autograd.grad(part / (af.double() + EPS), xs)
        err2 += (grad[s:s + 4].double() - gs).pow(2).sum().item()
        ref2 += gs.pow(2).sum().item()
    ref = ref_sum / (af.item() + EPS)
    res = dict(loss_rel_err=abs(loss.item() - ref) / abs(ref), grad_rel_err=(err2 / ref2) ** 0.5,
               last_written=bool(grad[-1, -1, -1].float().abs().sum().item() > 0),
               deterministic=bool(torch.equal(loss, again)))
    report('gaussian_more_than_2^31_elements', shape=shape, elements=n, dtype='bfloat16', **res)
    assert res['last_written'] and res['deterministic']
    assert res['loss_rel_err'] <= 1e-2 and res['grad_rel_err'] <= 1e-2


@pytest.mark.parametrize('amp', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_gaussian_amp_centernet_head(amp):
    """CenterNet's heatmap conv under autocast: bf16 / fp16 logits, their sigmoid, fp32
    Gaussian targets; the loss and d loss / d probabilities within 1e-2 of float64 on the same
    probabilities, finite, and the backward reaches the conv."""
    from reference_family import reference_gaussian_focal_loss

    from mmdet_focal_triton import gaussian_focal_loss

    g = torch.Generator(device='cuda').manual_seed(5)
    conv = torch.nn.Conv2d(64, 80, 3, padding=1).cuda()
    feat = torch.randn(16, 64, 128, 128, generator=g, device='cuda')
    target = torch.rand(16, 80, 128, 128, generator=g, device='cuda').pow_(8)
    target[torch.rand(target.shape, generator=g, device='cuda') < 5e-4] = 1
    with torch.autocast('cuda', dtype=amp):
        probs = conv(feat).sigmoid().clamp(1e-4, 1 - 1e-4)
        probs.retain_grad()
        loss = gaussian_focal_loss(probs, target, avg_factor=float((target == 1).sum()))
    loss.backward()
    xs = probs.detach().double().requires_grad_(True)
    ref = reference_gaussian_focal_loss(xs, target, avg_factor=float((target == 1).sum()))
    (gref,) = torch.autograd.grad(ref, xs)
    res = dict(dtype=str(probs.dtype), loss_rel_err=abs(loss.item() - ref.item()) / ref.item(),
               grad_rel_err=rel_err(probs.grad.double(), gref),
               conv_grad_finite=bool(torch.isfinite(conv.weight.grad).all()))
    report('gaussian_amp_centernet_head', **res)
    assert res['conv_grad_finite'] and probs.dtype == amp
    assert res['loss_rel_err'] <= 1e-2 and res['grad_rel_err'] <= 1e-2
