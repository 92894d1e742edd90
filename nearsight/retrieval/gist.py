"""The GIST scene descriptor of lear-gist (Douze et al., INRIA 2009), batched through torch FFTs.

lear-gist is the C library that produced the GIST1M benchmark vectors; this module computes the same
numbers (to float32 FFT rounding, ~1e-6 relative) for a whole batch at once, on CPU or CUDA:

1. per channel ``log(x + 1)``;
2. prefilter (fc = 4): mirror-pad 5 px, subtract a Gaussian low-pass, divide by
   ``0.2 + sqrt(|lowpass((mean_c out)^2)|)`` -- a local contrast shared by the channels (the square of the
   channel mean, as lear-gist's ``color_prefilt`` computes it), crop the padding back off;
3. a Gabor bank built at the image size: ``|ifft2(fft2(img) * G_k)|`` for every filter k;
4. each response averaged over an nblocks x nblocks grid of cells with edges at ``floor(i * size / nblocks)``;
5. layout: channel, then filter (scale-major), then cell as ``col * nblocks + row``; no normalisation.

Images are taken at their working size: like the C library, nothing here resizes
(``prepare_gist_image`` does the centre crop and resize that the encoders use).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PAD = 5  # lear-gist's mirror padding around the prefilter, in pixels
MIN_SIDE = 8  # lear-gist refuses smaller images


@dataclass(frozen=True)
class GistParams:
    """GIST configuration. Defaults are lear-gist's: 4x4 cells, (8, 8, 4) orientations, fc 4, 128 px."""
    nblocks: int = 4
    orientations: tuple[int, ...] = (8, 8, 4)
    fc_prefilter: float = 4.0
    image_size: int = 128

    def __post_init__(self):
        object.__setattr__(self, "orientations", tuple(int(o) for o in self.orientations))
        if not self.orientations or any(o < 1 for o in self.orientations):
            raise ValueError(f"orientations per scale must be positive integers, got {self.orientations!r}")
        if int(self.nblocks) != self.nblocks or self.nblocks < 1:
            raise ValueError(f"nblocks must be a positive integer, got {self.nblocks!r}")
        if self.fc_prefilter <= 0:
            raise ValueError(f"fc_prefilter must be positive, got {self.fc_prefilter!r}")
        if int(self.image_size) != self.image_size or self.image_size < MIN_SIDE:
            raise ValueError(f"image_size must be an integer >= {MIN_SIDE}, got {self.image_size!r}")

    @property
    def n_filters(self) -> int:
        return sum(self.orientations)

    def dim(self, channels: int = 3) -> int:
        """Descriptor length for images with ``channels`` channels (960 for colour defaults, 320 for gray)."""
        return channels * self.n_filters * self.nblocks * self.nblocks


# ---------------------------------------------------------------------------------------------
# Filter banks (built in float64 with numpy, cached per size, parameters and device)
# ---------------------------------------------------------------------------------------------

def _centred_freqs(n: int) -> np.ndarray:
    # lear-gist: f = i - n/2.0 (half-integers for odd n), later fftshifted (a roll by n // 2).
    return np.arange(n, dtype=np.float64) - n / 2.0


def gabor_bank(height: int, width: int, orientations: tuple[int, ...]) -> np.ndarray:
    """lear-gist's ``create_gabor``: (n_filters, height, width) float64 transfer functions in FFT order."""
    fy, fx = np.meshgrid(_centred_freqs(height), _centred_freqs(width), indexing="ij")
    fr = np.fft.fftshift(np.sqrt(fx * fx + fy * fy))
    theta = np.fft.fftshift(np.arctan2(fy, fx))
    filters = []
    for scale, n_or in enumerate(orientations):
        f0 = 0.3 / 1.85 ** scale
        s_theta = 16.0 * n_or ** 2 / 32.0 ** 2
        radial = -10.0 * 0.35 * (fr / height / f0 - 1.0) * (fr / width / f0 - 1.0)
        for j in range(n_or):
            t = theta + math.pi / n_or * j
            # one wrap into [-pi, pi], as the C code does
            t = np.where(t < -math.pi, t + 2 * math.pi, np.where(t > math.pi, t - 2 * math.pi, t))
            filters.append(np.exp(radial - 2.0 * s_theta * math.pi * t * t))
    return np.stack(filters)


