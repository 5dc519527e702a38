"""The gloo DDP parity of test_ddp_cpu.py for RTMDet-tiny with QualityFocalLoss
(`tools/ddp_parity.py --model rtmdet-tiny`, 2 iterations): ours against mmdet on 2 processes.
No 1-process run: for RTMDet the tool reports 1 against 2 processes without checking it (mmdet
clamps the all-reduced normalisers at 1, and from random init they are far below 1, so 2 x
batch 1 gives exactly half the losses of 1 x batch 2: parity.ddp's docstring). A file of its own
so that pytest-xdist runs it beside the RetinaNet one."""
import pytest

pytest.importorskip('mmdet.models')

from test_ddp_cpu import (  # noqa: E402,F401 - the same tests, this model's fixture
    run_ddp_parity_cli,
    test_runs_complete_distributed_with_both_losses,
    test_tool_verdict_and_outputs,
    test_two_processes_ours_matches_mmdet,
)


@pytest.fixture(scope='module')
def ddp_parity(tmp_path_factory):
    return run_ddp_parity_cli('rtmdet-tiny', tmp_path_factory)
