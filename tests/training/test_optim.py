"""Parameter groups on real timm trunks: which weights decay, how fast the encoder and each of its layers learn, and
an encoder held still by its learning rate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captioning.model.captioner import CaptioningModel, ModelConfig
from captioning.training.optim import apply_lr_scales, frozen_encoder_factor, parameter_groups

VIT = {"encoder": "test_vit", "image_size": 32, "memory_positions": "rowcol"}  # 6 blocks, 2x2 patches + a class token
RESNET = {"encoder": "test_resnet", "image_size": 64}  # a stem and 4 stages of one block each


def build(encoder: dict, freeze_encoder: bool = False) -> CaptioningModel:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=50, dim=32, depth=2, num_heads=2, freeze_encoder=freeze_encoder, **encoder)
    return CaptioningModel(config)


@pytest.fixture(scope="module")
def vit(one_thread) -> CaptioningModel:
    return build(VIT)


@pytest.fixture(scope="module")
def resnet(one_thread) -> CaptioningModel:
    return build(RESNET)


def adamw(model: CaptioningModel, **kwargs) -> torch.optim.AdamW:
    """The optimizer as the training module builds it: the config's AdamW over the groups, then the LR scales."""
    optimizer = torch.optim.AdamW(parameter_groups(model, **kwargs), lr=1e-3, weight_decay=0.05)
    apply_lr_scales(optimizer)
    return optimizer


def group_of(model: CaptioningModel, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """Parameter name -> the optimizer param group that holds it."""
    by_id = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters() if id(p) in by_id}


def test_biases_norms_embeddings_and_vit_tokens_do_not_decay_while_weight_matrices_do(vit):
    groups = group_of(vit, adamw(vit, encoder_lr_scale=0.1))
    no_decay = [
        "encoder.trunk.cls_token",
        "encoder.trunk.pos_embed",
        "encoder.trunk.patch_embed.proj.bias",
        "encoder.trunk.blocks.0.norm1.weight",
        "encoder.trunk.norm.bias",
        "memory_positions.row",
        "memory_positions.prefix",  # the class token's place
        "projection.1.weight",  # LayerNorm
        "decoder.token_embed.weight",
        "decoder.pos_embed.weight",
        "decoder.blocks.1.cross_attn.kv.bias",
        "decoder.norm.weight",
    ]
    decay = [
        "encoder.trunk.patch_embed.proj.weight",
        "encoder.trunk.blocks.5.attn.qkv.weight",
        "encoder.trunk.blocks.0.mlp.fc2.weight",
        "projection.0.weight",
        "decoder.blocks.0.cross_attn.q.weight",
        "decoder.blocks.1.mlp.fc1.weight",
    ]
    assert {name: groups[name]["weight_decay"] for name in no_decay} == dict.fromkeys(no_decay, 0.0)
    assert {name: groups[name]["weight_decay"] for name in decay} == dict.fromkeys(decay, 0.05)


def test_encoder_parameters_learn_at_the_encoder_scale_and_the_rest_at_the_base_rate(vit):
    for name, group in group_of(vit, adamw(vit, encoder_lr_scale=0.1)).items():
        in_trunk = name.startswith("encoder.trunk.")
        assert group["lr_scale"] == (0.1 if in_trunk else 1.0), name
        assert group["lr"] == pytest.approx(1e-4 if in_trunk else 1e-3), name
        assert group["name"].startswith("encoder/" if in_trunk else "decoder/"), name


def test_resnet_batchnorm_weights_do_not_decay_while_conv_kernels_do(resnet):
    groups = group_of(resnet, adamw(resnet, encoder_lr_scale=0.1))
    for name, param in resnet.encoder.trunk.named_parameters():
        group = groups[f"encoder.trunk.{name}"]
        assert group["weight_decay"] == (0.05 if param.ndim == 4 else 0.0), name
        assert group["lr"] == pytest.approx(1e-4), name
    assert groups["encoder.trunk.layer4.0.bn2.weight"]["name"] == "encoder/no_decay"
    assert groups["encoder.trunk.layer4.0.conv2.weight"]["name"] == "encoder/decay"


