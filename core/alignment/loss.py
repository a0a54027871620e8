"""Stage 3a of the alignment: the multi-view loss, its value and its gradient.

Same loss as the reference ``PointCloudOptimizer``, computed differently (and much faster):
residuals live in each camera's own frame (the norm is rotation invariant), predictions are
stored once per image in a planar (K, 3, pixels) layout, processed in cache-sized chunks on the
CPU, and the gradients of the per-pixel parts (residuals, back-projection) are written out by
hand; only the small pose/scale/focal parts go through autograd.

N views, E pairs (edges), S sides (one side = one pair output showing one image; S = 2E).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import roma
import torch

from core.alignment.inputs import Inputs
from core.alignment.params import FOCAL_BREAK, pair_scales
from core.geometry import pixel_grid, signed_expm1

__all__ = ["CPU_CHUNK_ELEMS", "Group", "Problem", "evaluate"]

#: On the CPU the per-pixel loss is evaluated in chunks of about this many (side, pixel) pairs
#: so that the working set stays in cache.
CPU_CHUNK_ELEMS = 1 << 17


@dataclass
class Group:
    """The pair outputs that show one image (its "sides"), stored planar and chunked."""

    image: int
    sides: slice
    """Range of this group's sides in the global side order."""
    offset: int
    """First pixel of the image in the flat pixel layout."""
    chunks: list[tuple[int, int, torch.Tensor, torch.Tensor]]
    """(a0, a1, P (K, 3, a1 - a0) points in the pair frame, w (K, a1 - a0) loss weights)."""


