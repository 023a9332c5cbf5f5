"""Writing trained reward models out and reading them back (checkpoint I/O, apart from models/).

* :mod:`~rewardjax.export.hf_export`: an HF ``<Family>ForSequenceClassification`` checkpoint
  (``export_hf``), for the scalar models that have an exact HF form;
* :mod:`~rewardjax.export.native`: rewardjax's own format (``save_native``, ``save_run``,
  ``save_armorm``) for everything else: multi-objective, ensembles, mixtures, any pooling;
* :mod:`~rewardjax.export.native_load`: ``load_native``, which rebuilds and scores a native
  export.

This package stands on models, heads, lora, ensembles and data (tokenize, batching); it never
imports train, eval, rl, judge or main. The ``export`` mode, which restores a workdir and picks a
format, is :mod:`rewardjax.modes.export`.
"""

from rewardjax.export.hf_export import (
    SEQ_CLS_ARCHITECTURES,
    NotExportable,
    export_hf,
    merged_model,
    read_rewardjax_block,
    reward_statistics,
)
from rewardjax.export.native import (
    FORMAT,
    KINDS,
    MANIFEST,
    TENSORS,
    VERSION,
    encoding_of,
    merged_experts,
    save_armorm,
    save_native,
    save_run,
    set_normalisation,
)
from rewardjax.export.native_load import NativeModel, load_native

__all__ = [
    "FORMAT",
    "KINDS",
    "MANIFEST",
    "SEQ_CLS_ARCHITECTURES",
    "TENSORS",
    "VERSION",
    "NativeModel",
    "NotExportable",
    "encoding_of",
    "export_hf",
    "load_native",
    "merged_experts",
    "merged_model",
    "read_rewardjax_block",
    "reward_statistics",
    "save_armorm",
    "save_native",
    "save_run",
    "set_normalisation",
]
