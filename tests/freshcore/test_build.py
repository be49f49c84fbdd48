import itertools

import pytest
import torch
from pydantic import ValidationError

import freshcore as fc
from freshcore.spec import SpecError

PRESETS = ["mnist-cnn", "mnist-allconv", "cifar-cnn"]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("method", fc.METHODS)
@pytest.mark.parametrize("compression", [1 / 16, 1 / 64])
def test_each_method_within_two_percent_of_budget(preset, method, compression):
    if (preset, method, compression) == ("mnist-allconv", "lrd", 1 / 64):
        # rank 1 in every layer already stores more than the budget: refused, not overspent
        with pytest.raises(ValueError, match="lrd cannot reach compression"):
            fc.build_model(preset, method, compression)
        return
    model = fc.build_model(preset, method, compression)
    dense = fc.resolve_spec(preset).virtual_weights()
    budget = dense if method == "dense" else round(compression * dense)
    stored = sum(p.numel() for p in model.parameters())
    assert abs(stored - budget) <= 0.02 * budget, (stored, budget)
    if method not in ("equivalent", "lrd"):  # bucket/coefficient counts hit the budget exactly
        assert stored == budget
    report = fc.size_report(model)
    assert report.stored_parameters == stored
    assert report.virtual_weights == dense
    assert report.compact_bytes == 4 * stored and report.dense_bytes == 4 * dense
    assert report.ratio == pytest.approx(stored / dense)
    assert sum(x.stored_parameters for x in report.layers) == stored
    assert fc.size_report(model, half=True).compact_bytes == 2 * stored
    assert report.to_dict()["layers"][0]["index"] == 0
    assert report.zero_values == sum(x.zero_values for x in report.layers)
    assert report.shared_values == sum(x.shared_values for x in report.layers)
    nonzero = report.rebuilt_weights - report.zero_values
    assert report.shared_ratio == pytest.approx(report.shared_values / nonzero)
    convs = [x for x in report.layers if x.type == "conv"]
    if method in ("dense", "equivalent", "lrd"):  # nothing gathered from buckets
        assert report.zero_values == report.shared_values == 0
    elif method == "lowfreq":  # truncation: zeros, nothing shared
        assert all(x.zero_values > 0 and x.shared_values == 0 for x in convs)
    elif method == "hashednets":  # hashing: shared, nothing truncated
        assert all(x.zero_values == 0 and x.shared_values > 0 for x in convs)
    c, h, w = model.spec.input_shape
    out = model.eval()(torch.rand(2, c, h, w))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize(("classes", "widths"), [(2, [4, 9, 6]), (10, [3, 8, 8])])
def test_equivalent_moves_two_widths_only_where_one_cannot_reach_the_budget(classes, widths):
    """2-class mnist-allconv at 1/64: one-width moves stop 3% under the budget (3, 8, 8 channels);
    moving two at once reaches it. With 10 classes one-width moves reach it and are kept."""
    model = fc.build_model("mnist-allconv", "equivalent", 1 / 64, num_classes=classes)
    budget = round(fc.resolve_spec("mnist-allconv", num_classes=classes).virtual_weights() / 64)
    stored = sum(p.numel() for p in model.parameters())
    assert abs(stored - budget) <= 0.02 * budget, (stored, budget)
    assert [m.out_channels for m in model.body if isinstance(m, torch.nn.Conv2d)] == widths
    assert fc.size_report(model).rebuilt_ratio == 1  # a dense network stores what it computes


def test_build_is_deterministic_and_seeded():
    a = fc.build_model("mnist-cnn", seed=3)
    b = fc.build_model("mnist-cnn", seed=3)
    c = fc.build_model("mnist-cnn", seed=4)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), na
    assert not torch.equal(a.body[0].buckets, c.body[0].buckets)
    assert not torch.equal(a.body[0].index, c.body[0].index)


def test_freshnets_band_rates_non_increasing_and_totals_exact():
    model = fc.build_model("cifar-cnn", "freshnets", 1 / 16)
    for layer in model.generated_layers():
        if isinstance(layer, fc.FreshConv2d):
            rates = [k / n for k, n in zip(layer.band_buckets, layer.band_sizes(), strict=True)]
            assert all(b <= a for a, b in itertools.pairwise(rates))
            assert max(rates) <= 1
            assert sum(layer.band_buckets) == layer.num_buckets
    uniform = fc.build_model("cifar-cnn", "freshnets-uniform", 1 / 16)
    rates = [
        k / n
        for k, n in zip(uniform.body[0].band_buckets, uniform.body[0].band_sizes(), strict=True)
    ]
    assert max(rates) - min(rates) < 0.02


