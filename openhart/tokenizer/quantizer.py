"""Multi-scale residual quantizer: latent ⇄ (code ids per scale, continuous residual).

Scale k has a pn_k × pn_k grid of codes (pn_0 = 1, pn_{S-1} = H, the latent side). Quantizing walks
the scales coarse to fine: area-downsample what is left of the latent to pn_k × pn_k, pick the
nearest codebook vector per cell, bicubic-upsample the picked vectors back to H × W, refine them with
a shared 3×3 conv Φ, and subtract. HART's hybrid split keeps what is left after the last scale as a
continuous residual, so ``compose(ids, residual)`` gives the latent back to float rounding.

Which scales see Φ (the sampler's semantics, which the transformer and diffusion head are trained on):
scales 0..S-2 contribute Φ_k(up(emb(ids_k))); the last scale contributes its plain embedding (it is
already H × W). The VAR-style reconstruction and the VQ training forward apply Φ on the last scale too.

Dimension legend: B batch, Cz latent channels, H = W latent side, S scales, pn_k side of scale k,
l = pn_k² tokens of one scale, L = Σ pn_k² tokens over all scales, V codebook size, N rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Rows of the (N, V) distance matrix computed at once; bounds memory (4096 × 4096 fp32 = 64 MiB).
NEAREST_CODE_CHUNK_ROWS = 4096


class PhiConv(nn.Conv2d):
    """Φ(h) = (1 − r)·h + r·conv3×3(h): a refinement of upsampled code maps, mixed with identity."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.ratio = float(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1.0 - self.ratio) + super().forward(h).mul(self.ratio)


class SharedPhi(nn.Module):
    """K Φ convs shared by S scales: scale k uses the conv whose tick is nearest k/(S−1).

    ticks = linspace(1/(3K), 1 − 1/(3K), K); ties go to the lower index (numpy argmin).
    Official parameter names: ``qresi_ls.<i>``.
    """

    def __init__(self, channels: int, ratio: float, num_convs: int, num_scales: int) -> None:
        super().__init__()
        self.qresi_ls = nn.ModuleList(PhiConv(channels, ratio) for _ in range(num_convs))
        self.scale_to_conv = phi_indices(num_convs, num_scales)

    def forward(self, h: torch.Tensor, scale_index: int) -> torch.Tensor:
        return self.qresi_ls[self.scale_to_conv[scale_index]](h)


def phi_indices(num_convs: int, num_scales: int) -> tuple[int, ...]:
    """Index of the Φ conv used by each scale (see ``SharedPhi``)."""
    if num_convs == 1:
        ticks = [1.0 / 3.0]
    else:
        lo, hi = 1.0 / (3 * num_convs), 1.0 - 1.0 / (3 * num_convs)
        ticks = [lo + (hi - lo) * i / (num_convs - 1) for i in range(num_convs)]
    out = []
    for k in range(num_scales):
        position = k / (num_scales - 1)
        distances = [abs(t - position) for t in ticks]
        out.append(distances.index(min(distances)))  # first index on ties
    return tuple(out)


def squared_distances(rows: torch.Tensor, codes: torch.Tensor, code_sq: torch.Tensor) -> torch.Tensor:
    """‖r‖² + ‖e‖² − 2 r·e (n, V) of float32 rows (n, Cz) to codes (V, Cz) with norms² code_sq (V,)."""
    dist = rows.square().sum(dim=1, keepdim=True) + code_sq  # (n, V)
    return dist.addmm_(rows, codes.T, beta=1.0, alpha=-2.0)


