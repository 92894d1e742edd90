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
import threading
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


def _lowpass_transfer(n: int, fc: float) -> np.ndarray:
    """(n,) the prefilter's 1-D Gaussian ``exp(-f^2 / s1^2)`` in FFT order (lear-gist's fftshift of centred f)."""
    s1 = fc / math.sqrt(math.log(2.0))
    return np.fft.fftshift(np.exp(-_centred_freqs(n) ** 2 / (s1 * s1)))


def lowpass_matrix(n: int, fc: float) -> np.ndarray:
    """(n, n) complex128 circulant matrix of the prefilter's low-pass along one axis: ifft(g * fft(x)).

    The 2-D transfer function ``exp(-(fx^2 + fy^2) / s1^2)`` is a product of two 1-D ones, so
    ``ifft2(fft2(X) * gfc) == Cy @ X @ Cx.T``. Dense reference; the computation uses ``lowpass_factors``.
    """
    g = _lowpass_transfer(n, fc)
    return np.fft.ifft(g[:, None] * np.fft.fft(np.eye(n), axis=0), axis=0)


def lowpass_factors(n: int, fc: float, rtol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """``lowpass_matrix(n, fc) ~= up @ down``: (n, r) and (r, n), keeping the frequencies whose gain is
    above ``rtol`` (far under float32 rounding).

    The Gaussian passes about 43 frequencies (|f| <= 21 at fc = 4) whatever the image size, so the
    138 x 138 circulant (266 x 266 at 256 px) is a rank-43 product of thin matrices: several times
    fewer flops than dense products, and no FFTs of the awkward padded size (138 = 2 * 3 * 23).
    Even n gives a real symmetric kernel, factored with cosines and sines (float64, real); odd n
    (half-integer centred frequencies) a genuinely complex one, factored with complex exponentials.
    """
    g = _lowpass_transfer(n, fc)
    keep = np.flatnonzero(g > rtol * g.max())
    pos = np.arange(n)
    if n % 2 == 0:  # g[k] == g[n - k]: pair the two into 2 g[k] cos(2 pi k (a - b) / n)
        ups, downs = [], []
        for k in keep[keep <= n // 2]:
            theta = 2 * math.pi * k * pos / n
            pair = 0 < k < n // 2
            ups.append((2 if pair else 1) * g[k] * np.cos(theta))
            downs.append(np.cos(theta) / n)
            if pair:
                ups.append(2 * g[k] * np.sin(theta))
                downs.append(np.sin(theta) / n)
        return np.stack(ups, axis=1), np.stack(downs)
    phase = np.exp(2j * math.pi * np.outer(pos, keep) / n)  # (n, r)
    return phase * g[keep], phase.conj().T / n


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
    # The prefilter's low-pass as a rank-r product per axis (see lowpass_factors), mirror padding folded in:
    # low(pad(x)) = up_y @ (down_y @ x @ down_x_t) @ up_x_t; float32, or complex64 for odd sizes.
    down_y: "object"     # (r, H)
    down_x_t: "object"   # (W, r)
    up_y: "object"       # (Hp, r)
    up_x_t: "object"     # (r, Wp)
    crop_down_y: "object"  # (r, Hp): the low-pass of a padded image, seen on the un-padded region only
    crop_down_x_t: "object"  # (Wp, r)
    crop_up_y: "object"  # (H, r)
    crop_up_x_t: "object"  # (r, W)
    pad_y: "object"      # (Hp,) int64 mirror-padding indices
    pad_x: "object"      # (Wp,)
    gabor: "object"      # (nf, H, W) float32
    pool_y: "object"     # (nb, H) float32 cell-mean weights
    pool_x_t: "object"   # (W, nb)
    divisible: bool      # cells are equal-size blocks: pool with a reshape instead of matmuls


def _mirror_indices(n: int) -> np.ndarray:
    """lear-gist's padding repeats the edge pixel: 4 3 2 1 0 | 0 1 ... n-1 | n-1 ... n-5."""
    return np.r_[PAD - 1:-1:-1, 0:n, n - 1:n - 1 - PAD:-1]


@lru_cache(maxsize=16)
def _bank(height: int, width: int, nblocks: int, orientations: tuple[int, ...], fc: float, device: str) -> _Bank:
    import torch

    def axis(n):
        up, down = lowpass_factors(n + 2 * PAD, fc)
        pad = np.zeros((n + 2 * PAD, n))
        pad[np.arange(n + 2 * PAD), _mirror_indices(n)] = 1.0
        # The padding folded into the factor (down @ P): no padded copy of any channel is ever made.
        dtype = torch.complex64 if np.iscomplexobj(up) else torch.float32
        parts = (up, down @ pad, up[PAD:PAD + n], down)  # up, down, crop_up, crop_down
        return [torch.tensor(p, dtype=dtype, device=device) for p in parts]

    uy, dy, cuy, cdy = axis(height)
    ux, dx, cux, cdx = axis(width)
    f32 = dict(dtype=torch.float32, device=device)
    idx = dict(dtype=torch.long, device=device)
    return _Bank(
        down_y=dy, down_x_t=dx.T.contiguous(), up_y=uy, up_x_t=ux.T.contiguous(),
        crop_down_y=cdy, crop_down_x_t=cdx.T.contiguous(), crop_up_y=cuy, crop_up_x_t=cux.T.contiguous(),
        pad_y=torch.tensor(_mirror_indices(height), **idx), pad_x=torch.tensor(_mirror_indices(width), **idx),
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

def _as_nchw(images):
    """(n, H, W, C) or (n, H, W), numpy or torch, uint8 or float in 0..255 -> (n, C, H, W) view, same dtype."""
    import torch

    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im) for im in images])
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
    return x


