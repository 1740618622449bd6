"""Pose refinement: the correction's maths, its gradient through the renderer (zero at the start, pointing
towards a known offset's truth), its place in checkpoints and resume, and old checkpoints without it."""
from __future__ import annotations

import json

import pytest
import torch

from nerfbs.config import Config, DataConfig, TrainConfig
from nerfbs.data.camera import image_rays, pixel_rays, project
from nerfbs.errors import UserError
from nerfbs.evaluate.refine import PoseFit, refine_frame
from nerfbs.export.avatar import load_avatar
from nerfbs.render.image import render_image
from nerfbs.render.pose import PoseCorrection, correct_poses, so3_exp
from nerfbs.render.rays import render_rays_train
from nerfbs.train import checkpoint as ckpt
from nerfbs.train import loop as train
from nerfbs.train.workspace import Workspace
from tiny import TINY_MODEL, TINY_RENDER, invoke, psnr_u8

NO_LPIPS = lambda needed: None  # noqa: E731


def _cross(w: torch.Tensor) -> torch.Tensor:
    x, y, z = w.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(-1, 3, 3)


def test_so3_exp_is_the_matrix_exponential_with_exact_gradients_at_zero():
    w = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.5
    assert torch.allclose(so3_exp(w), torch.linalg.matrix_exp(_cross(w)), atol=1e-12)
    for start in (torch.zeros(2, 3), torch.full((2, 3), 1e-5), torch.randn(2, 3)):
        assert torch.autograd.gradcheck(so3_exp, (start.double().requires_grad_(),))
    # at zero, dR/dw_k is the k-th generator: R(e_k eps) ~ I + eps K(e_k)
    zero = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(lambda v: so3_exp(v)[0], zero)[..., 0, :]  # [3, 3, 3]
    for k in range(3):
        assert torch.allclose(jac[..., k], _cross(torch.eye(3, dtype=torch.float64)[k:k + 1])[0])


def test_corrected_rays_are_the_rays_of_the_corrected_poses():
    gen = torch.Generator().manual_seed(1)
    poses = torch.eye(4).repeat(3, 1, 1)
    poses[:, :3, :3] = so3_exp(torch.randn(3, 3, generator=gen))
    poses[:, :3, 3] = torch.randn(3, 3, generator=gen) * 0.3
    correction = PoseCorrection(3)
    with torch.no_grad():
        correction.rotation.copy_(torch.randn(3, 3, generator=gen) * 0.05)
        correction.translation.copy_(torch.randn(3, 3, generator=gen) * 0.003)
    u, v = torch.rand(50, generator=gen) * 64, torch.rand(50, generator=gen) * 64
    slot = torch.randint(0, 2, (50,), generator=gen)
    frames = torch.tensor([2, 0])
    args = (60.0, 60.0, 32.0, 32.0, u, v, slot)
    o, d = pixel_rays(poses[frames], *args)
    got_o, got_d = correction.correct_rays(o, d, frames, slot)
    want_o, want_d = pixel_rays(correction.poses(poses)[frames], *args)
    assert torch.allclose(got_o, want_o, atol=1e-6) and torch.allclose(got_d, want_d, atol=1e-6)
    with pytest.raises(ValueError, match="3 corrections for 2 poses"):
        correction.poses(poses[:2])
    # zero corrections change nothing, to the bit
    zero = PoseCorrection(3)
    assert torch.equal(zero.poses(poses), poses)
    zo, zd = zero.correct_rays(o, d, frames, slot)
    assert torch.equal(zo, o) and torch.equal(zd, d)


def test_recenter_removes_the_shared_correction_and_the_penalty_is_dimensionless():
    correction = PoseCorrection(4)
    with torch.no_grad():
        correction.rotation.copy_(torch.tensor([[0.1, 0, 0], [0.3, 0, 0], [0.2, 0, 0], [0.2, 0.4, 0]]))
        correction.translation.fill_(0.06)
    assert correction.penalty(torch.tensor([0]), bound=0.06).item() == pytest.approx(0.01 + 3.0)
    correction.recenter_()
    assert torch.allclose(correction.rotation.mean(0), torch.zeros(3), atol=1e-7)
    assert torch.allclose(correction.translation, torch.zeros(4, 3))
    assert correction.rotation[0, 0].item() == pytest.approx(-0.1)


