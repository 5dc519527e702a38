"""Triton kernels of the fused losses (`focal`; the rest of the family: `quality_focal`,
`varifocal`), and the pieces they share (`common`)."""
