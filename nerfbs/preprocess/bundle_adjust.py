"""Bundle adjustment of a rigid head: one focal length, one personal rigid landmark shape and every
frame's pose, fitted together to the 2D landmarks of a whole video.

Model: frame i sees point l of the shape S [L, 3] (cm, MediaPipe's canonical face frame: x right, y up,
z towards the viewer) at

    x_il = f (X, Y) / Z + (cx, cy),   (X, Y, Z) = R_i S_l + t_i,

with (R_i, t_i) the head-to-camera pose in OpenCV axes (x right, y down, z forward, cm), f the focal
length and (cx, cy) the principal point, both in pixels. The fit minimises

    sum_il v_il rho(|x_il - obs_il|) / sigma^2  +  sum_l |S_l - S0_l|^2 / sigma_l^2
    + (log f - log f0)^2 / sigma_f^2  +  sum_i |log(R_i P_i^T)|^2 / sigma_R^2        (halved)

with Cauchy's rho (scale ``cauchy`` x sigma: a landmark many pixels off barely counts), v_il = 1 where
frame i sees point l, and the last term only when prior rotations P_i are given. Levenberg-Marquardt in
float64: per frame a rotation increment (R <- exp([w]x) R) and a translation, globally the shape and
log f (a step in log f scales every translation with f, so the head keeps its image size: the valley
between focal length and distance becomes straight). The normal equations are solved by the Schur
complement: the 6 x 6 pose blocks are eliminated frame by frame (batched), leaving a (3L + 1)-square
system for the globals.

Gauge: a similarity transform of S, undone in every pose and in the scale of all translations, changes
no projection. It is fixed explicitly: steps of S are restricted to those that keep, to first order, the
centroid and RMS size of the gauge points (the first ``gauge_points``) and, without a rotation prior, their
orientation; after each step the exact transform (Procrustes onto S0) is applied. The world thus stays in
canonical-face centimetres.

The focal length is observed only through perspective (how the image of a rigid shape changes with depth
and turns); its formal 1-sigma uncertainty comes from the inverse of the reduced normal matrix (an
underestimate when landmark errors are correlated over time: ``head_fit.estimate_focal`` does better).
Nothing here is differentiable; arrays are numpy float64 in and out.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

DT = torch.float64


@dataclass(frozen=True)
class BundleSettings:
    """Weights and stopping rules of ``bundle_adjust``."""

    noise_px: float = 1.0  # sigma: expected landmark error, pixels
    cauchy: float = 2.5  # Cauchy scale in sigmas
    shape_sigma_cm: float = 1.0  # prior on the personal shape's departure from S0
    log_focal_sigma: float = 0.7  # prior on log f about log f0 (a factor of 2 is one sigma)
    rotation_sigma_deg: float = 2.0  # prior on each frame's rotation about the given one (when given)
    max_iterations: int = 100
    tolerance: float = 1e-9  # relative cost decrease below which the fit stops


@dataclass
class BundleResult:
    """What ``bundle_adjust`` found for N frames and L points.

    rotations [N, 3, 3] and translations [N, 3] (cm): head-to-camera, OpenCV axes; shape [L, 3] cm;
    focal and its formal 1-sigma ``focal_sigma`` in pixels (nan when the focal length was fixed);
    residuals [N, L, 2] and errors [N, L] pixels: each point's reprojection error (projection minus
    observation) and its length; weights [N, L] in [0, 1]: its robust weight (0 where unseen).
    """

    rotations: np.ndarray
    translations: np.ndarray
    shape: np.ndarray
    focal: float
    focal_sigma: float
    residuals: np.ndarray
    errors: np.ndarray
    weights: np.ndarray
    iterations: int
    cost: float


# ------------------------------------------------------------------------------------------ geometry
def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices [..., 3, 3] of vectors v [..., 3]: skew(a) @ b = a x b."""
    z = torch.zeros_like(v[..., 0])
    return torch.stack([torch.stack([z, -v[..., 2], v[..., 1]], -1),
                        torch.stack([v[..., 2], z, -v[..., 0]], -1),
                        torch.stack([-v[..., 1], v[..., 0], z], -1)], -2)


