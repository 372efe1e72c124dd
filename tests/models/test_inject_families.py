"""inject on every CNN family timm and torchvision ship: the contract, checked model by model at tiny inputs.

Models have random weights plus noise standing in for trained ones (``trained_like``): random BatchNorm statistics and
no zero-initialised branch, so an identity that only holds because a branch outputs zero cannot pass.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

import visattn
from visattn.bench.inject import build, trained_like
from visattn.models import find_sites

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
SIZE = (3, 64, 64)

# One or two per family; the first group runs every check, the rest (slow) the core ones.
FAST = ["resnet18", "efficientnet_b0", "convnext_atto", "vgg11", "densenet121", "regnety_002",
        "mobilenetv3_small_100", "tv:resnet18", "tv:mobilenet_v3_small", "tv:densenet121"]
MORE = [
    "resnet26d", "resnet50", "resnext26ts", "wide_resnet50_2", "seresnet18", "res2net50_26w_4s", "res2next50",
    "resnest14d", "skresnet18", "ecaresnet26t", "gcresnet33ts", "regnetx_002", "regnetz_b16", "efficientnet_lite0",
    "efficientnetv2_rw_t", "mixnet_s", "mnasnet_small", "mobilenetv2_050", "mobilenetv3_large_100",
    "mobilenetv4_conv_small", "lcnet_050", "fbnetc_100", "spnasnet_100", "tinynet_e", "ghostnet_100", "ghostnetv2_100",
    "rexnet_100",
    "hardcorenas_a", "convnextv2_atto", "dla34", "dpn48b", "cspresnet50", "cspdarknet53", "darknet17", "vovnet39a",
    "ese_vovnet19b_dw", "selecsls42b", "repvgg_a0", "hrnet_w18_small", "nf_resnet26", "tresnet_m", "xception41",
    "inception_v3", "densenet121", "vgg11_bn", "legacy_seresnet18", "gernet_s", "resnet18d", "resnetv2_50",
    "tv:resnext50_32x4d", "tv:wide_resnet50_2", "tv:efficientnet_b0", "tv:efficientnet_v2_s", "tv:convnext_tiny",
    "tv:regnet_y_400mf", "tv:regnet_x_400mf", "tv:mobilenet_v2", "tv:mnasnet0_5", "tv:shufflenet_v2_x0_5",
    "tv:vgg11", "tv:googlenet",
]
BLOCKS = ["se", "cbam", "nonlocal"]


def _model(name):
    torch.manual_seed(0)
    return trained_like(build(name)).eval()


def _injected_modules(model, report):
    return [model.get_submodule(s.path) for s in report.sites]


def _check_identity_and_single_call(name, block, x=X):
    model = _model(name)
    with torch.no_grad():
        before = model(x)
    model, report = visattn.inject(model, block, input_size=tuple(x.shape[1:]))
    assert report.sites, name
    calls = {id(m): 0 for m in _injected_modules(model, report)}
    handles = [m.register_forward_hook(lambda m, i, o: calls.__setitem__(id(m), calls[id(m)] + 1))
               for m in _injected_modules(model, report)]
    with torch.no_grad():
        after = model(x)
    for h in handles:
        h.remove()
    assert set(calls.values()) == {1}, f"{name}: each injected block must run exactly once per forward: {calls}"
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5 * max(1.0, before.abs().max().item()))
    return model, report


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("name", FAST)
def test_identity_at_step_zero_and_each_block_runs_once(name, block):
    _check_identity_and_single_call(name, block)


@pytest.mark.parametrize("name", FAST)
def test_the_identity_check_is_not_vacuous(name):
    # The same injection with the blocks' random init changes the outputs: the blocks are really in the path.
    model = _model(name)
    with torch.no_grad():
        before = model(X)
    model, report = visattn.inject(model, "cbam", init="default", input_size=SIZE)
    with torch.no_grad():
        assert (model(X) - before).abs().max() > 1e-4
    assert report.max_abs_diff > 1e-4


@pytest.mark.parametrize("name", FAST)
def test_every_new_parameter_gets_gradient_within_two_steps(name):
    # rd_ratio=1/4: CBAM's default 1/16 leaves a 16-channel map (MobileNetV3's first stage) one hidden unit, which
    # a ReLU can switch off for every image: no gradient then, as in timm's CbamModule.
    model, report = visattn.inject(_model(name), "cbam", rd_ratio=1 / 4, input_size=SIZE)
    new = {f"{s.path}.{n}": p for s in report.sites for n, p in model.get_submodule(s.path).named_parameters()}
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    # Eight images: CBAM's channel MLP on a 16-channel map is 1 unit wide, and two images may both leave it at 0.
    x = torch.randn(8, *SIZE, generator=torch.Generator().manual_seed(2))
    y = torch.arange(8) % 2
    touched = set()
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        touched |= {k for k, p in new.items() if p.grad is not None and p.grad.abs().sum() > 0}
        opt.step()
    assert touched == set(new), f"no gradient reached {sorted(set(new) - touched)[:5]}"


@pytest.mark.parametrize("name", FAST)
def test_state_dict_round_trip_keeps_original_keys(name):
    original = _model(name)
    original_state = {k: v.clone() for k, v in original.state_dict().items()}
    model, report = visattn.inject(copy.deepcopy(original), "cbam", input_size=SIZE)
    state = model.state_dict()
    assert set(original_state) <= set(state) and set(state) - set(original_state) == set(report.new_keys)
    # A checkpoint of the original model loads into the injected one ...
    fresh, _ = visattn.inject(build(name).eval(), "cbam", input_size=SIZE)
    assert visattn.load_weights(fresh, original_state) is not None
    # ... and the injected model's own checkpoint rebuilds it exactly.
    with torch.no_grad():
        for s in report.sites:  # move the blocks off the identity first, so their values matter
            for p in model.get_submodule(s.path).parameters():
                p.add_(0.01)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(X), model(X), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "convnext_atto", "densenet121", "regnety_002"])
def test_features_only_backbones(name):
    import timm

    model = trained_like(timm.create_model(name, features_only=True)).eval()
    with torch.no_grad():
        before = [t.clone() for t in model(X)]
    model, report = visattn.inject(model, "cbam", input_size=SIZE)
    assert report.sites and report.max_abs_diff <= 1e-5
    with torch.no_grad():
        for a, b in zip(model(X), before, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * max(1.0, b.abs().max().item()))


def test_stages_mean_the_same_on_every_family():
    # Stage N holds blocks of output stride 2^(N+1): the spatial size of what each site sees says so.
    for name in ["resnet18", "efficientnet_b0", "convnext_atto", "vgg11", "tv:regnet_y_400mf"]:
        model = _model(name)
        sizes = {}
        for stage, sites in find_sites(model, SIZE).sites.items():
            for site in sites:
                module = model.get_submodule(site.path)
                seen = []
                h = module.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.shape[-1]))
                with torch.no_grad():
                    model(X)
                h.remove()
                sizes.setdefault(stage, set()).add(seen[0])
        assert sizes == {s: {64 >> (s + 1)} for s in sizes}, (name, sizes)
        assert set(sizes) == {1, 2, 3, 4}, (name, sizes)


def test_timm_and_torchvision_convnext_get_the_same_sites():
    timm_sites = find_sites(_model("convnext_tiny"), SIZE).sites
    tv_sites = find_sites(_model("tv:convnext_tiny"), SIZE).sites
    assert {s: len(v) for s, v in timm_sites.items()} == {s: len(v) for s, v in tv_sites.items()} == {
        1: 3, 2: 3, 3: 9, 4: 3}


def test_resnet_stages_are_layer_numbers_with_a_cifar_stem_too():
    from visattn.models import use_small_input_stem

    model = use_small_input_stem(_model("resnet18"))
    sites = find_sites(model, (3, 32, 32)).sites
    assert {s: [x.path for x in v] for s, v in sites.items()} == {
        n: [f"layer{n}.0", f"layer{n}.1"] for n in (1, 2, 3, 4)}


def test_existing_attention_kept_or_replaced_in_efficientnet():
    model = _model("efficientnet_b0")
    with torch.no_grad():
        before = model(X)
    kept, report = visattn.inject(copy.deepcopy(model), "cbam", input_size=SIZE)
    assert {s.where for s in report.sites} == {"after se"} and report.max_abs_diff <= 1e-5
    replaced, report = visattn.inject(copy.deepcopy(model), "cbam", replace=True, input_size=SIZE)
    assert {s.where for s in report.sites} == {"replaces SqueezeExcite"}
    assert all(type(replaced.get_submodule(s.path)).__name__ == "CBAM" for s in report.sites)
    with torch.no_grad():
        change = (replaced(X) - before).abs().max().item()
    assert change > 1e-4 and report.max_abs_diff > 1e-4  # the SE gates are gone; the report measured that on its probe


@pytest.mark.parametrize("name", ["resnet18", "tv:resnet18", "efficientnet_b0", "convnext_atto", "densenet121",
                                  "vgg11", "tv:mobilenet_v3_small"])
def test_inject_cross_on_every_family(name):
    model = _model(name)
    with torch.no_grad():
        before = model(X)
    model, report = visattn.inject_cross(model, query_stage=4, context_stage=2, input_size=SIZE)
    assert report.max_abs_diff <= 1e-5 and report.sites[0].path.endswith(".cross_attn")
    with torch.no_grad():
        torch.testing.assert_close(model(X), before, rtol=0, atol=1e-5 * max(1.0, before.abs().max().item()))
    model.train()
    F.cross_entropy(model(X), torch.tensor([0, 1])).backward()
    block = model.get_submodule(report.sites[0].path)
    assert all(p.grad is not None for p in block.parameters() if p.requires_grad)


@pytest.mark.slow
@pytest.mark.parametrize("name", MORE)
def test_many_timm_and_torchvision_cnns_take_a_block(name):
    # Inception's unpadded convs shrink a small input to nothing: its own 299 px.
    x = torch.randn(2, 3, 299, 299) if "inception" in name else X
    model, report = _check_identity_and_single_call(name, "cbam", x)
    assert {s.stage for s in report.sites} <= {1, 2, 3, 4}
    model.train()
    out = model(x)
    out = out if isinstance(out, torch.Tensor) else out[0]  # GoogLeNet adds auxiliary logits in training
    F.cross_entropy(out, torch.tensor([0, 1])).backward()


class _Double(torch.nn.Module):
    def __init__(self, channels, device=None, dtype=None):
        super().__init__()

    def forward(self, x):
        return 2 * x


@pytest.mark.parametrize("name", ["cs3darknet_s", "mixnet_m", "hgnetv2_b0", "ecaresnet26t"])
def test_sites_agree_with_forward_hooks_on_the_modules_they_follow(name):
    # Reference by another route: a block that doubles its input, put in by inject's rewritten forwards, must equal
    # the original model with a forward hook doubling the output of each module the sites follow.
    from visattn.models.structure import trace_module

    model = _model(name)
    reference = copy.deepcopy(model)
    sites = [s for v in find_sites(model, SIZE).sites.values() for s in v]
    for site in sites:
        if site.kind == "stage_output":
            module = reference.get_submodule(site.path)
        else:
            graph = trace_module(model.get_submodule(site.path), fill_slots=True)[0].graph
            node = next(n for n in graph.nodes if n.name == site.after)
            assert node.op == "call_module", (name, site)
            module = reference.get_submodule(f"{site.path}.{node.target}")
        module.register_forward_hook(lambda m, i, o: 2 * o)
    injected, _ = visattn.inject(copy.deepcopy(model), _Double, init="default", input_size=SIZE)
    with torch.no_grad():
        out, ref, plain = injected(X), reference(X), model(X)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * max(1.0, ref.abs().max().item()))
    assert (out - plain).abs().max() > 1e-3  # the doubling is visible: the comparison is not vacuous