def lowpass_matrix(n: int, fc: float) -> np.ndarray:
    """(n, n) complex128 circulant matrix of the prefilter's 1-D Gaussian low-pass along one axis.

    The 2-D transfer function ``exp(-(fx^2 + fy^2) / s1^2)`` is a product of two 1-D ones, so
    ``ifft2(fft2(X) * gfc) == Cy @ X @ Cx.T``: two small matrix products replace four FFTs of the
    awkward padded size (138 = 2 * 3 * 23 at 128 px), which is both faster and batch-friendly.
    """
    s1 = fc / math.sqrt(math.log(2.0))
    g = np.fft.fftshift(np.exp(-_centred_freqs(n) ** 2 / (s1 * s1)))
    return np.fft.ifft(g[:, None] * np.fft.fft(np.eye(n), axis=0), axis=0)


def pooling_matrix(n: int, nblocks: int) -> np.ndarray:
    """(nblocks, n) float64: row i averages pixels floor(i*n/nb) .. floor((i+1)*n/nb) - 1."""
    edges = [i * n // nblocks for i in range(nblocks + 1)]
    p = np.zeros((nblocks, n))
    for i in range(nblocks):
        if edges[i + 1] <= edges[i]:
            raise ValueError(f"{nblocks} blocks do not fit in {n} pixels")
        p[i, edges[i]:edges[i + 1]] = 1.0 / (edges[i + 1] - edges[i])
    return p


@dataclass(frozen=True)
class _Bank:
    pad_y: "object"      # (H + 2*PAD,) int64 mirror-padding indices
    pad_x: "object"      # (W + 2*PAD,)
    low_y: "object"      # (Hp, Hp) low-pass along y: float32, or complex64 for odd sizes
    low_x_t: "object"    # (Wp, Wp) transposed low-pass along x
    crop_y: "object"     # (H, Hp) low-pass rows of the un-padded region only
    crop_x_t: "object"   # (Wp, W)
    gabor: "object"      # (nf, H, W) float32
    pool_y: "object"     # (nb, H) float32 cell-mean weights
    pool_x_t: "object"   # (W, nb)
    divisible: bool      # cells are equal-size blocks: pool with a reshape instead of matmuls


@lru_cache(maxsize=16)
def _bank(height: int, width: int, nblocks: int, orientations: tuple[int, ...], fc: float, device: str) -> _Bank:
    import torch

    def mirror(n):  # lear-gist's padding repeats the edge pixel: 4 3 2 1 0 | 0 1 ... n-1 | n-1 ... n-5
        return torch.tensor(np.r_[PAD - 1:-1:-1, 0:n, n - 1:n - 1 - PAD:-1], dtype=torch.long, device=device)

    def lowpass(n):
        c = lowpass_matrix(n + 2 * PAD, fc)
        # Even padded sizes give a real symmetric kernel; odd ones a genuinely complex one.
        if np.abs(c.imag).max() < 1e-12:
            return torch.tensor(c.real, dtype=torch.float32, device=device)
        return torch.tensor(c, dtype=torch.complex64, device=device)

    ly, lx = lowpass(height), lowpass(width)
    f32 = dict(dtype=torch.float32, device=device)
    return _Bank(
        pad_y=mirror(height), pad_x=mirror(width),
        low_y=ly, low_x_t=lx.T.contiguous(),
        crop_y=ly[PAD:PAD + height].contiguous(), crop_x_t=lx[PAD:PAD + width].T.contiguous(),
        gabor=torch.tensor(gabor_bank(height, width, orientations), **f32),
        pool_y=torch.tensor(pooling_matrix(height, nblocks), **f32),
        pool_x_t=torch.tensor(pooling_matrix(width, nblocks).T.copy(), **f32),
        divisible=height % nblocks == 0 and width % nblocks == 0,
    )


def bank_for(height: int, width: int, params: GistParams, device) -> _Bank:
    """The cached filters for one working size, parameter set and device."""
    return _bank(int(height), int(width), params.nblocks, params.orientations, float(params.fc_prefilter),
                 str(device))


# ---------------------------------------------------------------------------------------------
# The computation
# ---------------------------------------------------------------------------------------------

def _as_nchw(images, device):
    """(n, H, W, C) or (n, H, W), numpy or torch, uint8 or float in 0..255 -> (n, C, H, W) float32 on device."""
    import torch

    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.require(images, requirements=("C", "W")))
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        x = x.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"images must be (n, H, W, C) or (n, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"images must be uint8 or float in 0..255, got dtype {x.dtype}")
    h, w = x.shape[-2:]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(f"images must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {w}x{h}")
    # Move the compact dtype first: a uint8 batch crosses PCIe at a quarter of the float32 size.
    return x.to(device).to(torch.float32)


