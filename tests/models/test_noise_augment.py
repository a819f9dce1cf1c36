"""unCLIP image-embedding noise augmentation against diffusers' stable-unCLIP recipe
(``StableUnCLIPImg2ImgPipeline.noise_image_embeddings``: a ``squaredcos_cap_v2`` DDPMScheduler,
identity normaliser, cos-first level embedding), and ComfyUI's ``unclip_adm`` combination rules."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from comfy_notebook.models.noise_augment import augment_embedding, unclip_adm

diffusers = pytest.importorskip("diffusers")


def _diffusers_noised(embeds: torch.Tensor, level: int, noise: torch.Tensor) -> torch.Tensor:
    from diffusers import DDPMScheduler
    from diffusers.pipelines.stable_diffusion.pipeline_stable_unclip_img2img import (
        StableUnCLIPImg2ImgPipeline,
    )
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )

    fake = SimpleNamespace(image_normalizer=StableUnCLIPImageNormalizer(embeds.shape[-1]),
                           image_noising_scheduler=DDPMScheduler(num_train_timesteps=1000,
                                                                 beta_schedule="squaredcos_cap_v2"))
    with torch.no_grad():
        return StableUnCLIPImg2ImgPipeline.noise_image_embeddings(fake, embeds, level, noise=noise)


@pytest.mark.parametrize("level", [0, 100, 500, 999])
def test_augmentation_matches_diffusers(level: int) -> None:
    embeds = torch.randn(1, 32, generator=torch.Generator().manual_seed(0))
    ours = augment_embedding(embeds, level, torch.Generator().manual_seed(7))
    noise = torch.randn(1, 32, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours, _diffusers_noised(embeds, level, noise), rtol=0, atol=1e-5)


def _entry(embeds: torch.Tensor, strength: float, aug: float) -> dict:
    return {"clip_vision_output": {"image_embeds": embeds}, "strength": strength, "noise_augmentation": aug}


def test_one_embedding_is_noised_at_its_level_and_weighted() -> None:
    e = torch.randn(1, 16, generator=torch.Generator().manual_seed(1))
    got = unclip_adm([_entry(e, 0.7, 0.25)], seed=-10)
    level = round(999 * 0.25)
    want = augment_embedding(e, level, torch.Generator().manual_seed(-10)) * 0.7
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.shape == (1, 32)
    clean = unclip_adm([_entry(e, 1.0, 0.0)], seed=3)  # level 0 keeps the embedding (nearly) as it is
    torch.testing.assert_close(clean[:, :16], e, rtol=0, atol=0.05)


def test_several_embeddings_are_summed_and_noised_again() -> None:
    a, b = torch.randn(2, 16, generator=torch.Generator().manual_seed(2))
    got = unclip_adm([_entry(a[None], 1.0, 0.1), _entry(b[None], 0.5, 0.0)], seed=5)
    rows = [augment_embedding(a[None], 100, torch.Generator().manual_seed(5)) * 1.0,
            augment_embedding(b[None], 0, torch.Generator().manual_seed(5)) * 0.5]
    total = rows[0] + rows[1]
    want = augment_embedding(total[:, :16], 50, torch.Generator().manual_seed(5))  # merge level 0.05
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # a batch of two images in one entry counts as two rows
    batch = unclip_adm([_entry(torch.stack([a, b]), 1.0, 0.1)], seed=5)
    assert batch.shape == (1, 32)
    torch.testing.assert_close(batch, unclip_adm([_entry(a[None], 1.0, 0.1), _entry(b[None], 1.0, 0.1)], seed=5))
