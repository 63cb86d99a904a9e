"""VQGAN-style adversarial loss for the tokenizer: a PatchGAN discriminator and its loss terms.

An L1/L2-trained autoencoder averages over what it cannot predict, so its reconstructions are
blurry; a discriminator that judges local patches makes the decoder commit to sharp edges and
flat colours instead. The pieces, as in VQGAN (Esser et al. 2021) and the tokenizers of VAR and
HART:

* :class:`PatchDiscriminator`: strided convs, one real/fake logit per overlapping patch;
* :func:`discriminator_loss`: hinge (or non-saturating) loss on real and reconstructed images;
* :func:`generator_adversarial_loss`: what the decoder minimises to fool it;
* :func:`feature_matching_loss`: L1 between the discriminator's activations on a reconstruction
  and on its original (pix2pixHD's feature matching), a learned perceptual loss that gives the
  decoder dense gradients even while the discriminator's verdict is near chance;
* :func:`adaptive_adversarial_weight`: the ratio of the reconstruction loss's gradient norm to the
  adversarial loss's, both taken at the decoder's last layer, so neither term swamps the other
  whatever their raw scales.

Dimension legend: B images, S image side, P patch-logit side (S / 2^layers, minus the edge).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOSS_KINDS = ("hinge", "non-saturating")
GROUPS = 16  # GroupNorm groups: batch-size independent (BatchNorm would mix real and fake statistics)


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``layers`` stride-2 convs, then two stride-1 convs down to one logit per patch.

    GroupNorm instead of the original BatchNorm: a discriminator step sees the real and the fake
    batch in separate calls, and batch statistics would tell them apart by the batch alone.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        if channels % GROUPS != 0:
            raise ValueError(f"channels: must be a multiple of {GROUPS}, got {channels}")
        modules: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = channels
        for index in range(1, layers + 1):
            out_width = channels * min(2**index, 8)
            stride = 2 if index < layers else 1  # the last widening conv keeps the patch grid
            modules += [
                nn.Conv2d(width, out_width, kernel_size=4, stride=stride, padding=1, bias=False),
                nn.GroupNorm(GROUPS, out_width),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width = out_width
        modules.append(nn.Conv2d(width, 1, kernel_size=4, stride=1, padding=1))
        self.layers = nn.Sequential(*modules)
        self.apply(_init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [−1, 1] → (B, 1, P, P) logits (positive = judged real)."""
        return self.layers(images)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The activations after each LeakyReLU, shallow to deep: ``layers + 1`` maps, no logits."""
        activations = []
        hidden = images
        for module in self.layers:
            hidden = module(hidden)
            if isinstance(module, nn.LeakyReLU):
                activations.append(hidden)
        return activations


def _init_weights(module: nn.Module) -> None:
    # DCGAN's initialisation, as VQGAN's discriminator: N(0, 0.02) convs, N(1, 0.02) norm scales.
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.GroupNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "hinge"
) -> torch.Tensor:
    """The discriminator's loss, averaged over patches and images; both halves weigh equally.

    hinge: ½·(mean relu(1 − real) + mean relu(1 + fake)); non-saturating: ½·(softplus(−real) +
    softplus(fake)), i.e. binary cross-entropy with real = 1, fake = 0.
    """
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())
    if kind == "non-saturating":
        return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())
    raise ValueError(f"kind: expected one of {LOSS_KINDS}, got {kind!r}")


def generator_adversarial_loss(fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """What the decoder minimises: −mean(fake) for hinge, softplus(−fake) (non-saturating) otherwise."""
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "non-saturating":
        return F.softplus(-fake_logits).mean()
    raise ValueError(f"kind: expected one of {LOSS_KINDS}, got {kind!r}")


def feature_matching_loss(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of mean |fake − real|: each layer weighs the same whatever its width.

    ``fake`` and ``real`` are :meth:`PatchDiscriminator.features` of a reconstruction and of its
    own original, so the match is per image and per position, not of batch statistics.
    """
    if len(fake) != len(real) or not fake:
        raise ValueError(
            f"feature lists: expected two of the same non-zero length, got {len(fake)} and {len(real)}"
        )
    return torch.stack([(f.float() - r.float()).abs().mean() for f, r in zip(fake, real, strict=True)]).mean()


def adaptive_adversarial_weight(
    reconstruction_loss: torch.Tensor,
    adversarial_loss: torch.Tensor,
    last_layer: torch.Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> torch.Tensor:
    """‖∇_w reconstruction‖ / (‖∇_w adversarial‖ + eps) at the decoder's last weight ``w``, clamped.

    A detached scalar: it scales the adversarial term so that its gradient at the output layer is as
    large as the reconstruction loss's. Both graphs are kept (``retain_graph``) for the real backward.
    """
    (reconstruction_grad,) = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)
    (adversarial_grad,) = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)
    weight = reconstruction_grad.float().norm() / (adversarial_grad.float().norm() + eps)
    return weight.clamp(0.0, max_weight).detach()
