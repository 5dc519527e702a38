"""parity.cpu_share: torch's thread count follows the cores other processes leave (fed fake CPU
times; what it does on a real shared machine is measured in docs/parity.md)."""
import pytest

pytest.importorskip('mmengine')

from mmdet_focal_triton.parity.cpu_share import CpuShare, CpuShareHook, read_cpu_times  # noqa: E402


class FakeMachine:
    """(wall, all processes' CPU s, ours) advancing by 1 s per reading, others using `others`
    cores and this process `ours` cores."""

    def __init__(self):
        self.t = self.busy = self.own = 0.0
        self.others, self.ours = 0.0, 2.0

    def __call__(self):
        self.t += 1
        self.busy += self.others + self.ours
        self.own += self.ours
        return self.t, self.busy, self.own


def test_threads_follow_the_free_cores():
    m, applied = FakeMachine(), []
    share = CpuShare(cores=2, max_threads=2, reader=m, set_threads=applied.append)
    assert share.update() == 2 and applied == []  # a free machine: the pool as it is
    m.others = 2.0  # a busy 2-thread neighbour
    assert share.update() == 1 and applied == [1]
    m.ours = 1.0
    assert share.update() == 1 and applied == [1]  # still busy: no change
    m.others = 0.3  # the neighbour mostly gone
    assert share.update() == 2 and applied == [1, 2]
    assert share.changes == [(2.0, 1), (0.3, 2)]


def test_never_below_one_or_above_the_maximum():
    m, applied = FakeMachine(), []
    share = CpuShare(cores=8, max_threads=4, reader=m, set_threads=applied.append)
    m.others = 20.0
    assert share.update() == 1
    m.others = 0.0
    assert share.update() == 4 and applied == [1, 4]


def test_unreadable_stat_changes_nothing(tmp_path):
    assert read_cpu_times(str(tmp_path / 'missing')) is None
    applied = []
    share = CpuShare(cores=2, max_threads=2, reader=lambda: None, set_threads=applied.append)
    assert share.update() == 2 and applied == []


def test_reads_this_machine():
    t = read_cpu_times()
    if t is None:
        pytest.skip('no /proc/stat on this system')
    wall, busy, own = t
    assert wall > 0 and busy >= 0 and own > 0


def test_hook_restores_the_thread_count(monkeypatch):
    import torch

    hook = CpuShareHook(interval=1)

    class Runner:
        iter = 0

        class logger:  # noqa: N801
            lines = []

            @classmethod
            def info(cls, msg):
                cls.lines.append(msg)

    m = FakeMachine()
    monkeypatch.setattr('mmdet_focal_triton.parity.cpu_share.read_cpu_times', m)
    before = torch.get_num_threads()
    try:
        hook.before_train(Runner)
        hook.share.cores, hook.share.max_threads, hook.share.threads = 2, 2, 2
        m.others = 2.0
        hook.after_train_iter(Runner, 0)
        assert torch.get_num_threads() == 1 and 'other processes use 2.0 of 2' in \
            Runner.logger.lines[-1]
        hook.share.max_threads = before
        hook.after_train(Runner)
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