class MultiScaleQuantizer(nn.Module):
    """Codebook (``embedding``, V × Cz) plus shared Φ convs (``quant_resi``), official names."""

    def __init__(
        self,
        codebook_size: int,
        latent_channels: int,
        patch_nums: Sequence[int],
        phi_ratio: float = 0.5,
        num_phi_convs: int = 4,
        commitment_beta: float = 0.25,
    ) -> None:
        super().__init__()
        self.codebook_size = int(codebook_size)
        self.latent_channels = int(latent_channels)
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.commitment_beta = float(commitment_beta)
        self.embedding = nn.Embedding(self.codebook_size, self.latent_channels)
        # Small uniform init (VAR's default): codes start near the origin, where fresh latents are.
        nn.init.uniform_(self.embedding.weight, -1.0 / self.codebook_size, 1.0 / self.codebook_size)
        self.quant_resi = SharedPhi(self.latent_channels, phi_ratio, num_phi_convs, len(self.patch_nums))

    # ------------------------------------------------------------------ sizes
    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def latent_size(self) -> int:
        return self.patch_nums[-1]

    @property
    def scale_lengths(self) -> tuple[int, ...]:
        """Tokens per scale, pn_k²."""
        return tuple(p * p for p in self.patch_nums)

    @property
    def num_tokens(self) -> int:
        """L = Σ pn_k²."""
        return sum(self.scale_lengths)

    # ------------------------------------------------------------------ building blocks
    @torch.no_grad()
    def nearest_code(self, z: torch.Tensor) -> torch.Tensor:
        """Index (N,) int64 of the codebook vector nearest to each row of ``z`` (N, Cz).

        argmin of ``code_distances``, first index on ties; chunked so that large N stays small.
        """
        codes, code_sq = self._rows_and_codes(z)
        z = z.detach().float()
        out = torch.empty(z.shape[0], dtype=torch.int64, device=z.device)
        for start in range(0, z.shape[0], NEAREST_CODE_CHUNK_ROWS):
            rows = z[start : start + NEAREST_CODE_CHUNK_ROWS]  # (n, Cz)
            out[start : start + rows.shape[0]] = squared_distances(rows, codes, code_sq).argmin(dim=1)
        return out

    @torch.no_grad()
    def code_distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared distances (N, V) float32 from each row of ``z`` (N, Cz) to every code, unchunked.

        ‖z‖² + ‖e‖² − 2 z·e in float32 whatever the input dtype: ``nearest_code``'s numbers exactly.
        """
        codes, code_sq = self._rows_and_codes(z)
        return squared_distances(z.detach().float(), codes, code_sq)

    def _rows_and_codes(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Check ``z`` is (N, Cz); the codebook (V, Cz) and its squared norms (V,), float32."""
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.latent_channels:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z: expected a tensor (N, {self.latent_channels}), got {shape}")
        codes = self.embedding.weight.detach().float()  # (V, Cz)
        return codes, codes.square().sum(dim=1)

    def embed(self, ids: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Codebook vectors (B, l, Cz) of ids (B, l).

        ``check=False`` skips the range check, which reads the ids on the host (a GPU sync): for
        ids the sampler drew itself, valid by construction.
        """
        if check:
            self._check_ids_tensor(ids, "ids")
        return self.embedding(ids.long())

    def phi(self, h: torch.Tensor, scale_index: int) -> torch.Tensor:
        """Φ conv of scale ``scale_index`` applied to a latent-size map h (B, Cz, H, W)."""
        if not 0 <= scale_index < self.num_scales:
            raise ValueError(f"scale_index: expected 0..{self.num_scales - 1}, got {scale_index}")
        return self.quant_resi(h, scale_index)

    def upsample_to_latent(self, h_BCpp: torch.Tensor) -> torch.Tensor:
        """Bicubic (align_corners=False) upsampling of a code map (B, Cz, pn, pn) to (B, Cz, H, W)."""
        side = self.latent_size
        if h_BCpp.shape[-1] == side and h_BCpp.shape[-2] == side:
            return h_BCpp
        return F.interpolate(h_BCpp, size=(side, side), mode="bicubic", align_corners=False)

    def downsample_to_scale(self, latent: torch.Tensor, scale_index: int) -> torch.Tensor:
        """Area (adaptive average) downsampling of (B, Cz, H, W) to scale k's (B, Cz, pn_k, pn_k)."""
        side = self.patch_nums[scale_index]
        if side == latent.shape[-1] and side == latent.shape[-2]:
            return latent
        return F.interpolate(latent, size=(side, side), mode="area")

    def code_map(self, ids: torch.Tensor, scale_index: int) -> torch.Tensor:
        """Embeddings of one scale's ids (B, pn²) as a map (B, Cz, pn, pn)."""
        pn = self.patch_nums[scale_index]
        emb = self.embedding(ids.long())  # (B, pn², Cz)
        return emb.transpose(1, 2).reshape(ids.shape[0], self.latent_channels, pn, pn)

    # ------------------------------------------------------------------ hybrid split / compose
    def quantize(self, latent: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Split a latent (B, Cz, H, W) into code ids per scale [(B, pn_k²) int64] and the residual.

        residual = latent − compose(ids): what the discrete scales (sampler semantics) miss.
        """
        self.check_latent(latent, "latent")
        B = latent.shape[0]
        rest = latent  # what the scales so far have not explained
        ids_per_scale: list[torch.Tensor] = []
        last = self.num_scales - 1
        for k in range(self.num_scales):
            target = self.downsample_to_scale(rest, k)  # (B, Cz, pn, pn); the last scale: as is
            rows = target.permute(0, 2, 3, 1).reshape(-1, self.latent_channels)  # (B·pn², Cz) row-major
            ids = self.nearest_code(rows).view(B, -1)  # (B, pn²)
            ids_per_scale.append(ids)
            h = self.code_map(ids, k)
            if k < last:
                h = self.quant_resi(self.upsample_to_latent(h), k)
            rest = rest - h
        return ids_per_scale, rest

    def compose(self, ids: Sequence[torch.Tensor], residual: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_{k<S−1} Φ_k(up(emb(ids_k))) + emb(ids_{S−1}) (+ residual): latent (B, Cz, H, W).

        Without ``residual`` this is the discrete-only latent; with the residual from ``quantize``
        it is the original latent.
        """
        B = self._check_ids(ids, "ids", self.num_scales)
        f_hat = self._discrete_sum(ids, phi_on_last=False)
        if residual is not None:
            self.check_latent(residual, "residual", batch=B)
            f_hat = f_hat + residual
        return f_hat

    def compose_var_style(self, ids: Sequence[torch.Tensor]) -> torch.Tensor:
        """VAR-style discrete reconstruction: Φ on every scale including the last, no residual."""
        self._check_ids(ids, "ids", self.num_scales)
        return self._discrete_sum(ids, phi_on_last=True)

    def last_scale_target(self, ids: Sequence[torch.Tensor], residual: torch.Tensor) -> torch.Tensor:
        """residual + emb(ids_{S−1}) as (B, Cz, H, W): latent minus the Φ'd coarser scales.

        HART's diffusion head learns this minus the embedding of the token the transformer samples.
        """
        B = self._check_ids(ids, "ids", self.num_scales)
        self.check_latent(residual, "residual", batch=B)
        return residual + self.code_map(ids[-1], self.num_scales - 1)

    # ------------------------------------------------------------------ transformer inputs
    def teacher_forcing_inputs(self, ids: Sequence[torch.Tensor]) -> torch.Tensor:
        """Transformer inputs for scales 1..S−1 from the ids of scales 0..S−2: (B, L − 1, Cz).

        After adding scale k (with Φ) to the running f̂, f̂ area-downsampled to pn_{k+1} and
        flattened row-major is the input of scale k+1. ``ids`` may hold all S scales or the first S−1.
        """
        if isinstance(ids, (list, tuple)) and len(ids) == self.num_scales:
            B = self._check_ids(ids, "ids", self.num_scales)
        else:
            B = self._check_ids(ids, "ids", self.num_scales - 1)
        first = ids[0]
        f_hat = torch.zeros(
            B,
            self.latent_channels,
            self.latent_size,
            self.latent_size,
            dtype=self.embedding.weight.dtype,
            device=first.device,
        )
        inputs = []
        for k in range(self.num_scales - 1):
            h = self.embedding(ids[k].long())  # (B, pn², Cz)
            f_hat, next_input = self.next_scale_input(f_hat, h, k)
            inputs.append(next_input)
        return torch.cat(inputs, dim=1)

    def next_scale_input(
        self, f_hat: torch.Tensor, h: torch.Tensor, scale_index: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One sampler step: add scale k's token latents h (B, pn_k², Cz) to f̂ (B, Cz, H, W).

        h may be hard code embeddings or soft (probability-weighted) ones. For k < S−1 returns
        (f̂ + Φ_k(up(h)), area(f̂, pn_{k+1}) as (B, pn_{k+1}², Cz)); at the last scale returns
        (f̂ + h, None) — pass h = embedding + residual there to get the hybrid latent.
        """
        if not 0 <= scale_index < self.num_scales:
            raise ValueError(f"scale_index: expected 0..{self.num_scales - 1}, got {scale_index}")
        self.check_latent(f_hat, "f_hat")
        B, pn = f_hat.shape[0], self.patch_nums[scale_index]
        if h.dim() != 3 or tuple(h.shape) != (B, pn * pn, self.latent_channels):
            raise ValueError(
                f"h: expected (B={B}, {pn * pn}, {self.latent_channels}) for scale {scale_index}, "
                f"got {tuple(h.shape)}"
            )
        h_map = h.transpose(1, 2).reshape(B, self.latent_channels, pn, pn)  # (B, Cz, pn, pn)
        if scale_index == self.num_scales - 1:
            return f_hat + h_map, None
        f_hat = f_hat + self.quant_resi(self.upsample_to_latent(h_map), scale_index)
        next_map = self.downsample_to_scale(f_hat, scale_index + 1)  # (B, Cz, pn', pn')
        return f_hat, next_map.flatten(2).transpose(1, 2)  # (B, pn'², Cz) row-major

    # ------------------------------------------------------------------ training
    def training_forward(
        self, latent: torch.Tensor, use_residual: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """VQ training pass: (quantized latent, VQ loss, ids per scale).

        The discrete part is VAR-style (Φ on every scale). The quantized latent carries
        straight-through gradients to ``latent``; with ``use_residual`` (HART's continuous branch,
        alternated with the discrete one during tokenizer training) its value is the latent itself.
        VQ loss = mean over scales of ‖f̂_k − sg(latent)‖² + β·‖sg(f̂_k) − latent‖² (MSE), f̂_k the
        running reconstruction after scale k: the first term trains codebook and Φ, the second
        (commitment) the encoder.
        """
        self.check_latent(latent, "latent")
        B = latent.shape[0]
        target = latent.detach()
        f_hat = torch.zeros_like(target)
        rest = target
        ids_per_scale: list[torch.Tensor] = []
        loss = latent.new_zeros(())
        for k in range(self.num_scales):
            rows = self.downsample_to_scale(rest, k).permute(0, 2, 3, 1).reshape(-1, self.latent_channels)
            ids = self.nearest_code(rows).view(B, -1)  # (B, pn²)
            ids_per_scale.append(ids)
            h = self.quant_resi(self.upsample_to_latent(self.code_map(ids, k)), k)
            f_hat = f_hat + h
            rest = rest - h.detach()
            loss = (
                loss + F.mse_loss(f_hat, target) + self.commitment_beta * F.mse_loss(f_hat.detach(), latent)
            )
        loss = loss / self.num_scales
        quantized = latent if use_residual else latent + (f_hat - latent).detach()
        return quantized, loss, ids_per_scale

    # ------------------------------------------------------------------ helpers
    def _discrete_sum(self, ids: Sequence[torch.Tensor], phi_on_last: bool) -> torch.Tensor:
        last = self.num_scales - 1
        f_hat = None
        for k in range(self.num_scales):
            h = self.code_map(ids[k], k)
            if k < last or phi_on_last:
                h = self.quant_resi(self.upsample_to_latent(h), k)
            f_hat = h if f_hat is None else f_hat + h
        assert f_hat is not None
        return f_hat

    def check_latent(self, latent: torch.Tensor, name: str, batch: int | None = None) -> None:
        if not isinstance(latent, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(latent).__name__}")
        side = self.latent_size
        if latent.dim() != 4 or latent.shape[1] != self.latent_channels or latent.shape[2:] != (side, side):
            raise ValueError(
                f"{name}: expected shape (B, {self.latent_channels}, {side}, {side}), got {tuple(latent.shape)}"
            )
        if not latent.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {latent.dtype}")
        if batch is not None and latent.shape[0] != batch:
            raise ValueError(f"{name}: batch {latent.shape[0]} does not match the ids' batch {batch}")

    def _check_ids_tensor(self, ids: torch.Tensor, name: str) -> None:
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(ids).__name__}")
        if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise TypeError(f"{name}: expected an integer tensor, got {ids.dtype}")
        if ids.dim() != 2:
            raise ValueError(f"{name}: expected shape (B, l), got {tuple(ids.shape)}")
        if ids.numel() > 0:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.codebook_size:
                raise ValueError(f"{name}: ids must lie in [0, {self.codebook_size}), got range [{lo}, {hi}]")

    def _check_ids(self, ids: Sequence[torch.Tensor], name: str, num_scales: int) -> int:
        """Validate ids of scales 0..num_scales−1; returns the batch size."""
        if isinstance(ids, torch.Tensor) or not isinstance(ids, Sequence):
            raise TypeError(
                f"{name}: expected a list of {num_scales} tensors (B, pn_k²), got {type(ids).__name__}"
            )
        if len(ids) != num_scales:
            raise ValueError(f"{name}: expected {num_scales} scales, got {len(ids)}")
        batch = None
        for k, ids_k in enumerate(ids):
            self._check_ids_tensor(ids_k, f"{name}[{k}]")
            expected = (ids_k.shape[0] if batch is None else batch, self.patch_nums[k] ** 2)
            if tuple(ids_k.shape) != expected:
                raise ValueError(f"{name}[{k}]: expected shape {expected}, got {tuple(ids_k.shape)}")
            batch = ids_k.shape[0]
        assert batch is not None
        return batch
