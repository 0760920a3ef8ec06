"""Architecture adapters, and loading a Hugging Face model through them.

Importing this package registers every adapter. ``load_model`` reads ``config.architectures[0]``,
picks the adapter (refusing unknown architectures with the list of supported ones), loads the
model and tokenizer with ``from_pretrained`` from a local directory or a hub id, switches the model
to the ``tdb`` attention function and freezes its parameters.

Supported families (one file each): ``gpt2`` (GPT2LMHeadModel), ``neox`` (GPTNeoXForCausalLM),
``llama`` (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM), ``gemma2``
(Gemma2ForCausalLM), ``phi`` (PhiForCausalLM). Adding one: write ``adapters/NAME.py`` with a
:class:`~adapters.base.DecoderAdapter` subclass (its ``architectures``, ``norm_kind``, a
:class:`~adapters.base.Layout` of HF module paths, and only the quirks the generic wiring lacks),
import it below, and add a case and a hand-written reference to ``tests/unit/adapters``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from adapters import gemma2, gpt2, llama, neox, phi  # noqa: F401  (registers)
from tdb_core.adapter import adapter_for, supported_architectures
from tdb_core.errors import InvalidArgumentError, NotFoundError
from tdb_core.hooks import ATTENTION_NAME, register_attention_function
from tdb_core.runner import LoadedModel

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["load_model", "resolve_device", "supported_architectures", "wrap_model"]


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cpu``, ``cuda`` and ``cuda:N`` are taken as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InvalidArgumentError(
            f"unknown device '{device}'; use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device '{device}' requested but CUDA is not available")
    return dev


def wrap_model(
    name: str,
    model: PreTrainedModel,
    tokenizer: Any,
    source: str = "<memory>",
    device: torch.device | None = None,
) -> LoadedModel:
    """Wrap an already-built HF model (e.g. a random-init one in tests) with its adapter."""
    arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
    cls = adapter_for(arch)
    register_attention_function()
    model.set_attn_implementation(ATTENTION_NAME)
    model.eval()  # type: ignore[no-untyped-call]  # transformers leaves PreTrainedModel.eval unannotated
    model.requires_grad_(False)
    if device is not None:
        model.to(device)  # type: ignore[arg-type]  # transformers' @wraps on .to hides self
    param = next(model.parameters())
    return LoadedModel(
        name=name,
        source=source,
        adapter=cls(model),
        tokenizer=tokenizer,
        device=param.device,
        dtype=param.dtype,
    )


def load_model(
    name: str, source: str, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedModel:
    """Load ``source`` (a local directory or a hub id) as model ``name``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        where = (
            "local directory" if os.path.isdir(source) else "local directory or reachable hub id"
        )
        raise NotFoundError(
            f"cannot load model '{name}' from '{source}': not a {where} with a "
            f"config.json ({e.__class__.__name__}: {str(e).splitlines()[0]})"
        ) from None
    arch = (config.architectures or [None])[0]
    adapter_for(arch)  # refuse unsupported architectures before loading any weights
    dev = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(source)
    model.to(dev)  # type: ignore[arg-type]  # transformers' @wraps on .to hides self (moves in place)
    return wrap_model(name, model, tokenizer, source=source)
