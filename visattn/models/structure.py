"""Where attention can go in a CNN, read from the model's structure rather than from class names.

One probe forward pass records every module's input and output. Each module that takes one feature map is then
traced on its own with ``torch.fx`` (its children as opaque calls) and run on its recorded input, so every value in
its forward is known. A **residual block** is a module whose forward adds two maps of one shape, both computed from
its input, where one operand (the branch) passes through more operations, parametrised ones among them, than the
other (the shortcut). The attention block goes at the end of the branch, before the add, after any operation that is
an identity at inference (drop path, dropout) has been stepped back over; where the branch already holds attention
(a module that multiplies its input by a gate computed from it, such as SE), the new block goes right after it.

Stages are numbered by output stride, as timm's ``feature_info`` reductions are, counted from the deepest: the blocks at
the model's deepest stride (32 for ImageNet CNNs) are stage 4, those at half of it stage 3, then 2 and 1 (strides 4, 8,
16, 32 -> stages 1-4). So on a ResNet stage N is ``layerN`` and ``stages=[3, 4]`` means the same on every family, and
on a CIFAR ResNet whose stem keeps stride 1 too. Shallower blocks belong to the stem and take no block. A stage without
residual blocks (VGG, DenseNet's dense blocks, the first blocks of some MobileNets) gets its block at the stage's
output: timm's ``feature_info`` module for that stride where the model has one, else the last module whose output has
that stride.
Only NCHW maps count: token sequences (ViT) and channels-last stages (Swin) are reported and refused.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import fx, nn

from ..blocks.registry import is_block
from .weights import is_injected

__all__ = ["Site", "ModelStructure", "find_structure", "LeafTracer", "trace_module", "train_modes"]

_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")
_MUL_FUNCTIONS = (operator.mul, operator.imul, torch.mul)
_MUL_METHODS = ("mul", "mul_")
# Stages 1-4. A 1x1 map from global pooling would otherwise read as stride 64 on a 64 px probe.
MAX_STRIDE = 32


@dataclass(frozen=True)
class Site:
    """One place an attention block can go.

    Attributes:
        path: the module that gets the block: a residual block, or a stage's output module.
        stage: stride-based stage number (see the module docstring).
        channels: channels of the feature map the block sees.
        kind: ``'residual'`` (end of the branch, before the add) or ``'stage_output'``.
        after: the operation in ``path``'s forward the block follows (an FX node name), for residual sites.
        attention: path of the attention module already at that place (the block follows it), or None.
        slot: name of an empty (None) child of ``path`` that the forward already calls at that place, or None.
    """

    path: str
    stage: int
    channels: int
    kind: Literal["residual", "stage_output"]
    after: str | None = None
    attention: str | None = None
    slot: str | None = None


@dataclass
class ModelStructure:
    """What :func:`find_structure` found: sites per stage, each stage's output module, and what was passed over."""

    sites: dict[int, list[Site]]
    stage_outputs: dict[int, tuple[str, int]]  # stage -> (module path, channels)
    refused: list[str] = field(default_factory=list)  # residual blocks seen but not usable, with the reason

    def describe_refusal(self, model: nn.Module) -> str:
        """One line: why this model has nowhere to put a block."""
        token = [r for r in self.refused if "token" in r or "channels-last" in r]
        if token:
            return (f"{type(model).__name__} has no NCHW feature maps to put attention into: its residual blocks add "
                    f"token sequences or channels-last maps ({token[0]}; {len(token)} such blocks). inject adds 2-D "
                    f"feature-map attention to CNNs; transformers already mix every position with attention")
        children = ", ".join(f"{n} ({type(c).__name__})" for n, c in model.named_children()) or "none"
        return (f"{type(model).__name__} has no residual blocks and no stage outputs at strides 4 to 32 in NCHW layout "
                f"(searched every module's forward for a branch + shortcut add, and every stage output); its "
                f"top-level children: {children}")


