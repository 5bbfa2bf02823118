"""Key layout conversion between detrex Focus-DETR checkpoints and this package.

The released checkpoints store ``model.state_dict()`` of detrex's ``FOCUS_DETR``; some tensors
appear under several names because modules are shared (the two-stage class head serves as the
per-layer encoder scorer and as ``class_embed[num_decoder_layers]``; ``class_embed`` and
``bbox_embed`` are also the decoder's heads). This module maps every canonical detrex key to
ours and checks that aliased entries agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import Tensor

# (detrex pattern, native pattern); {l} = layer index, {r} = rest of the key.
_RULES: tuple[tuple[str, str], ...] = (
    ("backbone.{r}", "backbone.{r}"),
    ("neck.convs.{l}.{r}", "neck.input_projections.{l}.{r}"),
    ("neck.extra_convs.{l}.{r}", "neck.extra_projections.{l}.{r}"),
    ("transformer.alpha", "foreground_scorer.top_down_weights"),
    ("transformer.level_embeds", "level_embeddings"),
    ("transformer.tgt_embed.weight", "query_embeddings.weight"),
    ("transformer.enc_output.{r}", "token_projection.linear.{r}"),
    ("transformer.enc_output_norm.{r}", "token_projection.norm.{r}"),
    ("transformer.enc_mask_predictor.layer1.0.{r}", "foreground_scorer.scorer.norm.{r}"),
    ("transformer.enc_mask_predictor.layer1.1.{r}", "foreground_scorer.scorer.input.{r}"),
    ("transformer.enc_mask_predictor.layer2.0.{r}", "foreground_scorer.scorer.hidden1.{r}"),
    ("transformer.enc_mask_predictor.layer2.2.{r}", "foreground_scorer.scorer.hidden2.{r}"),
    ("transformer.enc_mask_predictor.layer2.4.{r}", "foreground_scorer.scorer.output.{r}"),
    ("transformer.encoder.enhance_MCSP.0.{r}", "two_stage_class_head.{r}"),
    (
        "transformer.encoder.layers.{l}.attentions.0.attn.{r}",
        "encoder.layers.{l}.dual_attention.{r}",
    ),
    (
        "transformer.encoder.layers.{l}.attentions.1.{r}",
        "encoder.layers.{l}.deformable_attention.{r}",
    ),
    ("transformer.encoder.layers.{l}.ffns.0.layers.0.0.{r}", "encoder.layers.{l}.ffn.linear1.{r}"),
    ("transformer.encoder.layers.{l}.ffns.0.layers.1.{r}", "encoder.layers.{l}.ffn.linear2.{r}"),
    ("transformer.encoder.layers.{l}.norms.0.{r}", "encoder.layers.{l}.deformable_norm.{r}"),
    ("transformer.encoder.layers.{l}.norms.1.{r}", "encoder.layers.{l}.ffn_norm.{r}"),
    ("transformer.encoder.layers.{l}.norm2.{r}", "encoder.layers.{l}.dual_attention_norm.{r}"),
    (
        "transformer.decoder.layers.{l}.attentions.0.attn.{r}",
        "decoder.layers.{l}.self_attention.{r}",
    ),
    ("transformer.decoder.layers.{l}.attentions.1.{r}", "decoder.layers.{l}.cross_attention.{r}"),
    ("transformer.decoder.layers.{l}.ffns.0.layers.0.0.{r}", "decoder.layers.{l}.ffn.linear1.{r}"),
    ("transformer.decoder.layers.{l}.ffns.0.layers.1.{r}", "decoder.layers.{l}.ffn.linear2.{r}"),
    ("transformer.decoder.layers.{l}.norms.0.{r}", "decoder.layers.{l}.self_attention_norm.{r}"),
    ("transformer.decoder.layers.{l}.norms.1.{r}", "decoder.layers.{l}.cross_attention_norm.{r}"),
    ("transformer.decoder.layers.{l}.norms.2.{r}", "decoder.layers.{l}.ffn_norm.{r}"),
    ("transformer.decoder.ref_point_head.{r}", "decoder.query_position_head.{r}"),
    ("transformer.decoder.norm.{r}", "decoder.output_norm.{r}"),
    # per-layer heads; index == num_decoder_layers is the two-stage head (handled below)
    ("transformer.decoder.class_embed.{l}.{r}", "class_heads.{l}.{r}"),
    ("transformer.decoder.bbox_embed.{l}.{r}", "box_heads.{l}.{r}"),
    ("label_enc.weight", "denoising_label_embedding.weight"),
)


def _compile(pattern: str) -> re.Pattern[str]:
    escaped = re.escape(pattern).replace(r"\{l\}", r"(?P<l>\d+)").replace(r"\{r\}", r"(?P<r>.+)")
    return re.compile(f"^{escaped}$")


_FORWARD = tuple((_compile(a), b) for a, b in _RULES)
_BACKWARD = tuple((_compile(b), a) for a, b in _RULES)


@dataclass
class ConversionReport:
    """What a conversion did with the keys it was given."""

    unmapped: list[str] = field(default_factory=list)
    aliases_checked: int = 0
    aliases_conflicting: list[str] = field(default_factory=list)


def _alias_target(key: str, num_decoder_layers: int) -> str | None:
    """The canonical detrex key an alias entry shares its tensor with, or None."""
    match = re.match(r"^transformer\.encoder\.enhance_MCSP\.(\d+)\.(.+)$", key)
    if match and match.group(1) != "0":
        return f"transformer.encoder.enhance_MCSP.0.{match.group(2)}"
    match = re.match(r"^enhance_MCSP_layerlist\.\d+\.(.+)$", key)
    if match:
        return f"transformer.encoder.enhance_MCSP.0.{match.group(1)}"
    match = re.match(r"^(?:transformer\.decoder\.)?class_embed\.(\d+)\.(.+)$", key)
    if match and int(match.group(1)) == num_decoder_layers:
        return f"transformer.encoder.enhance_MCSP.0.{match.group(2)}"
    match = re.match(r"^(class_embed|bbox_embed)\.(\d+)\.(.+)$", key)
    if match:
        return f"transformer.decoder.{match.group(1)}.{match.group(2)}.{match.group(3)}"
    return None


def _same_storage(a: Tensor, b: Tensor) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and a.stride() == b.stride()
        and a.device == b.device
        and a.data_ptr() == b.data_ptr()
    )


def _native_key(detrex_key: str, num_decoder_layers: int) -> str | None:
    match = re.match(r"^transformer\.decoder\.bbox_embed\.(\d+)\.(.+)$", detrex_key)
    if match and int(match.group(1)) == num_decoder_layers:
        return f"two_stage_box_head.{match.group(2)}"
    for pattern, template in _FORWARD:
        found = pattern.match(detrex_key)
        if found:
            return template.format(**found.groupdict())
    return None


def detrex_to_native(
    state_dict: dict[str, Tensor], num_decoder_layers: int
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Rename a detrex Focus-DETR state dict to this package's keys.

    Alias entries are checked against their canonical entry (same shape and values) and
    dropped; an alias whose canonical entry is missing stands in for it.
    """
    report = ConversionReport()
    canonical: dict[str, Tensor] = {}
    aliases: dict[str, tuple[str, Tensor]] = {}
    for key, value in state_dict.items():
        target = _alias_target(key, num_decoder_layers)
        if target is not None:
            aliases[key] = (target, value)
        else:
            canonical[key] = value
    for key, (target, value) in aliases.items():
        if target not in canonical:
            canonical[target] = value
            continue
        report.aliases_checked += 1
        reference = canonical[target]
        if _same_storage(reference, value):
            continue
        if reference.shape != value.shape or not torch.equal(reference, value.to(reference.dtype)):
            report.aliases_conflicting.append(f"{key} != {target}")
    converted: dict[str, Tensor] = {}
    for key, value in canonical.items():
        native = _native_key(key, num_decoder_layers)
        if native is None:
            report.unmapped.append(key)
            converted[key] = value
        else:
            converted[native] = value
    return converted, report