def _lowpass(x, left, right_t):
    """``left @ x @ right_t`` over the last two axes; real part taken by the caller when complex."""
    if left.is_complex():
        x = x.to(left.dtype)
    return left @ x @ right_t


def prefilter(x, bank: _Bank):
    """lear-gist's ``color_prefilt`` / ``prefilt``: (n, C, H, W) float32 in 0..255 -> same shape, whitened."""
    import torch

    x = torch.log1p(x)
    xp = x.index_select(-2, bank.pad_y).index_select(-1, bank.pad_x)
    low = _lowpass(xp, bank.low_y, bank.low_x_t)
    out = xp - (low.real if low.is_complex() else low)
    contrast = _lowpass(out.mean(dim=1).square(), bank.crop_y, bank.crop_x_t).abs().sqrt_()
    inner = out[..., PAD:PAD + x.shape[-2], PAD:PAD + x.shape[-1]]
    return inner / contrast.add_(0.2)[:, None]


def _magnitude(z, out):
    """|z| for complex z into real ``out``. CPU torch.abs on complex goes through a slow scalar hypot."""
    import torch

    if z.is_cuda:
        return torch.abs(z, out=out)
    zr = torch.view_as_real(z)
    re, im = zr[..., 0], zr[..., 1]
    torch.mul(re, re, out=out)
    out.addcmul_(im, im)
    return out.sqrt_()


def _pool(a, bank: _Bank, nblocks: int):
    """(..., H, W) -> (..., nb, nb) cell means indexed [row, col]."""
    h, w = a.shape[-2:]
    if bank.divisible:
        return a.reshape(*a.shape[:-2], nblocks, h // nblocks, nblocks, w // nblocks).mean(dim=(-3, -1))
    return bank.pool_y @ (a @ bank.pool_x_t)


def _gabor_energy(y, bank: _Bank, nblocks: int, sub: int):
    """(n, C, H, W) prefiltered -> (n, C, nf, nb, nb) mean Gabor magnitudes per cell [row, col]."""
    import torch

    n, c, h, w = y.shape
    nf = bank.gabor.shape[0]
    spectrum = torch.fft.fft2(y.to(torch.complex64))
    result = torch.empty((n, c, nf, nblocks, nblocks), dtype=torch.float32, device=y.device)
    # Work buffers reused across sub-chunks: fresh multi-megabyte allocations per step cost page faults.
    zbuf = torch.empty((min(sub, n), c, nf, h, w), dtype=torch.complex64, device=y.device)
    abuf = torch.empty(zbuf.shape, dtype=torch.float32, device=y.device)
    for s in range(0, n, sub):
        k = min(sub, n - s)
        z, a = zbuf[:k], abuf[:k]
        torch.mul(spectrum[s:s + k, :, None], bank.gabor, out=z)
        torch.fft.ifft2(z, out=z)  # backward norm divides by H*W, as lear-gist does by hand
        result[s:s + k] = _pool(_magnitude(z, a), bank, nblocks)
    return result


def _layout(cells):
    """(n, C, nf, nb[row], nb[col]) -> (n, C*nf*nb*nb) with cells ordered col * nb + row (lear-gist)."""
    return cells.transpose(-1, -2).reshape(cells.shape[0], -1)


def _chunks(device) -> tuple[int, int]:
    """(images per prefilter chunk, images per Gabor sub-chunk). Small sub-chunks keep CPU work in cache."""
    return (256, 64) if str(device).startswith("cuda") else (32, 1)


def _run(x, params: GistParams, device):
    import torch

    n, c, h, w = x.shape
    bank = bank_for(h, w, params, device)
    chunk, sub = _chunks(device)
    out = np.empty((n, params.dim(c)), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, n, chunk):
            y = prefilter(x[s:s + chunk], bank)
            cells = _gabor_energy(y, bank, params.nblocks, sub)
            out[s:s + chunk] = _layout(cells).cpu().numpy()
    return out


def gist(images, params: GistParams = GistParams(), device="cpu") -> np.ndarray:
    """lear-gist GIST of a batch of images at their working size.

    images: (n, H, W, 3) colour or (n, H, W) gray, numpy or torch, uint8 or float in 0..255.
    Returns (n, C * n_filters * nblocks^2) float32: 960-d for colour defaults, 320-d for gray.
    """
    import torch

    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im) for im in images])
    n = images.shape[0]
    with torch.inference_mode():
        x = _as_nchw(images, device)
    if n == 0:
        return np.empty((0, params.dim(x.shape[1])), dtype=np.float32)
    return _run(x, params, device)


