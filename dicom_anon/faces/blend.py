"""Colour harmonisation and gradient-domain blending in torch (GPU when present).

A surrogate face pasted as it is shows its own skin tone, light and a visible edge.
Two steps fix that: (1) soften the surrogate's features (brows, make-up, deep sockets) to
the patient's contrast, then give it the patient's light and skin colour with a smooth
per-channel gain, measured skin to skin, (2) a membrane (Laplace) correction: the ratio between the
patient and the harmonised surrogate on the boundary of the replaced region is
interpolated smoothly across it (in the log domain) and applied, which is Poisson image
editing with the surrogate's own log gradients as guidance (Pérez et al. 2003, Farbman et
al. 2009).
The membrane is smooth, so it is solved on a coarse grid and upsampled, which keeps the
cost independent of the photo's resolution: exactly (one dense linear solve) on the coarsest
level of a pyramid, then a few Jacobi sweeps per finer level to refine the boundary.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.color
import kornia.filters
import numpy as np
import torch
import torch.nn.functional as F

# Working width of the finest membrane level, in pixels across the region.
MEMBRANE_SIZE = 192
# The membrane's correction fades towards 0 over about this share of the region's larger side
# (about one eye distance) away from where it is pinned. Unscreened, a few biased pins (the
# highlight on a bald scalp, grey or lilac hair counted as skin) shifted the whole new face that
# the relight had matched to the patient's skin (+30 levels on a dark-skinned boy); screened,
# cheek colour drift on 60 test faces fell from 6.1 / 11.9 to 5.0 / 7.7 delta E (median / p95).
MEMBRANE_DECAY = 0.3
# The coarsest pyramid level is solved exactly when it has at most this many unknowns (a dense
# solve of ~600 unknowns takes milliseconds; iterating there took most of the membrane's time).
_DIRECT_UNKNOWNS = 600
# Jacobi sweeps per finer level, finest first: the exact coarse solution carries the long range,
# the sweeps only sharpen it towards the boundary. Each sweep costs the same few tiny tensor
# operations whatever the level's size, so the count, not the pixels, sets the time.
_JACOBI_ITERS = (20, 40, 80, 80, 80)
# The surrogate's brows or moustache stubble are faded at most to this share of their contrast
# (a blonde patient's brows measure about a third of the pool's dark ones).
FADE_FLOOR = 0.3
# Features are softened at most to this share of their contrast.
CONTRAST_FLOOR = 0.5
# The surrogate's cheeks (folds, hollows, the shading of its cheekbones) are softened at most to
# this share of their contrast, measured against the patient's own cheeks: an older pool
# person's folds otherwise ran as grey streaks down a young patient's smooth cheeks.
CHEEK_FLOOR = 0.2
# Where the patient is this much darker than their skin (log luma) in a fade zone, it is hair.
HAIR_DARKER = -0.1
# Added before taking logs, so black stays finite (about 5 levels of 255).
_LOG_FLOOR = 0.02


def to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 HxWx3 -> float 1x3xHxW in [0, 1]."""
    # Writable, as torch.from_numpy wants (PIL's arrays are read-only): copied only then.
    array = np.require(rgb, requirements=["C", "W"])
    return torch.from_numpy(array).to(device).permute(2, 0, 1)[None].float() / 255.0


