"""The gloo DDP parity of test_ddp_cpu.py for RTMDet-tiny with QualityFocalLoss
(`tools/ddp_parity.py --model rtmdet-tiny`, 2 iterations): ours against mmdet on 2 processes,
checked; 1 against 2 processes reported, and exactly half (mmdet clamps the all-reduced
normalisers at 1, and from random init they are far below 1). A file of its own so that
pytest-xdist runs it beside the RetinaNet one."""
import pytest

pytest.importorskip('mmdet.models')

from test_ddp_cpu import (  # noqa: E402,F401 - the same tests, this model's fixture
    run_ddp_parity_cli,
    test_one_vs_two_processes_at_the_same_total_batch,
    test_runs_complete_distributed_with_both_losses,
    test_tool_verdict_and_outputs,
    test_two_processes_ours_matches_mmdet,
)


@pytest.fixture(scope='module')
def ddp_parity(tmp_path_factory):
    return run_ddp_parity_cli('rtmdet-tiny', tmp_path_factory)