def masked_gist(images, masks, params: GistParams = GistParams(), device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """GIST of images with holes (scene completion), and per-dimension weights that ignore the holes.

    images: as ``gist``; masks: (n, H, W) bool, True where the pixel is valid.
    Returns ``(desc, weights)``, both (n, D) float32 in ``gist``'s layout; ``weights`` is the fraction
    of valid pixels in each cell, repeated over channels and filters, so that
    ``sum(weights * (desc - other)^2)`` compares only what the hole leaves.
    """
    import torch

    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im) for im in images])
    with torch.inference_mode():
        x = _as_nchw(images, device)
        m = masks if isinstance(masks, torch.Tensor) else torch.from_numpy(np.require(masks, requirements=("C", "W")))
        if tuple(m.shape) != (x.shape[0], *x.shape[-2:]):
            raise ValueError(f"masks must be (n, H, W) = {(x.shape[0], *x.shape[-2:])}, got {tuple(m.shape)}")
        valid = m.to(device).to(torch.float32)[:, None]  # (n, 1, H, W)
        # Fill the hole with the mean colour of the valid pixels before filtering. Whatever sits in the
        # hole leaks into the responses of nearby valid pixels (filters are global in frequency, the
        # prefilter normalises contrast over ~6 px); a flat fill at the surrounding mean adds no texture
        # of its own, and keeps the step at the hole's border as small as a constant can make it,
        # whereas zeros (black) would draw a strong artificial edge around every hole.
        count = valid.sum(dim=(-2, -1), keepdim=True)
        mean = (x * valid).sum(dim=(-2, -1), keepdim=True) / count.clamp(min=1.0)
        x = torch.where(valid > 0, x, mean)
        bank = bank_for(x.shape[-2], x.shape[-1], params, device)
        frac = _pool(valid[:, 0], bank, params.nblocks)  # (n, nb[row], nb[col])
        nf = params.n_filters
        weights = frac.transpose(-1, -2).reshape(x.shape[0], 1, -1).expand(-1, x.shape[1] * nf, -1)
        weights = weights.reshape(x.shape[0], -1).cpu().numpy().astype(np.float32)
    if x.shape[0] == 0:
        return np.empty((0, params.dim(x.shape[1])), dtype=np.float32), weights
    return _run(x, params, device), weights


def prepare_gist_image(pil_image, size: int, gray: bool = False) -> np.ndarray:
    """PIL image -> centre square crop, PIL bilinear resize to size x size.

    Returns (size, size, 3) uint8 RGB, or with ``gray`` (size, size) uint8 luminance (PIL "L").
    """
    from PIL import Image

    image = pil_image.convert("L" if gray else "RGB")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = image.crop((left, top, left + side, top + side))
    # Explicit filter, no reducing_gap: the same pixels every time, whatever PIL's default becomes.
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