def test_allocation_and_budget_policy_are_parameters():
    m = fc.build_model(
        "mnist-cnn", allocation={"shape": "beta", "a": 1, "b": 4}, budget_policy="conv-boost"
    )
    assert m.allocation == {"shape": "beta", "a": 1.0, "b": 4.0}
    assert m.budget_policy == {"kind": "conv-boost", "conv_factor": 4.0}
    plain = fc.build_model("mnist-cnn")
    assert m.body[3].num_buckets > 3 * plain.body[3].num_buckets  # the conv gets a larger share
    total = sum(p.numel() for p in m.parameters())
    assert total == round(fc.resolve_spec("mnist-cnn").virtual_weights() / 64)
    with pytest.raises(ValueError, match="allocation"):
        fc.build_model("mnist-cnn", allocation={"shape": "triangle"})
    with pytest.raises(ValueError, match="budget_policy"):
        fc.build_model("mnist-cnn", budget_policy={"kind": "conv-boost", "conv_factor": 0.1})
    with pytest.raises(ValueError, match="uniform"):
        fc.build_model("mnist-cnn", "freshnets-uniform", allocation="exponential")


def test_parse_compression():
    assert fc.parse_compression("1/64") == 1 / 64
    assert fc.parse_compression(" 0.25 ") == 0.25
    assert fc.parse_compression(1) == 1.0
    for bad in ("1/0", "abc", "0", "2", "-1/4", "nan", float("inf")):
        with pytest.raises(ValueError, match="compression"):
            fc.parse_compression(bad)
    with pytest.raises(ValueError, match="too small"):
        fc.build_model("mnist-cnn", "freshnets", 1e-5)
    with pytest.raises(ValueError, match="cannot reach"):
        fc.build_model("mnist-cnn", "lrd", 1 / 512)
    with pytest.raises(ValueError, match="unknown method"):
        fc.build_model("mnist-cnn", "magic")


def test_resolve_spec_adapts_a_preset():
    spec = fc.resolve_spec("mnist-cnn", input_shape=(3, 32, 32), num_classes=4)
    assert spec.input_shape == (3, 32, 32) and spec.layers[-1].out_features == 4
    model = fc.build_model("mnist-cnn", "freshnets", input_shape=(3, 32, 32), num_classes=4)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    assert model.body[0].in_channels == 3
    with pytest.raises(SpecError, match="unknown preset"):
        fc.resolve_spec("nope")
    names = [p["name"] for p in fc.list_presets()]
    assert names == ["mnist-cnn", "mnist-allconv", "cifar-cnn"]
    mnist = fc.list_presets()[0]
    assert 400_000 < mnist["virtual_weights"] < 600_000
    allconv = fc.resolve_spec("mnist-allconv")
    conv = sum(s.weights for s in allconv.check() if s.type == "conv")
    assert conv > 0.99 * allconv.virtual_weights()  # where the conv compression decides the size


def _spec(*layers, classes=3):
    return {"input_shape": [1, 8, 8], "num_classes": classes, "layers": list(layers)}


def test_spec_errors_name_the_layer():
    conv = {"type": "conv", "out_channels": 4, "kernel_size": 3}
    fc3 = {"type": "fc", "out_features": 3}
    with pytest.raises(SpecError) as e:
        fc.resolve_spec(_spec(conv, {"type": "conv", "out_channels": 4, "kernel_size": 9}, fc3))
    assert (
        e.value.layer == 1 and "layer 1 (conv)" in str(e.value) and "does not fit" in e.value.reason
    )
    with pytest.raises(SpecError) as e:
        fc.resolve_spec(_spec(conv, {"type": "fc", "out_features": 5}))
    assert e.value.layer == 1 and "num_classes" in e.value.reason
    with pytest.raises(SpecError) as e:
        fc.resolve_spec(_spec(conv, {"type": "wormhole"}, fc3))
    assert e.value.layer == 1 and "wormhole" in str(e.value)
    with pytest.raises(SpecError) as e:
        fc.resolve_spec(_spec(conv, {"type": "conv", "out_channels": -4, "kernel_size": 3}, fc3))
    assert e.value.layer == 1 and "out_channels" in str(e.value)
    with pytest.raises(SpecError) as e:
        fc.resolve_spec(
            _spec({"type": "flatten"}, {"type": "conv", "out_channels": 2, "kernel_size": 1}, fc3)
        )
    assert e.value.layer == 1 and "flat" in e.value.reason
    spec = fc.resolve_spec(_spec(conv, {"type": "fc", "out_features": 1000}, fc3))
    with pytest.raises(SpecError) as e:
        spec.check(max_virtual_weights=10_000)
    assert e.value.layer == 1 and "cap" in e.value.reason
    with pytest.raises(ValidationError):
        fc.ArchitectureSpec.model_validate(_spec({"type": "pool", "kind": "median"}))


