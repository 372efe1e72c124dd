"""What ``inject`` did: where each block went, and its parameter and FLOP overhead."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["InjectionSite", "InjectionReport"]


@dataclass(frozen=True)
class InjectionSite:
    """One injected block: its module path, width and parameter count."""

    path: str
    channels: int
    params: int


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
            ``init='identity'``; inject refuses more than 1e-5 relative).
        new_keys: state_dict keys that a checkpoint of the original model does not have.
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

    @property
    def params_added(self) -> int:
        return sum(s.params for s in self.sites)

    @property
    def flops_added(self) -> int:
        return self.flops_after - self.flops_before

    def load_warning(self) -> str:
        """The loud part: which keys an original checkpoint will not have."""
        return (
            f"visattn.inject added {len(self.sites)} {self.block} blocks (+{_human(self.params_added)} params). "
            f"A state_dict saved before injection now lacks {len(self.new_keys)} keys (all under {self._where()}): "
            f"load it with visattn.load_weights(model, ...), which allows exactly these keys to be missing, or with "
            f"load_state_dict(strict=False) and check the result. Original keys are unchanged."
        )

    def _where(self) -> str:
        if all(s.path.endswith(".se") for s in self.sites):
            return "'*.se.*'"
        return ", ".join(f"'{s.path}.*'" for s in self.sites)

    def __str__(self) -> str:
        size = "x".join(map(str, self.input_size))
        pct_p = 100 * self.params_added / max(1, self.params_before)
        pct_f = 100 * self.flops_added / max(1, self.flops_before)
        width = max([len("module")] + [len(s.path) for s in self.sites])
        lines = [
            f"inject {self.block!r} (init={self.init!r}): {len(self.sites)} blocks",
            f"  {'module':<{width}}  {'channels':>8}  {'params':>9}",
        ]
        lines += [f"  {s.path:<{width}}  {s.channels:>8}  {s.params:>9,}" for s in self.sites]
        lines += [
            f"  params: {_human(self.params_before)} -> {_human(self.params_before + self.params_added)}"
            f" (+{pct_p:.2f}%)",
            f"  FLOPs at {size}: {_human(self.flops_before)} -> {_human(self.flops_after)} (+{pct_f:.2f}%)",
            f"  max |output change| at step 0: {self.max_abs_diff:.3g}",
            f"  new state_dict keys: {len(self.new_keys)} (missing from any checkpoint of the original model)",
        ]
        return "\n".join(lines)
