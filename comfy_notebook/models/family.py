"""Model families: what the weights alone cannot say (latent scale, prediction, noise schedule)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["SD1", "SD2", "SDXL", "ModelFamily"]


@dataclass(frozen=True)
class ModelFamily:
    """Fixed facts of one Stable Diffusion family.

    Parameters
    ----------
    name:
        Short family name (``"sd1"``, ``"sd2"``, ``"sdxl"``).
    latent_channels:
        Channels of the VAE latent.
    latent_scale:
        Factor between VAE latents and the latents the UNet was trained on.
    prediction:
        ``"eps"`` (noise) or ``"v"`` (velocity) prediction.
    beta_start, beta_end, beta_schedule, num_timesteps:
        The DDPM training schedule.
    clip_default_layer:
        Text-encoder layer whose output conditions the UNet (-1 = last).
    """

    name: str
    latent_channels: int = 4
    latent_scale: float = 0.18215
    prediction: str = "eps"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    num_timesteps: int = 1000
    clip_default_layer: int = -1

    def process_in(self, latent: Tensor) -> Tensor:
        """VAE latent -> UNet latent (multiply by the scale)."""
        return latent * self.latent_scale

    def process_out(self, latent: Tensor) -> Tensor:
        """UNet latent -> VAE latent (divide by the scale)."""
        return latent / self.latent_scale


SD1 = ModelFamily(name="sd1")
# SD2.x: the 768-v models predict v, the 512 base predicts eps; the keys cannot tell them apart.
SD2 = ModelFamily(name="sd2", prediction="v", clip_default_layer=-2)
SDXL = ModelFamily(name="sdxl", latent_scale=0.13025, clip_default_layer=-2)