def test_custom_spec_with_batchnorm_flatten_and_groups():
    spec = _spec(
        {"type": "conv", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "batchnorm"}, {"type": "relu"},
        {"type": "conv", "out_channels": 8, "kernel_size": 3, "groups": 2, "stride": 2},
        {"type": "pool", "kind": "avg", "kernel_size": 1},
        {"type": "flatten"}, {"type": "fc", "out_features": 16}, {"type": "batchnorm"},
        {"type": "fc", "out_features": 3},
    )  # fmt: skip
    for method in fc.METHODS:
        model = fc.build_model(spec, method, 1 / 4).eval()
        x = torch.rand(5, 1, 8, 8)
        out = model(x)
        assert out.shape == (5, 3)
        torch.testing.assert_close(fc.to_dense(model).eval()(x), out)


@pytest.mark.parametrize("method", fc.METHODS)
def test_materialized_and_dense_export_match_training_forward(method):
    model = fc.build_model("mnist-cnn", method, 1 / 16)
    model.set_normalization([0.13], [0.31])
    x = torch.rand(8, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        model.materialize()
        assert not model.training
        torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
        torch.testing.assert_close(fc.to_dense(model).eval()(x), ref, rtol=0, atol=1e-6)
    assert isinstance(fc.to_dense(model), torch.nn.Sequential)


def test_normalisation_is_applied_and_validated():
    model = fc.build_model("mnist-cnn").eval()
    x = torch.rand(2, 1, 28, 28)
    model.set_normalization([0.5], [2.0])
    a = model(x)
    model.set_normalization([0.0], [1.0])
    assert torch.allclose(model((x - 0.5) / 2.0), a, atol=1e-6)
    with pytest.raises(ValueError):
        model.set_normalization([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError):
        model.set_normalization([0.1], [0.0])


@pytest.mark.parametrize("method", ["freshnets", "hashednets", "lowfreq", "lrd", "dense"])
def test_compress_dense_projects_the_weights(method):
    dense = fc.build_model("mnist-cnn", "dense", seed=1).eval()
    dense.set_normalization([0.2], [0.3])
    dense.class_names = [str(i) for i in range(10)]
    small = fc.compress_dense(dense, method, 1 / 4, seed=2).eval()
    assert small.method == method and small.class_names == dense.class_names
    assert torch.equal(small.input_mean, dense.input_mean)
    random = fc.build_model("mnist-cnn", method, 1 / 4, seed=2)
    with torch.no_grad():
        for i in (0, 3, 6, 9):  # conv, conv, fc, fc
            target = dense.spec_module(i).weight
            got = small.spec_module(i)
            got = got.rebuild_weight() if hasattr(got, "rebuild_weight") else got.weight
            init = random.spec_module(i)
            init = init.rebuild_weight() if hasattr(init, "rebuild_weight") else init.weight
            err = (got - target).norm()
            assert err < (init - target).norm()
            if method == "dense":
                assert err == 0
            if method != "dense" and hasattr(small.spec_module(i), "bias"):
                assert torch.equal(small.spec_module(i).bias, dense.spec_module(i).bias)
    if method != "dense":
        with pytest.raises(ValueError):
            fc.compress_dense(small, "freshnets")


@pytest.mark.parametrize(
    ("method", "conv_kind"), [("freshnets", "fresh-conv"), ("hashednets", "hashed-conv")]
)
def test_balanced_is_kept_in_the_conv_plan_entries_and_the_file(method: str, conv_kind: str):
    plain = fc.build_model("mnist-cnn", method, 1 / 16, 3)
    balanced = fc.build_model("mnist-cnn", method, 1 / 16, 3, balanced=True)
    convs = [p for p in balanced.plan if p and p["kind"] == conv_kind]
    assert convs and all(p["balanced"] is True for p in convs)
    fcs = [p for p in balanced.plan if p and p["kind"] == "hashed-fc"]
    assert fcs and all("balanced" not in p for p in fcs)  # the paper's HashedNets fc layers
    assert all("balanced" not in p for p in plain.plan if p)  # old plans keep their meaning
    loaded = fc.from_bytes(fc.to_bytes(balanced))
    assert loaded.plan == balanced.plan
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(loaded.eval()(x), balanced.eval()(x))
    assert not torch.equal(plain.eval()(x), balanced.eval()(x))


def test_balanced_is_refused_where_no_conv_is_hashed():
    for method in ("lowfreq", "lrd", "dense", "equivalent"):
        with pytest.raises(ValueError, match=f"method {method!r} has none"):
            fc.build_model("mnist-cnn", method, 1 / 16, 3, balanced=True)
    with pytest.raises(ValueError, match="true or false"):
        fc.build_model("mnist-cnn", "freshnets", 1 / 16, 3, balanced="yes")


def test_fc_allocation_hashes_the_map_reading_fc_in_the_dct_domain():
    """The fc after the convs becomes a FreshLinear with the same stored budget; the classifier,
    which reads a vector, stays HashedNets; the plan rebuilds it from a file."""
    base = fc.build_model("mnist-cnn", "freshnets", 1 / 64, 3, budget_policy="conv-boost")
    model = fc.build_model(
        "mnist-cnn", "freshnets", 1 / 64, 3, budget_policy="conv-boost",
        fc_allocation={"shape": "exponential", "decay": 0.25},
    )  # fmt: skip
    kinds = [p["kind"] for p in model.plan if p]
    assert kinds == ["fresh-conv", "fresh-conv", "fresh-fc", "hashed-fc"]
    stored = [sum(p.numel() for p in m.parameters()) for m in model.generated_layers()]
    assert stored == [sum(p.numel() for p in m.parameters()) for m in base.generated_layers()]
    fc1 = model.generated_layers()[2]
    assert isinstance(fc1, fc.FreshLinear) and fc1.in_shape == (64, 7, 7)
    rates = [k / n for k, n in zip(fc1.band_buckets, fc1.band_sizes(), strict=True)]
    assert all(a >= b for a, b in itertools.pairwise(rates)) and rates[0] > rates[-1]
    loaded = fc.from_bytes(fc.to_bytes(model))
    assert loaded.plan == model.plan
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded.eval()(x), model.eval()(x))
    torch.testing.assert_close(fc.to_dense(model)(x), model(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="fc_allocation applies to method 'freshnets'"):
        fc.build_model("mnist-cnn", "hashednets", 1 / 64, 3, fc_allocation="uniform")
    with pytest.raises(ValueError, match="invalid fc_allocation"):
        fc.build_model("mnist-cnn", "freshnets", 1 / 64, 3, fc_allocation={"shape": "gauss"})


@pytest.mark.parametrize(
    "method", ["lrd", "hashednets", "lowfreq", "freshnets-uniform", "freshnets"]
)
def test_width_spreads_the_same_budget_over_a_narrower_virtual_network(method):
    """At width 1/4 the hidden widths are a quarter of mnist-cnn's (the classes stay), the stored
    parameters are still 1/64 of the full network's, and the file rebuilds the narrow model."""
    full = fc.build_model("mnist-cnn", method, 1 / 64, 2)
    narrow = fc.build_model("mnist-cnn", method, 1 / 64, 2, width=0.25)
    assert [p.get("width") for p in narrow.plan if p] == [8, 16, 38, 10]
    assert all("width" not in p for p in full.plan if p)
    budget = sum(p.numel() for p in full.parameters())
    assert abs(sum(p.numel() for p in narrow.parameters()) - budget) <= 0.02 * budget
    assert narrow.spec_module(0).out_channels == 8
    wide, thin = fc.size_report(full), fc.size_report(narrow)
    assert thin.ratio == pytest.approx(wide.ratio, rel=0.02)  # the same share of the spec's
    assert wide.rebuilt_weights == wide.virtual_weights and wide.rebuilt_ratio == wide.ratio
    rebuilt = narrow.built_spec().virtual_weights()  # the network the narrow model computes
    assert thin.rebuilt_weights == rebuilt < wide.virtual_weights / 10
    assert thin.rebuilt_ratio == pytest.approx(thin.stored_parameters / rebuilt)
    loaded = fc.from_bytes(fc.to_bytes(narrow))
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded.eval()(x), narrow.eval()(x))


def test_width_is_checked():
    with pytest.raises(ValueError, match=r"width must be a number in \(0, 1\]"):
        fc.build_model("mnist-cnn", "freshnets", 1 / 64, 0, width=1.5)
    with pytest.raises(ValueError, match="not 'equivalent'"):
        fc.build_model("mnist-cnn", "equivalent", 1 / 64, 0, width=0.5)
    with pytest.raises(ValueError, match="use a larger width"):
        fc.build_model("mnist-cnn", "hashednets", 1 / 64, 0, width=0.05)
    dense = fc.build_model("mnist-cnn", "dense")
    with pytest.raises(ValueError, match="train it from scratch"):
        fc.compress_dense(dense, "freshnets", 1 / 64, 0, width=0.5)