def native_to_detrex(
    state_dict: dict[str, Tensor], num_encoder_layers: int, num_decoder_layers: int
) -> dict[str, Tensor]:
    """Inverse of :func:`detrex_to_native`, including every alias entry detrex stores."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("two_stage_box_head."):
            rest = key[len("two_stage_box_head.") :]
            out[f"transformer.decoder.bbox_embed.{num_decoder_layers}.{rest}"] = value
            continue
        for pattern, template in _BACKWARD:
            found = pattern.match(key)
            if found:
                out[template.format(**found.groupdict())] = value
                break
        else:
            raise KeyError(f"no detrex name for {key!r}")
    for key in list(out):
        value = out[key]
        match = re.match(r"^transformer\.encoder\.enhance_MCSP\.0\.(.+)$", key)
        if match:
            rest = match.group(1)
            for index in range(1, num_encoder_layers):
                out[f"transformer.encoder.enhance_MCSP.{index}.{rest}"] = value
            out[f"transformer.decoder.class_embed.{num_decoder_layers}.{rest}"] = value
            out[f"class_embed.{num_decoder_layers}.{rest}"] = value
            for index in range(num_encoder_layers):
                out[f"enhance_MCSP_layerlist.{index}.{rest}"] = value
        match = re.match(r"^transformer\.decoder\.(class_embed|bbox_embed)\.(\d+)\.(.+)$", key)
        if match:
            out[f"{match.group(1)}.{match.group(2)}.{match.group(3)}"] = value
    return out


def is_detrex_layout(state_dict: dict[str, Tensor]) -> bool:
    """True when the keys look like detrex's (``transformer.*``, ``class_embed.*`` ...)."""
    return any(k.startswith(("transformer.", "class_embed.", "bbox_embed.")) for k in state_dict)


