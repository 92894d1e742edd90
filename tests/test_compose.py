"""Compositing stages on synthetic images whose right answer is known."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from nearsight.retrieval.compose.align import (Placement, best_placement, context_mask, resize_image, texture_map,
                                               warp_candidate)
from nearsight.retrieval.compose.composite import composite_candidate
from nearsight.retrieval.compose.lab import lab_to_rgb, rgb_to_lab, to_uint8
from nearsight.retrieval.compose.poisson import block_pcg, poisson_blend, region_laplacian
from nearsight.retrieval.compose.seam import graphcut_seam
from nearsight.retrieval.errors import InvalidQuery


def smooth_texture(shape, sigma=3.0, amplitude=40.0, seed=0):
    """A smooth random field, (H, W, C) float32: resampling it loses little, so matches are sharp."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), (sigma, sigma, 0)[:len(shape)])
    return (field / field.std() * amplitude).astype(np.float32)


def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# ---------------------------------------------------------------------------------------- lab
def test_lab_round_trip_and_reference_values():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    lab = rgb_to_lab(rgb)
    assert lab.dtype == np.float32 and lab.shape == rgb.shape
    assert np.abs(lab_to_rgb(lab) * 255.0 - rgb).max() < 0.01
    assert np.array_equal(to_uint8(lab_to_rgb(lab)), rgb)
    # Float input in 0..1 means the same colours as uint8.
    assert np.allclose(rgb_to_lab(rgb.astype(np.float32) / 255.0), lab, atol=1e-4)
    # White, black and sRGB red against the published CIE values.
    ref = rgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]], dtype=np.uint8))
    assert np.allclose(ref[0], [100.0, 0.0, 0.0], atol=1e-4)
    assert np.allclose(ref[1], [0.0, 0.0, 0.0], atol=1e-4)
    assert np.allclose(ref[2], [53.24, 80.09, 67.20], atol=0.02)
    skimage_color = pytest.importorskip("skimage.color")
    assert np.abs(skimage_color.rgb2lab(rgb) - lab).max() < 0.01


def test_lab_to_rgb_clips_out_of_gamut():
    rgb = lab_to_rgb(np.array([[50.0, 120.0, -120.0]]))
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert lab_to_rgb(np.array([[50.0, 120.0, -120.0]]), clip=False).min() < 0.0


# -------------------------------------------------------------------------------------- align
def test_context_mask_is_a_ring_outside_the_hole():
    hole = disk((101, 101), 50, 50, 10)
    ctx = context_mask(hole, radius=20)
    assert not (ctx & hole).any()
    assert ctx[50, 50 + 10 + 20] and not ctx[50, 50 + 10 + 22]
    assert ctx[50 - 25, 50]
    assert not context_mask(np.zeros((5, 5), bool)).any()


def test_texture_map_is_zero_on_flat_and_high_on_texture():
    img = np.zeros((40, 60), np.float32)
    img[:, 30:] = np.random.default_rng(0).normal(0, 20, size=(40, 30))
    tex = texture_map(img)
    assert tex.shape == (40, 60) and tex.dtype == np.float32
    assert tex[:, :20].max() == 0.0
    assert tex[:, 40:].mean() > 5.0
    # A single step edge (2 px of gradient) is removed by the 5x5 median: it is not texture.
    edge = np.zeros((40, 60), np.float32)
    edge[:, 30:] = 50.0
    assert texture_map(edge).max() == 0.0
    # Lab input: channel 0 is used.
    lab = np.stack([img, np.zeros_like(img), np.full_like(img, 9.0)], axis=2)
    assert np.array_equal(texture_map(lab), tex)


def test_shifted_copy_found_at_exact_offset():
    big = smooth_texture((260, 300, 3))
    query = big[60:60 + 160, 80:80 + 200]
    hole = np.zeros((160, 200), bool)
    hole[60:100, 80:130] = True
    ctx = context_mask(hole, 30)
    candidate = big[45:45 + 160, 100:100 + 200]  # query(y, x) = candidate(y + 15, x - 20)
    p = best_placement(query, ctx, candidate, must_cover=hole)
    assert (p.dy, p.dx, p.scale) == (-15, 20, 1.0)
    assert p.ssd < 1e-6 and p.texture < 1e-6
    warped, covered = warp_candidate(candidate, p, query.shape[:2])
    assert np.allclose(warped[covered], query[covered], atol=1e-4)
    assert covered[hole].all()


