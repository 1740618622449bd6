"""Plain-torch twin of ``taichi_kernels.color_input``: real spherical harmonics of unit directions."""
import torch


def spherical_harmonics(directions: torch.Tensor, degree: int) -> torch.Tensor:
    """Real spherical harmonics of unit directions [N, 3] up to ``degree`` bands (1 to 4): [N, degree^2]."""
    if not 1 <= degree <= 4:
        raise ValueError(f"spherical harmonics degree must lie in [1, 4], got {degree}")
    x, y, z = directions.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xy, yz, xz, x2, y2, z2 = x * y, y * z, x * z, x * x, y * y, z * z
        out += [1.0925484305920792 * xy, -1.0925484305920792 * yz, 0.94617469575755997 * z2 - 0.31539156525251999,
                -1.0925484305920792 * xz, 0.54627421529603959 * (x2 - y2)]
    if degree > 3:
        out += [0.59004358992664352 * y * (-3.0 * x2 + y2),
                2.8906114426405538 * xy * z, 0.45704579946446572 * y * (1.0 - 5.0 * z2),
                0.3731763325901154 * z * (5.0 * z2 - 3.0), 0.45704579946446572 * x * (1.0 - 5.0 * z2),
                1.4453057213202769 * z * (x2 - y2), 0.59004358992664352 * x * (-x2 + 3.0 * y2)]
    return torch.stack(out, dim=-1)


def color_input(directions: torch.Tensor, density_out: torch.Tensor, degree: int) -> torch.Tensor:
    """Spherical harmonics of ``directions`` then ``density_out[:, 1:]``, in ``density_out``'s dtype."""
    return torch.cat([spherical_harmonics(directions, degree).to(density_out.dtype), density_out[:, 1:]], dim=-1)