class Problem:
    """Constant data of the multi-view loss, and its value and gradient.

    Loss (reference): sum over pairs e = (i, j) and pixels of log(conf) * |X_img - s_e (R_e P + T_e)|,
    the view-1 sides divided by sum_e H_i W_i and the view-2 sides by sum_e H_j W_j. X_img is the
    image's back-projected depth in world coordinates. Evaluated per side k (one pair output
    showing image g) in camera g's frame: |M_k P + b_k - X_cam| with
    M_k = s_e R_g^T R_e and b_k = R_g^T (s_e T_e - t_g).
    """

    def __init__(self, inp: Inputs) -> None:
        dev = inp.device
        self.n = inp.n
        self.n_edges = len(inp.edges)
        self.shapes = inp.shapes
        self.areas = [h * w for h, w in inp.shapes]
        self.offsets = np.concatenate(([0], np.cumsum(self.areas))).tolist()
        self.total = int(self.offsets[-1])
        uvc = []
        for h, w in inp.shapes:
            grid = pixel_grid(h, w, device=dev) - torch.tensor((w / 2, h / 2), device=dev)
            uvc.append(grid.reshape(-1, 2).T)
        self.uvc = torch.cat(uvc, dim=1).contiguous()  # (2, total)
        side_edge: list[int] = []
        side_img: list[int] = []
        self.groups: list[Group] = [self._build_group(inp, g, side_edge, side_img) for g in range(self.n)]
        self.side_edge = torch.tensor(side_edge, device=dev)
        self.side_img = torch.tensor(side_img, device=dev)
        self.device = dev

    def _build_group(self, inp: Inputs, g: int, side_edge: list[int], side_img: list[int]) -> Group:
        """Image g's sides, planar and chunked; appends their edges and image to the side lists."""
        area_i = float(sum(self.areas[i] for i, _ in inp.edges))
        area_j = float(sum(self.areas[j] for _, j in inp.edges))
        pts, wts = [], []
        start = len(side_edge)
        for e, (i, j) in enumerate(inp.edges):
            if i == g:
                pts.append(inp.pred1[e])
                wts.append(inp.conf1[e].log() / area_i)
            elif j == g:
                pts.append(inp.pred2[e])
                wts.append(inp.conf2[e].log() / area_j)
            else:
                continue
            side_edge.append(e)
            side_img.append(g)
        k = len(pts)
        area = self.areas[g]
        planar = torch.stack([p.reshape(area, 3).T for p in pts])  # (K, 3, A)
        weights = torch.stack([w.reshape(area) for w in wts])  # (K, A)
        chunk = area if inp.device.type != "cpu" else max(1024, CPU_CHUNK_ELEMS // k)
        chunks = [
            (
                a0,
                min(a0 + chunk, area),
                planar[:, :, a0 : a0 + chunk].contiguous(),
                weights[:, a0 : a0 + chunk].contiguous(),
            )
            for a0 in range(0, area, chunk)
        ]
        return Group(image=g, sides=slice(start, len(side_edge)), offset=self.offsets[g], chunks=chunks)

    # -- differentiable small part ------------------------------------------------------------
    def side_transforms(
        self, im_poses: torch.Tensor, pw_poses: torch.Tensor, norm_pw_scale: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per side: M (S, 3, 3) and b (S, 3) mapping pair points into the image's camera frame."""
        q_img = im_poses[:, :4] / im_poses[:, :4].norm(dim=-1, keepdim=True)
        rot_img = roma.unitquat_to_rotmat(q_img)  # (N, 3, 3)
        t_img = signed_expm1(im_poses[:, 4:7])  # (N, 3)
        q_e = pw_poses[:, :4] / pw_poses[:, :4].norm(dim=-1, keepdim=True)
        rot_e = roma.unitquat_to_rotmat(q_e)  # (E, 3, 3)
        t_e = signed_expm1(pw_poses[:, 4:7])  # (E, 3)
        scale = pair_scales(pw_poses, norm_pw_scale)  # (E,)
        rt_img = rot_img.transpose(1, 2)[self.side_img]  # (S, 3, 3) cam_from_world rotation
        s_side = scale[self.side_edge]
        m = s_side[:, None, None] * (rt_img @ rot_e[self.side_edge])
        b = (rt_img @ (s_side[:, None] * t_e[self.side_edge] - t_img[self.side_img])[..., None])[..., 0]
        return m, b

    @torch.no_grad()
    def cam_points(self, depth: torch.Tensor, inv_focals: torch.Tensor) -> torch.Tensor:
        """depth (total,) flat depths, inv_focals (N,) 1/f -> X (3, total) in each camera's frame."""
        x = torch.empty((3, self.total), device=self.device)
        for k in range(self.n):
            sl = slice(self.offsets[k], self.offsets[k + 1])
            torch.mul(self.uvc[:, sl], depth[sl], out=x[:2, sl]).mul_(inv_focals[k])
        x[2] = depth
        return x

    @torch.no_grad()
    def cam_points_backward(
        self, g_neg: torch.Tensor, depth: torch.Tensor, inv_focals: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of :meth:`cam_points` given g_neg = -dL/dX (3, total).

        Returns dL/dlog(depth) (total,) and dL/d(1/f) (N,).
        """
        g_logd = torch.empty_like(depth)
        g_inv_f = torch.empty_like(inv_focals)
        for k in range(self.n):
            sl = slice(self.offsets[k], self.offsets[k + 1])
            radial = g_neg[0, sl] * self.uvc[0, sl]
            radial.addcmul_(g_neg[1, sl], self.uvc[1, sl])  # -dL/dX_xy . (u - cx, v - cy)
            g_inv_f[k] = -torch.dot(radial, depth[sl])
            # dL/dd = (dL/dX_xy . uvc) / f + dL/dX_z; dL/dlog d = d * dL/dd
            torch.mul(radial, inv_focals[k], out=g_logd[sl]).add_(g_neg[2, sl]).mul_(depth[sl]).neg_()
        return g_logd, g_inv_f

    # -- per-pixel part, hand-written gradient ------------------------------------------------
    @torch.no_grad()
    def residual_loss(
        self, m: torch.Tensor, b: torch.Tensor, x: torch.Tensor, *, with_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """sum_k sum_pix w |M_k P + b_k - X| and its gradients w.r.t. M (S,3,3), b (S,3) and -X (3,total)."""
        loss = torch.zeros((), device=self.device)
        gm = torch.zeros_like(m) if with_grad else None
        gb = torch.zeros_like(b) if with_grad else None
        gx = torch.empty_like(x) if with_grad else None
        for grp in self.groups:
            mg = m[grp.sides]
            bg = b[grp.sides, :, None]
            for a0, a1, pts, w in grp.chunks:
                o0, o1 = grp.offset + a0, grp.offset + a1
                q = torch.baddbmm(bg, mg, pts)  # (K, 3, C)
                q.sub_(x[:, o0:o1])
                dist = q[:, 0] * q[:, 0]
                dist.addcmul_(q[:, 1], q[:, 1]).addcmul_(q[:, 2], q[:, 2]).sqrt_()  # (K, C)
                loss += torch.dot(w.reshape(-1), dist.reshape(-1))
                if with_grad:
                    dist.clamp_min_(1e-30)
                    torch.div(w, dist, out=dist)
                    q.mul_(dist[:, None])  # dL/dq
                    gm[grp.sides] += torch.bmm(q, pts.transpose(1, 2))
                    gb[grp.sides] += q.sum(-1)
                    torch.sum(q, 0, out=gx[:, o0:o1])
        return loss, gm, gb, gx


def evaluate(
    prob: Problem,
    logd: torch.Tensor,
    im_poses: torch.Tensor,
    pw_poses: torch.Tensor,
    focal_param: torch.Tensor,
    *,
    norm_pw_scale: bool,
    shared_focal: bool,
    with_grad: bool,
) -> torch.Tensor:
    """Loss at the given parameters; with_grad: also accumulate d loss / d param into ``.grad``.

    logd (total,) flat log-depths, im_poses (N, 7), pw_poses (E, 8), focal_param (N or 1, 1) =
    FOCAL_BREAK * log f. Returns the loss as a 0-d tensor.
    """
    with torch.set_grad_enabled(with_grad):
        m, b = prob.side_transforms(im_poses, pw_poses, norm_pw_scale)
        inv_f = (focal_param / -FOCAL_BREAK).exp().reshape(-1)
        if shared_focal:
            inv_f = inv_f.expand(prob.n)
    depth = logd.detach().exp()
    x = prob.cam_points(depth, inv_f.detach())
    loss, gm, gb, g_neg_x = prob.residual_loss(m.detach(), b.detach(), x, with_grad=with_grad)
    if with_grad:
        g_logd, g_inv_f = prob.cam_points_backward(g_neg_x, depth, inv_f.detach())
        if logd.requires_grad:
            logd.grad = g_logd if logd.grad is None else logd.grad + g_logd
        outs = [(t, g) for t, g in ((m, gm), (b, gb), (inv_f, g_inv_f)) if t.requires_grad]
        if outs:
            torch.autograd.backward([t for t, _ in outs], [g for _, g in outs])
    return loss
