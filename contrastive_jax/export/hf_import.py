"""Import transformers SiglipModel / CLIPModel directories (`hf:DIR`) and open_clip local-dir
models (`open_clip:DIR`) as our two-tower model, for eval, embed, export and init_from.

Each is the inverse of its export (export/hf.py, hf_clip.py, open_clip_format.py): the model
config is read off the library's config, the weights are renamed and re-laid out, and the
tokenizer is the directory's sentencepiece model (`spiece.model`, as T5Tokenizer reads it)
under the text conventions of our export card, or T5's (pad 0, sticky EOS) without one.
What we cannot compute exactly (QuickGELU, LayerNorm eps other than 1e-6, another
tokenizer) is refused in one line naming the file.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from contrastive_jax import paths
from contrastive_jax.data.text_conventions import TextConventions
from contrastive_jax.errors import DataError, InputNotFoundError
from contrastive_jax.export.flat import unflatten
from contrastive_jax.export.hf_layers import (
    OPEN_CLIP_BLOCK,
    fit_shapes,
    read_attention,
    read_class_token_embeddings,
    read_encoder,
    read_linear,
    read_norm,
)
from contrastive_jax.export.native import _flatten_abstract
from contrastive_jax.export.timm_vit import (
    read_timm_config,
    read_timm_state_dict,
    timm_folder,
    timm_pool,
)
from contrastive_jax.json_files import read_json
from contrastive_jax.models import complete_config

HF_PREFIX, OPEN_CLIP_PREFIX = "hf:", "open_clip:"
CARD_FILE = "contrastive_jax_export.json"


def _json(path: str) -> dict:
    return read_json(path, "model file")


def _tensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    if not paths.isfile(path):
        raise InputNotFoundError(f"missing weights file {path}")
    try:
        return load(paths.read_bytes(path))
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from e


def _check_tower(cfg: dict, where: str, act_key: str = "hidden_act",
                 eps_key: str = "layer_norm_eps") -> None:
    act, eps = cfg.get(act_key, "gelu_pytorch_tanh"), cfg.get(eps_key, 1e-6)
    if act != "gelu_pytorch_tanh":
        raise DataError(f"{where}: {act_key}={act!r}; our towers compute tanh GELU "
                        "('gelu_pytorch_tanh') only")
    if abs(float(eps) - 1e-6) > 1e-12:
        raise DataError(f"{where}: {eps_key}={eps}; our LayerNorms use eps 1e-6")


def _tower(hidden: int, depth: int, heads: int, mlp: int) -> dict:
    return dict(variant=None, width=hidden, depth=depth, num_heads=heads, mlp_dim=mlp)


def _hf_model_config(cfg: dict, where: str) -> dict:
    """Our model config from a SiglipModel / CLIPModel config.json."""
    kind = cfg.get("model_type")
    if kind not in ("siglip", "clip"):
        raise DataError(f"{where}: model_type={kind!r}; hf: reads 'siglip' and 'clip' models")
    vis, txt = cfg["vision_config"], cfg["text_config"]
    for tower in (vis, txt):
        _check_tower(tower, where)
    image = dict(_tower(vis["hidden_size"], vis["num_hidden_layers"],
                        vis["num_attention_heads"], vis["intermediate_size"]),
                 patch_size=vis["patch_size"], image_size=vis["image_size"],
                 channels=vis.get("num_channels", 3), posemb="learn")
    text = dict(_tower(txt["hidden_size"], txt["num_hidden_layers"],
                       txt["num_attention_heads"], txt["intermediate_size"]),
                vocab_size=txt["vocab_size"], max_len=txt["max_position_embeddings"])
    if kind == "siglip":
        if not vis.get("vision_use_head", True):
            raise DataError(f"{where}: vision_use_head=false (SiglipModel then has no pooled "
                            "image embedding)")
        embed_dim = txt.get("projection_size") or txt["hidden_size"]
        if embed_dim != vis["hidden_size"]:
            raise DataError(f"{where}: text projection_size {embed_dim} != vision hidden_size "
                            f"{vis['hidden_size']}")
        return dict(embed_dim=embed_dim, bias_init=0.0, proj_bias=True,
                    image=dict(image, pool="map", head=False, pre_norm=False),
                    text=dict(text, pool="final", head=True, causal=False))
    if txt.get("eos_token_id") != 1:
        raise DataError(f"{where}: text eos_token_id={txt.get('eos_token_id')!r}; our "
                        "tokenizers end with id 1, where CLIPTextModel must pool")
    return dict(embed_dim=cfg["projection_dim"], bias_init=None, proj_bias=False,
                image=dict(image, pool="cls", head=True, pre_norm=True),
                text=dict(text, pool="last", head=True, causal=True))


def _hf_flat(sd: dict, model: Any) -> dict[str, np.ndarray]:
    img_depth, txt_depth = model["image"]["depth"], model["text"]["depth"]
    flat = {"t_log": sd["logit_scale"]}
    v, t = "vision_model", "text_model"
    flat |= read_encoder(sd, f"{v}.encoder", "img/encoder", img_depth)
    flat |= read_norm(sd, f"{v}.post_layernorm", "img/encoder/encoder_norm")
    flat |= read_encoder(sd, f"{t}.encoder", "txt/encoder", txt_depth)
    flat |= read_norm(sd, f"{t}.final_layer_norm", "txt/encoder/encoder_norm")
    flat["txt/embedding/embedding"] = sd[f"{t}.embeddings.token_embedding.weight"]
    flat["txt/pos_embedding"] = sd[f"{t}.embeddings.position_embedding.weight"]
    if model["image"]["pool"] == "map":  # SiglipModel
        flat["b"] = sd["logit_bias"]
        flat["img/embedding/kernel"] = sd[f"{v}.embeddings.patch_embedding.weight"].transpose(
            2, 3, 1, 0)
        flat["img/embedding/bias"] = sd[f"{v}.embeddings.patch_embedding.bias"]
        flat["img/pos_embedding"] = sd[f"{v}.embeddings.position_embedding.weight"]
        flat["img/map_head/probe"] = sd[f"{v}.head.probe"]
        flat |= read_attention(sd, f"{v}.head.attention", "img/map_head/attn")
        flat |= read_norm(sd, f"{v}.head.layernorm", "img/map_head/ln")
        flat |= read_linear(sd, f"{v}.head.mlp.fc1", "img/map_head/mlp/fc1")
        flat |= read_linear(sd, f"{v}.head.mlp.fc2", "img/map_head/mlp/fc2")
        flat |= read_linear(sd, f"{t}.head", "txt_head")
    else:  # CLIPModel
        e = f"{v}.embeddings"
        flat |= read_class_token_embeddings(sd[f"{e}.patch_embedding.weight"],
                                            sd[f"{e}.class_embedding"],
                                            sd[f"{e}.position_embedding.weight"])
        flat |= read_norm(sd, f"{v}.pre_layrnorm", "img/pre_norm")
        flat |= read_linear(sd, "visual_projection", "img_head")
        flat |= read_linear(sd, "text_projection", "txt_head")
    return flat


def _open_clip_model_config(cfg: dict, where: str, export_dir: str) -> dict:
    """Our model config from open_clip_config.json's model_cfg: a CLIP of open_clip's own
    TextTransformer and its VisionTransformer or a timm ViT of our export's layout."""
    vis, txt = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if txt.get("hf_model_name"):
        raise DataError(f"{where}: hf_model_name text towers are not open_clip's own "
                        "transformers")
    timm_name = vis.get("timm_model_name")
    for tower, name in ((vis, "vision_cfg"), (txt, "text_cfg")):
        if timm_name and tower is vis:
            continue  # timm's activation and norms are in its own config.json
        act = (tower.get("act_kwargs") or {}).get("approximate")
        eps = (tower.get("norm_kwargs") or {}).get("eps", 1e-5)
        if cfg.get("quick_gelu") or act != "tanh":
            used = "QuickGELU" if cfg.get("quick_gelu") else "exact GELU"
            raise DataError(f"{where}: {name} uses {used}; our towers compute tanh GELU "
                            "(act_kwargs approximate='tanh')")
        if abs(float(eps) - 1e-6) > 1e-12:
            raise DataError(f"{where}: {name} LayerNorm eps {eps}; ours use 1e-6")
    if timm_name:
        image = _timm_image_config(vis, where, export_dir, bool(txt.get("proj_bias", False)))
    else:
        image = _open_clip_image_config(vis, where)
    causal = not txt.get("no_causal_mask", False)
    pool = txt.get("pool_type", "argmax")
    eos_ok = not causal or txt.get("eos_id", 2) == 1
    if (causal, pool) not in ((True, "eos"), (False, "last")) or not eos_ok:
        raise DataError(f"{where}: text_cfg pool_type={pool!r}, no_causal_mask={not causal}; "
                        "we compute causal 'eos' pooling (eos_id 1) or bidirectional 'last'")
    width = txt.get("width", 512)
    text = dict(_tower(width, txt.get("layers", 12), txt.get("heads", 8),
                       int(width * txt.get("mlp_ratio", 4.0))),
                vocab_size=txt.get("vocab_size", 49408), max_len=txt.get("context_length", 77),
                pool="last" if causal else "final", causal=causal, head=True)
    return dict(embed_dim=cfg["embed_dim"], proj_bias=bool(txt.get("proj_bias", False)),
                bias_init=cfg.get("init_logit_bias"), image=image, text=text)


