"""Input builders for the quality focal and varifocal loss tests (on top of `_inputs.py`)."""
import torch


def make_qfl_target(kind, N, C, device, g, score_dtype=torch.float32):
    """`tuple`: (labels, scores) as GFL / RTMDet pass them: about a third of the rows positive
    (label in [0, C-1]), the rest background (= C); scores in [0, 1] (a few exactly 0 and 1),
    also on background rows (mmdet ignores those). `dense`: the same as a dense (N, C) quality
    target, plus a few soft values elsewhere (any element with t != 0 is 'positive')."""
    lab = torch.randint(0, C, (N,), generator=g)
    lab[torch.rand(N, generator=g) < 0.66] = C
    score = torch.rand(N, generator=g, dtype=torch.float64)
    edge = torch.rand(N, generator=g)
    score[edge < 0.05] = 0.0
    score[edge > 0.95] = 1.0
    if kind == 'tuple':
        return lab.to(device), score.to(score_dtype).to(device)
    if kind == 'dense':
        t = torch.zeros(N, C, dtype=torch.float64)
        pos = lab < C
        t[pos.nonzero()[:, 0], lab[pos]] = score[pos]
        extra = torch.rand(N, C, generator=g) < 0.02
        t[extra] = torch.rand(int(extra.sum()), generator=g, dtype=torch.float64)
        return t.to(score_dtype).to(device)
    raise ValueError(kind)


def make_row_weight(kind, N, device, g):
    """Weights of QFL's per-row loss: None, (N,), a 0-d tensor, or shape (1,)."""
    if kind == 'none':
        return None
    if kind == 'row':
        return torch.rand(N, generator=g).to(device)
    if kind == 'scalar':
        return torch.tensor(0.5 + torch.rand((), generator=g).item()).to(device)
    if kind == 'one':
        return torch.rand(1, generator=g).to(device) + 0.5
    raise ValueError(kind)


def make_vfl_target(kind, N, C, device, g, dtype=torch.float32):
    """`iou`: VFNet's target: zeros, and the IoU (clamped at 1e-6, as VFNet) of the positive
    element of about a third of the rows. `soft`: values in [-0.2, 1] everywhere (t <= 0 takes
    the modulated branch, also for negative t)."""
    if kind == 'iou':
        lab = torch.randint(0, C, (N,), generator=g)
        pos = torch.rand(N, generator=g) < 0.33
        t = torch.zeros(N, C, dtype=torch.float64)
        iou = torch.rand(N, generator=g, dtype=torch.float64).clamp(min=1e-6)
        t[pos.nonzero()[:, 0], lab[pos]] = iou[pos]
        return t.to(dtype).to(device)
    if kind == 'soft':
        t = torch.rand(N, C, generator=g, dtype=torch.float64) * 1.2 - 0.2
        return t.to(dtype).to(device)
    raise ValueError(kind)


def make_vfl_weight(kind, N, C, device, g):
    """Weights that broadcast to (N, C): None, (N, C), (N, 1), (C,), 0-d."""
    if kind == 'none':
        return None
    shape = {'elem': (N, C), 'row1': (N, 1), 'col': (C,), 'scalar': ()}[kind]
    return torch.rand(shape, generator=g).to(device)


def level_inputs(loss, N, C, dtype, device, seed=0):
    """A level of a real head at scale, for the GPU tests: (pred, target, weight, avg_factor).

    `qfl`: an RTMDet-s level (what its head passes to QualityFocalLoss): logits ~ 2 randn, about
    1 % positive anchors with their quality score (assign metric) in (0, 1], the rest background
    (label C, score 0), weights 1, avg_factor 1.0 (RTMDet normalises afterwards). `vfl`: a VFNet
    batch: the dense IoU target (1 % positives, IoU in [1e-6, 1]), no weight, avg_factor = number
    of positives."""
    g = torch.Generator(device='cpu').manual_seed(seed)
    pred = (torch.randn(N, C, generator=g) * 2).to(device=device, dtype=dtype)
    pos = torch.rand(N, generator=g) < 0.01
    lab = torch.full((N,), C, dtype=torch.long)
    lab[pos] = torch.randint(0, C, (int(pos.sum()),), generator=g)
    score = torch.zeros(N)
    score[pos] = torch.rand(int(pos.sum()), generator=g).clamp(min=1e-6)
    if loss == 'qfl':
        return (pred.requires_grad_(True), (lab.to(device), score.to(device)),
                torch.ones(N, device=device), 1.0)
    t = torch.zeros(N, C)
    t[pos.nonzero()[:, 0], lab[pos]] = score[pos]
    return pred.requires_grad_(True), t.to(device), None, float(max(int(pos.sum()), 1))
