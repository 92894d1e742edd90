"""Image compositing shared by scene completion and colorization: arrays in, arrays out.

- ``lab``: exact sRGB <-> CIE L*a*b* (D65).
- ``align``: local context matching (translation x scale search by FFT), placing a candidate.
- ``seam``: two-label graph-cut seam between query and candidate (PyMaxflow).
- ``poisson``: gradient-domain blending with a multigrid-preconditioned CG solver.
- ``composite``: the chain warp -> seam -> blend for one candidate.
- ``alpha_expansion``: multi-label graph cut (colorization's chroma choice).
- ``transfer``: Reinhard colour statistics transfer.

Nothing is imported here, so ``import nearsight.retrieval.compose.lab`` does not pay for maxflow or cv2.
"""