def _open_clip_image_config(vis: dict, where: str) -> dict:
    """open_clip's own VisionTransformer: CLIP's class-token tower."""
    if vis.get("pool_type", "tok") != "tok" or vis.get("attentional_pool") or vis.get(
            "no_ln_pre") or vis.get("final_ln_after_pool"):
        raise DataError(f"{where}: vision_cfg must pool the class token after ln_pre "
                        "(pool_type='tok', no attentional_pool)")
    vwidth, size = vis.get("width", 768), vis.get("image_size", 224)
    return dict(_tower(vwidth, vis.get("layers", 12), vwidth // vis.get("head_width", 64),
                       int(vwidth * vis.get("mlp_ratio", 4.0))),
                patch_size=vis.get("patch_size", 16), channels=3, posemb="learn",
                image_size=size[0] if isinstance(size, list) else size, pool="cls",
                head=True, pre_norm=True)


def _timm_image_config(vis: dict, where: str, export_dir: str, text_proj_bias: bool) -> dict:
    """A timm tower of open_clip's TimmModel, as our exports write it (export/timm_vit.py)."""
    name = vis["timm_model_name"]
    if not str(name).startswith("local-dir:"):
        raise DataError(f"{where}: vision_cfg.timm_model_name={name!r}; we read timm towers "
                        "from a 'local-dir:' folder (as our exports write them)")
    timm_where = paths.join(timm_folder(name, export_dir), "config.json")
    image = read_timm_config(_json(timm_where), timm_where)
    proj, pool = vis.get("timm_proj", "linear"), vis.get("timm_pool", "avg")
    if proj not in ("linear", "none") or pool != timm_pool(image["pool"]):
        raise DataError(f"{where}: vision_cfg timm_proj={proj!r}, timm_pool={pool!r}; we read "
                        "a 'linear' or 'none' projection after the tower's own pooling")
    head = proj == "linear"
    if head and bool(vis.get("timm_proj_bias", False)) != text_proj_bias:
        raise DataError(f"{where}: timm_proj_bias differs from text_cfg.proj_bias (our two "
                        "projections share one proj_bias)")
    return dict(image, head=head)


