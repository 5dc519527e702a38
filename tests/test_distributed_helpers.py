"""mmdet_focal_triton.distributed: AverageLogVarsHook (order among mmengine's hooks, no-op without
a process group, mean over 2 gloo ranks) and CPUSyncBN (2 gloo ranks x batch 2 == BatchNorm2d on
batch 4, forward, backward and running statistics). The derived configs of the DDP parity run:
tests/parity/test_ddp.py."""
import os
import socket
import types

import pytest
import torch

pytest.importorskip('mmengine')

from mmdet_focal_triton.distributed import AverageLogVarsHook, CPUSyncBatchNorm  # noqa: E402


def test_registered_and_runs_before_runtime_info_hook():
    from mmengine.hooks import RuntimeInfoHook
    from mmengine.registry import HOOKS, MODELS
    from mmengine.runner import Runner

    import mmdet_focal_triton  # noqa: F401  (registration on import)

    assert HOOKS.get('AverageLogVarsHook') is AverageLogVarsHook
    assert MODELS.get('CPUSyncBN') is CPUSyncBatchNorm
    # Runner.register_hook's priority queue, as the Runner fills it: default hooks first
    # (RuntimeInfoHook, VERY_HIGH), custom hooks after; ours must still come first.
    fake = types.SimpleNamespace(_hooks=[])
    Runner.register_hook(fake, RuntimeInfoHook())
    Runner.register_hook(fake, dict(type='AverageLogVarsHook'))
    assert [type(h).__name__ for h in fake._hooks] == ['AverageLogVarsHook', 'RuntimeInfoHook']


def test_hook_is_a_no_op_without_process_group():
    import torch.distributed as dist

    assert not dist.is_initialized()
    hook = AverageLogVarsHook()
    loss = torch.tensor(1.25, requires_grad=True) * 2
    outputs = {'loss': loss, 'loss_cls': torch.tensor(0.5), 'acc': 3.0}
    before = dict(outputs)
    hook.after_train_iter(types.SimpleNamespace(), 0, data_batch=None, outputs=outputs)
    assert outputs.keys() == before.keys()
    assert all(outputs[k] is before[k] for k in outputs)  # the very same objects
    hook.after_train_iter(types.SimpleNamespace(), 0, outputs=None)  # no outputs: fine


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank, world, port, q):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    res = {}
    try:
        # hook: the mean over the ranks, dtype and device kept, non-scalars untouched
        hook = AverageLogVarsHook()
        big = torch.arange(3.0)
        outputs = {'loss': torch.tensor(1.0 + 2 * rank), 'loss_cls': torch.tensor(
            10.0 * (rank + 1), dtype=torch.float64), 'vec': big, 'n': 7}
        hook.after_train_iter(None, 0, outputs=outputs)
        res['hook'] = (float(outputs['loss']), outputs['loss'].dtype, float(outputs['loss_cls']),
                       outputs['loss_cls'].dtype, outputs['vec'] is big, outputs['n'])
        try:  # different keys on the ranks: a clear error, no hang
            AverageLogVarsHook().after_train_iter(
                None, 0, outputs={'loss': torch.tensor(1.0), f'only_rank_{rank}': torch.tensor(1.)})
        except RuntimeError as e:
            res['mismatch'] = str(e)
        # CPUSyncBN: rank r holds images 2r, 2r+1 of a batch of 4
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(4, 3, 5, 6, dtype=torch.float64, generator=gen) * 3 + 2
        w = torch.randn(4, 3, 5, 6, dtype=torch.float64, generator=gen)
        bn = CPUSyncBatchNorm(3).double()
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([0.5, 1.0, 1.5]))
            bn.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))
        xs = x[2 * rank:2 * rank + 2].clone().requires_grad_(True)
        y = bn(xs)
        (y * w[2 * rank:2 * rank + 2]).sum().backward()
        res['bn'] = [t.detach().numpy().copy() for t in (
            y, xs.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var)]
        dist.barrier()
    finally:
        dist.destroy_process_group()
    q.put((rank, res))


def test_hook_and_sync_bn_over_two_gloo_ranks():
    import torch.multiprocessing as mp

    ctx = mp.get_context('spawn')
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        res = dict(q.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs)
    for r in (0, 1):
        assert res[r]['hook'] == (2.0, torch.float32, 15.0, torch.float64, True, 7)
        assert 'the ranks log different keys' in res[r]['mismatch']
    # reference: BatchNorm2d over the whole batch in one process
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64, generator=gen) * 3 + 2
    w = torch.randn(4, 3, 5, 6, dtype=torch.float64, generator=gen)
    bn = torch.nn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 1.5]))
        bn.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))
    xr = x.clone().requires_grad_(True)
    y = bn(xr)
    (y * w).sum().backward()
    got = [torch.from_numpy(a) for a in res[0]['bn']]
    got1 = [torch.from_numpy(a) for a in res[1]['bn']]
    torch.testing.assert_close(torch.cat([got[0], got1[0]]), y.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat([got[1], got1[1]]), xr.grad, rtol=1e-12, atol=1e-12)
    # parameter gradients: each rank has its share (DDP then averages them)
    torch.testing.assert_close(got[2] + got1[2], bn.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[3] + got1[3], bn.bias.grad, rtol=1e-12, atol=1e-12)
    for g in (got, got1):  # running statistics: global mean, unbiased global variance
        torch.testing.assert_close(g[4], bn.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g[5], bn.running_var, rtol=1e-12, atol=1e-12)


def test_sync_bn_is_batch_norm_in_one_process():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 3)
    a, b = CPUSyncBatchNorm(4), torch.nn.BatchNorm2d(4)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    torch.testing.assert_close(a.running_var, b.running_var, rtol=0, atol=0)
    a.eval()
    b.eval()
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