def test_scaled_copy_found_at_right_scale_and_offset():
    big = smooth_texture((300, 340, 3), sigma=4.0)
    H, W = 160, 200
    query = big[100:100 + H, 120:120 + W]
    hole = np.zeros((H, W), bool)
    hole[60:100, 80:130] = True
    ctx = context_mask(hole, 30)
    # The candidate shows the scene magnified by 1/0.9: shrinking it by 0.9 gives the query back.
    src = big[80:80 + 180, 105:105 + 225]
    candidate = resize_image(src, (200, 250))
    p = best_placement(query, ctx, candidate, must_cover=hole)
    assert p.scale == 0.90
    assert abs(p.dy - (-20)) <= 1 and abs(p.dx - (-15)) <= 1
    warped, covered = warp_candidate(candidate, p, (H, W))
    err = np.abs(warped - query)[ctx & covered].mean()
    assert err < 0.05 * np.abs(query).mean()


def test_luminance_only_single_channel():
    big = smooth_texture((200, 200, 1), seed=3)
    query = big[40:160, 50:170]
    hole = disk(query.shape[:2], 60, 60, 15)
    candidate = big[30:150, 55:175]  # query(y, x) = candidate(y + 10, x - 5)
    p = best_placement(query[:, :, 0], context_mask(hole, 25), candidate[:, :, 0])
    assert (p.dy, p.dx, p.scale) == (-10, 5, 1.0)
    warped, covered = warp_candidate(candidate[:, :, 0], p, query.shape[:2])
    assert warped.shape == (120, 120, 1)


def test_fft_costs_equal_brute_force():
    """Every translation's cost from the FFT matches a direct masked sum over the context."""
    rng = np.random.default_rng(7)
    query = rng.normal(size=(24, 30, 2)).astype(np.float32) * 10
    candidate = rng.normal(size=(28, 33, 2)).astype(np.float32) * 10
    hole = np.zeros((24, 30), bool)
    hole[9:14, 12:18] = True
    ctx = context_mask(hole, 4)
    tw, op = 0.7, 3.0
    p = best_placement(query, ctx, candidate, scales=(1.0,), texture_weight=tw, offset_penalty=op)
    tq, tc = texture_map(query), texture_map(candidate)
    ys, xs = np.nonzero(ctx)
    n = ys.size
    diagonal = np.hypot(24, 30)
    best = None
    for dy in range(-33, 34):
        for dx in range(-33, 34):
            cy, cx = ys - dy, xs - dx
            if cy.min() < 0 or cx.min() < 0 or cy.max() >= 28 or cx.max() >= 33:
                continue
            ssd = ((query[ys, xs] - candidate[cy, cx]) ** 2).sum() / n
            tex = ((tq[ys, xs] - tc[cy, cx]) ** 2).sum() / n
            off = np.hypot(dy + 14 - 12, dx + 16.5 - 15)
            cost = ssd + tw * tex + op * off / diagonal
            if best is None or cost < best[0]:
                best = (cost, dy, dx, ssd, tex)
    assert (p.dy, p.dx) == (best[1], best[2])
    assert p.cost == pytest.approx(best[0], rel=1e-6)
    assert p.ssd == pytest.approx(best[3], rel=1e-6)
    assert p.texture == pytest.approx(best[4], rel=1e-5)


def test_placement_errors_and_rescale():
    query = np.zeros((50, 50, 3), np.float32)
    hole = np.zeros((50, 50), bool)
    hole[20:30, 20:30] = True
    with pytest.raises(InvalidQuery, match="cannot contain"):
        best_placement(query, context_mask(hole, 15), np.zeros((20, 20, 3), np.float32))
    with pytest.raises(InvalidQuery, match="context mask is empty"):
        best_placement(query, np.zeros((50, 50), bool), query)
    with pytest.raises(InvalidQuery, match="channels"):
        best_placement(query, context_mask(hole, 5), np.zeros((50, 50, 1), np.float32))
    p = Placement(dy=-3, dx=5, scale=0.9, ssd=1.0, texture=2.0, cost=3.0)
    assert (p.rescaled(4).dy, p.rescaled(4).dx, p.rescaled(4).scale) == (-12, 20, 0.9)


