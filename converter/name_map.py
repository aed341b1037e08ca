"""Map a checkpoint's tensors one-to-one onto the Keras layers, or fail with the full diff."""

from __future__ import annotations

import dataclasses

from converter import architecture
from converter.architecture import LayerSpec, WeightSpec
from converter.checkpoint import EMA_SUFFIX, detect_depth, num_classes, source_name, split_names
from converter.checkpoint.variables import check_tf1_layout
from converter.errors import CheckpointError, MappingError

# How many names each list in an error message shows before "... and N more".
MAX_LISTED = 20


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """One Keras weight and the checkpoint tensor that fills it."""

    layer: LayerSpec
    weight: WeightSpec
    tensor: str


@dataclasses.dataclass(frozen=True)
class NameMap:
    depth: int
    num_classes: int
    weights: str
    include_top: bool
    layers: tuple[LayerSpec, ...]       # weighted Keras layers in Keras order
    sources: tuple[WeightSource, ...]   # one per Keras weight, in file order
    stored_dtypes: tuple[str, ...]      # dtypes of the tensors read, sorted

    @property
    def stored_dtype(self) -> str:
        if len(self.stored_dtypes) == 1:
            return self.stored_dtypes[0]
        return "mixed (" + ", ".join(self.stored_dtypes) + ")"


def _listing(title: str, items: list[str]) -> str:
    shown = items[:MAX_LISTED]
    more = f" ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"{title} ({len(items)}): " + ", ".join(shown) + more


def build_name_map(reader, depth: int | None = None, weights: str = "ema",
                   include_top: bool = True, expected_classes: int | None = None) -> NameMap:
    """Check the checkpoint against the architecture and return the tensor for each weight.

    Momentum slots and global_step are skipped by rule, and so are the shadows or raw values
    that the chosen `weights` does not use. Every other tensor must map: missing, unexpected
    and shape-mismatched names are all listed in one MappingError.
    """
    names = reader.names()
    check_tf1_layout(names, reader.prefix)
    detected = detect_depth(reader)
    if depth is not None and depth != detected:
        raise MappingError(
            f"Depth {depth} (from --depth or --variant) does not match the checkpoint, which is "
            f"a ResNet-RS-{detected} ({architecture.conv_count(detected)} conv kernels; depth "
            f"{depth} has {architecture.conv_count(depth)}). Omit --depth to use the detected "
            "depth, or pick a variant of that depth.")
    classes = num_classes(reader)
    if expected_classes is not None and classes != expected_classes:
        hint = (" The extra class is the background class at index 0 of 1001-class ImageNet "
                "heads." if classes == expected_classes + 1 else "")
        raise MappingError(
            f"The classifier dense/kernel of checkpoint {reader.prefix} has {classes} classes, "
            f"expected {expected_classes}.{hint}")

    specs = architecture.layer_specs(detected, classes, include_top=True)
    contents = split_names(names)
    expected = {w.original_name: w for layer in specs for w in layer.weights}

    problems = []
    missing = sorted(set(expected) - contents.model)
    unexpected = sorted((contents.model - set(expected)) | contents.orphans)
    mismatched = sorted(
        f"{name} {tuple(reader.shape(name))} vs Keras {expected[name].shape}"
        for name in set(expected) & contents.model
        if tuple(reader.shape(name)) != expected[name].shape)
    if missing:
        problems.append(_listing("missing", missing))
    if unexpected:
        problems.append(_listing("unexpected", unexpected))
    if mismatched:
        problems.append(_listing("shape mismatch", mismatched))
    if problems:
        raise MappingError(
            f"Checkpoint {reader.prefix} does not map onto ResNet-RS-{detected}: "
            + "; ".join(problems))

    if weights == "ema":
        if not contents.has_ema:
            raise CheckpointError(
                f"Checkpoint {reader.prefix} has no {EMA_SUFFIX} tensors. Use --weights raw to "
                "convert the raw variables instead.")
        no_shadow = sorted(set(expected) - contents.ema)
        if no_shadow:
            raise CheckpointError(
                f"Checkpoint {reader.prefix} lacks the {EMA_SUFFIX} shadow of "
                + _listing("variables", no_shadow)
                + ". Use --weights raw to convert the raw variables instead.")
        for name in contents.ema:
            shadow_shape = tuple(reader.shape(name + EMA_SUFFIX))
            if shadow_shape != expected[name].shape:
                raise MappingError(
                    f"{name}{EMA_SUFFIX} has shape {shadow_shape}, expected "
                    f"{expected[name].shape}")

    written = architecture.layer_specs(detected, classes, include_top=include_top)
    sources = tuple(WeightSource(layer, w, source_name(w.original_name, weights))
                    for layer in written for w in layer.weights)
    used = {s.tensor for s in sources}
    if len(used) != len(sources):
        raise AssertionError("name map uses a checkpoint tensor twice")
    dtypes = tuple(sorted({reader.dtype(s.tensor) for s in sources}))
    return NameMap(detected, classes, weights, include_top, tuple(written), sources, dtypes)
