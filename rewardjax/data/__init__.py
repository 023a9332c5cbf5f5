"""Records and tokenizers: reading preference data in its many formats, splits, the simulator,
tokenization with chat templates and truncation, batching and packing. No networks run here.
"""

from rewardjax._lazy import lazy_exports

# The public surface: name -> defining submodule, imported on first use (rewardjax._lazy).
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
    "PairwiseEncoder": "pairwise",
    "EncodedOrders": "pairwise",
    "encode_orders": "pairwise",
    "collate_orders": "pairwise",
    "BatchPlan": "batching",
    "default_buckets": "batching",
    "collate_pairs": "batching",
    "collate_single": "batching",
    "map_batches": "batching",
    "PackedPairBatches": "packing",
    "SharedPrefixBatches": "shared_prefix",
    "sharing_enabled": "shared_prefix",
    "corrupt_labels": "corruption",
    "SimulatorConfig": "simulator",
    "simulate": "simulator",
    "StepRecord": "steps",
    "StepEncoder": "steps",
    "EncodedSteps": "steps",
    "load_steps": "steps",
    "encode_step_records": "steps",
    "collate_steps": "steps",
    "solution_pairs": "steps",
    "StepSimConfig": "sim_steps",
    "simulate_steps": "sim_steps",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