def _to_device(x, device):
    """A chunk -> contiguous float32 on the device; the compact dtype crosses PCIe (uint8 is 4x smaller)."""
    import torch

    return x.to(device).to(torch.float32).contiguous()


def prefilter(x, bank: _Bank):
    """lear-gist's ``color_prefilt`` / ``prefilt``: (n, C, H, W) float32 in 0..255 -> same shape, whitened.

    The low-pass is linear, so the channel mean of ``pad(x) - low(pad(x))`` is
    ``pad(mean_c x) - low(pad(mean_c x))``: each channel's low-pass is only needed on the un-padded
    region, and only the mean image is ever padded.
    """
    import torch

    h, w = x.shape[-2:]
    x = torch.log1p(x)
    complex_ = bank.down_y.is_complex()
    core = bank.down_y @ (x.to(bank.down_y.dtype) if complex_ else x) @ bank.down_x_t  # (n, C, r, r)
    up_y, up_x_t = bank.up_y, bank.up_x_t
    low = up_y[PAD:PAD + h] @ core @ up_x_t[:, PAD:PAD + w]  # (n, C, H, W)
    low_mean = up_y @ core.mean(dim=1) @ up_x_t  # (n, Hp, Wp)
    if complex_:
        low, low_mean = low.real, low_mean.real  # lear-gist keeps the real part of its inverse FFT
    mean = x.mean(dim=1)
    energy = mean.index_select(-2, bank.pad_y).index_select(-1, bank.pad_x).sub_(low_mean).square_()
    if complex_:
        energy = energy.to(bank.crop_down_y.dtype)
    contrast = bank.crop_up_y @ (bank.crop_down_y @ energy @ bank.crop_down_x_t) @ bank.crop_up_x_t
    contrast = contrast.abs().sqrt_().add_(0.2)  # (n, H, W)
    return x.sub_(low).div_(contrast[:, None])


_ABS_POOL = None


def _magnitude(z, out):
    """|z| for complex z into real ``out``.

    On CPU, torch's complex abs goes through a scalar hypot (about 8x slower than numpy's vectorised
    one here), so numpy does it, split over as many threads as torch uses (numpy releases the GIL).
    """
    import torch

    if z.device.type != "cpu":
        return torch.abs(z, out=out)
    global _ABS_POOL
    zn, an = z.numpy().reshape(-1, *z.shape[-2:]), out.numpy().reshape(-1, *out.shape[-2:])
    threads = min(torch.get_num_threads(), len(zn))
    if threads <= 1:
        np.abs(zn, out=an)
        return out
    if _ABS_POOL is None or _ABS_POOL._max_workers < threads - 1:
        from concurrent.futures import ThreadPoolExecutor
        _ABS_POOL = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="gist-abs")
    bounds = np.linspace(0, len(zn), threads + 1).astype(int)
    jobs = [_ABS_POOL.submit(np.abs, zn[i:j], out=an[i:j]) for i, j in zip(bounds[1:-1], bounds[2:])]
    np.abs(zn[:bounds[1]], out=an[:bounds[1]])  # this thread takes the first share
    for job in jobs:
        job.result()
    return out


