"""What `dlkit tune` searches: the variant and how Triton serves it.

A `TrialConfig` is one point: a variant and its `ServingOptions`. A `SearchSpace` lists, axis by
axis in the order the search visits them, the values each setting may take; an axis that has
no effect on a config (the queue delay with batching off, any batching setting for a model
that cannot batch) is not searched from it, and configs that Triton would serve alike are
written alike (`normalise`), so none is measured twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from toolkit.choices import Device, InstanceKind
from toolkit.triton.configs import ServingOptions
from toolkit.triton.release import DEFAULT_QUEUE_DELAY_US


@dataclass(frozen=True)
class TrialConfig:
    """One point of the search: a variant (its name) served with `serving`."""

    variant: str
    serving: ServingOptions

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "config": self.serving.to_dict()}

    def describe(self, reference: TrialConfig | None = None) -> str:
        """A short line: the variant, and what differs from `reference` (the default config)
        or, without one, from the package defaults."""
        base = (reference.serving if reference else ServingOptions()).to_dict()
        changed = [
            f"{k}={'/'.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in self.serving.to_dict().items()
            if v != base[k] and v is not None
        ]
        return f"{self.variant}: " + (", ".join(changed) or "default")


@dataclass(frozen=True)
class Axis:
    """One setting: its name, the values searched, and whether it matters for a config."""

    name: str
    values: tuple[Any, ...]
    applies: Callable[[TrialConfig], bool]

    def get(self, config: TrialConfig) -> Any:
        return config.variant if self.name == "variant" else getattr(config.serving, self.name)

    def set(self, config: TrialConfig, value: Any) -> TrialConfig:
        if self.name == "variant":
            return dataclasses.replace(config, variant=value)
        return dataclasses.replace(
            config, serving=dataclasses.replace(config.serving, **{self.name: value})
        )


def _kind_free(config: TrialConfig) -> bool:
    """An execution accelerator fixes the instance kind (TensorRT's runs on KIND_GPU only)."""
    return not config.serving.accelerator


def _batching(config: TrialConfig) -> bool:
    return config.serving.max_batch_size != 0 and config.serving.dynamic_batching


@dataclass(frozen=True)
class SearchSpace:
    """The values searched per axis. `batches` is False for a model exported with a fixed
    batch (Triton cannot batch it, so no batching axis applies)."""

    variants: tuple[str, ...]
    dynamic_batching: tuple[bool, ...] = (True, False)
    max_queue_delay_us: tuple[int, ...] = (0, 100, 500, 2000)
    threads: tuple[int, ...] = (0, 1, 2)
    instances: tuple[int, ...] = (1, 2, 4)
    max_batch_size: tuple[int, ...] = (8, 16, 32, 64)
    preferred_batch_sizes: tuple[tuple[int, ...], ...] = ((), (4,), (8,), (16,))
    inter_op_threads: tuple[int, ...] = (1, 2)
    kind: tuple[InstanceKind, ...] = (InstanceKind.AUTO,)
    batches: bool = True

    def axes(self) -> list[Axis]:
        """Visiting order: the variant, then dynamic batching and its queue delay (which moved
        served images/s from 0.22x to 1.43x in `benchmarks/results/serving.md`), then runtime
        threads and instances (an order chosen, not measured), then the finer batching
        settings, then the rest."""

        def always(config: TrialConfig) -> bool:
            return True

        def batchable(config: TrialConfig) -> bool:
            return self.batches

        return [
            Axis("variant", self.variants, always),
            Axis("dynamic_batching", self.dynamic_batching, batchable),
            Axis("max_queue_delay_us", self.max_queue_delay_us, _batching),
            Axis("threads", self.threads, always),
            Axis("instances", self.instances, always),
            Axis("max_batch_size", self.max_batch_size, _batching),
            Axis("preferred_batch_sizes", self.preferred_batch_sizes, _batching),
            Axis("inter_op_threads", self.inter_op_threads, always),
            Axis("kind", self.kind, _kind_free),
        ]

    def normalise(self, config: TrialConfig) -> TrialConfig:
        """The same config as Triton would serve it: without dynamic batching the queue delay
        and preferred sizes mean nothing, and preferred sizes above the largest batch are
        dropped (as `apply_serving` drops them)."""
        serving = config.serving
        if not _batching(config):
            serving = dataclasses.replace(
                serving, max_queue_delay_us=DEFAULT_QUEUE_DELAY_US, preferred_batch_sizes=()
            )
        elif serving.max_batch_size is not None:
            sizes = tuple(b for b in serving.preferred_batch_sizes if b <= serving.max_batch_size)
            serving = dataclasses.replace(serving, preferred_batch_sizes=sizes)
        return dataclasses.replace(config, serving=serving)

    def neighbours(self, config: TrialConfig, axis: Axis) -> list[TrialConfig]:
        """The configs one step along `axis` from `config` (none where it does not apply)."""
        if not axis.applies(config):
            return []
        current = axis.get(config)
        found: list[TrialConfig] = []
        for value in axis.values:
            if value != current:
                candidate = self.normalise(axis.set(config, value))
                if candidate != config and candidate not in found:
                    found.append(candidate)
        return found

    def describe(self) -> dict[str, list[Any]]:
        """Every axis and its values, for reports and --help."""
        return {
            axis.name: [list(v) if isinstance(v, tuple) else v for v in axis.values]
            for axis in self.axes()
        }


def cpu_space(variants: tuple[str, ...], cores: int, device: str = "cpu") -> SearchSpace:
    """The default space for `cores` usable cores: runtime threads up to the cores (0 lets the
    runtime decide), instances up to twice the cores, and on CUDA the instance kind too."""
    threads = tuple(sorted(t for t in {0, 1, 2, cores // 2, cores} if t <= cores))
    instances = tuple(sorted({1, 2, 4, cores} & set(range(1, max(2, 2 * cores) + 1))))
    kinds = (InstanceKind.GPU, InstanceKind.CPU) if device == Device.CUDA else (InstanceKind.AUTO,)
    return SearchSpace(variants=variants, threads=threads, instances=instances, kind=kinds)