# --------------------------------------------------------------------------------------- seam
def test_seam_goes_around_a_region_where_the_images_differ():
    shape = (120, 160)
    query = smooth_texture((*shape, 3), sigma=1.5, amplitude=0.1, seed=11) + 0.5  # sRGB-like 0..1 units
    candidate = query.copy()
    hole = disk(shape, 60, 70, 15)
    differ = disk(shape, 60, 100, 14)  # touches the hole's right side
    candidate[differ] = smooth_texture((*shape, 3), sigma=1.5, amplitude=0.1, seed=12)[differ] + 0.5
    covered = np.ones(shape, bool)
    take, cost = graphcut_seam(query, candidate, hole, covered)
    assert take[hole].all()
    # The cut may not run through the differing patch: it is taken whole, never split.
    assert take[differ].all()
    far = ndimage.distance_transform_edt(~(hole | differ)) > 10
    assert not take[far].any()
    assert cost > 0


def test_seam_respects_forced_labels():
    shape = (60, 80)
    rng = np.random.default_rng(2)
    query = rng.uniform(size=(*shape, 3))
    candidate = query + rng.normal(size=(*shape, 3)) * 0.001  # near-identical: the seam could go anywhere
    hole = np.zeros(shape, bool)
    hole[25:35, 30:45] = True
    covered = np.zeros(shape, bool)
    covered[10:50, 20:60] = True
    take, _ = graphcut_seam(query, candidate, hole, covered)
    assert take[hole].all() and not take[~covered].any()
    take2, _ = graphcut_seam(query, candidate, hole, covered, max_distance=3)
    dist = ndimage.distance_transform_edt(~hole)
    assert take2[hole].all() and not take2[dist > 3].any()
    covered[30, 40] = False
    with pytest.raises(InvalidQuery, match="uncovered"):
        graphcut_seam(query, candidate, hole, covered)


def test_guided_seam_stays_in_the_band():
    shape = (100, 120)
    rng = np.random.default_rng(5)
    query = rng.uniform(size=(*shape, 3))
    candidate = query + rng.normal(size=(*shape, 3)) * 0.02
    hole = disk(shape, 50, 60, 12)
    guide = disk(shape, 50, 60, 20)
    take, cost = graphcut_seam(query, candidate, hole, np.ones(shape, bool), guide=guide, band=3)
    dist = ndimage.distance_transform_edt(~hole)
    assert take[hole].all() and take[disk(shape, 50, 60, 16)].all()  # deep inside the guide: forced
    assert not take[dist > 20 - 12 + 4].any()                           # beyond the band: query
    full, full_cost = graphcut_seam(query, candidate, hole, np.ones(shape, bool))
    assert full_cost <= cost + 1e-9  # the unrestricted cut is never worse


# ------------------------------------------------------------------------------------ poisson
def blob_region(shape, frac, seed=0):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), min(shape) / 10)
    return field > np.quantile(field, 1 - frac)


@pytest.mark.parametrize("size", [40, 200])  # 40: direct solve; 200: multigrid-preconditioned CG
def test_poisson_identity_and_constant_offset(size):
    target = smooth_texture((size, size, 3), sigma=2.0, seed=5) + 50.0
    region = blob_region((size, size), 0.3)
    assert np.allclose(poisson_blend(target, target, region), target, atol=1e-3)
    # A source that differs by a constant has the target's gradients: the target comes back.
    out = poisson_blend(target, target + 17.0, region)
    assert np.allclose(out, target, atol=1e-3)
    assert np.array_equal(out[~region], target[~region].astype(np.float32))


def test_poisson_flat_source_gives_smooth_harmonic_fill():
    H, W = 150, 180
    yy, xx = np.mgrid[:H, :W].astype(np.float64)
    target = np.stack([0.3 * yy + 0.2 * xx, 100 - 0.1 * xx, np.full((H, W), 5.0)], axis=2)
    region = disk((H, W), 75, 90, 50)
    source = np.full((H, W, 3), 33.0)
    out = poisson_blend(target, source, region)
    # Outside: the target exactly. Inside: the harmonic fill of a linear boundary is that plane.
    assert np.array_equal(out[~region], target[~region].astype(np.float32))
    assert np.abs(out - target)[region].max() < 1e-2
    lap = ndimage.laplace(out[..., 0].astype(np.float64))
    inner = ndimage.binary_erosion(region, iterations=2)
    assert np.abs(lap[inner]).max() < 1e-2


