"""Qwen2.5-VL text encoder and vision tower vs transformers' Qwen2_5_VLModel on identical weights."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from comfy_notebook.models.qwen25vl import IMAGE_PAD_ID, Qwen25VLConfig, Qwen25VLEncoder
from comfy_notebook.models.qwen25vl_vision import VisionConfig, preprocess_image, window_index
from comfy_notebook.testing import random_state_dict

transformers = pytest.importorskip("transformers")


def _hf_config(c: Qwen25VLConfig) -> object:
    v = c.vision
    assert v is not None
    return transformers.Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_layers,
            num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
            intermediate_size=c.intermediate_size, rms_norm_eps=c.rms_eps,
            rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta,
                             "mrope_section": list(c.mrope_section)},
            bos_token_id=None, eos_token_id=None),
        vision_config=dict(
            hidden_size=v.hidden_size, depth=v.depth, num_heads=v.num_heads,
            intermediate_size=v.intermediate_size, out_hidden_size=v.out_hidden_size,
            fullatt_block_indexes=list(v.fullatt_block_indexes), window_size=v.window_size),
        image_token_id=c.image_token_id, attn_implementation="eager")


def _pair(config: Qwen25VLConfig) -> tuple[Qwen25VLEncoder, object, dict[str, torch.Tensor]]:
    with torch.device("meta"):
        ours = Qwen25VLEncoder(config)
    sd = random_state_dict(ours, 0, torch.float32, "qwen25vl")
    gen = torch.Generator().manual_seed(5)
    for k in sd:  # RMS norm weights near 1 (random_state_dict gives ~0.1 to unknown norms)
        if k.endswith(("layernorm.weight", "norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight")):
            sd[k] = 1.0 + 0.1 * torch.randn(sd[k].shape, generator=gen)
    ours.load_state_dict(sd, assign=True, strict=True)
    ref = transformers.Qwen2_5_VLModel(_hf_config(config))
    theirs = {("language_model." + k.removeprefix("model.")) if k.startswith("model.") else k: v
              for k, v in sd.items()}
    ref.load_state_dict(theirs, strict=True)
    return ours.eval(), ref.eval(), sd


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def test_every_hidden_layer_equals_transformers_text_path() -> None:
    config = Qwen25VLConfig.tiny()
    ours, ref, _ = _pair(config)
    ids = torch.randint(0, 500, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ref.language_model(input_ids=ids, output_hidden_states=True)
        for i in range(config.num_layers - 1):
            assert (ours(ids, layer=i) - want.hidden_states[i + 1]).abs().max() <= 1e-5, i
        assert (ours(ids) - want.last_hidden_state).abs().max() <= 1e-5


def test_padding_mask_keeps_the_real_tokens() -> None:
    config = Qwen25VLConfig.tiny()
    ours, ref, _ = _pair(config)
    ids = torch.randint(0, 500, (2, 9), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        want = ref.language_model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask)
        alone = ours(ids[1:, :6])
    assert (got[0] - want[0]).abs().max() <= 1e-5
    assert (got[1, :6] - want[1, :6]).abs().max() <= 1e-5
    assert (alone[0] - got[1, :6]).abs().max() <= 1e-5


@pytest.mark.parametrize("size", [(56, 84), (196, 308)])  # one window; 2 x 3 windows, some partial
def test_vision_tower_equals_transformers(size: tuple[int, int]) -> None:
    config = Qwen25VLConfig.tiny()
    ours, ref, _ = _pair(config)
    patches, grid = preprocess_image(_image(*size, 1), config.vision)
    assert grid == (1, size[0] // 14, size[1] // 14)
    with torch.no_grad():
        want = ref.visual(patches, grid_thw=torch.tensor([grid])).pooler_output
        assert ours.visual is not None
        raster = ours.visual(patches, [grid])
        window = ours.visual(patches, [grid], raster_order=False)
    assert (raster - want).abs().max() <= 1e-5
    order, _ = window_index(grid, config.vision)  # ComfyUI before 0ac74268: window by window
    assert (window - want[order]).abs().max() <= 1e-5
    if size[0] > 112:
        assert not torch.equal(order, torch.arange(len(order)))


def test_two_images_in_one_tower_call_equal_transformers() -> None:
    config = Qwen25VLConfig.tiny()
    ours, ref, _ = _pair(config)
    (pa, ga), (pb, gb) = (preprocess_image(_image(*s, i), config.vision) for i, s in enumerate([(140, 84), (56, 168)]))
    assert ours.visual is not None
    with torch.no_grad():
        want = ref.visual(torch.cat([pa, pb]), grid_thw=torch.tensor([ga, gb])).pooler_output
        got = ours.visual(torch.cat([pa, pb]), [ga, gb], raster_order=True)
    assert (got - want).abs().max() <= 1e-5


def test_prompt_with_two_images_equals_transformers() -> None:
    """Image tokens spliced at the pads, multimodal positions: the whole sequence's last state."""
    config = Qwen25VLConfig.tiny()
    ours, ref, _ = _pair(config)
    pad = config.image_token_id
    images = [_image(196, 140, 7), _image(84, 56, 8)]
    enc = [preprocess_image(img, config.vision) for img in images]
    counts = [g[1] * g[2] // 4 for _, g in enc]
    pieces = [[3, 17, 42], [5, 6], [7, 8, 9, 10]]
    ids_one = pieces[0] + [pad] + pieces[1] + [pad] + pieces[2]  # ComfyUI: one pad per image
    ids_hf = pieces[0] + [pad] * counts[0] + pieces[1] + [pad] * counts[1] + pieces[2]
    types = torch.tensor([[int(t == pad) for t in ids_hf]])
    grids = torch.tensor([g for _, g in enc])
    with torch.no_grad():
        want = ref(input_ids=torch.tensor([ids_hf]), pixel_values=torch.cat([p for p, _ in enc]),
                   image_grid_thw=grids, mm_token_type_ids=types).last_hidden_state
        assert ours.visual is not None
        tokens = [(ours.visual(p, [g], raster_order=True), g) for p, g in enc]
        embeds, positions = ours.splice(torch.tensor([ids_one]), tokens)
        got = ours.forward_embeds(embeds, positions)
        hf_pos, _ = ref.get_rope_index(torch.tensor([ids_hf]), types, grids)
    assert positions.shape == hf_pos.shape and torch.equal(positions, hf_pos)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-5
    with torch.no_grad():  # the same from IMAGE tensors, as the text-encode nodes call it
        direct = ours(torch.tensor([ids_one]), images=images)
    assert (direct - want).abs().max() <= 1e-5


def test_preprocessing_matches_the_image_processors_patch_layout() -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    img = _image(56, 84, 2)
    patches, grid = preprocess_image(img)  # 56 x 84 already fits the 28-pixel grid: no resize
    proc = Qwen2VLImageProcessorPil(do_resize=False, do_rescale=False)
    out = proc(images=[img[0].permute(2, 0, 1).numpy()], return_tensors="pt", input_data_format="channels_first")
    assert tuple(out["image_grid_thw"][0].tolist()) == grid
    assert (patches - out["pixel_values"]).abs().max() <= 1e-5


def test_preprocessing_resizes_as_comfyui() -> None:
    patches, grid = preprocess_image(_image(100, 150, 3))
    assert grid == (1, 8, 10)  # round(100/28)*28 = 112, round(150/28)*28 = 140
    assert patches.shape == (80, 3 * 2 * 14 * 14)
    _, grid = preprocess_image(_image(20, 20, 3))  # below min_pixels (3136): scaled up
    assert grid == (1, 4, 4)
    _, grid = preprocess_image(_image(300, 400, 3), max_pixels=28 * 28 * 20)  # above: scaled down
    assert grid == (1, 6, 10)  # floor(300 / 2.766 / 28) * 28 = 84, floor(400 / 2.766 / 28) * 28 = 140


def test_vision_special_token_ids_are_the_models() -> None:
    from comfy_notebook.models.qwen_tokenizer import get_qwen_tokenizer

    hf = transformers.Qwen2_5_VLConfig()
    tok = get_qwen_tokenizer()
    ids = tok.encode("<|vision_start|><|image_pad|><|vision_end|><|video_pad|>")
    assert ids == [hf.vision_start_token_id, hf.image_token_id, hf.vision_end_token_id, hf.video_token_id]
    assert ids[1] == IMAGE_PAD_ID == Qwen25VLConfig().image_token_id
    assert tok.encode("Picture 1: <|vision_start|>")[-1] == 151652


def test_sizes_from_state_dict_and_real_size() -> None:
    config = Qwen25VLConfig.tiny()
    _, _, sd = _pair(config)
    got = Qwen25VLConfig.from_state_dict(sd)
    assert got == replace(config, image_token_id=IMAGE_PAD_ID)
    text_only = {k: v for k, v in sd.items() if not k.startswith("visual.")}
    assert Qwen25VLConfig.from_state_dict(text_only).vision is None
    with torch.device("meta"):
        big = Qwen25VLEncoder(Qwen25VLConfig.qwen25vl_7b())
        ref = transformers.Qwen2_5_VLModel(transformers.Qwen2_5_VLConfig(  # Qwen2.5-VL-7B-Instruct's config.json
            text_config=dict(vocab_size=152064, hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                             num_key_value_heads=4, intermediate_size=18944),
            vision_config=dict(hidden_size=1280, depth=32, num_heads=16, intermediate_size=3420,
                               out_hidden_size=3584)))
    n = sum(p.numel() for p in big.parameters())
    assert n == sum(p.numel() for p in ref.parameters())
    assert n + 152064 * 3584 == 8_292_166_656  # + the untied lm_head = the released model's count
    assert Qwen25VLConfig.from_state_dict(big.state_dict()) == Qwen25VLConfig.qwen25vl_7b()
    vision = sum(p.numel() for p in big.visual.parameters()) if big.visual else 0
    assert vision == sum(p.numel() for p in ref.visual.parameters())
    assert VisionConfig().num_heads == 16


def _fp8_file(tmp_path, sd: dict[str, torch.Tensor], scaled: bool) -> tuple[str, dict[str, torch.Tensor]]:
    """An fp8 copy of ``sd`` as ComfyUI ships them, and the float32 weights it stands for.

    ``scaled``: the "fp8_scaled" layout (fp8 language-model linears with a float32 scale_weight
    each and a ``scaled_fp8`` marker; embeddings, norms, biases and the vision tower bf16);
    else every floating tensor fp8 (a plain fp8 conversion).
    """
    from safetensors.torch import save_file

    out, ref = {}, {}
    for k, v in sd.items():
        linear = k.startswith("model.layers.") and k.endswith("_proj.weight")
        if scaled and linear:
            scale = v.abs().max() / 448.0
            out[k] = (v / scale).to(torch.float8_e4m3fn)
            out[k.removesuffix("weight") + "scale_weight"] = scale.float().reshape(())
            ref[k] = out[k].float() * scale
        elif scaled:
            out[k] = v.to(torch.bfloat16)
            ref[k] = out[k].float()
        else:
            out[k] = v.to(torch.float8_e4m3fn)
            ref[k] = out[k].float()
    if scaled:
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    out["lm_head.weight"] = torch.zeros(4, 4)  # present in some files: ignored
    path = str(tmp_path / ("scaled.safetensors" if scaled else "fp8.safetensors"))
    save_file(out, path)
    return path, ref


@pytest.mark.parametrize("scaled", [False, True])
def test_fp8_files_stay_fp8_and_equal_their_dequantized_weights(tmp_path, scaled: bool) -> None:
    from comfy_notebook.runtime.module_loading import load_module_file

    config = Qwen25VLConfig.tiny()
    _, _, sd = _pair(config)
    path, ref_sd = _fp8_file(tmp_path, sd, scaled)
    model = load_module_file(path, Qwen25VLEncoder, Qwen25VLConfig.from_state_dict,
                             ignore=Qwen25VLEncoder.ignored_keys, device="cpu")
    q = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert q.weight.dtype == torch.float8_e4m3fn
    assert model.model.norm.weight.dtype == (torch.float32 if scaled else torch.float8_e4m3fn)
    if scaled:
        assert q.scale_weight.dtype == torch.float32 and q.scale_weight.dim() == 0
        assert set(model.config.scaled) == {k.removesuffix(".weight") for k in sd
                                            if k.startswith("model.layers.") and k.endswith("_proj.weight")}
    with torch.device("meta"):
        ref = Qwen25VLEncoder(replace(config, image_token_id=IMAGE_PAD_ID))
    ref.load_state_dict(ref_sd, assign=True, strict=True)
    ids = torch.randint(0, 500, (1, 10), generator=torch.Generator().manual_seed(9))
    img = [_image(56, 84, 4)]
    with torch.no_grad():
        assert (model(ids) - ref(ids)).abs().max() <= 1e-5
        got_v, _ = model.encode_image(img[0])
        want_v, _ = ref.encode_image(img[0])
    assert (got_v - want_v).abs().max() <= 1e-5


@pytest.mark.gpu
def test_bf16_on_cuda_is_near_fp32_on_the_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    config = Qwen25VLConfig.tiny()
    ours, _, sd = _pair(config)
    with torch.device("meta"):
        gpu = Qwen25VLEncoder(config)
    gpu.load_state_dict({k: v.to("cuda", torch.bfloat16) for k, v in sd.items()}, assign=True, strict=True)
    gpu.compute_dtype = torch.bfloat16  # type: ignore[assignment]
    ids = torch.randint(0, 500, (1, 12), generator=torch.Generator().manual_seed(1))
    ids[0, 5] = config.image_token_id
    img = _image(196, 308, 3)
    with torch.no_grad():
        want = ours(ids, images=[img])
        got = gpu(ids.cuda(), images=[img]).float().cpu()
    assert got.shape == want.shape
    assert (got - want).abs().max() / want.abs().max() < 0.05
