"""From images to :class:`OverlayItem`: the eval preprocessing, every CAM method and the blocks' own maps, batched.

This is where the model meets the export layer; ``visattn overlay`` and the quickstart both go through it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import nullcontext
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cam import DEFAULT_OVERLAY_METHODS, BlockMapReader, create_cam, explain_many
from ..cam.base import BaseCAM
from ..cam.layers import LayerSpec, resolve_layers
from ..data.transforms import eval_geometry, normalize_to_tensor
from ..export.images import expand_image_sources, load_image
from ..export.writer import OverlayItem, listed_overlay_files, resumable_entries, write_overlays
from ..utils import eval_mode, model_device_dtype
from .trained import TrainedModel

__all__ = ["explain_images", "overlay_files", "read_sources"]


def read_sources(sources: Sequence[str | Path], errors: list[dict[str, str]], *, skip_under: str | Path | None = None,
                 skip: Collection[str] = ()) -> Iterator[tuple[str, np.ndarray]]:
    """``(path, RGB uint8 image)`` for files, folders and globs, read lazily; unreadable files go to ``errors``.

    Files an earlier run wrote into ``skip_under`` (the output folder: the ones its ``manifest.json`` lists) are left
    out, so that explaining a folder twice does not explain the first run's overlays; a file named explicitly is kept.

    ``skip`` names sources (as they are reported) to leave out: those an interrupted run already explained.

    Raises:
        FileNotFoundError: now, not when iterated, if a source matches no file, or only earlier overlays.
    """
    paths = expand_image_sources(sources)
    if skip_under is not None:
        out = Path(skip_under)
        ours = listed_overlay_files(out)
        named = {Path(s).resolve() for s in sources if Path(s).is_file()}
        kept = [p for p in paths if p.resolve() in named or p.resolve() not in ours]
        if paths and not kept:
            raise FileNotFoundError(f"the sources {[str(s) for s in sources]} hold only the overlays an earlier run "
                                    f"wrote into {str(out)!r}; name the original images")
        paths = kept

    def read() -> Iterator[tuple[str, np.ndarray]]:
        for path in paths:
            if str(path) in skip:
                continue
            try:
                yield str(path), load_image(path)
            except (OSError, ValueError) as err:
                errors.append({"source": str(path), "error": str(err)})
    return read()


def explain_images(
        trained: TrainedModel,
        images: Iterable[tuple[str, np.ndarray]],
        *,
        methods: Sequence[str] = DEFAULT_OVERLAY_METHODS,
        target_layers: LayerSpec = None,
        block_patterns: str | Sequence[str] | None = "*",
        queries: Sequence[tuple[float, float]] = ((0.5, 0.5),),
        heads: bool = False,
        batch_size: int = 16,
        errors: list[dict[str, str]] | None = None,
) -> Iterator[OverlayItem]:
    """Explain ``(name, RGB uint8 image)`` pairs with every method, preprocessed as the model was evaluated.

    Args:
        trained: from :func:`visattn.pipelines.trained.load_trained`.
        images: ``(source name, (H, W, 3) uint8)`` pairs of any size; the training config's eval resize/crop runs
            first, and overlays are drawn on its output.
        methods: CAM names (see :func:`visattn.cam.list_cams`); each explains the predicted class.
        target_layers: as for :func:`visattn.cam.create_cam`; None for the last spatial stage.
        block_patterns: module-name patterns for the attention blocks' own maps; None for none.
        queries: ``(y, x)`` query pixels, as fractions of the image, for pixel self-attention maps.
        heads: also show each head's map of multi-head self-attention blocks.
        batch_size: images per forward pass.
        errors: images the eval transform rejects are recorded here (``{'source', 'error'}``) and skipped; without
            a list they raise.

    Yields:
        One :class:`OverlayItem` per image, in order.

    Raises:
        ValueError: a bad ``batch_size``, or neither methods nor block patterns.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not methods and not block_patterns:
        raise ValueError("nothing to show: give at least one CAM method or a block pattern")
    geometry, normalize = eval_geometry(trained.config.data), normalize_to_tensor(trained.config.data)
    device, _ = model_device_dtype(trained.model)
    cams = {name: create_cam(name, trained.model, target_layers) for name in methods}
    # The block maps ride on the CAMs' forward pass (the CAMs share one between them): one pass per batch in all.
    reader = BlockMapReader(trained.model, block_patterns, queries, heads=heads) if block_patterns else None
    iterator = iter(images)
    while batch := list(islice(iterator, batch_size)):
        shown: list[tuple[str, np.ndarray]] = []
        for name, image in batch:
            try:
                shown.append((name, geometry(image=image)["image"]))
            except Exception as err:  # albumentations raises its own types for images a transform cannot take
                if errors is None:
                    raise
                errors.append({"source": name, "error": f"eval transform failed: {type(err).__name__}: {err}"})
        # An eval transform that keeps the aspect ratio gives several sizes: one forward pass per size.
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (_, im) in enumerate(shown):
            groups.setdefault(im.shape, []).append(i)
        items: dict[int, OverlayItem] = {}
        for indices in groups.values():
            x = torch.stack([normalize(image=shown[i][1])["image"] for i in indices]).to(device)
            names, pictures = [shown[i][0] for i in indices], [shown[i][1] for i in indices]
            for i, item in zip(indices, _explain_batch(trained, cams, reader, names, pictures, x), strict=True):
                items[i] = item
        yield from (items[i] for i in sorted(items))