def describe_architecture(state_dict: dict[str, Tensor]) -> str:
    """A human description of the model a state dict (either layout) belongs to."""
    keys = set(state_dict)
    layout = "detrex" if is_detrex_layout(state_dict) else "focus-detr"
    parts = [f"{layout} layout"]
    if "backbone.stem.conv1.weight" in keys:
        blocks = {int(m.group(1)) for k in keys if (m := re.match(r"^backbone\.res4\.(\d+)\.", k))}
        bottleneck = any(k.startswith("backbone.res2.0.conv3") for k in keys)
        depth = {(6, True): 50, (23, True): 101, (6, False): 34, (2, False): 18}.get(
            (len(blocks), bottleneck)
        )
        width = state_dict["backbone.stem.conv1.weight"].shape[0]
        name = f"ResNet-{depth}" if depth else f"ResNet ({len(blocks)} res4 blocks)"
        parts.append(name if width == 64 else f"{name} (width {width})")
    elif "backbone.patch_embed.proj.weight" in keys:
        dim = state_dict["backbone.patch_embed.proj.weight"].shape[0]
        stage3 = {
            int(m.group(1))
            for k in keys
            if (m := re.match(r"^backbone\.layers\.2\.blocks\.(\d+)\.", k))
        }
        name = {96: "Swin-T" if len(stage3) == 6 else "Swin-S", 128: "Swin-B", 192: "Swin-L"}.get(
            dim, f"Swin (dim {dim})"
        )
        table = state_dict.get("backbone.layers.0.blocks.0.attn.relative_position_bias_table")
        if table is not None:
            window = int((table.shape[0] ** 0.5 + 1) / 2)
            name += f" window {window}"
        parts.append(name)
    else:
        parts.append("no known backbone")
    for head in (
        "transformer.encoder.enhance_MCSP.0.weight",
        "two_stage_class_head.weight",
        "class_embed.0.weight",
    ):
        if head in state_dict:
            parts.append(f"{state_dict[head].shape[0]} classes")
            break
    layers = {int(m.group(1)) for k in keys if (m := re.search(r"decoder\.layers\.(\d+)\.", k))}
    if layers:
        parts.append(f"{len(layers)} decoder layers")
    return ", ".join(parts)
