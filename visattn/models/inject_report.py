"""What ``inject`` did: where each block went, and its parameter and FLOP overhead."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["InjectionSite", "InjectionReport"]


@dataclass(frozen=True)
class InjectionSite:
    """One injected block.

    Attributes:
        path: the block's module path (``layer3.0.se``, ``blocks.5.1.attn``, ``features.20.attn``).
        stage: the stage it belongs to (output stride 4 -> 1, ..., 32 -> 4).
        channels: channels of the map it sees.
        params: its parameter count.
        where: ``'branch end'``, ``'branch end (empty slot)'``, ``'after <existing attention>'``,
            ``'replaces <class>'`` or ``'stage output'``.
    """

    path: str
    channels: int
    params: int
    stage: int = 0
    where: str = "branch end"


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


@dataclass
class InjectionReport:
    """Summary of an ``inject`` call. ``print(report)`` shows a table.

    Attributes:
        block: the block's registered name (or class name).
        init: ``'identity'`` or ``'default'``.
        sites: one entry per injected block.
        params_before: parameters of the original model.
        flops_before: forward FLOPs of the original model at ``input_size`` (torch's flop counter).
        flops_after: the same for the injected model.
        input_size: ``(C, H, W)`` of the probe.
        max_abs_diff: largest |output change| on the probe, eval mode (0 for the built-in blocks with
            ``init='identity'``; inject refuses more than 1e-5 relative, unless ``replace=True`` swapped attention).
        new_keys: state_dict keys that a checkpoint of the original model does not have.
        removed_keys: keys of the original model that are gone (the attention ``replace=True`` swapped out).
    """

    block: str
    init: str
    sites: list[InjectionSite]
    params_before: int
    flops_before: int
    flops_after: int
    input_size: tuple[int, ...]
    max_abs_diff: float
    new_keys: list[str] = field(default_factory=list)
    removed_keys: list[str] = field(default_factory=list)

    @property
    def params_added(self) -> int:
        return sum(s.params for s in self.sites)

    @property
    def flops_added(self) -> int:
        return self.flops_after - self.flops_before

    def __str__(self) -> str:
        size = "x".join(map(str, self.input_size))
        pct_p = 100 * self.params_added / max(1, self.params_before)
        pct_f = 100 * self.flops_added / max(1, self.flops_before)
        width = max([len("module")] + [len(s.path) for s in self.sites])
        lines = [
            f"inject {self.block!r} (init={self.init!r}): {len(self.sites)} blocks",
            f"  {'module':<{width}}  {'stage':>5}  {'channels':>8}  {'params':>9}  where",
        ]
        lines += [f"  {s.path:<{width}}  {s.stage:>5}  {s.channels:>8}  {s.params:>9,}  {s.where}" for s in self.sites]
        lines += [
            f"  params: {_human(self.params_before)} -> {_human(self.params_before + self.params_added)}"
            f" (+{pct_p:.2f}%)",
            f"  FLOPs at {size}: {_human(self.flops_before)} -> {_human(self.flops_after)} (+{pct_f:.2f}%)",
            f"  max |output change| at step 0: {self.max_abs_diff:.3g}",
            f"  new state_dict keys: {len(self.new_keys)} (a checkpoint of the original model lacks them: load it "
            f"with visattn.load_weights)",
        ]
        if self.removed_keys:
            lines.append(f"  removed state_dict keys: {len(self.removed_keys)} (the attention that was replaced)")
        return "\n".join(lines)
