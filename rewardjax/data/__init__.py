"""Records and tokenizers: reading preference data in its many formats, splits, the simulator,
tokenization with chat templates and truncation, batching and packing. No networks run here.

Public surface: the names below, imported from their modules on first use (``from rewardjax.data
import load_sets``), so importing one module of the package does not import the rest.
"""

import importlib

_EXPORTS = {
    "Pair": "records",
    "Response": "records",
    "DataError": "records",
    "load_sets": "sources",
    "load_train_pairs": "sources",
    "expand": "sources",
    "data_root": "sources",
    "split_specs": "sources",
    "load_pairs": "formats",
    "load_rankings": "formats",
    "load_responses": "formats",
    "Encoded": "tokenize",
    "EncodedPairs": "tokenize",
    "SequenceEncoder": "tokenize",
    "encode_pairs": "tokenize",
    "encode_responses": "tokenize",
    "build_wordlevel_tokenizer": "tokenize",
    "BatchPlan": "batching",
    "default_buckets": "batching",
    "collate_pairs": "batching",
    "collate_single": "batching",
    "map_batches": "batching",
    "PackedPairBatches": "packing",
    "corrupt_labels": "corruption",
    "SimulatorConfig": "simulator",
    "simulate": "simulator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
