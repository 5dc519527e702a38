#!/usr/bin/env bash
# A copy of the package at git revision REV, importable beside this checkout as `mft_old` (its
# torch.library ops and registry entries renamed, so both load in one process), for
# tools/dev/host_probe.py --baseline DIR:   bash tools/dev/make_baseline.sh HEAD .baseline
set -euo pipefail
rev=${1:?usage: make_baseline.sh REV DIR}
dir=${2:?usage: make_baseline.sh REV DIR}
rm -rf "$dir/mft_old"
mkdir -p "$dir"
git archive "$rev" mmdet_focal_triton | tar -x -C "$dir"
mv "$dir/mmdet_focal_triton" "$dir/mft_old"
grep -rl mmdet_focal_triton "$dir/mft_old" | xargs sed -i 's/mmdet_focal_triton/mft_old/g'
# its mmdet / mmengine registry entries replace this checkout's names (same classes' names)
sed -i "s/register_module()/register_module(force=True)/; \
s/register_module('CPUSyncBN')/register_module('CPUSyncBN', force=True)/" "$dir"/mft_old/*.py
echo "baseline of $(git rev-parse --short "$rev") in $dir/mft_old"
