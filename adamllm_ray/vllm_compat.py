"""vLLM 0.29 beside transformers 5.23: vLLM's LLaVA module imports its Pixtral module, which imports
two names transformers 5.23 no longer has (`PixtralRotaryEmbedding`, `position_ids_in_meshgrid`), so
no LLaVA / LLaVA-NeXT model loads in vLLM (the released synthesizer's family included). Registered
as a vLLM general plugin (pyproject.toml), `register` runs in every vLLM process before a model is
loaded and puts the two names back: the grid helper as transformers had it, and a rotary embedding
that refuses to be built, since only Pixtral's own vision encoder uses it."""

from __future__ import annotations


def _position_ids_in_meshgrid(patch_embeds_list, max_width):
    import torch

    positions = []
    for patch in patch_embeds_list:
        height, width = patch.shape[-2:]
        mesh = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        h_grid, v_grid = torch.stack(mesh, dim=-1).reshape(-1, 2).chunk(2, -1)
        positions.append((h_grid * max_width + v_grid)[:, 0])
    return torch.cat(positions)


class _PixtralRotaryEmbedding:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("Pixtral's vision encoder is not available in vLLM 0.29 with transformers 5.23")


def register() -> None:
    try:
        from transformers.models.pixtral import modeling_pixtral
    except ImportError:
        return
    if not hasattr(modeling_pixtral, "position_ids_in_meshgrid"):
        modeling_pixtral.position_ids_in_meshgrid = _position_ids_in_meshgrid
    if not hasattr(modeling_pixtral, "PixtralRotaryEmbedding"):
        modeling_pixtral.PixtralRotaryEmbedding = _PixtralRotaryEmbedding