def test_poisson_matches_direct_solve_and_edge_cases():
    import scipy.sparse.linalg as spla

    rng = np.random.default_rng(4)
    target = rng.normal(size=(160, 160, 3)) * 20
    source = rng.normal(size=(160, 160, 3)) * 20
    region = blob_region((160, 160), 0.25, seed=9)
    region[0, :] = True  # touching the image border: a free (Neumann) edge there
    out = poisson_blend(target, source, region)
    # Reference: the same equations, solved directly, written without the membrane trick.
    a, ys, xs = region_laplacian(region)
    b = np.zeros((ys.size, 3))
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        qy, qx = ys + dy, xs + dx
        ok = (qy >= 0) & (qy < 160) & (qx >= 0) & (qx < 160)
        qy, qx = np.clip(qy, 0, 159), np.clip(qx, 0, 159)
        b[ok] += source[ys[ok], xs[ok]] - source[qy[ok], qx[ok]]
        edge = ok & ~region[qy, qx]
        b[edge] += target[qy[edge], qx[edge]]
    ref = spla.splu(a.tocsc()).solve(b)
    assert np.abs(out[region] - ref).max() < 1e-2
    # Whole image: no boundary, the source shifted to the target's mean.
    whole = poisson_blend(target, source, np.ones((160, 160), bool))
    assert np.allclose(whole.mean(axis=(0, 1)), target.mean(axis=(0, 1)), atol=1e-3)
    assert np.allclose(whole - source, (whole - source)[0, 0], atol=1e-3)
    # Empty region: the target; gray (H, W) arrays work.
    assert np.array_equal(poisson_blend(target[..., 0], source[..., 0], np.zeros((160, 160), bool)),
                          target[..., 0].astype(np.float32))
    with pytest.raises(InvalidQuery):
        poisson_blend(target, source[:10], region)


def test_block_pcg_solves_each_column():
    a, _, _ = region_laplacian(disk((30, 30), 15, 15, 10))
    rng = np.random.default_rng(0)
    b = rng.normal(size=(a.shape[0], 3))
    b[:, 2] = 0.0
    x, iters, ok = block_pcg(a, b, lambda r: r / 4.0, np.zeros_like(b), rtol=1e-10, maxiter=1000)
    assert ok and iters > 0
    assert np.abs(a @ x - b).max() < 1e-7
    assert np.all(x[:, 2] == 0)


# ---------------------------------------------------------------------------------- composite
def test_composite_keeps_query_far_from_hole_and_fills_it():
    H, W = 128, 160
    truth = np.clip(smooth_texture((H, W, 3), sigma=3, amplitude=0.15, seed=21) + 0.5, 0, 1)
    hole = disk((H, W), 64, 80, 18)
    query = truth.copy()
    query[hole] = 0.0  # nothing of the truth is left in the hole
    # The candidate: the true scene, shifted by (6, -4) px and 8% brighter.
    candidate = np.zeros((H + 20, W + 20, 3), np.float32)
    candidate[6:6 + H, 10:10 + W] = np.clip(truth + 0.08, 0, 1)
    # On the query grid the candidate sits at (dy, dx) = (-6, -10).
    query_lab = rgb_to_lab(query)
    filled = query_lab.copy()
    filled[hole] = query_lab[~hole].mean(axis=0)
    p = best_placement(filled, context_mask(hole, 25), rgb_to_lab(candidate), must_cover=hole)
    assert (p.dy, p.dx, p.scale) == (-6, -10, 1.0)
    comp = composite_candidate(query, candidate, hole, p)
    dist = ndimage.distance_transform_edt(~hole)
    assert comp.take[hole].all()
    assert np.array_equal(comp.rgb[~comp.take], query[~comp.take].astype(np.float32))
    assert not comp.take[dist > 60].any()
    # Gradient-domain blending removes the brightness offset: the hole gets the truth back.
    assert np.abs(comp.rgb - truth)[hole].mean() < 0.01
    assert comp.rgb.dtype == np.float32 and comp.seam_cost >= 0


# --------------------------------------------------------------------------- full-size re-blend
def fine_texture(shape, seed=0):
    """(H, W, 3) uint8 with detail at every scale down to one pixel: what a reduction blurs away."""
    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.normal(size=shape), (12, 12, 0)) * 600
    fine = ndimage.gaussian_filter(rng.normal(size=shape), (0.7, 0.7, 0)) * 60
    return np.clip(128 + coarse + fine, 0, 255).astype(np.uint8)


def high_frequency(image, mask):
    """Mean squared difference of neighbours inside ``mask`` (L*, per pixel pair): detail energy."""
    lum = rgb_to_lab(np.asarray(image))[:, :, 0].astype(np.float64)
    dx = (lum[:, 1:] - lum[:, :-1])[mask[:, 1:] & mask[:, :-1]]
    dy = (lum[1:] - lum[:-1])[mask[1:] & mask[:-1]]
    return float(np.mean(np.concatenate([dx, dy]) ** 2))