@pytest.mark.parametrize("encoder", [VIT, RESNET], ids=["vit", "resnet"])
@pytest.mark.parametrize("layer_decay", [None, 0.7])
def test_every_trainable_parameter_lands_in_exactly_one_non_empty_group(encoder, layer_decay, one_thread):
    model = build(encoder)
    groups = parameter_groups(model, encoder_lr_scale=0.5, layer_decay=layer_decay)
    grouped = [id(p) for group in groups for p in group["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(group["params"] for group in groups)
    assert len({group["name"] for group in groups}) == len(groups)


def test_the_tied_lm_head_and_token_embedding_appear_once_without_decay(vit):
    groups = parameter_groups(vit)
    holding = [group["name"] for group in groups for p in group["params"] if p is vit.decoder.head.weight]
    assert vit.decoder.head.weight is vit.decoder.token_embed.weight
    assert holding == ["decoder/no_decay"]


def test_decayed_groups_carry_no_weight_decay_of_their_own_so_the_optimizer_default_applies(vit):
    groups = {group["name"]: group for group in parameter_groups(vit)}
    assert "weight_decay" not in groups["decoder/decay"] and "weight_decay" not in groups["encoder/decay"]
    optimizer = torch.optim.AdamW(list(groups.values()), lr=1e-3, weight_decay=0.3)
    assert {g["name"]: g["weight_decay"] for g in optimizer.param_groups} == {
        "encoder/decay": 0.3,
        "encoder/no_decay": 0.0,
        "decoder/decay": 0.3,
        "decoder/no_decay": 0.0,
    }


def test_a_frozen_encoder_contributes_no_group(one_thread):
    model = build(VIT, freeze_encoder=True)
    groups = parameter_groups(model, encoder_lr_scale=0.1, layer_decay=0.7)
    assert sorted(group["name"] for group in groups) == ["decoder/decay", "decoder/no_decay"]
    assert not any(group["encoder"] for group in groups)


def test_layer_decay_trains_deeper_vit_blocks_faster_than_the_patch_embedding_up_to_the_encoder_scale(vit):
    groups = group_of(vit, adamw(vit, encoder_lr_scale=0.5, layer_decay=0.8))
    embed = groups["encoder.trunk.patch_embed.proj.weight"]["lr"]
    blocks = [groups[f"encoder.trunk.blocks.{i}.attn.qkv.weight"]["lr"] for i in range(6)]
    assert groups["encoder.trunk.cls_token"]["lr"] == groups["encoder.trunk.pos_embed"]["lr"] == embed
    assert embed < blocks[0] and all(low < high for low, high in zip(blocks, blocks[1:], strict=False))
    assert blocks == pytest.approx([0.5e-3 * 0.8 ** (5 - i) for i in range(6)])  # layer i + 1 of 0..6
    assert groups["encoder.trunk.norm.weight"]["lr"] == blocks[-1] == pytest.approx(0.5e-3)  # the top of the trunk
    assert embed == pytest.approx(0.5e-3 * 0.8**6)
    decoder_lr = groups["decoder.blocks.0.self_attn.q.weight"]["lr"]
    assert decoder_lr == groups["memory_positions.column"]["lr"] == pytest.approx(1e-3)
    assert groups["encoder.trunk.blocks.2.mlp.fc1.weight"]["name"] == "encoder.layer_3/decay"
    assert groups["encoder.trunk.blocks.2.norm2.bias"]["name"] == "encoder.layer_3/no_decay"


def test_layer_decay_groups_a_resnet_by_stage_from_the_stem_up(resnet):
    groups = group_of(resnet, adamw(resnet, encoder_lr_scale=0.5, layer_decay=0.8))
    stem = groups["encoder.trunk.conv1.0.weight"]["lr"]
    stages = [groups[f"encoder.trunk.layer{i}.0.conv1.weight"]["lr"] for i in range(1, 5)]
    assert [stem, *stages] == pytest.approx([0.5e-3 * 0.8 ** (4 - i) for i in range(5)])
    assert groups["encoder.trunk.layer4.0.bn1.weight"]["name"] == "encoder.layer_4/no_decay"


def test_a_trunk_without_a_group_matcher_trains_at_the_encoder_scale_with_a_warning(one_thread):
    model = build(RESNET)
    model.encoder.trunk = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))  # no timm group_matcher()
    with pytest.warns(UserWarning, match="group_matcher"):
        groups = parameter_groups(model, encoder_lr_scale=0.5, layer_decay=0.8)
    encoder = {group["name"]: (len(group["params"]), group["lr_scale"]) for group in groups if group["encoder"]}
    assert encoder == {"encoder.layer_0/decay": (1, 0.5), "encoder.layer_0/no_decay": (3, 0.5)}


def test_applying_the_lr_scales_twice_changes_nothing(vit):
    optimizer = adamw(vit, encoder_lr_scale=0.1, layer_decay=0.8)
    first = [group["lr"] for group in optimizer.param_groups]
    apply_lr_scales(optimizer)
    assert [group["lr"] for group in optimizer.param_groups] == first


def test_layer_decay_outside_zero_to_one_is_rejected(vit):
    with pytest.raises(ValueError, match="layer_decay"):
        parameter_groups(vit, layer_decay=1.5)


def test_the_encoder_stays_unchanged_while_its_lr_factor_is_zero_and_learns_after(one_thread):
    model = build(VIT)
    optimizer = adamw(model, encoder_lr_scale=0.5)
    factors = [lambda step, g=group: frozen_encoder_factor(g, step, frozen_steps=2) for group in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(0, 50, (2, 6))
    trunk, decoder = model.encoder.trunk.patch_embed.proj.weight, model.decoder.blocks[0].mlp.fc1.weight
    start = trunk.detach().clone(), decoder.detach().clone()

    def step() -> None:
        optimizer.zero_grad()
        model(images, tokens).logsumexp(-1).mean().backward()
        optimizer.step()
        scheduler.step()

    for _ in range(2):
        step()
    assert torch.equal(trunk, start[0]) and not torch.equal(decoder, start[1])
    step()
    assert not torch.equal(trunk, start[0])
