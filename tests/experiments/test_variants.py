"""experiments.variants: every variant maps to its precision recipe, and results.json records it as before."""

import json

import pytest

from experiments.charlm_run import make_cli
from experiments.inputs import InputError
from experiments.variants import VARIANTS, apply_variant, check_variants, in_table_order, numerics


def test_variants_map_to_the_precision_recipes():
    cli = make_cli()
    for name, variant in VARIANTS.items():
        args = apply_variant(cli.parse(["--variant", name]))
        policy, loss_scale = numerics(args)
        assert args.unit_scaled == variant.unit_scaled and args.scaling == variant.scaling
        assert policy.compute_dtype == ("float16" if name.startswith("fp16") else "float32")
        assert (policy.matmul_fwd is not None) == name.startswith("fp8")
        assert policy.scaling == ("delayed" if name == "fp8-standard-delayed" else "none")
        scales = {"fp16-standard-static": 2048.0, "fp16p-standard-static": 2048.0, "fp16-standard-dynamic": 2.0**15}
        assert loss_scale.loss_scale == scales.get(name, 1.0)
        assert args.attn_softmax_mult == (32.0 if name.endswith("-attn32") else 1.0)


def test_results_json_records_a_variant_as_it_always_has():
    """paper/ and every existing results.json read ``options.loss_scale`` (the --scaling recipe)."""
    assert VARIANTS["fp16-standard-dynamic"].record() == {
        "label": "FP16 standard, dynamic loss scaling",
        "options": {"precision": "fp16", "loss_scale": "dynamic", "unit_scaled": False}}
    assert json.dumps(VARIANTS["fp8-unit-attn32"].record()["options"]) == (
        '{"precision": "fp8", "loss_scale": "none", "unit_scaled": true, "attn_softmax_mult": 32.0}')
    assert len(VARIANTS) == 16 and len({v.colour for v in VARIANTS.values()}) == 16


def test_table_order_is_the_variant_tables_whatever_the_spec_order():
    """A sweep lists variants in the order it runs them; a table's columns keep one order."""
    listed = ["fp16p-unit", "fp8-standard", "fp32-standard", "fp16p-unit", "fp32-unit"]
    assert in_table_order(listed) == ["fp32-standard", "fp32-unit", "fp8-standard", "fp16p-unit"]
    assert in_table_order(reversed(VARIANTS)) == list(VARIANTS)


def test_unknown_variants_and_bad_numerics_are_input_errors():
    with pytest.raises(InputError, match=r"--variants names unknown variants \['fp64'\]"):
        check_variants(["fp32-unit", "fp64"], "--variants")
    args = make_cli().parse(["--precision", "fp32", "--scaling", "delayed"])
    with pytest.raises(InputError, match="--precision fp32 with --scaling delayed"):
        numerics(args)