def _explain_batch(trained: TrainedModel, cams: dict[str, BaseCAM], reader: BlockMapReader | None,
                   names: list[str], shown: list[np.ndarray], x: torch.Tensor) -> Iterator[OverlayItem]:
    with reader or nullcontext():  # hooks only while this batch runs, not while the caller holds the generator
        results = explain_many(cams, x)
        if results:
            logits = next(iter(results.values())).logits
        else:  # block maps only: a plain eval-mode pass
            with eval_mode(trained.model), torch.no_grad():
                logits = trained.model(x.to(dtype=model_device_dtype(trained.model)[1]))
        attention = reader.read(x.shape[-2:], logits) if reader is not None else None
    probs = logits.float().softmax(1)
    top_p, top_c = probs.max(1)
    spatial = attention.spatial_maps() if attention is not None else {}
    for i, name in enumerate(names):
        extra: dict[str, Any] = {"class_index": int(top_c[i]),
                                 "top5": _top5(probs[i], trained.classes)}
        if attention is not None and attention.channel:
            # Channel gates have no place in a picture; keep each block's most excited channels for the manifest.
            extra["channel_gates_top5"] = {block: [int(c) for c in w[i].topk(min(5, w.shape[1])).indices]
                                           for block, w in attention.channel.items()}
        yield OverlayItem(
            source=name, image=shown[i],
            cams={m: r.maps[i].float().cpu().numpy() for m, r in results.items()},
            block_maps={b: m[i].float().cpu().numpy() for b, m in spatial.items()},
            label=trained.classes[int(top_c[i])], probability=float(top_p[i]), extra=extra)


def _top5(probs: torch.Tensor, classes: Sequence[str]) -> list[dict[str, Any]]:
    p, c = probs.topk(min(5, probs.numel()))
    return [{"class": classes[int(j)], "probability": round(float(q), 6)} for q, j in zip(p, c, strict=True)]


def overlay_files(
        trained: TrainedModel,
        out_dir: str | Path,
        *,
        sources: Sequence[str | Path] = (),
        images: Iterable[tuple[str, np.ndarray]] = (),
        methods: Sequence[str] = DEFAULT_OVERLAY_METHODS,
        target_layers: LayerSpec = None,
        block_patterns: str | Sequence[str] | None = "*",
        queries: Sequence[tuple[float, float]] = ((0.5, 0.5),),
        heads: bool = False,
        alpha: float = 0.5,
        cmap: str = "jet",
        batch_size: int = 16,
        progress: bool = False,
        run_info: dict[str, Any] | None = None,
        image_format: str = "png",
        page_size: int = 100,
) -> Path:
    """Explain images and write overlays, grids, ``manifest.json`` and the gallery (``index.html``) into ``out_dir``.

    A run into a folder where an earlier run with the same settings stopped midway (its manifest says
    ``"complete": false``) resumes it: the images that run finished are kept and not explained again.

    Args:
        trained: the model, its config and class names.
        out_dir: output folder (created).
        sources: image files, folders or glob patterns, read lazily.
        images: already-loaded ``(name, RGB uint8)`` pairs, explained after ``sources``.
        methods, target_layers, block_patterns, queries, heads, batch_size: as :func:`explain_images`.
        alpha: overlay opacity in ``[0, 1]``.
        cmap: matplotlib colormap name.
        progress: show a progress bar.
        run_info: extra entries for the manifest's run section.
        image_format: ``'png'``, ``'jpeg'`` or ``'webp'`` for the full-size images.
        page_size: images per gallery page.

    Returns:
        The path of ``manifest.json``. Unreadable files are listed there and in the gallery, not raised.

    Example:
        >>> trained = load_trained("weights/quickstart_resnet18_cbam_shapes.safetensors")
        >>> overlay_files(trained, "overlays", sources=["photos/"])  # doctest: +SKIP
    """
    import timm

    from ..version import __version__

    errors: list[dict[str, str]] = []
    try:
        layers: Any = [name for name, _ in resolve_layers(trained.model, target_layers)]
    except ValueError:  # a model without timm's feature_info: found by probing at the first batch
        layers = "auto"
    info = {"model": trained.config.model.name, "weights": str(trained.weights), "methods": list(methods),
            "target_layers": layers, "block_patterns": block_patterns,
            "image_size": trained.config.data.image_size, "versions": {
                "visattn": __version__, "torch": torch.__version__, "timm": timm.__version__}, **(run_info or {})}
    resumed = resumable_entries(out_dir, run_info=info, alpha=alpha, cmap=cmap, image_format=image_format)
    done = {entry["source"] for entry in resumed}
    everything = chain(read_sources(sources, errors, skip_under=out_dir, skip=done) if sources else (),
                       ((name, image) for name, image in images if name not in done))
    items = explain_images(trained, everything, methods=methods, target_layers=target_layers,
                           block_patterns=block_patterns, queries=queries, heads=heads, batch_size=batch_size,
                           errors=errors)
    return write_overlays(out_dir, items, alpha=alpha, cmap=cmap, run_info=info, errors=errors, progress=progress,
                          image_format=image_format, page_size=page_size, resumed=resumed)