class LeafTracer(fx.Tracer):
    """Traces one module's own forward: every submodule is one opaque call, except plain ``nn.Sequential``
    containers, whose forward only chains their children."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m).forward is not nn.Sequential.forward


class _EmptySlot(nn.Identity):
    """Stands in for a child set to None while tracing, to see where the forward would call it."""


@contextmanager
def train_modes(module: nn.Module, training: bool) -> Iterator[None]:
    """Set every submodule's train flag, then restore each one's own flag."""
    flags = [(m, m.training) for m in module.modules()]
    try:
        module.train(training)
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def trace_module(module: nn.Module, *, fill_slots: bool = False) -> tuple[fx.GraphModule, list[str]]:
    """FX graph of ``module``'s own forward (children opaque).

    With ``fill_slots``, attributes that are None (timm's empty ``se`` slot is a plain ``self.se = None``) are traced
    as :class:`_EmptySlot` calls, and their names are returned: where the forward calls one, setting it to a module
    puts that module there without touching the forward.
    """
    slots = []
    if fill_slots:
        slots = [k for k, v in module._modules.items() if v is None]
        slots += [k for k, v in vars(module).items() if v is None and not k.startswith("_") and k not in slots]
    saved = {k: (k in module._modules, vars(module).get(k)) for k in slots}
    for name in slots:
        vars(module).pop(name, None)
        module._modules[name] = _EmptySlot()
    try:
        # Built while the slots are filled: the GraphModule keeps the stand-ins and runs without them.
        return fx.GraphModule(module, LeafTracer().trace(module)), slots
    finally:
        for name, (registered, value) in saved.items():
            if registered:
                module._modules[name] = None
            else:
                del module._modules[name]
                vars(module)[name] = value


def _run(graph_module: fx.GraphModule, x: torch.Tensor) -> dict[fx.Node, Any]:
    """Every node's value when ``graph_module`` runs on ``x``."""
    interpreter = fx.Interpreter(graph_module, garbage_collect_values=False)
    interpreter.run(x)
    return interpreter.env


def nchw_stride(shape: tuple[int, ...], image: tuple[int, int]) -> int | None:
    """The stride of an NCHW map of ``shape`` for an input image of ``image`` = (H, W), or None when its last two dims
    are not the image's size divided by one power of two (tokens, channels-last maps, attention matrices).

    ``ceil(H / stride)`` exactly, or up to 4 pixels less: unpadded convolutions (Inception) shrink maps a little.
    Nothing looser: a window-attention matrix (49 x 49 on a 224 px input) must not pass for a 56 x 56 map.
    """
    if len(shape) != 4 or shape[2] < 1 or shape[3] < 1:
        return None
    for k in range(8):
        s = 1 << k
        expected = (math.ceil(image[0] / s), math.ceil(image[1] / s))
        if (shape[2], shape[3]) == expected:
            return s
        if k and all(e - 4 <= got < e and got >= 3 for got, e in zip(shape[2:], expected, strict=True)) \
                and 2 * shape[2] > expected[0] and 2 * shape[3] > expected[1]:
            return s
    return None


def _is_add(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in _ADD_FUNCTIONS)
            or (node.op == "call_method" and node.target in _ADD_METHODS))


def _is_mul(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in _MUL_FUNCTIONS)
            or (node.op == "call_method" and node.target in _MUL_METHODS))


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