def _frame_rays(avatar, frame: int):
    pose = avatar.subject.poses[frame:frame + 1]
    origins, directions, _ = image_rays(pose, avatar.subject.intrinsics)
    n = origins.shape[0]
    background = (avatar.subject.background.float() / 255.0).reshape(-1, 3)
    return origins, directions, torch.zeros(n, dtype=torch.int32), background


def _render(avatar, frame, origins, directions, ray_frame, background):
    coeffs = avatar.subject.coeffs[frame:frame + 1]
    return render_rays_train(avatar.field, avatar.grid, avatar.config.render, origins, directions, ray_frame, coeffs,
                             background, jitter=False).rgb


def test_zero_correction_renders_as_no_refinement_and_gradients_reach_it(tiny_run):
    avatar = load_avatar(tiny_run.checkpoint)
    avatar.field.requires_grad_(False)
    frame = 1
    origins, directions, ray_frame, background = _frame_rays(avatar, frame)
    plain = _render(avatar, frame, origins, directions, ray_frame, background)
    correction = PoseCorrection(avatar.subject.num_train)
    frames = torch.tensor([frame])
    o, d = correction.correct_rays(origins, directions, frames, ray_frame)
    assert o.requires_grad
    refined = _render(avatar, frame, o, d, ray_frame, background)
    assert torch.allclose(refined, plain, atol=1e-6)
    assert (plain - background).abs().mean() > 0.01, "the tiny avatar renders nothing: a vacuous test"
    (refined * torch.randn_like(refined)).sum().backward()
    assert correction.rotation.grad[frame].abs().sum() > 0 and correction.translation.grad[frame].abs().sum() > 0
    others = torch.arange(avatar.subject.num_train) != frame
    assert correction.rotation.grad[others].abs().sum() == 0