def _open_clip_flat(sd: dict, model: Any) -> dict[str, np.ndarray]:
    if model["image"]["pool"] == "cls":
        flat = read_class_token_embeddings(sd["visual.conv1.weight"],
                                           sd["visual.class_embedding"],
                                           sd["visual.positional_embedding"])
        flat |= read_norm(sd, "visual.ln_pre", "img/pre_norm")
        flat |= read_encoder(sd, "visual.transformer", "img/encoder", model["image"]["depth"],
                              OPEN_CLIP_BLOCK)
        flat |= read_norm(sd, "visual.ln_post", "img/encoder/encoder_norm")
        flat["img_head/kernel"] = sd["visual.proj"]
    else:
        flat = read_timm_state_dict(sd, "visual.trunk", model["image"])
        if model["image"]["head"]:
            flat |= read_linear(sd, "visual.head.proj", "img_head")
    flat["txt/embedding/embedding"] = sd["token_embedding.weight"]
    flat["txt/pos_embedding"] = sd["positional_embedding"]
    flat |= read_encoder(sd, "transformer", "txt/encoder", model["text"]["depth"],
                          OPEN_CLIP_BLOCK)
    flat |= read_norm(sd, "ln_final", "txt/encoder/encoder_norm")
    if "text_projection.weight" in sd:  # proj_bias: an nn.Linear
        flat |= read_linear(sd, "text_projection", "txt_head")
    else:
        flat["txt_head/kernel"] = sd["text_projection"]
    flat["t_log"] = sd["logit_scale"]
    if "logit_bias" in sd:
        flat["b"] = sd["logit_bias"]
    return flat


