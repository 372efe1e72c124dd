"""Give an existing module a new child that its forward calls, without replacing the module or renaming its keys.

The module's class is swapped, in place, for a subclass of itself whose ``forward`` also calls the child:
- :func:`call_after_node`: in the middle of the forward, after one operation. The subclass's forward is the module's
  own forward traced by ``torch.fx`` with one call inserted, generated back into Python source. The forward is traced
  in train and in eval mode; when the two differ (a ``self.training`` test), the new forward picks by the flag.
- :func:`call_on_output`: on what the module returns.

The module keeps its identity, its methods, ``isinstance`` checks and every original state_dict key; the child adds
keys under its own name. The generated class lives only in this process: ``torch.save(model)`` of a whole model
cannot pickle it (save a state_dict, as timm does). :func:`undo` restores the class and removes the child.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import fx, nn

from .structure import LeafTracer, train_modes

__all__ = ["call_after_node", "call_on_output", "undo", "subclass_with_forward", "output_owner"]


def subclass_with_forward(base: type[nn.Module], forward: Callable[..., Any], suffix: str) -> type[nn.Module]:
    """A subclass ``<base>With<suffix>`` of ``base`` with another ``forward``. Its module is visattn's, so FX
    tracers trace through it (torch's own layers are leaves to them) and see what the new forward adds."""
    name = f"{base.__name__}With{suffix}"
    return type(name, (base,), {"forward": forward, "__module__": __name__, "__qualname__": name})


def _forward_with_call(module: nn.Module, after: str, child: str) -> Callable[..., Any]:
    """``module``'s forward, traced, with ``self.<child>(...)`` applied to the result of node ``after``."""
    graph = LeafTracer().trace(module)
    node = next((n for n in graph.nodes if n.name == after), None)
    if node is None:
        raise ValueError(f"{type(module).__name__}'s forward has no operation {after!r} to insert attention after")
    with graph.inserting_after(node):
        call = graph.call_module(child, (node,))
    node.replace_all_uses_with(call, delete_user_cb=lambda user: user is not call)
    graph.lint()
    code = graph.python_code(root_module="self")
    namespace = dict(code.globals)
    exec(compile(code.src, f"<visattn: {type(module).__name__}.forward with {child}>", "exec"), namespace)  # noqa: S102
    return namespace["forward"]


def call_after_node(module: nn.Module, after: str, child_name: str, child: nn.Module) -> None:
    """Make ``module``'s forward apply ``child`` (registered as ``child_name``) to the output of FX node ``after``.

    Raises:
        ValueError: the forward has no such node, or ``child_name`` is taken.
    """
    if hasattr(module, child_name):
        raise ValueError(f"{type(module).__name__} already has an attribute {child_name!r}")
    forwards = {}
    for training in (False, True):
        with train_modes(module, training):
            forwards[training] = _forward_with_call(module, after, child_name)
    eval_forward, train_forward = forwards[False], forwards[True]
    if eval_forward.__code__.co_code == train_forward.__code__.co_code \
            and eval_forward.__code__.co_consts == train_forward.__code__.co_consts:
        forward = eval_forward
    else:
        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            return (train_forward if self.training else eval_forward)(self, *args, **kwargs)
    module.__class__ = subclass_with_forward(type(module), forward, "Attention")
    module.add_module(child_name, child)


def output_owner(model: nn.Module, path: str) -> str:
    """The module that computes ``path``'s output: ``path`` itself, or for a plain ``nn.Sequential`` its last child's
    (recursively). A Sequential runs every child it holds, so a child added to it would run twice."""
    module = model.get_submodule(path)
    while type(module).forward is nn.Sequential.forward and len(module._modules):
        name = list(module._modules)[-1]
        path, module = f"{path}.{name}" if path else name, module._modules[name]
    return path


def _is_container(module: nn.Module) -> bool:
    return isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict))


def call_on_output(module: nn.Module, child_name: str, child: nn.Module) -> None:
    """Make ``module`` return ``child(output)`` (``child`` registered as ``child_name``).

    A container (a ModuleDict or Sequential subclass with a forward of its own, such as a DenseNet block) would
    iterate the new child with its others, so its forward is traced and rewritten instead; give a plain Sequential's
    last child the block (:func:`output_owner`).

    Raises:
        ValueError: ``child_name`` is taken, or a plain ``nn.Sequential`` is given.
    """
    if hasattr(module, child_name):
        raise ValueError(f"{type(module).__name__} already has an attribute {child_name!r}")
    if type(module).forward is nn.Sequential.forward:
        raise ValueError("a plain nn.Sequential runs every child it holds; give its last child the block")
    if _is_container(module):
        graph = LeafTracer().trace(module)
        output = next(n for n in graph.nodes if n.op == "output")
        if not isinstance(output.args[0], fx.Node):
            raise ValueError(f"{type(module).__name__} returns more than one map; it has no single output to follow")
        call_after_node(module, output.args[0].name, child_name, child)
        return
    base = type(module)

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, child_name)(base.forward(self, *args, **kwargs))

    module.__class__ = subclass_with_forward(type(module), forward, "Attention")
    module.add_module(child_name, child)


def undo(module: nn.Module, previous_class: type[nn.Module], child_name: str) -> None:
    """Take ``child_name`` away again and give ``module`` back ``previous_class``."""
    module._modules.pop(child_name, None)
    module.__class__ = previous_class