@pytest.mark.parametrize("scaled", [(200, 260), (330, 420), (150, 190)])
def test_place_window_is_warp_candidate_over_a_window(scaled):
    from nearsight.retrieval.compose.fullres import place_window

    source = fine_texture((200, 260, 3), seed=3)
    p = Placement(dy=-7, dx=5, scale=1.0, ssd=0.0, texture=0.0, cost=0.0)
    reference, covered = warp_candidate(resize_image(source.astype(np.float32) / 255, scaled), p, (180, 240))
    window = (20, 150, 0, 240)
    got, got_covered = place_window(source, scaled, -7, 5, window)
    assert got.shape == (130, 240, 3) and np.array_equal(got_covered, covered[20:150])
    err = np.abs(got - reference[20:150])
    if scaled == (150, 190):  # shrinking: a Gaussian low-pass here, area averaging there
        assert err.mean() < 0.02
    else:  # the same bilinear samples
        assert err.max() < 1e-4


def test_reblend_is_sharp_inside_and_the_photo_outside():
    from nearsight.retrieval.compose.fullres import reblend

    H, W = 240, 320
    truth = fine_texture((H, W, 3), seed=5)
    hole = disk((H, W), 120, 150, 50)
    photo = truth.copy()
    photo[hole] = 0
    # The source: the same scene 6% brighter, placed at (0, 0) at its own size; the seam found on a 4x smaller
    # grid (the composite's), upsampled.
    source = np.clip(truth * 1.06, 0, 255).astype(np.uint8)
    small = ndimage.binary_dilation(disk((60, 80), 30, 37.5, 12.5), iterations=2)
    out = reblend(photo, hole, source, (H, W), 0, 0, small)
    assert out.solve_scale == 1.0 and out.region[hole].all()
    assert np.array_equal(out.rgb[~out.region], photo[~out.region])
    # The hole gets the truth back (Poisson removes the brightness change) with its detail: an upsampled
    # quarter-size composite keeps a small share of it.
    assert np.abs(out.rgb.astype(float) - truth)[hole].mean() < 3.0
    blurred = np.asarray(resize_image(resize_image(truth.astype(np.float32), (60, 80)), (H, W))).clip(0, 255)
    assert high_frequency(out.rgb, hole) > 0.9 * high_frequency(truth, hole)
    assert high_frequency(blurred.astype(np.uint8), hole) < 0.3 * high_frequency(truth, hole)
    # Over the pixel cap the correction is solved smaller; the source's detail stays full size.
    capped = reblend(photo, hole, source, (H, W), 0, 0, small, max_pixels=2000)
    assert capped.solve_scale < 0.5 and np.array_equal(capped.region, out.region)
    assert np.array_equal(capped.rgb[~capped.region], photo[~capped.region])
    assert np.abs(capped.rgb.astype(float) - truth)[hole].mean() < 4.0
    assert high_frequency(capped.rgb, hole) > 0.9 * high_frequency(truth, hole)
    with pytest.raises(InvalidQuery, match="uncovered"):
        reblend(photo, hole, source, (H, W), 0, 120, small)


# ----------------------------------------------------------------------------------- crops
def test_crop_finder_sees_crops_mirrors_and_the_reverse_not_a_shifted_scene():
    from nearsight.retrieval.compose.crops import DEFAULT_THRESHOLD, CropFinder

    big = fine_texture((300, 400, 3), seed=8)
    query = big[20:260, 30:350].copy()      # 240 x 320
    hole = disk(query.shape[:2], 110, 170, 45)
    query[hole] = 0
    finder = CropFinder(query, ~hole)
    crop = np.asarray(resize_image(big[60:230, 80:300].astype(np.float32), (119, 154))).astype(np.uint8)  # ~70%
    m = finder.match(crop)
    assert m.is_copy() and m.inside and not m.mirrored and abs(m.side_ratio - 0.69) < 0.04
    m = finder.match(crop[:, ::-1])
    assert m.is_copy() and m.mirrored
    whole = np.asarray(resize_image(big.astype(np.float32), (150, 200))).astype(np.uint8)  # the query is 80% of it
    m = finder.match(whole)
    assert m.is_copy() and not m.inside and m.colour > 0.9
    # The same scene framed 40 px aside (partly overlapping) or another scene is no crop.
    assert finder.match(big[60:300, 70:390]).ncc < DEFAULT_THRESHOLD  # the structure alone says no
    assert not finder.match(fine_texture((240, 320, 3), seed=9)).is_copy()
    with pytest.raises(InvalidQuery, match="min_side_ratio"):
        CropFinder(query, ~hole, min_side_ratio=0)