def to_uint8(t: torch.Tensor) -> np.ndarray:
    return (t[0].permute(1, 2, 0).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def masked_blur(x: torch.Tensor, weight: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``x`` using only pixels where ``weight`` > 0 (normalised convolution),
    on a grid coarse enough that the cost does not depend on the photo's size."""
    h, w = x.shape[-2:]
    step = max(1, int(sigma / 3))
    # Padded with zero weight to whole cells and pooled: "area" interpolation to an uneven
    # size runs adaptive pooling, which took a third of the blending's time.
    pad = (0, -w % step, 0, -h % step)
    xs = F.avg_pool2d(F.pad(x * weight, pad), step)
    ws = F.avg_pool2d(F.pad(weight.expand(1, 1, h, w), pad), step)
    s = sigma / step
    k = int(3 * s) * 2 + 1
    xs = kornia.filters.gaussian_blur2d(xs, (k, k), (s, s), border_type="replicate")
    ws = kornia.filters.gaussian_blur2d(ws, (k, k), (s, s), border_type="replicate")
    size = (h + pad[3], w + pad[1])
    out = F.interpolate(xs / ws.clamp_min(1e-4), size=size, mode="bilinear", align_corners=False)
    return out[..., :h, :w]


def relight(
    rgb_s: torch.Tensor,
    rgb_d: torch.Tensor,
    weight: torch.Tensor,
    sigma: float,
    dst_weight: torch.Tensor | None = None,
    own_hue: torch.Tensor | None = None,
) -> torch.Tensor:
    """Give ``rgb_s`` ``rgb_d``'s light and skin colour: a per-channel gain, the ratio of the two
    photos' skin blurred at ``sigma``; where ``own_hue`` (HxW, 0-1) is set, the ratio of their
    luma only, so those pixels keep their hue.

    A studio-lit surrogate keeps its features (everything finer than ``sigma``) but takes the
    patient's light direction and colour. A gain, not an offset: an offset moved towards a pale
    patient's pink turned a surrogate's dark brows and lashes blue, while a gain leaves dark
    pixels dark (the colour correction face-swapping tools use). ``rgb_s`` is measured under
    ``weight``, ``rgb_d`` under ``dst_weight`` (the patient's skin, when given), so the patient's
    hair, glasses or background never brighten or darken the new face.
    """
    w = weight[None, None] if weight.ndim == 2 else weight
    wd = w if dst_weight is None else w * (dst_weight[None, None] if dst_weight.ndim == 2 else dst_weight)
    if float(wd.sum()) < 16:
        wd = w
    base_d, base_s = masked_blur(rgb_d, wd, sigma), masked_blur(rgb_s, w, sigma).clamp_min(0.02)
    gain = base_d / base_s
    if own_hue is not None:
        light = (_luma(base_d) / _luma(base_s)).clamp_min(1e-3)
        gain = light * (gain / light) ** (1.0 - own_hue)
    return rgb_s * gain.clamp(0.25, 4.0)


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma of 1x3xHxW ``rgb`` (1x1xHxW)."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=rgb.device).view(1, 3, 1, 1)
    return (rgb * weights).sum(1, keepdim=True)


def _log_luma(rgb: torch.Tensor) -> torch.Tensor:
    return torch.log(_luma(rgb) + _LOG_FLOOR)


def match_contrast(
    rgb_s: torch.Tensor,
    rgb_d: torch.Tensor,
    weight: torch.Tensor,
    sigmas: Sequence[float],
    floor: float = CONTRAST_FLOOR,
) -> torch.Tensor:
    """Soften ``rgb_s``'s features to ``rgb_d``'s strength, band by band: log-luma detail finer
    than ``sigmas[0]``, then between each sigma and the next, each measured under ``weight``;
    only ever softened, at most to ``floor``.

    The pool's portraits have dark, sharp brows, eye make-up and studio shading; a fair or young
    patient's features are fainter. Moving the mean and spread of the colour channels (a plain
    colour transfer) lifted dark pixels by an offset and greyed them: sockets and brows
    came out grey-green on pale patients. Scaling log-luma detail multiplies each pixel's RGB
    by one factor, so hues stay and dark stays darker than skin, just less so. The broader
    band (the surrogate's deep sockets and studio modelling, up to the light's scale) is
    measured on its own: softened with the fine band alone, it left dark smudges round the
    eyes of flat-lit pale patients.
    """
    w = weight[None, None] if weight.ndim == 2 else weight
    if float(w.sum()) < 16:
        return rgb_s
    log_s, log_d = _log_luma(rgb_s), _log_luma(rgb_d)
    blur_s, blur_d = [log_s], [log_d]
    for sigma in sigmas:
        blur_s.append(masked_blur(log_s, w, sigma))
        blur_d.append(masked_blur(log_d, w, sigma))
    softened = torch.zeros_like(log_s)
    for i in range(len(sigmas)):
        band_s, band_d = blur_s[i] - blur_s[i + 1], blur_d[i] - blur_d[i + 1]
        ratio = (_rms(band_d, w) / _rms(band_s, w).clamp_min(1e-6)).clamp(floor, 1.0)
        softened = softened + band_s * (1 - ratio)
    return rgb_s * torch.exp(-softened)


def soften_zone(
    rgb_s: torch.Tensor,
    rgb_d: torch.Tensor,
    weight: torch.Tensor,
    zone: torch.Tensor,
    sigmas: Sequence[float],
) -> torch.Tensor:
    """``match_contrast`` measured inside ``zone`` (HxW, 0-1) only, down to CHEEK_FLOOR, and
    applied there.

    Measured over the whole face, the patient's eyes, brows and lips set the ratio, and an older
    surrogate's cheek folds kept at least half their contrast beside a young patient's kept,
    closed mouth. Measured on the cheeks alone, smooth cheeks take the folds away and a patient
    with folds of their own keeps the surrogate's.
    """
    z = zone[None, None]
    w = weight[None, None] if weight.ndim == 2 else weight
    soft = match_contrast(rgb_s, rgb_d, w * z, sigmas, CHEEK_FLOOR)
    return rgb_s + z * (soft - rgb_s)


def fade_zones(
    rgb_s: torch.Tensor,
    rgb_d: torch.Tensor,
    skin_s: torch.Tensor,
    skin_d: torch.Tensor,
    zones: torch.Tensor,
    sigma: float,
) -> torch.Tensor:
    """In each of ``zones`` (NxHxW soft masks: the brows, the upper lip), redraw ``rgb_s``'s hair in
    the colour the patient's own hair has there, faded until it is no darker against its skin
    than ``rgb_d``'s is (at most to FADE_FLOOR).

    Apart from ``match_contrast`` because one zone can be far fainter than the face's other
    features: a blonde's brows, a shaven young man's upper lip under a surrogate's moustache
    stubble. In the patient's hue, not the surrogate's: the pool's dark brows are cooler than
    its skin, and the relighting gain, which maps the surrogate's skin onto the patient's,
    turned them grey-green on warm patients and teal on pale ones; a blonde's brows are golden.
    The hue is the patient's hair against their skin, channel by channel, over what is clearly
    darker than their skin in the zone (none: the skin's own hue). The surrogate's brow shape
    stays; inside the zone its skin is smoothed to its local colour. Each face is measured
    against its own skin blurred at ``sigma``, so its skin masks leave the zone's dark hair
    out of that base.
    """
    base_s = masked_blur(rgb_s, skin_s[None, None].float(), sigma).clamp_min(0.02)
    base_d = masked_blur(rgb_d, skin_d[None, None].float(), sigma).clamp_min(0.02)
    out = rgb_s.clone()
    for zone in zones:
        # Worked out in the zone's bounding box only: over the whole face the powers cost 0.1 s.
        rows, cols = torch.nonzero(zone.amax(dim=1) > 0), torch.nonzero(zone.amax(dim=0) > 0)
        if rows.numel() == 0:
            continue
        box = (..., slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
        z, src, b_s, dst, b_d = zone[box[1:]], out[box], base_s[box], rgb_d[box], base_d[box]
        inside = (z > 0.5).float()[None, None]
        if float(inside.sum()) < 16:
            continue
        # Only what is darker than the skin counts: highlights on the brow bone are not brows.
        d_s = (_log_luma(src) - _log_luma(b_s)).clamp_max(0)
        rel_d = _log_luma(dst) - _log_luma(b_d)
        d_d = rel_d.clamp_max(0)
        k = (_rms(d_d, inside) / _rms(d_s, inside).clamp_min(1e-6)).clamp(FADE_FLOOR, 1.0)
        hair = (inside > 0) & (rel_d < HAIR_DARKER)
        hue = torch.ones(1, 3, 1, 1, device=rgb_s.device)
        if int(hair.sum()) >= 16:
            ratio = ((dst + 0.02) / (b_d + 0.02))[:, :, hair[0, 0]].mean(dim=2).view(1, 3, 1, 1)
            hue = ratio / _luma(ratio)
        # Skin colour times the faded darkness; the darker the pixel, the more of the hair's hue.
        # What is lighter than the skin (the brow bone's highlight, make-up shimmer) is drawn as
        # skin: kept, it held 10 more of the 217 test faces as look-alikes.
        dark = torch.exp(k * d_s)
        faded = (b_s + 0.02) * dark * hue ** (1 - dark) - 0.02
        out[box] = src + z * (faded - src)
    return out


def _rms(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return ((d**2 * w).sum() / w.sum().clamp_min(1.0)).sqrt()


def match_detail(
    ycc_s: torch.Tensor, ycc_d: torch.Tensor, weight: torch.Tensor, dst_weight: torch.Tensor, sigma: float
) -> torch.Tensor:
    """Soften ``ycc_s``'s fine luma detail (finer than ``sigma``) to ``ycc_d``'s strength.

    The pool's studio portraits are sharper than most clinical photos: pasted as they are, the
    new skin shows about 1.4x the patient's texture energy, which a dermatologist sees at once.
    Only ever softened (ratio <= 1): sharpening would amplify the surrogate photo's noise.
    """
    k = int(3 * sigma) * 2 + 1

    def detail(ycc: torch.Tensor) -> torch.Tensor:
        luma = ycc[:, :1]
        return luma - kornia.filters.gaussian_blur2d(luma, (k, k), (sigma, sigma), border_type="replicate")

    def energy(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        w = w[None, None] if w.ndim == 2 else w
        return ((d**2 * w).sum() / w.sum().clamp_min(1.0)).sqrt()

    d_s = detail(ycc_s)
    wd = weight * dst_weight
    if float(wd.sum()) < 16:
        return ycc_s
    ratio = (energy(detail(ycc_d), wd) / energy(d_s, weight).clamp_min(1e-6)).clamp(0.5, 1.0)
    return torch.cat([ycc_s[:, :1] - d_s * (1 - ratio), ycc_s[:, 1:]], dim=1)


def _jacobi(
    d: torch.Tensor, known: torch.Tensor, omega: torch.Tensor, iters: int, screen: float = 0.0
) -> torch.Tensor:
    """``iters`` sweeps: every pixel in ``omega`` becomes the mean of its four neighbours (their sum
    over ``4 + screen``: a screened membrane, which decays towards 0 away from its pins).

    The neighbours are summed from shifted views rather than by a depthwise conv2d: on the
    CPU the grouped convolution costs ~7x as much per sweep on these small grids.
    """
    for _ in range(iters):
        p = F.pad(d, (1, 1, 1, 1), mode="replicate")
        avg = (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) / (4.0 + screen)
        d = torch.where(omega, avg, known)
    return d


def _robust_boundary(diff: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """Clamp boundary differences to median +- 3 MAD per channel, measured on a thin ring round ``omega``.

    A strand of hair or a shadow on the boundary would otherwise be smeared across the
    whole new face; the outer feather hides the small mismatch the clamp leaves there.
    """
    # The ring is found on a 4x coarser grid: its statistics need not be exact, and a 9x9
    # max-pool at full resolution costs more than the rest of the membrane.
    coarse = F.max_pool2d(omega.float()[None, None], 4, stride=4, ceil_mode=True)
    grown = F.max_pool2d(coarse, 3, stride=1, padding=1)
    grown = F.interpolate(grown, scale_factor=4, mode="nearest")[0, 0, : omega.shape[0], : omega.shape[1]] > 0
    ring = grown & ~omega
    if int(ring.sum()) < 16:
        return diff
    vals = diff[0][:, ring]
    med = vals.median(dim=1).values
    mad = (vals - med[:, None]).abs().median(dim=1).values.clamp_min(2.0 / 255.0)
    lo, hi = (med - 3 * mad).view(1, 3, 1, 1), (med + 3 * mad).view(1, 3, 1, 1)
    return torch.maximum(torch.minimum(diff, hi), lo)


def _direct(known: torch.Tensor, omega: torch.Tensor, screen: float = 0.0) -> torch.Tensor:
    """The exact fixed point of ``_jacobi`` on one small level: ``known`` (1x3xHxW) outside ``omega``,
    inside it every pixel the mean of its four neighbours (replicated at the border), screened
    as ``_jacobi`` is.

    Dense on purpose: the coarsest level has a few hundred unknowns, where one LAPACK solve is
    faster than building a sparse system, and torch has no sparse direct solver on the CPU.
    """
    h, w = omega.shape
    ids = torch.nonzero(omega.reshape(-1)).squeeze(1)
    n = ids.numel()
    if n == 0 or n == h * w:
        # Nothing to solve, or nothing known to solve from: the caller's start value stands.
        return known
    pos = torch.full((h * w,), -1, dtype=torch.long, device=known.device)
    pos[ids] = torch.arange(n, device=known.device)
    ys, xs = ids // w, ids % w
    rows = torch.arange(n, device=known.device)
    values = known[0].reshape(3, -1).double()
    a = torch.eye(n, dtype=torch.float64, device=known.device) * (1.0 + screen / 4.0)
    rhs = torch.zeros(n, 3, dtype=torch.float64, device=known.device)
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        nb = (ys + dy).clamp(0, h - 1) * w + (xs + dx).clamp(0, w - 1)
        j = pos[nb]
        unknown = j >= 0
        a.index_put_(
            (rows[unknown], j[unknown]),
            torch.tensor(-0.25, dtype=torch.float64, device=a.device),
            accumulate=True,
        )
        rhs[~unknown] += 0.25 * values[:, nb[~unknown]].T
    out = known.clone()
    out[0].view(3, -1)[:, ids] = torch.linalg.solve(a, rhs).T.to(known.dtype)
    return out


def membrane(diff: torch.Tensor, omega: torch.Tensor, decay: float | None = None) -> torch.Tensor:
    """Harmonic interpolation of ``diff`` (1x3xHxW, valid outside ``omega``) into ``omega`` (HxW bool);
    with ``decay``, screened: the correction fades towards 0 over about that share of the
    region's larger side away from where it is pinned.

    Returns the full-resolution correction; outside ``omega`` it equals ``diff`` up to the
    coarse grid's resolution, which the caller's feathered alpha absorbs.
    """
    h, w = omega.shape
    scale = min(1.0, MEMBRANE_SIZE / max(h, w))
    size = (max(4, round(h * scale)), max(4, round(w * scale)))
    # Screening per pixel of the finest level; each coarser level's pixels are twice as wide.
    screen = (1.0 / (decay * max(size))) ** 2 if decay else 0.0
    known_w = (~omega).float()[None, None]
    diff = _robust_boundary(diff, omega) * known_w
    # Area-average the known values only, so the unknown inside never leaks into the boundary.
    num = F.interpolate(diff, size=size, mode="area")
    den = F.interpolate(known_w, size=size, mode="area")
    levels = [(num, den)]
    while min(levels[-1][0].shape[-2:]) > 8 and int((levels[-1][1] < 0.999).sum()) > _DIRECT_UNKNOWNS:
        n, d_ = levels[-1]
        levels.append((F.avg_pool2d(n, 2, ceil_mode=True), F.avg_pool2d(d_, 2, ceil_mode=True)))
    d = None
    for depth in range(len(levels) - 1, -1, -1):
        n, d_ = levels[depth]
        known = n / d_.clamp_min(1e-6)
        omega_l = (d_ < 0.999)[0, 0]
        level_screen = screen * 4**depth
        if d is None:
            d = _direct(known, omega_l, level_screen)
            continue
        d = F.interpolate(d, size=known.shape[-2:], mode="bilinear", align_corners=False)
        d = torch.where(omega_l, d, known)
        d = _jacobi(d, known, omega_l, _JACOBI_ITERS[min(depth, len(_JACOBI_ITERS) - 1)], level_screen)
    return F.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)


def new_face(
    patient: torch.Tensor,
    surrogate: torch.Tensor,
    alpha: torch.Tensor,
    preserved: torch.Tensor,
    light_sigma: float,
    patient_skin: torch.Tensor | None = None,
    trusted: torch.Tensor | None = None,
    detail_sigma: float | None = None,
    surrogate_skin: torch.Tensor | None = None,
    contrast_sigma: float | None = None,
    fade: torch.Tensor | None = None,
    own_hue: torch.Tensor | None = None,
    cheeks: torch.Tensor | None = None,
) -> torch.Tensor:
    """What the caller blends in where ``alpha`` > 0: the surrogate relit to the patient's light
    (shading broader than ``light_sigma`` px), its features and texture softened to the patient's,
    membrane-corrected (the patient itself when the region is too small to measure).

    Apart from the final blend because the new face can be worked out at a lower resolution
    than the photo (its detail is the surrogate's, its corrections are smooth) while the
    blend with the patient's own pixels has to happen at full resolution.
    """
    region = alpha > 0
    weight = (region & ~preserved).float()
    if weight.sum() < 16:
        return patient
    # In YCbCr, a linear map: on a 12 MP photo's face region CIELAB's cube roots cost ten times
    # as much, and luma plus two chroma axes separate light from skin colour just as well here.
    ycc_p = kornia.color.rgb_to_ycbcr(patient)
    # Light and texture are compared skin to skin: measured over the surrogate's eyes, brows and
    # beard but only the patient's skin, the new skin came out lighter than the patient's by the
    # surrogate's own skin-to-feature contrast (+13 L* on a dark-skinned man).
    src_weight = weight if surrogate_skin is None else weight * surrogate_skin
    if float(src_weight.sum()) < 16:
        src_weight = weight
    rgb = surrogate
    if contrast_sigma:
        rgb = match_contrast(rgb, patient, weight, (contrast_sigma, light_sigma))
        if surrogate_skin is not None and patient_skin is not None:
            if fade is not None:
                rgb = fade_zones(rgb, patient, surrogate_skin, patient_skin, fade, contrast_sigma)
            if cheeks is not None:
                both_skin = weight * surrogate_skin * patient_skin
                rgb = soften_zone(rgb, patient, both_skin, cheeks, (contrast_sigma, light_sigma))
    ycc = kornia.color.rgb_to_ycbcr(relight(rgb, patient, src_weight, light_sigma, patient_skin, own_hue))
    if detail_sigma and patient_skin is not None:
        ycc = match_detail(ycc, ycc_p, src_weight, patient_skin, detail_sigma)
    harmonised = kornia.color.ycbcr_to_rgb(ycc).clamp(0, 1)
    # The membrane takes its boundary values only where both sides show skin (``trusted``);
    # elsewhere on the boundary (the patient's hair against the surrogate's background, or the
    # patient's lips against the surrogate's beard) it is left free, or it would smear that
    # difference across the whole new face.
    solve = region if trusted is None else region | ~trusted
    if int((~solve).sum()) < 16:
        solve = region
    return carry_boundary(patient, harmonised, solve)


def carry_boundary(patient: torch.Tensor, new: torch.Tensor, solve: torch.Tensor) -> torch.Tensor:
    """``new`` (1x3xHxW) times the ratio of ``patient`` to it, taken where ``solve`` is False and
    interpolated across ``solve`` by the screened membrane, so the new face meets the patient's
    pixels without a seam.

    A ratio, not an offset, as in ``relight``: an offset gave dark features the skin's tint in
    full, greying deep skin and the new brows; as a ratio they take their share of it.
    """
    log_ratio = torch.log(patient + _LOG_FLOOR) - torch.log(new + _LOG_FLOOR)
    correction = membrane(log_ratio, solve, MEMBRANE_DECAY)
    return ((new + _LOG_FLOOR) * torch.exp(correction) - _LOG_FLOOR).clamp(0, 1)