@pytest.mark.parametrize("which, sideways, up", [("translation", 0.004, -0.002), ("rotation", 0.12, 0.05)])
def test_a_known_pose_offset_is_corrected_by_the_photometric_gradient(tiny_run, which, sideways, up):
    """The target is the field's own render at the tracked pose; the correction starts at a known offset along
    the camera's image axes (a translation: the image shifts; a rotation about the head's centre: the head turns
    in view). The first gradient points back towards zero, and a few Adam steps on the correction alone shrink
    the offset along those axes (the image barely constrains the third, the depth axis, so it is not judged)."""
    avatar = load_avatar(tiny_run.checkpoint)
    avatar.field.requires_grad_(False)
    frame = 2
    origins, directions, ray_frame, background = _frame_rays(avatar, frame)
    with torch.no_grad():
        target = _render(avatar, frame, origins, directions, ray_frame, background)
    axes = avatar.subject.poses[frame, :3, :2].T  # [2, 3] the camera's x and y axes in the world
    correction = PoseCorrection(avatar.subject.num_train)
    param = getattr(correction, which)
    start = sideways * axes[0] + up * axes[1]
    with torch.no_grad():
        param[frame] = start
    frames = torch.tensor([frame])
    optimizer = torch.optim.Adam([param], lr=2e-4 if which == "translation" else 6e-3)
    for step in range(30):
        o, d = correction.correct_rays(origins, directions, frames, ray_frame)
        loss = (_render(avatar, frame, o, d, ray_frame, background) - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            first_loss = loss.item()
            assert torch.dot(param.grad[frame], start) > 0, "the gradient points away from the truth"
        optimizer.step()
    in_plane = axes @ param[frame].detach()  # [2] the remaining offset along the image axes
    assert in_plane.norm() < 0.3 * (sideways ** 2 + up ** 2) ** 0.5, (which, in_plane, sideways, up)
    assert loss.item() < 0.5 * first_loss


def _config(subject, steps: int, **train_kw) -> Config:
    train_kw.setdefault("pose_refinement", True)
    return Config(data=DataConfig(subject=str(subject), test_last=2), model=TINY_MODEL, render=TINY_RENDER,
                  train=TrainConfig(steps=steps, use_lpips=False, rays_per_image=128, validate_every=10 ** 6,
                                    checkpoint_every=10 ** 6, occupancy_update_every=4, **train_kw))


def test_corrections_are_saved_restored_on_resume_and_applied_to_the_avatar(tiny_run, tmp_path):
    ws = Workspace(tmp_path / "run")
    first = train.prepare_run(_config(tiny_run.subject, 6, pose_rotation_lr=1e-2, pose_translation_lr=1e-3), ws,
                              torch.device("cpu"), resume_from=None, lpips_loader=NO_LPIPS)
    assert first.poses is not None and first.poses.rotation.abs().sum() == 0
    train.train(first)
    saved = first.poses.state_dict()
    assert saved["rotation"].abs().sum() > 0 and saved["translation"].abs().sum() > 0
    assert torch.allclose(saved["rotation"].mean(0), torch.zeros(3), atol=1e-6)  # recentred
    payload = ckpt.load_checkpoint(ws.latest)
    assert payload["version"] == ckpt.FORMAT_VERSION
    assert all(torch.equal(payload["poses"][k], saved[k]) for k in saved)
    resumed = train.prepare_run(_config(tiny_run.subject, 8), ws, torch.device("cpu"), resume_from=payload,
                                lpips_loader=NO_LPIPS)
    assert resumed.step == 6 and resumed.config.train.pose_rotation_lr == 1e-2
    assert all(torch.equal(resumed.poses.state_dict()[k], saved[k]) for k in saved)
    group_lrs = [g["base_lr"] for g in resumed.optimizer.param_groups]
    assert group_lrs[2:] == [1e-2, 1e-3]
    pose_state = resumed.optimizer.state_dict()["state"]
    assert torch.equal(pose_state[2]["exp_avg"], first.optimizer.state_dict()["state"][2]["exp_avg"])
    train.train(resumed)
    assert resumed.step == 8 and not torch.equal(resumed.poses.rotation.detach(), saved["rotation"])

    avatar = load_avatar(ws.latest)
    n = avatar.subject.num_train
    tracked = resumed.subject.poses
    want = correct_poses(tracked[:n], resumed.poses.rotation.detach(), resumed.poses.translation.detach())
    assert torch.allclose(avatar.subject.poses[:n], want, atol=1e-6)
    assert not torch.allclose(avatar.subject.poses[:n], tracked[:n], atol=1e-6)
    assert torch.equal(avatar.subject.poses[n:], tracked[n:])  # held-out frames keep their tracked cameras


def test_corrections_start_at_pose_refinement_from(tiny_run, tmp_path):
    config = _config(tiny_run.subject, 4, pose_refinement_from=0.5, pose_rotation_lr=1e-2)
    run = train.prepare_run(config, Workspace(tmp_path / "w"), torch.device("cpu"), resume_from=None,
                            lpips_loader=NO_LPIPS)
    for _ in range(2):
        figures = train.train_step(run)
    assert run.poses.rotation.abs().sum() == 0 and "pose_penalty" not in figures
    assert not run.optimizer.state.get(run.poses.rotation)  # no gradient yet: Adam left it alone
    for _ in range(2):
        figures = train.train_step(run)
    assert run.poses.rotation.abs().sum() > 0 and "pose_penalty" in figures


def _as_version_1(path, out):
    """A checkpoint as nerfbs wrote it before pose refinement: version 1, no ``poses``, no pose config keys."""
    payload = torch.load(path, weights_only=True)
    assert payload["poses"] is None
    payload["version"] = 1
    del payload["poses"]
    payload["config"]["train"] = {k: v for k, v in payload["config"]["train"].items() if not k.startswith("pose_")}
    for group in payload["optimizer"]["param_groups"]:
        del group["base_lr"]
    torch.save(payload, out)
    return out


def test_an_old_checkpoint_without_corrections_loads_and_resumes(tiny_run, tmp_path):
    ws = Workspace(tmp_path / "old")
    run = train.prepare_run(_config(tiny_run.subject, 3, pose_refinement=False), ws, torch.device("cpu"),
                            resume_from=None, lpips_loader=NO_LPIPS)
    assert run.poses is None and len(run.optimizer.param_groups) == 2
    train.train(run)
    _as_version_1(ws.latest, ws.latest)
    payload = ckpt.load_checkpoint(ws.latest)
    assert payload["poses"] is None and payload["config"].train.pose_refinement is False
    avatar = load_avatar(ws.latest)
    assert torch.equal(avatar.subject.poses, run.subject.poses)
    resumed = train.prepare_run(_config(tiny_run.subject, 5), ws, torch.device("cpu"), resume_from=payload,
                                lpips_loader=NO_LPIPS)
    assert resumed.poses is None and resumed.step == 3
    train.train(resumed)
    assert ckpt.load_checkpoint(ws.latest)["version"] == ckpt.FORMAT_VERSION


def test_corrections_of_another_frame_count_are_refused(tiny_run, tmp_path):
    payload = ckpt.load_checkpoint(tiny_run.checkpoint)
    assert payload["poses"] is not None  # the tiny run refines poses
    n = payload["poses"]["rotation"].shape[0]
    with pytest.raises(UserError, match=f"do not fit the subject's {n + 1} training frames"):
        ckpt.pose_state(payload, n + 1, path="x.pth")


@pytest.mark.parametrize("option, expected", [((), False), (("--pose-refinement",), True),
                                              (("--no-pose-refinement",), False)])
def test_pose_refinement_is_off_unless_asked_for(tiny_run, tmp_path, option, expected):
    ws = tmp_path / "run"
    result = invoke("train", tiny_run.subject, "--model", "small", "--steps", 2, "--test-last", 2, "--no-lpips",
                    *option, "--workspace", ws)
    assert result.exit_code == 0, result.output
    config = json.loads((ws / "config.json").read_text())
    assert config["train"]["pose_refinement"] is expected
    assert config["render"]["step_scale"] == 4.0  # the small model's long steps, --step-scale not given
    poses = ckpt.load_checkpoint(ws / "checkpoints" / "latest.pth")["poses"]
    assert (poses is not None) is expected


def _reprojection_px(pose: torch.Tensor, true_pose: torch.Tensor, subject) -> float:
    """Mean pixel distance between where the two cameras see the head's centre and the corners of a cube of
    half-width 0.04 around it (the head's extent)."""
    corners = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float32) * 0.04
    points = torch.cat([torch.zeros(1, 3), corners])
    k = (subject.fx, subject.fy, subject.cx, subject.cy)
    return float((project(points, pose, *k)[0] - project(points, true_pose, *k)[0]).norm(dim=-1).mean())


