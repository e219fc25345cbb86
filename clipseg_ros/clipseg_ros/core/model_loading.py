"""
Loading a CLIPSeg model folder or hub id safely: safetensors only, never remote code, the
preprocessing constants from whichever processor file the model has, and a transformers release
this package is tested with. No ROS.
"""

from dataclasses import dataclass
import json
from pathlib import Path
import re
from collections.abc import Mapping
from typing import Any

import torch

DEFAULT_MODEL = 'CIDAS/clipseg-rd64-refined'
# Where a model folder keeps its image preprocessing constants: the file of transformers 4 and
# the hub checkpoints, then the processor file of transformers 5 (image processor nested inside).
PREPROCESSOR_FILE = 'preprocessor_config.json'
PROCESSOR_FILE = 'processor_config.json'
# The oldest transformers whose CLIPSeg this engine is tested with (CI runs the engine tests on
# it as well as on the pinned release).
MIN_TRANSFORMERS_VERSION = '5.0.0'
# Weight files that can only be read by unpickling, which can execute arbitrary code.
PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.ckpt', '.pkl', '.pickle')


class ModelLoadError(RuntimeError):
    """The model, its tokenizer or its preprocessor config could not be loaded."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Image preprocessing constants of a CLIPSeg checkpoint (from its processor config)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> 'PreprocessConfig':
        """
        Read the constants from a ``preprocessor_config.json`` dictionary.

        Missing entries take the defaults of transformers' ``ViTImageProcessor``, which is the
        processor class CLIPSeg checkpoints name.
        """
        size = config.get('size', 224)
        if isinstance(size, Mapping):
            size = size.get('height', size.get('shortest_edge'))
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f'preprocessor config has an unusable size: {config.get("size")!r}')
        if config.get('do_rescale', True):
            rescale = float(config.get('rescale_factor', 1.0 / 255.0))
        else:
            rescale = 1.0
        if config.get('do_normalize', True):
            mean = tuple(float(v) for v in config.get('image_mean', (0.5, 0.5, 0.5)))
            std = tuple(float(v) for v in config.get('image_std', (0.5, 0.5, 0.5)))
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0.0:
            raise ValueError(
                f'preprocessor config needs 3 means and 3 positive stds, got {mean} and {std}')
        return cls(size=size, mean=mean, std=std, rescale_factor=rescale)

    @classmethod
    def from_file(cls, path: str | Path) -> 'PreprocessConfig':
        """Read the constants from a ``preprocessor_config.json`` file."""
        with open(path, encoding='utf-8') as stream:
            return cls.from_dict(json.load(stream))


def _how_to_get(model: str) -> str:
    hub_id = model if _looks_like_hub_id(model) else DEFAULT_MODEL
    return (
        'To run offline, download the model on a connected machine with '
        f"'huggingface-cli download {hub_id} --local-dir DIR', copy DIR here and pass the "
        'folder path as the model.')


def describe_error(exc: BaseException) -> str:
    """Describe an exception in one phrase (no trailing period) for an error message."""
    return f'{type(exc).__name__}: {str(exc).strip().rstrip(".")}'


def _looks_like_hub_id(model: str) -> bool:
    return re.fullmatch(r'[A-Za-z0-9][\w.-]*(/[\w.-]+)?', model) is not None


def _check_local_folder(folder: Path) -> None:
    """Refuse folders that are not safetensors model folders, without unpickling anything."""
    fix = _how_to_get(DEFAULT_MODEL)
    if not (folder / 'config.json').is_file():
        raise ModelLoadError(
            f"model folder '{folder}' has no config.json, so it is not a save_pretrained model "
            f'folder. {fix}')
    weights = sorted(folder.glob('*.safetensors'))
    if not weights:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ModelLoadError(
                f"model folder '{folder}' holds only pickle weights ({', '.join(pickles)}); "
                'they are refused because unpickling can run arbitrary code. Convert them on a '
                'trusted machine with model.save_pretrained(DIR, safe_serialization=True), or '
                f'download the safetensors weights instead. {fix}')
        raise ModelLoadError(
            f"model folder '{folder}' has no *.safetensors weights. {fix}")
    from safetensors import safe_open
    for path in weights:
        try:
            # Reads and checks only the header and the file size, not the tensors.
            with safe_open(str(path), framework='pt') as handle:
                handle.keys()
        except Exception as exc:  # noqa: B902 - any parse failure means the same thing here
            raise ModelLoadError(
                f"weights file '{path}' is corrupt or not a safetensors file "
                f'({describe_error(exc)}); download it again. {fix}') from exc


PACKAGE_URL_PREFIX = 'package://'


def resolve_package_url(model: str) -> str:
    """
    Turn ``package://<package>/<path>`` into that path in the package's installed share
    folder (the ROS convention for files a package installs); any other string is returned.
    """
    if not model.startswith(PACKAGE_URL_PREFIX):
        return model
    package, _, relative = model[len(PACKAGE_URL_PREFIX):].partition('/')
    if not package or not relative:
        raise ModelLoadError(f"model '{model}' must name a package and a path in it: "
                             f'{PACKAGE_URL_PREFIX}<package>/<path>')
    try:
        from ament_index_python.packages import get_package_share_directory
        share = get_package_share_directory(package)
    except (ImportError, LookupError) as exc:
        raise ModelLoadError(f"model '{model}': package '{package}' is not installed here "
                             f'({describe_error(exc)})') from exc
    return str(Path(share) / relative)


def load_pretrained(model: str, dtype: torch.dtype) -> tuple[Any, Any, PreprocessConfig]:
    """Load model, tokenizer and preprocessing constants from a hub id or a local folder."""
    if not isinstance(model, str) or not model.strip():
        raise ValueError('model must be a non-empty hub id or folder path')
    path = Path(resolve_package_url(model)).expanduser()
    if path.is_dir():
        _check_local_folder(path)
        source, local_only, what = str(path), True, f"model folder '{model}'"
    elif path.exists():
        raise ModelLoadError(
            f"model '{model}' is a file; pass the folder that holds config.json and the "
            'safetensors weights, or a hub id')
    elif not _looks_like_hub_id(model):
        raise ModelLoadError(f"model folder '{model}' does not exist. {_how_to_get(model)}")
    else:
        source, local_only, what = model, False, f"model '{model}'"

    # Imported here so that importing this module stays fast for code that never loads a model.
    from transformers import AutoTokenizer, CLIPSegForImageSegmentation

    try:
        network = CLIPSegForImageSegmentation.from_pretrained(
            source, use_safetensors=True, local_files_only=local_only, dtype=dtype)
    except Exception as exc:  # noqa: B902 - reported as one clear error with its cause
        where = ('' if local_only else
                 ' It is not a local folder either, and it is neither in the Hugging Face '
                 'cache nor downloadable from here.')
        raise ModelLoadError(
            f'could not load the weights of {what}: {describe_error(exc)}.{where} '
            f'{_how_to_get(model)}') from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except Exception as exc:  # noqa: B902
        raise ModelLoadError(
            f'could not load the tokenizer of {what}: {describe_error(exc)}. '
            f'{_how_to_get(model)}') from exc
    preprocess = _read_preprocess_config(source, local_only, what, model)
    return network, tokenizer, preprocess


def _processor_file(source: str, name: str, local_only: bool) -> str | None:
    """Path of ``name`` in a model folder or the hub cache, None when the model has none."""
    from transformers.utils import cached_file
    return cached_file(source, name, local_files_only=local_only,
                       _raise_exceptions_for_missing_entries=False)


def preprocess_dict_from_processor_file(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """
    Return the image processor part of a processor file's dictionary.

    ``preprocessor_config.json`` is the image processor itself; ``processor_config.json``
    (transformers 5) nests it under ``image_processor``.
    """
    nested = config.get('image_processor')
    if isinstance(nested, Mapping):
        return nested
    return config


def _read_preprocess_config(source: str, local_only: bool, what: str,
                            model: str) -> PreprocessConfig:
    """Read the preprocessing constants from whichever processor file the model has."""
    tried = []
    for name in (PREPROCESSOR_FILE, PROCESSOR_FILE):
        tried.append(name)
        try:
            path = _processor_file(source, name, local_only)
            if path is None:
                continue
            with open(path, encoding='utf-8') as stream:
                config = json.load(stream)
            if not isinstance(config, Mapping):
                raise ValueError('it does not hold a JSON object')
            return PreprocessConfig.from_dict(preprocess_dict_from_processor_file(config))
        except Exception as exc:  # noqa: B902 - reported as one clear error with its cause
            raise ModelLoadError(
                f'could not read {name} of {what}: {describe_error(exc)}. '
                f'{_how_to_get(model)}') from exc
    raise ModelLoadError(
        f'{what} has no image processor config: neither {" nor ".join(tried)} was found '
        '(CLIPSegProcessor.save_pretrained writes one). '
        f'{_how_to_get(model)}')


def check_transformers_version(installed: str | None = None) -> str:
    """
    Return the installed transformers version; raise ModelLoadError when it is too old.

    ``installed`` overrides the detected version (for tests).
    """
    from packaging.version import InvalidVersion, Version
    if installed is None:
        import transformers
        installed = transformers.__version__
    try:
        too_old = Version(installed) < Version(MIN_TRANSFORMERS_VERSION)
    except InvalidVersion:
        too_old = False  # a development build: let loading say whether it works
    if too_old:
        raise ModelLoadError(
            f'transformers {installed} is installed, but clipseg_ros needs transformers >= '
            f"{MIN_TRANSFORMERS_VERSION}: run 'pip install \"transformers>="
            f"{MIN_TRANSFORMERS_VERSION}\"'")
    return installed


# Elements of one (prompts x rows x width) slab when probability maps are brought to the