def exported_step(path: str) -> int:
    """The training step our export card records; 0 for a model another library wrote."""
    card = paths.join(path, CARD_FILE)
    return int(_json(card).get("step", 0)) if paths.isfile(card) else 0


def _conventions(path: str) -> TextConventions:
    """The card's text conventions, or T5Tokenizer's (pad 0, sticky EOS) for a directory
    whose tokenizer is a T5Tokenizer of its own sentencepiece model."""
    card = paths.join(path, CARD_FILE)
    if paths.isfile(card):
        return TextConventions.from_dict(_json(card).get("text") or {})
    tok_cfg = paths.join(path, "tokenizer_config.json")
    tok_class = _json(tok_cfg).get("tokenizer_class")
    if tok_class not in ("T5Tokenizer", "T5TokenizerFast"):
        raise DataError(f"{tok_cfg}: tokenizer_class {tok_class!r}; we read a T5Tokenizer's "
                        "sentencepiece model (spiece.model)")
    return TextConventions()


def _image_processor_config(path: str) -> dict:
    """The image processor's settings: transformers 5 saves them in processor_config.json,
    earlier versions in preprocessor_config.json. Without either, SigLIP's defaults (mean
    and std 0.5: the value range [-1, 1])."""
    for name, key in (("processor_config.json", "image_processor"),
                      ("preprocessor_config.json", None)):
        file = paths.join(path, name)
        if paths.isfile(file):
            found = _json(file)
            found = found.get(key, {}) if key else found
            if found:
                return found
    return {}


def _preprocess(mean: list, std: list, where: str) -> tuple[float, float]:
    """Our value range (lo, hi) from a processor's x/255 -> (x - mean) / std."""
    if len(set(mean)) != 1 or len(set(std)) != 1:
        raise DataError(f"{where}: per-channel mean/std {mean}/{std}; our value range is one "
                        "map for every channel")
    lo = -mean[0] / std[0]
    return lo, lo + 1.0 / std[0]


def import_model(spec: str, config: Any) -> tuple[dict[str, Any], Any]:
    """(params, tokenizer) of `hf:DIR` / `open_clip:DIR`, made the model of `config` (in
    place: `config.model`, the image size and value range, the text conventions)."""
    from contrastive_jax.data.text_conventions import use_conventions
    from contrastive_jax.data.tokenizer import Tokenizer
    from contrastive_jax.models.state import ModelDef

    hf = spec.startswith(HF_PREFIX)
    path = spec.removeprefix(HF_PREFIX if hf else OPEN_CLIP_PREFIX)
    if not paths.isdir(path):
        raise InputNotFoundError(f"model {spec!r}: no directory {path}")
    if hf:
        where = paths.join(path, "config.json")
        model = _hf_model_config(_json(where), where)
        weights = paths.join(path, "model.safetensors")
        pre = _image_processor_config(path)
        mean, std = pre.get("image_mean", [0.5] * 3), pre.get("image_std", [0.5] * 3)
    else:
        where = paths.join(path, "open_clip_config.json")
        oc = _json(where)
        model = _open_clip_model_config(oc.get("model_cfg", oc), where, path)
        weights = paths.join(path, "open_clip_model.safetensors")
        pre = oc.get("preprocess_cfg", {})
        mean, std = pre.get("mean", [0.5] * 3), pre.get("std", [0.5] * 3)
    sd = _tensors(weights)
    try:
        flat = _hf_flat(sd, model) if hf else _open_clip_flat(sd, model)
    except KeyError as e:
        raise DataError(f"{weights}: no tensor {e.args[0]!r} (not a model of {where})") from e
    config.model = complete_config(model)
    abstract = jax.eval_shape(lambda: ModelDef.init(config.model, jax.random.key(0))[0])
    want = {k: tuple(v.shape) for k, v in _flatten_abstract(abstract).items()}
    params = unflatten(fit_shapes(flat, want, weights))
    config.data.image_size = config.model.image.image_size
    config.data.channels = config.model.image.channels  # RGB: grey data is replicated
    config.data.value_range = _preprocess(mean, std, where)
    config.data.max_len = config.model.text.max_len
    conventions = _conventions(path)
    use_conventions(config, conventions)
    tok_path = paths.join(path, "spiece.model")
    if not paths.isfile(tok_path):
        raise InputNotFoundError(f"{spec}: missing tokenizer file {tok_path}")
    return params, Tokenizer(tok_path, TextConventions.from_config(config))
