"""Bad input fails with a ValueError naming the field and what is allowed."""

from __future__ import annotations

import pytest

from lorafa import AdapterConfig, add_adapters
from tests.conftest import tiny_gpt2, tiny_roberta


@pytest.mark.parametrize("kwargs,field,allowed", [
    ({"r": 0}, "r", "integer > 0"),
    ({"r": -3}, "r", "integer > 0"),
    ({"r": 2.5}, "r", "integer > 0"),
    ({"alpha": 0}, "alpha", "> 0"),
    ({"alpha": -1.0}, "alpha", "> 0"),
    ({"alpha": float("nan")}, "alpha", "> 0"),
    ({"dropout": 1.0}, "dropout", "[0, 1)"),
    ({"dropout": -0.1}, "dropout", "[0, 1)"),
    ({"method": "dora"}, "method", "full_ft, lora, lora_fa"),
    ({"init_a": "xavier"}, "init_a", "kaiming_uniform, std_normal, all_one, orthogonal"),
    ({"target_modules": "everything"}, "target_modules", "all-linear, qv"),
    ({"target_modules": []}, "target_modules", "all-linear, qv"),
    ({"method": "lora", "b_grad_correction": True}, "b_grad_correction", "lora_fa"),
])
def test_bad_config_names_field_and_allowed_values(kwargs, field, allowed):
    with pytest.raises(ValueError) as err:
        AdapterConfig(**kwargs)
    assert f"AdapterConfig.{field}=" in str(err.value) and allowed in str(err.value)


def test_targets_matching_nothing_list_candidates():
    with pytest.raises(ValueError) as err:
        add_adapters(tiny_roberta(), AdapterConfig(target_modules=["q_proj"]))
    msg = str(err.value)
    assert "target_modules" in msg and "'q_proj'" in msg
    for candidate in ("query", "key", "value", "dense"):
        assert candidate in msg


def test_qv_preset_on_a_fused_attention_model_lists_candidates():
    with pytest.raises(ValueError) as err:  # GPT-2 fuses q, k, v into c_attn
        add_adapters(tiny_gpt2(), AdapterConfig(target_modules="qv"))
    assert "c_attn" in str(err.value)


def test_unknown_modules_to_save():
    with pytest.raises(ValueError, match="modules_to_save.*nonexistent"):
        add_adapters(tiny_roberta(), AdapterConfig(modules_to_save=["nonexistent"]))