def exp_so3(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] of axis-angle vectors w [..., 3] (radians), by Rodrigues' formula."""
    theta = w.norm(dim=-1, keepdim=True)[..., None]  # [..., 1, 1]
    k = skew(w)
    small = theta < 1e-8
    safe = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 1 - theta ** 2 / 6, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta ** 2 / 24, (1 - torch.cos(safe)) / safe ** 2)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(k)
    return eye + a * k + b * (k @ k)


def log_so3(r: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors [..., 3] (radians) of rotation matrices r [..., 3, 3] with angles below pi."""
    cos = ((torch.diagonal(r, dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    theta = torch.acos(cos)
    v = torch.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    sin = torch.sin(theta)
    scale = torch.where(sin > 1e-8, theta / (2 * sin.clamp_min(1e-8)), 0.5 + theta ** 2 / 12)
    return v * scale[..., None]


def rotation_angle_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles [...] in degrees of the rotations a^T b between rotation matrices a, b [..., 3, 3]."""
    trace = np.einsum("...ij,...ij->...", a, b)
    return np.degrees(np.arccos(np.clip((trace - 1) / 2, -1.0, 1.0)))


def project(rotations: torch.Tensor, translations: torch.Tensor, shape: torch.Tensor, focal, centre: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels [N, L, 2] and camera points [N, L, 3] of shape [L, 3] seen by N OpenCV poses
    (rotations [N, 3, 3], translations [N, 3]) through focal length ``focal`` and principal point centre [2]."""
    cam = shape @ rotations.transpose(1, 2) + translations[:, None]  # [N, L, 3]
    return focal * cam[..., :2] / cam[..., 2:] + centre, cam


def projection_jacobian(cam: torch.Tensor, focal) -> torch.Tensor:
    """d(u, v) / d(camera point) [..., 2, 3] = f / Z [[1, 0, -X/Z], [0, 1, -Y/Z]] at camera points cam [..., 3]."""
    inv_z = 1.0 / cam[..., 2]
    zeros, ones = torch.zeros_like(inv_z), torch.ones_like(inv_z)
    return (focal * inv_z)[..., None, None] * torch.stack([
        torch.stack([ones, zeros, -cam[..., 0] * inv_z], -1),
        torch.stack([zeros, ones, -cam[..., 1] * inv_z], -1)], -2)


def align_similarity(shape: np.ndarray, reference: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The gauge of ``bundle_adjust``: (s, Q, c) with s Q (shape - mean(shape)) + c having reference's
    centroid c, the rotation Q [3, 3] that best aligns it (Procrustes) and reference's RMS radius s."""
    a, b = shape - shape.mean(0), reference - reference.mean(0)
    u, _, vt = np.linalg.svd(b.T @ a)
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    q = u @ d @ vt
    s = math.sqrt((b ** 2).sum() / max((a ** 2).sum(), 1e-30))
    return s, q, reference.mean(0)


def _fix_gauge(rot: torch.Tensor, trans: torch.Tensor, shape: torch.Tensor, reference: np.ndarray, rotate: bool):
    """Move ``shape`` into the gauge of ``align_similarity`` of its first len(reference) points to reference
    (its rotation only when ``rotate``: a prior on the poses' rotations fixes that one), and change the poses
    so that no projection changes."""
    k = len(reference)
    mu = shape[:k].mean(0)
    s, q, c = (torch.as_tensor(x, dtype=DT) for x in align_similarity(shape[:k].numpy(), reference))
    if not rotate:
        q = torch.eye(3, dtype=DT)
    new_shape = s * (shape - mu) @ q.T + c
    new_rot = rot @ q.T
    new_trans = s * trans + s * rot @ mu - new_rot @ c
    return new_rot, new_trans, new_shape


# ---------------------------------------------------------------------------------------- the solver
@dataclass
class _State:
    rot: torch.Tensor  # [N, 3, 3]
    trans: torch.Tensor  # [N, 3]
    shape: torch.Tensor  # [L, 3]
    log_f: torch.Tensor  # []


class _Problem:
    """The cost and its Gauss-Newton pieces for fixed observations, priors and robust scale."""

    def __init__(self, obs: torch.Tensor, centre: torch.Tensor, shape0: torch.Tensor, log_f0: float,
                 settings: BundleSettings, fix_focal: bool, rot_prior: torch.Tensor | None, visible: torch.Tensor,
                 shape_weight: torch.Tensor):
        self.obs, self.centre, self.shape0, self.log_f0 = obs, centre, shape0, log_f0
        self.visible = visible  # [N, L] 1 where a point is observed, else 0
        self.shape_weight = shape_weight  # [L] 1 / sigma^2 of each point's prior, cm^-2
        self.rot_prior = rot_prior  # [N, 3, 3] or None
        self.rot_weight = 1.0 / math.radians(settings.rotation_sigma_deg) ** 2
        self.s = settings
        self.fix_focal = fix_focal
        self.c2 = (settings.cauchy * settings.noise_px) ** 2
        self.inv_var = 1.0 / settings.noise_px ** 2

    def residuals(self, st: _State) -> tuple[torch.Tensor, torch.Tensor]:
        uv, cam = project(st.rot, st.trans, st.shape, st.log_f.exp(), self.centre)
        return uv - self.obs, cam

    def cost(self, st: _State) -> float:
        r, cam = self.residuals(st)
        if (cam[..., 2] <= 1e-6).any():
            return math.inf
        e2 = (r ** 2).sum(-1)
        data = 0.5 * self.c2 * (self.visible * torch.log1p(e2 / self.c2)).sum() * self.inv_var
        prior = (self.shape_weight[:, None] * (st.shape - self.shape0) ** 2).sum()
        if not self.fix_focal:
            prior = prior + (st.log_f - self.log_f0) ** 2 / self.s.log_focal_sigma ** 2
        if self.rot_prior is not None:
            prior = prior + self.rot_weight * (self._rotation_offsets(st) ** 2).sum()
        return float(data + 0.5 * prior)

    def _rotation_offsets(self, st: _State) -> torch.Tensor:
        """Axis-angle [N, 3] from each frame's prior rotation to its rotation (left increment)."""
        return log_so3(st.rot @ self.rot_prior.transpose(1, 2))

    def normal_equations(self, st: _State):
        """Pose blocks H_pp [N, 6, 6], couplings H_pg [N, 6, G], global block H_gg [G, G] and gradients
        b_p [N, 6], b_g [G] of the cost (G = 3L, plus 1 for log f when it is free), Cauchy weights [N, L]."""
        r, cam = self.residuals(st)
        f = st.log_f.exp()
        n, l_ = cam.shape[:2]
        inv_z = 1.0 / cam[..., 2]
        p = projection_jacobian(cam, f)  # [N, L, 2, 3]
        rs = cam - st.trans[:, None]  # R S  [N, L, 3]
        j_pose = torch.cat([-p @ skew(rs), p], -1)  # [N, L, 2, 6]: rotation increment, translation
        j_shape = p @ st.rot[:, None]  # [N, L, 2, 3]
        e2 = (r ** 2).sum(-1)
        w = self.visible / (1.0 + e2 / self.c2)  # Cauchy weights (IRLS) [N, L], 0 where unseen
        wv = (w * self.inv_var)[..., None, None]  # [N, L, 1, 1]
        jt_pose = (wv * j_pose).transpose(-1, -2)  # [N, L, 6, 2], weighted
        jt_shape = (wv * j_shape).transpose(-1, -2)  # [N, L, 3, 2], weighted
        h_pp = (jt_pose @ j_pose).sum(1)  # [N, 6, 6]
        b_p = (jt_pose @ r[..., None]).sum(1)[..., 0]  # [N, 6]
        h_pg = (jt_pose @ j_shape).permute(0, 2, 1, 3).reshape(n, 6, 3 * l_)  # [N, 6, 3L]
        h_ss = (jt_shape @ j_shape).sum(0)  # [L, 3, 3]
        if self.rot_prior is not None:  # d/dw of |log(exp(w) R Rp^T)|^2 / 2 ~ the offset itself (small offsets)
            h_pp[:, :3, :3] += self.rot_weight * torch.eye(3, dtype=DT)
            b_p[:, :3] += self.rot_weight * self._rotation_offsets(st)
        h_gg = torch.block_diag(*h_ss) + torch.diag(self.shape_weight.repeat_interleave(3))
        b_g = (jt_shape @ r[..., None]).sum(0).reshape(-1)
        b_g = b_g + (self.shape_weight[:, None] * (st.shape - self.shape0)).reshape(-1)
        if not self.fix_focal:
            # the focal direction scales every translation with f (the head keeps its image size):
            # d(u, v) / d log f = f (X, Y) / Z + P t  [N, L, 2, 1]
            j_f = (f * cam[..., :2] * inv_z[..., None])[..., None] + p @ st.trans[:, None, :, None]
            h_pf = (jt_pose @ j_f).sum(1)[..., 0]  # [N, 6]
            h_sf = (jt_shape @ j_f).sum(0).reshape(-1)  # [3L]
            h_ff = (wv[..., 0] * j_f[..., 0] ** 2).sum() + 1.0 / self.s.log_focal_sigma ** 2
            h_pg = torch.cat([h_pg, h_pf[..., None]], -1)
            h_gg = torch.cat([torch.cat([h_gg, h_sf[:, None]], 1),
                              torch.cat([h_sf, h_ff.reshape(1)])[None]], 0)
            b_f = (wv[..., 0] * j_f[..., 0] * r).sum() + (st.log_f - self.log_f0) / self.s.log_focal_sigma ** 2
            b_g = torch.cat([b_g, b_f.reshape(1)])
        return h_pp, h_pg, h_gg, b_p, b_g, w


def _solve(h_pp, h_pg, h_gg, b_p, b_g, damping: float):
    """The Levenberg-Marquardt step (poses [N, 6], globals [G]) by the Schur complement of the pose blocks,
    with ``damping`` x the diagonal added (plus a floor)."""
    eye6 = torch.eye(6, dtype=DT)
    d_pp = torch.diagonal(h_pp, dim1=-2, dim2=-1)
    a = h_pp + eye6 * (damping * d_pp + 1e-9)[..., None]
    chol = torch.linalg.cholesky(a)  # [N, 6, 6]
    y = torch.cholesky_solve(torch.cat([h_pg, b_p[..., None]], -1), chol)  # [N, 6, G + 1]
    g = h_pg.shape[-1]
    flat_pg, flat_y = h_pg.reshape(-1, g), y.reshape(-1, g + 1)  # [N * 6, G], [N * 6, G + 1]
    coupled = flat_pg.T @ flat_y  # [G, G + 1]
    reduced = h_gg + torch.diag(damping * torch.diagonal(h_gg) + 1e-9) - coupled[:, :-1]
    step_g = torch.linalg.solve(reduced, b_g - coupled[:, -1])
    step_p = y[..., -1] - y[..., :-1] @ step_g
    return step_p, step_g, reduced


def _gauge_complement(shape: torch.Tensor, k: int, rotate: bool, fix_focal: bool) -> torch.Tensor:
    """An orthonormal basis [G, G - 4 or G - 7] of the global steps that keep the gauge to first order: no
    common translation, scaling (and rotation, when ``rotate``) of the first k points. G = 3L (+ 1 for log f,
    kept as the last coordinate)."""
    l_ = shape.shape[0]
    d = shape - shape[:k].mean(0)
    d[k:] = 0
    moves = [torch.zeros(l_, 3, dtype=DT).index_fill_(1, torch.tensor([a]), 1.0) for a in range(3)]
    moves[0][k:], moves[1][k:], moves[2][k:] = 0, 0, 0
    moves.append(d)
    if rotate:
        moves += [torch.linalg.cross(torch.eye(3, dtype=DT)[a].expand_as(d), d) for a in range(3)]
    tangent = torch.stack([m.reshape(-1) for m in moves], 1)  # [3L, 4 or 7]
    u, _, _ = torch.linalg.svd(tangent, full_matrices=True)
    basis = u[:, tangent.shape[1]:]
    if not fix_focal:
        basis = torch.block_diag(basis, torch.ones(1, 1, dtype=DT))
    return basis


def _restrict(pieces, basis: torch.Tensor):
    """The normal equations in the coordinates of ``basis`` for the globals."""
    h_pp, h_pg, h_gg, b_p, b_g, w = pieces
    return h_pp, h_pg @ basis, basis.T @ h_gg @ basis, b_p, basis.T @ b_g, w


def _apply(st: _State, step_p: torch.Tensor, step_g: torch.Tensor, fix_focal: bool) -> _State:
    l_ = st.shape.shape[0]
    rot = exp_so3(-step_p[:, :3]) @ st.rot
    shape = st.shape - step_g[:3 * l_].reshape(l_, 3)
    if fix_focal:
        return _State(rot, st.trans - step_p[:, 3:], shape, st.log_f)
    scale = torch.exp(-step_g[-1])  # see the focal direction in normal_equations
    return _State(rot, (st.trans - step_p[:, 3:]) * scale, shape, st.log_f - step_g[-1])


@contextlib.contextmanager
def _one_thread():
    """torch on one thread: these small batched products only lose time to a thread pool (8x on a busy
    2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bundle_adjust(observed: np.ndarray, rotations: np.ndarray, translations: np.ndarray, shape0: np.ndarray,
                  focal: float, centre: tuple[float, float], *, fix_focal: bool = False,
                  rotation_prior: np.ndarray | None = None, visible: np.ndarray | None = None,
                  shape_sigma: np.ndarray | None = None, gauge_points: int | None = None,
                  settings: BundleSettings = BundleSettings()) -> BundleResult:
    """Fit the focal length (unless ``fix_focal``), a rigid shape and N poses to observed points [N, L, 2]
    (pixels), starting from poses (rotations [N, 3, 3], translations [N, 3] cm; OpenCV head-to-camera),
    the shape prior and start shape0 [L, 3] (cm) and ``focal`` (pixels, also the prior's centre).
    ``centre`` is the principal point (pixels), held fixed. ``rotation_prior`` [N, 3, 3] adds
    |log(R_i P_i^T)|^2 / rotation_sigma^2 / 2 per frame (and then fixes the global rotation: the gauge keeps
    only the shape's centroid and size). ``visible`` [N, L] (bool) says which points each frame observes
    (default: all); ``shape_sigma`` [L] (cm) replaces settings.shape_sigma_cm per point; the gauge is set by
    the first ``gauge_points`` points (default: all). See the module docstring for the rest of the cost.
    """
    with _one_thread():
        return _bundle_adjust(observed, rotations, translations, shape0, focal, centre, fix_focal, rotation_prior,
                              visible, shape_sigma, gauge_points, settings)


def _bundle_adjust(observed, rotations, translations, shape0, focal, centre, fix_focal, rotation_prior, visible,
                   shape_sigma, gauge_points, settings) -> BundleResult:
    obs = torch.as_tensor(np.asarray(observed), dtype=DT)
    n, l_ = obs.shape[:2]
    if obs.shape != (n, l_, 2) or rotations.shape != (n, 3, 3) or translations.shape != (n, 3) or \
            shape0.shape != (l_, 3):
        raise ValueError(f"bundle_adjust: observed [N, L, 2], rotations [N, 3, 3], translations [N, 3], shape0 "
                         f"[L, 3] expected, got {list(obs.shape)}, {list(rotations.shape)}, "
                         f"{list(translations.shape)}, {list(shape0.shape)}")
    vis = torch.ones(n, l_, dtype=DT) if visible is None else torch.as_tensor(np.asarray(visible), dtype=DT)
    if vis.shape != (n, l_):
        raise ValueError(f"bundle_adjust: visible [N, L] expected, got {list(vis.shape)}")
    obs = torch.where(vis[..., None] > 0, obs, torch.zeros_like(obs))  # unseen entries may hold nan
    if not (torch.isfinite(obs).all() and focal > 0):
        raise ValueError("bundle_adjust: the observations must be finite and the focal length positive")
    sigma = np.full(l_, settings.shape_sigma_cm) if shape_sigma is None else np.asarray(shape_sigma, np.float64)
    ref = np.asarray(shape0, dtype=np.float64)
    gauge_ref = ref[:gauge_points or l_]
    prior = None if rotation_prior is None else torch.as_tensor(rotation_prior, dtype=DT)
    if prior is not None and prior.shape != (n, 3, 3):
        raise ValueError(f"bundle_adjust: rotation_prior [N, 3, 3] expected, got {list(prior.shape)}")
    problem = _Problem(obs, torch.as_tensor(centre, dtype=DT), torch.as_tensor(ref, dtype=DT), math.log(focal),
                       settings, fix_focal, prior, vis, torch.as_tensor(1.0 / sigma ** 2, dtype=DT))
    rotate = prior is None
    st = _State(torch.as_tensor(rotations, dtype=DT), torch.as_tensor(translations, dtype=DT),
                torch.as_tensor(ref, dtype=DT).clone(), torch.tensor(math.log(focal), dtype=DT))
    st = _State(*_fix_gauge(st.rot, st.trans, st.shape, gauge_ref, rotate), st.log_f)
    cost = problem.cost(st)
    if not math.isfinite(cost):
        raise ValueError("bundle_adjust: the start puts points behind the camera")
    damping, iterations = 1e-3, 0
    for iterations in range(1, settings.max_iterations + 1):
        basis = _gauge_complement(st.shape, len(gauge_ref), rotate, fix_focal)
        pieces = _restrict(problem.normal_equations(st), basis)
        improved = False
        while damping < 1e8:
            step_p, step_g, _ = _solve(*pieces[:5], damping)
            trial = _apply(st, step_p, basis @ step_g, fix_focal)
            trial_cost = problem.cost(trial)
            if trial_cost < cost:
                improved = True
                break
            damping *= 4.0
        if not improved:
            break
        done = cost - trial_cost < settings.tolerance * max(cost, 1e-30)
        st = _State(*_fix_gauge(trial.rot, trial.trans, trial.shape, gauge_ref, rotate), trial.log_f)
        cost = problem.cost(st)  # the step kept the gauge to first order: this differs from trial_cost by ~step^2
        damping = max(damping / 3.0, 1e-7)
        if done:
            break
    basis = _gauge_complement(st.shape, len(gauge_ref), rotate, fix_focal)
    h_pp, h_pg, h_gg, b_p, b_g, w = _restrict(problem.normal_equations(st), basis)
    r, _ = problem.residuals(st)
    focal_sigma = math.nan
    if not fix_focal:
        _, _, reduced = _solve(h_pp, h_pg, h_gg, b_p, b_g, 0.0)
        dof = max(1, 2 * int(vis.sum()) - 6 * n - 3 * l_ - 1 + 7)
        chi2 = float((w * (r ** 2).sum(-1)).sum()) / dof  # weighted residual variance per coordinate, px^2
        variance = float(torch.linalg.inv(reduced)[-1, -1]) * max(1.0, chi2 / settings.noise_px ** 2)
        focal_sigma = float(st.log_f.exp()) * math.sqrt(max(variance, 0.0))
    return BundleResult(rotations=st.rot.numpy(), translations=st.trans.numpy(), shape=st.shape.numpy(),
                        focal=focal if fix_focal else float(st.log_f.exp()), focal_sigma=focal_sigma,
                        residuals=r.numpy(), errors=r.norm(dim=-1).numpy(), weights=w.numpy(), iterations=iterations,
                        cost=cost)