class _Analyser:
    """Decides what each module is, with the values of one probe pass."""

    def __init__(self, image: tuple[int, int]) -> None:
        self.image = image
        self._gate_cache: dict[int, bool] = {}

    def is_attention(self, module: nn.Module) -> bool:
        """A visattn block, a module inject added, or a gate: ``x * g(x)``, or a chain of gates (CBAM)."""
        key = id(module)
        if key not in self._gate_cache:
            self._gate_cache[key] = is_block(module) or is_injected(module) or self._is_gate(module)
        return self._gate_cache[key]

    def _is_gate(self, module: nn.Module) -> bool:
        if not any(True for _ in module.children()) and type(module).__module__.startswith("torch.nn"):
            return False  # torch's own layers are never gates
        try:
            graph = trace_module(module)[0].graph
        except Exception:  # noqa: BLE001  (an untraceable forward is simply not recognised as a gate)
            return False
        inputs = [n for n in graph.nodes if n.op == "placeholder"]
        output = next(n for n in graph.nodes if n.op == "output")
        if len(inputs) != 1 or not isinstance(output.args[0], fx.Node):
            return False
        x, node = inputs[0], output.args[0]
        chain = []
        while node.op == "call_module" and len(node.all_input_nodes) == 1:  # CBAM: channel gate, then spatial gate
            chain.append(node)
            node = node.all_input_nodes[0]
        if chain:
            return node is x and all(self.is_attention(module.get_submodule(n.target)) for n in chain)
        if not _is_mul(node) or len(node.all_input_nodes) != 2:
            return False
        a, b = node.all_input_nodes
        other = b if a is x else a if b is x else None
        return other is not None and x in _ancestors(other)

    def residual(self, module: nn.Module, x: torch.Tensor) -> tuple[Site | None, str | None]:
        """The residual site in ``module``'s forward (its ``stage`` holding the output stride until numbered), or
        None with why (None when it is no residual block)."""
        try:
            traced, slots = trace_module(module, fill_slots=True)
            env = _run(traced, x)
        except Exception:  # noqa: BLE001  (a None attribute used as a value, not as a module: trace it as it is)
            traced, slots = trace_module(module)
            env = _run(traced, x)
        graph = traced.graph
        placeholder = next(n for n in graph.nodes if n.op == "placeholder")
        depth: dict[fx.Node, int] = {placeholder: 0}
        for n in graph.nodes:
            deps = [depth[a] for a in n.all_input_nodes if a in depth]
            if n is not placeholder and deps and n.op != "output":
                depth[n] = 1 + max(deps)
        found = None
        for n in graph.nodes:
            if not _is_add(n) or len(n.all_input_nodes) != 2:
                continue
            a, b = n.all_input_nodes
            va, vb, vn = env.get(a), env.get(b), env.get(n)
            if not all(isinstance(v, torch.Tensor) for v in (va, vb, vn)) or a not in depth or b not in depth:
                continue
            if va.shape != vn.shape or vb.shape != vn.shape or depth[a] == depth[b]:
                continue
            branch, shortcut = (a, b) if depth[a] > depth[b] else (b, a)
            own = _ancestors(branch) - _ancestors(shortcut)
            if not any(self._has_parameters(traced, m) for m in own):
                continue
            found = (n, branch, shortcut)
        if found is None:
            return None, None
        add, branch, _ = found
        shape = tuple(env[add].shape)
        if len(shape) != 4:
            return None, f"{shape} token sequences"
        stride = nchw_stride(shape, self.image)
        if stride is None:
            return None, f"{shape} channels-last maps"
        # Step back over what is an identity at inference (drop path, dropout, empty slots): attention goes before it.
        node = branch
        while self._unchanged(traced, env, node):
            node = node.all_input_nodes[0]
        attention = None
        own = _ancestors(node) - _ancestors(found[2])
        gates = [n for n in graph.nodes if n in own and n.op == "call_module"
                 and self.is_attention(traced.get_submodule(n.target))]
        if gates:
            node = gates[-1]
            attention = node.target
        slot = None
        if attention is None:
            users = [u for u in node.users if u.op == "call_module" and u.target in slots]
            slot = users[0].target if users else None
        channels = int(env[node].shape[1])
        return Site(path="", stage=stride, channels=channels, kind="residual", after=node.name,
                    attention=attention, slot=slot), None

    def _unchanged(self, traced: fx.GraphModule, env: dict[fx.Node, Any], node: fx.Node) -> bool:
        """True for a parameter-free step that returned its one input unchanged on the probe."""
        if len(node.all_input_nodes) != 1 or self._has_parameters(traced, node):
            return False
        out, inp = env.get(node), env.get(node.all_input_nodes[0])
        return (isinstance(out, torch.Tensor) and isinstance(inp, torch.Tensor) and out.shape == inp.shape
                and torch.equal(out, inp))

    @staticmethod
    def _has_parameters(root: nn.Module, node: fx.Node) -> bool:
        if node.op == "get_attr":
            return True
        if node.op == "call_module" and not isinstance(root.get_submodule(node.target), _EmptySlot):
            return any(True for _ in root.get_submodule(node.target).parameters())
        return False