def test_test_time_refinement_recovers_a_held_out_offset(tiny_run, monkeypatch):
    """Held-out frame, truth = the field's own render at the tracked camera, the camera shifted sideways by a
    known offset: the fit on the image brings it back (field frozen, coefficients untouched)."""
    avatar = load_avatar(tiny_run.checkpoint)
    subject = avatar.subject
    frame = subject.num_train  # the first held-out frame
    true_pose = subject.poses[frame].clone()
    background = subject.background.float() / 255.0
    own = render_image(avatar.field, avatar.grid, avatar.config.render, true_pose, subject.intrinsics,
                       subject.coeffs[frame], background).rgb[0]
    truth_u8 = (own.clamp(0, 1) * 255).round().to(torch.uint8)
    monkeypatch.setattr(subject, "frame", lambda i: (truth_u8, None))
    axis = true_pose[:3, 0]  # the camera's x axis
    shifted = correct_poses(true_pose[None], torch.zeros(1, 3), 0.004 * axis[None])[0]
    subject.poses[frame] = shifted
    tables = avatar.field.encoder.tables.detach().clone()
    coeffs = subject.coeffs.clone()
    fit = refine_frame(avatar.field, avatar.grid, avatar.config.render, subject, frame,
                       PoseFit(steps=60, rotation_lr=5e-3, translation_lr=3e-4))
    before, after = _reprojection_px(shifted, true_pose, subject), _reprojection_px(fit.pose, true_pose, subject)
    assert before > 0.5, before  # pixels of the 64 px image
    assert after < 0.3 * before, (before, after)
    assert torch.equal(avatar.field.encoder.tables, tables) and torch.equal(subject.coeffs, coeffs)
    assert all(p.requires_grad for p in avatar.field.parameters())  # unfrozen again
    assert psnr_u8(fit.prediction * 255, truth_u8.numpy()) > 25


def test_eval_reports_both_figures_with_refine_poses(tiny_run, tmp_path):
    out = tmp_path / "eval"
    result = invoke("eval", tiny_run.checkpoint, "--out", out, "--refine-poses", 3)
    assert result.exit_code == 0, result.output
    assert "test-time pose refinement" in result.output and result.output.count("| full |") == 2
    tracked = json.loads((out / "metrics.json").read_text())
    refined = json.loads((out / "refined_poses" / "metrics.json").read_text())
    assert tracked["frames"] == refined["frames"] == 2
    assert all(row["pose_correction"]["rotation_deg"] >= 0 for row in refined["per_frame"])
    assert "pose_correction" not in tracked["per_frame"][0]
    assert (out / "contact.png").is_file() and (out / "refined_poses" / "contact.png").is_file()
    assert f"contact sheet {out / 'refined_poses' / 'contact.png'}" in result.output
