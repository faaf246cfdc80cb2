"""V: Ha & Schmidhuber's convolutional VAE for 64x64x3 frames."""

from __future__ import annotations

import copy

import torch
from torch import nn

from worldmodels.checkpoint import register_model


def to_float_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 64, 64, 3) -> float32 (B, 3, 64, 64) in [0, 1]; float NCHW passes through."""
    if frames.dtype == torch.uint8:
        return frames.permute(0, 3, 1, 2).float().div_(255.0)
    return frames


class ConvVAE(nn.Module):
    """Encoder: four 4x4 stride-2 convolutions (32-64-128-256) -> 1024 -> (mu, logvar).
    Decoder: z -> 1024 -> deconvolutions 5-5-6-6 (128-64-32-3) -> sigmoid frame.

    Shapes: frames (B, 3, 64, 64) in [0, 1] (or uint8 (B, 64, 64, 3)); z (B, z_dim).
    """

    def __init__(self, *, z_dim: int):
        super().__init__()  # z_dim: vae.z_dim, no default here
        self.z_dim = z_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=2), nn.ReLU(),     # 31x31
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),    # 14x14
            nn.Conv2d(64, 128, 4, stride=2), nn.ReLU(),   # 6x6
            nn.Conv2d(128, 256, 4, stride=2), nn.ReLU(),  # 2x2
            nn.Flatten(),                                 # 1024
        )
        self.fc_mu = nn.Linear(1024, z_dim)
        self.fc_logvar = nn.Linear(1024, z_dim)
        self.fc_decode = nn.Linear(z_dim, 1024)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(1024, 128, 5, stride=2), nn.ReLU(),  # 5x5
            nn.ConvTranspose2d(128, 64, 5, stride=2), nn.ReLU(),    # 13x13
            nn.ConvTranspose2d(64, 32, 6, stride=2), nn.ReLU(),     # 30x30
            nn.ConvTranspose2d(32, 3, 6, stride=2), nn.Sigmoid(),   # 64x64
        )

    def config(self) -> dict:
        return {"z_dim": self.z_dim}

    def encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames -> (mu, logvar), each (B, z_dim)."""
        h = self.encoder(to_float_frames(frames))
        return self.fc_mu(h), self.fc_logvar(h)

    def encode_mean(self, frames: torch.Tensor) -> torch.Tensor:
        """frames -> mu (B, z_dim): what an agent reads (no logvar head)."""
        return self.fc_mu(self.encoder(to_float_frames(frames)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, z_dim) -> frames (B, 3, 64, 64) in [0, 1]."""
        return self.decoder(self.fc_decode(z).view(-1, 1024, 1, 1))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """frames -> (reconstruction (B, 3, 64, 64), mu, logvar); z is sampled."""
        mu, logvar = self.encode(frames)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


class MeanEncoder(nn.Module):
    """V's mean, frames -> mu (B, z_dim) float32, computed in ``dtype``: copies of V's
    encoder and mean head in that dtype, made once (``torch.autocast`` would cast every
    weight again at every call). bfloat16 runs V's convolutions on AMX-BF16 where the
    CPU has it. Later changes to V's weights do not reach the copies.

    Frames as :meth:`ConvVAE.encode_mean` takes them: uint8 (B, 64, 64, 3) or float
    (B, 3, 64, 64) in [0, 1]; they are scaled in float32, then rounded to ``dtype``.
    """

    def __init__(self, vae: ConvVAE, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self.encoder = copy.deepcopy(vae.encoder).to(dtype)
        self.fc_mu = copy.deepcopy(vae.fc_mu).to(dtype)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = to_float_frames(frames).to(self.dtype)
        return self.fc_mu(self.encoder(x)).float()


def vae_loss(
    x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
    kl_tolerance: float = 0.5, kl_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Ha's loss: summed squared error per frame + KL floored at ``kl_tolerance * z_dim``.

    ``x``, ``recon``: (B, 3, 64, 64) in [0, 1]. Returns batch means: ``loss``, ``recon``
    (summed over pixels), ``kl`` (nats, before the floor), ``mse`` (per pixel).
    """
    sq = (recon - x).pow(2)
    recon_loss = sq.flatten(1).sum(1).mean()
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    kl_floored = torch.clamp(kl, min=kl_tolerance * mu.shape[1]).mean()
    return {
        "loss": recon_loss + kl_weight * kl_floored,
        "recon": recon_loss,
        "kl": kl.mean(),
        "mse": sq.mean(),
    }


register_model("ConvVAE", ConvVAE)