def _pool(a, bank: _Bank, nblocks: int):
    """(..., H, W) -> (..., nb, nb) cell means indexed [row, col]."""
    h, w = a.shape[-2:]
    if bank.divisible:
        return a.reshape(*a.shape[:-2], nblocks, h // nblocks, nblocks, w // nblocks).mean(dim=(-3, -1))
    return bank.pool_y @ (a @ bank.pool_x_t)


_LOCAL = threading.local()
_WORKSPACE_MAX_BYTES = 64 << 20  # kept per thread: enough for one 256 px image's responses


def _workspace(shape, dtype, device, slot: int):
    """A work buffer kept between calls (per thread, per slot), grown when too small.

    On CPU, every fresh multi-megabyte tensor is new memory from the OS, and touching it page-faults:
    for one 128 px image that cost as much as the Gabor multiply itself. CUDA's caching allocator
    already reuses memory, so there a plain allocation is as good.
    """
    import torch

    numel = math.prod(shape)
    if _device_type(device) != "cpu" or numel * dtype.itemsize > _WORKSPACE_MAX_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    cache = getattr(_LOCAL, "buffers", None)
    if cache is None:
        cache = _LOCAL.buffers = {}
    buf = cache.get((slot, dtype))
    if buf is None or buf.numel() < numel:
        buf = cache[(slot, dtype)] = torch.empty(numel, dtype=dtype)
    return buf[:numel].view(shape)


def _gabor_energy(y, bank: _Bank, nblocks: int, sub: int):
    """(n, C, H, W) prefiltered -> (n, C, nf, nb, nb) mean Gabor magnitudes per cell [row, col]."""
    import torch

    n, c, h, w = y.shape
    nf = bank.gabor.shape[0]
    spectrum = torch.fft.fft2(y.to(torch.complex64))
    result = torch.empty((n, c, nf, nblocks, nblocks), dtype=torch.float32, device=y.device)
    shape = (min(sub, n), c, nf, h, w)
    zbuf, abuf = _workspace(shape, torch.complex64, y.device, 0), _workspace(shape, torch.float32, y.device, 1)
    for s in range(0, n, sub):
        k = min(sub, n - s)
        z, a = zbuf[:k], abuf[:k]
        torch.mul(spectrum[s:s + k, :, None], bank.gabor, out=z)
        # Backward norm divides by H*W, as lear-gist does by hand. No out=: torch would transform into a
        # temporary and copy it over, while a returned tensor reuses the memory freed a step earlier.
        responses = torch.fft.ifft2(z)
        result[s:s + k] = _pool(_magnitude(responses, a), bank, nblocks)
    return result


def _layout(cells):
    """(n, C, nf, nb[row], nb[col]) -> (n, C*nf*nb*nb) with cells ordered col * nb + row (lear-gist)."""
    return cells.transpose(-1, -2).reshape(cells.shape[0], -1)


def _chunks(device, channels: int, n_filters: int, height: int, width: int) -> tuple[int, int]:
    """(images per prefilter chunk, images per Gabor sub-chunk).

    On CPU each worker thread takes 8 images at a time and sends them one by one through the Gabor
    bank, so an image's complex responses (7.9 MB at 128 px) stay in cache; on CUDA a sub-chunk holds
    about 512 MB of responses, enough to fill the GPU.
    """
    per_image = channels * n_filters * height * width * 8
    if _device_type(device) == "cpu":
        return 8, 1
    sub = max(1, (512 << 20) // per_image)
    return max(sub, 256), sub


def _device_type(device) -> str:
    import torch

    return torch.device(device).type


def _fill_holes(x, valid):
    """(n, C, H, W) float32, (n, 1, H, W) float32 0/1 -> x with each hole set to the mean of its valid pixels.

    Whatever sits in the hole leaks into the responses of nearby valid pixels (the Gabor filters are
    global in frequency, the prefilter normalises contrast over ~6 px). A flat fill at the mean colour
    of the valid pixels adds no texture of its own and keeps the step at the hole's border as small
    as a constant can; zeros (black) would draw a strong artificial edge around every hole.
    """
    import torch

    count = valid.sum(dim=(-2, -1), keepdim=True).clamp_(min=1.0)
    mean = (x * valid).sum(dim=(-2, -1), keepdim=True) / count
    return torch.where(valid > 0, x, mean)


def _run(x, params: GistParams, device, masks=None) -> np.ndarray:
    """(n, C, H, W) host or device tensor (any real dtype) -> (n, D) float32 numpy, chunk by chunk."""
    import torch

    n, c, h, w = x.shape
    out = np.empty((n, params.dim(c)), dtype=np.float32)
    if n == 0:
        return out
    bank = bank_for(h, w, params, device)
    chunk, sub = _chunks(device, c, params.n_filters, h, w)

    def run_range(start: int, stop: int) -> None:
        with torch.inference_mode():  # thread-local: entered again in each worker
            for s in range(start, stop, chunk):
                e = min(s + chunk, stop)
                xs = _to_device(x[s:e], device)
                if masks is not None:
                    xs = _fill_holes(xs, _to_device(masks[s:e, None], device))
                cells = _gabor_energy(prefilter(xs, bank), bank, params.nblocks, sub)
                out[s:e] = _layout(cells).cpu().numpy()

    threads = torch.get_num_threads() if _device_type(device) == "cpu" else 1
    if threads <= 1 or n < 2:
        run_range(0, n)
    else:
        _run_image_parallel(run_range, n, chunk, threads)
    return out


def _run_image_parallel(run_range, n: int, chunk: int, threads: int) -> None:
    """CPU: spread whole images over ``threads`` worker threads, each running torch single-threaded.

    Splitting every small op across threads (torch's intra-op parallelism) makes each of the ~10 steps
    per image wait for its slowest thread; on a machine shared with other work a descheduled thread
    stalls them all. Whole images per thread need no synchronisation at all: measured on this
    2-core machine at 128 px, 220 images/s against 180 for intra-op threads when idle, and 124 against
    103 with the other core busy. The encoders' pool (``netutil.run_image_parallel``) runs them.
    """
    from .encoders.netutil import run_image_parallel  # here: the encoders package imports this module

    bounds = list(range(0, n, chunk)) + [n]
    ranges = list(zip(bounds[:-1], bounds[1:]))
    run_image_parallel(lambda i: run_range(*ranges[i]), len(ranges), threads)


def gist(images, params: GistParams = GistParams(), device="cpu") -> np.ndarray:
    """lear-gist GIST of a batch of images at their working size.

    images: (n, H, W, 3) colour or (n, H, W) gray, numpy or torch, uint8 or float in 0..255.
    Returns (n, C * n_filters * nblocks^2) float32: 960-d for colour defaults, 320-d for gray.
    Works through the batch in chunks, so memory stays bounded whatever n is.
    """
    import torch

    with torch.inference_mode():
        return _run(_as_nchw(images), params, device)


def masked_gist(images, masks, params: GistParams = GistParams(), device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """GIST of images with holes (scene completion), and per-dimension weights that ignore the holes.

    images: as ``gist``; masks: (n, H, W) bool, True where the pixel is valid.
    Returns ``(desc, weights)``, both (n, D) float32 in ``gist``'s layout. Each hole is filled with the
    mean colour of its image's valid pixels before filtering; ``weights`` is the fraction of valid
    pixels in each cell, repeated over channels and filters, so that ``sum(weights * (desc - other)^2)``
    compares only what the hole leaves.
    """
    import torch

    with torch.inference_mode():
        x = _as_nchw(images)
        n, c, h, w = x.shape
        m = masks if isinstance(masks, torch.Tensor) else torch.from_numpy(np.require(masks, requirements=("C", "W")))
        if tuple(m.shape) != (n, h, w):
            raise ValueError(f"masks must be (n, H, W) = {(n, h, w)}, got {tuple(m.shape)}")
        m = m.to(torch.bool)
        valid = m.cpu().numpy().astype(np.float64)
        frac = pooling_matrix(h, params.nblocks) @ valid @ pooling_matrix(w, params.nblocks).T  # [row, col]
        weights = np.repeat(frac.transpose(0, 2, 1).reshape(n, 1, -1), c * params.n_filters, axis=1)
        return _run(x, params, device, masks=m), weights.reshape(n, -1).astype(np.float32)


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
