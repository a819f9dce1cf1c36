"""Latent previews for the widgets; the code lives in :mod:`comfy_notebook.families.preview`
(a latent format's RGB factors are a family fact), re-exported here for the views."""

from __future__ import annotations

from comfy_notebook.families.preview import latent_preview, latent_to_rgb, preview_factors

__all__ = ["latent_preview", "latent_to_rgb", "preview_factors"]
