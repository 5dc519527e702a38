"""mmengine 0.10.7 + torch >= 2.6: checkpoints saved by the Runner load again (resume and
load_from), because importing the package fixes mmengine's torch.load call."""
import pickle

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner

import mmdet_focal_triton  # noqa: F401  (applies the fix)


class ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.linear(inputs)  # default_collate stacked the batch
        if mode == 'loss':
            return dict(loss=((out.squeeze(-1) - labels) ** 2).mean())
        return out


class ToyData(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(inputs=torch.tensor([i, 1.0]), labels=torch.tensor(float(i)))


def _runner(work_dir, **kw):
    return Runner(
        model=ToyModel(), work_dir=str(work_dir),
        # a name of its own: runners built within one second would share the timestamp name
        experiment_name=f'compat-{work_dir.name}',
        train_dataloader=dict(dataset=ToyData(), sampler=dict(type='DefaultSampler', shuffle=False),
                              batch_size=4, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=kw.pop('max_iters', 2), val_interval=100),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
        **kw)


def test_runner_checkpoint_roundtrip(tmp_path):
    r1 = _runner(tmp_path / 'a')
    r1.train()
    ckpt = tmp_path / 'a' / 'iter_2.pth'
    assert ckpt.is_file()
    if tuple(int(v) for v in torch.__version__.split('.')[:2]) >= (2, 6):
        # the failure this guards against: plain torch.load refuses mmengine's checkpoint
        with pytest.raises(pickle.UnpicklingError):
            torch.load(ckpt)
    r2 = _runner(tmp_path / 'b', load_from=str(ckpt), resume=True, max_iters=4)
    r2.train()
    assert r2.iter == 4
    r3 = _runner(tmp_path / 'c', load_from=str(ckpt))
    r3.load_or_resume()
    torch.testing.assert_close(r3.model.linear.weight, r1.model.linear.weight)