@dataclass
class _Record:
    order: int
    module: nn.Module
    inputs: tuple[Any, ...]
    output: Any
    calls: int = 1


def _probe(model: nn.Module, x: torch.Tensor) -> dict[str, _Record]:
    records: dict[str, _Record] = {}
    counter = iter(range(1 << 30))

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if name in records:
                records[name].calls += 1
            else:
                records[name] = _Record(next(counter), module, args if not kwargs else (), output)
        return record

    handles = [m.register_forward_hook(hook(name), with_kwargs=True) for name, m in model.named_modules() if name]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return records


def _feature_info_modules(model: nn.Module) -> dict[int, str]:
    """stride -> module from timm's ``feature_info`` (a list of dicts, or a features_only model's FeatureInfo)."""
    info = getattr(model, "feature_info", None)
    if info is None:
        return {}
    entries = info.get_dicts() if hasattr(info, "get_dicts") else info
    try:
        return {int(e["reduction"]): str(e["module"]) for e in entries}
    except (TypeError, KeyError, ValueError):
        return {}


def stage_numbers(strides: set[int]) -> dict[int, int]:
    """stride -> stage: the deepest stride (at most 32) is stage 4, each halving one stage less, down to stage 1.

    Counting from the deepest stage keeps the numbers of a model whose stem was changed for small inputs (a CIFAR
    ResNet's layer1 runs at stride 1, its layer4 at stride 8) equal to those of the original.
    """
    usable = [s for s in strides if s <= MAX_STRIDE]
    if not usable:
        return {}
    deepest = max(usable)
    return {deepest >> k: 4 - k for k in range(4) if deepest >> k >= 1}


