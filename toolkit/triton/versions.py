"""Model versions: which ones Triton serves, and what each one is.

One `config.pbtxt` serves every version of a model, so what differs between versions (the
checkpoint each came from and its hash, precision, quantization) is kept per version in the
config parameter `dlkit_versions` (a JSON object: version number -> the artifact's metadata),
while `dlkit` holds the newest version's. The config's `version_policy` decides which
versions Triton loads; `policy_versions` applies it as Triton does.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from toolkit.artifacts import read_info
from toolkit.artifacts.metadata import ArtifactInfo, parse_info
from toolkit.errors import DlkitError
from toolkit.triton.configs import CONFIG_FILE, INFO_PARAMETER, model_file_names, read_config

VERSIONS_PARAMETER = "dlkit_versions"
_DIGITS = re.compile(r"[0-9]+")


def existing_versions(model_dir: Path) -> list[int]:
    """The numbers of a model folder's version folders (Triton reads ASCII digits only)."""
    if not model_dir.is_dir():
        return []
    folders = [p.name for p in model_dir.iterdir() if p.is_dir()]
    return sorted(int(name) for name in folders if _DIGITS.fullmatch(name))


def policy_versions(config: mc.ModelConfig, versions: list[int]) -> list[int]:
    """Which of a model's `versions` (sorted) Triton loads under its config's version_policy:
    the newest (`latest`, 1 unless `num_versions` says more; the default), `all`, or those
    listed (`specific`)."""
    policy = config.version_policy
    chosen = policy.WhichOneof("policy_choice")
    if chosen == "all":
        return list(versions)
    if chosen == "specific":
        return [v for v in versions if v in set(policy.specific.versions)]
    return versions[-(policy.latest.num_versions or 1) :]


def describe_policy(config: mc.ModelConfig) -> str:
    """The version_policy in words, as config.pbtxt spells it."""
    policy = config.version_policy
    chosen = policy.WhichOneof("policy_choice")
    if chosen == "specific":
        return f"specific {{ versions: {list(policy.specific.versions)} }}"
    if chosen == "all":
        return "all"
    return f"latest {{ num_versions: {policy.latest.num_versions or 1} }}"


def record_version(config: mc.ModelConfig, info: ArtifactInfo, version: int) -> mc.ModelConfig:
    """A copy of `config` whose metadata says what version `version` is: `dlkit` becomes its
    metadata (the newest version's), and `dlkit_versions` gains it beside the others'."""
    recorded = mc.ModelConfig()
    recorded.CopyFrom(config)
    per_version = versions_metadata(config)
    per_version[str(version)] = info.to_dict()
    recorded.parameters[INFO_PARAMETER].string_value = info.to_json()
    recorded.parameters[VERSIONS_PARAMETER].string_value = json.dumps(per_version)
    return recorded


def versions_metadata(config: mc.ModelConfig) -> dict[str, dict]:
    """The per-version metadata of a config (empty for one written before it was kept)."""
    param = config.parameters.get(VERSIONS_PARAMETER)
    if not param:
        return {}
    try:
        recorded = json.loads(param.string_value)
    except ValueError:
        raise DlkitError(f"config of {config.name}: {VERSIONS_PARAMETER} is not JSON") from None
    if not isinstance(recorded, dict):
        raise DlkitError(f"config of {config.name}: {VERSIONS_PARAMETER} is not a JSON object")
    return recorded


def version_info(config: mc.ModelConfig, version: str) -> ArtifactInfo | None:
    """The metadata of version `version` of the model, where the config records it."""
    recorded = versions_metadata(config).get(version)
    return parse_info(recorded, f"model {config.name} version {version}") if recorded else None


def served_versions(model_dir: Path) -> list[int]:
    """The versions of the model in `model_dir` that Triton would load now."""
    return policy_versions(read_config(model_dir / CONFIG_FILE), existing_versions(model_dir))


def recorded_config(
    model_dir: Path, config: mc.ModelConfig, info: ArtifactInfo, version: int, keep: bool
) -> mc.ModelConfig:
    """The config to write with a new `version` described by `info`: the model's own config
    when it has one and `keep` (nothing changes in how it serves), else `config` with the
    model's version_policy; either way recording the new version beside the earlier ones
    (an earlier one the config does not record, written by an older dlkit, is read from its
    own model file)."""
    if not (model_dir / CONFIG_FILE).is_file():
        return record_version(config, info, version)
    old = read_config(model_dir / CONFIG_FILE)
    if keep:
        config = old
    else:
        replacing, config = config, mc.ModelConfig()
        config.CopyFrom(replacing)
        if VERSIONS_PARAMETER in old.parameters:
            config.parameters[VERSIONS_PARAMETER].CopyFrom(old.parameters[VERSIONS_PARAMETER])
        if old.HasField("version_policy"):
            config.version_policy.CopyFrom(old.version_policy)
    known = versions_metadata(config)
    for earlier in existing_versions(model_dir):
        folder = model_dir / str(earlier)
        found = [f for f in model_file_names() if (folder / f).is_file()]
        if str(earlier) not in known and found and earlier != version:
            with contextlib.suppress(DlkitError):  # not a file dlkit wrote: nothing to record
                info_earlier = read_info(folder / found[0])
                config = record_version(config, info_earlier, earlier)
    return record_version(config, info, version)


def served_text(versions: dict[str, list[int]]) -> str:
    """`faces (versions 1, 2), textures (version 1)`: models and the versions served."""

    def one(name: str, numbers: list[int]) -> str:
        if not numbers:
            return name
        plural = "s" if len(numbers) > 1 else ""
        return f"{name} (version{plural} {', '.join(map(str, numbers))})"

    return ", ".join(one(name, numbers) for name, numbers in versions.items())