def find_structure(model: nn.Module, probe: torch.Tensor) -> ModelStructure:
    """Find every residual block and stage output of ``model`` with one probe pass (eval mode, no grad)."""
    image = (probe.shape[-2], probe.shape[-1])
    analyser = _Analyser(image)
    with torch.no_grad():
        records = _probe(model, probe)
    # Attention modules and everything inside them are not blocks.
    inside_attention = set()
    for name, rec in records.items():
        if analyser.is_attention(rec.module):
            inside_attention |= {n for n in records if n == name or n.startswith(name + ".")}
    residual: dict[str, Site] = {}
    refused: list[str] = []
    for name, rec in records.items():
        single = len(rec.inputs) == 1 and isinstance(rec.inputs[0], torch.Tensor)
        if (name in inside_attention or rec.calls != 1 or not single or not isinstance(rec.output, torch.Tensor)
                or rec.inputs[0].ndim not in (3, 4) or not any(True for _ in rec.module.children())
                or type(rec.module).forward is nn.Sequential.forward):
            continue
        try:
            with torch.no_grad():
                site, why_not = analyser.residual(rec.module, rec.inputs[0])
        except Exception:  # noqa: BLE001  (a forward FX cannot trace is not a block inject can change)
            continue
        if site is not None:
            residual[name] = Site(**{**site.__dict__, "path": name})
        elif why_not is not None:
            refused.append(f"{name}: {why_not}")
    # Innermost blocks only: a module holding residual blocks is a stage, not a block.
    residual = {n: s for n, s in residual.items() if not any(o.startswith(n + ".") for o in residual)}
    refused = [r for r in refused if not any(o.startswith(r.split(":")[0] + ".") for o in residual)]

    # A residual block's insides are not stage outputs (a token block's attention may reshape tokens into a grid).
    blocks = set(residual) | {r.split(":")[0] for r in refused}
    inside = inside_attention | {n for n in records if any(n.startswith(b + ".") for b in blocks)}
    outputs = _stage_outputs(model, records, image, inside)  # stride -> (module, channels)
    numbers = stage_numbers({s.stage for s in residual.values()} | set(_feature_info_modules(model))
                            or set(outputs))
    sites: dict[int, list[Site]] = {}
    for name in sorted(residual, key=lambda n: records[n].order):
        site = residual[name]
        if site.stage in numbers:
            sites.setdefault(numbers[site.stage], []).append(Site(**{**site.__dict__, "stage": numbers[site.stage]}))
    stage_outputs = {numbers[s]: v for s, v in outputs.items() if s in numbers}
    for stage, (path, channels) in stage_outputs.items():
        # Stage outputs stand in for residual blocks only in CNNs: a model with token or channels-last blocks gets
        # attention in its NCHW residual blocks (a hybrid's convolutional stages) or nowhere.
        if stage not in sites and not refused:
            sites[stage] = [Site(path=path, stage=stage, channels=channels, kind="stage_output")]
    return ModelStructure(sites=dict(sorted(sites.items())), stage_outputs=dict(sorted(stage_outputs.items())),
                          refused=refused)


def _stage_outputs(model: nn.Module, records: dict[str, _Record], image: tuple[int, int],
                   excluded: set[str]) -> dict[int, tuple[str, int]]:
    """stride -> (module, channels) of each stage's output.

    A timm model says where its stages end (``feature_info``): those modules, where their output is an NCHW map.
    Otherwise the last module (the outermost of those returning the same map) whose NCHW output has that stride and
    is not its input unchanged, outside any module that takes something other than an NCHW map (a token block).
    """
    info = _feature_info_modules(model)
    if info:
        out = {}
        for stride, name in info.items():
            if name not in records:  # a features_only model flattens the path: 'features.denseblock1' -> '..._...'
                name = name.replace(".", "_")
            rec = records.get(name)
            if stride <= MAX_STRIDE and rec is not None and rec.calls == 1 and isinstance(rec.output, torch.Tensor) \
                    and nchw_stride(tuple(rec.output.shape), image) == stride:
                out[stride] = (name, int(rec.output.shape[1]))
        return dict(sorted(out.items()))

    def stride_of(value: Any) -> int | None:
        return nchw_stride(tuple(value.shape), image) if isinstance(value, torch.Tensor) else None

    # Inside a downsampling block (an inverted residual's expansion conv) is not the end of a stage, nor inside a
    # module that takes tokens; plain nn.Sequential containers only chain their children, so their insides count.
    closed = [name for name, rec in records.items()
              if type(rec.module).forward is not nn.Sequential.forward and rec.inputs
              and (stride_of(rec.inputs[0]) is None or stride_of(rec.inputs[0]) != stride_of(rec.output))]
    by_stride: dict[int, tuple[str, int]] = {}
    for name, rec in sorted(records.items(), key=lambda item: item[1].order):
        stride = stride_of(rec.output)
        if (name in excluded or rec.calls != 1 or stride is None or stride > MAX_STRIDE
                or any(name.startswith(d + ".") for d in closed)):
            continue
        first = rec.inputs[0] if rec.inputs else None
        if isinstance(first, torch.Tensor) and first.shape == rec.output.shape and torch.equal(first, rec.output):
            continue  # adaptive pooling to the size it already has, dropout, identity: nothing happens here
        by_stride[stride] = (name, int(rec.output.shape[1]))
    return dict(sorted(by_stride.items()))
