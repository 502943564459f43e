"""Drop-in ssgr backends for other pruners; import the submodule you need:

- :mod:`ssgr.compat.sparsegpt`: IST-DASLab ``SparseGPT`` class (``add_batch`` / ``fasterprune``).
- :mod:`ssgr.compat.quant`: IST-DASLab ``Quantizer`` (the grid ``SparseGPT`` honours as
  ``gpt.quantizer`` for joint sparsify + quantize).
- :mod:`ssgr.compat.wanda`: Wanda's ``WrappedGPT`` and ``prune_wanda`` mask selection.
- :mod:`ssgr.compat.llmcompressor`: ``SSGRSparseGPTModifier`` / ``SSGRWandaPruningModifier`` for
  llm-compressor's ``oneshot`` (imports llmcompressor).

This package imports none of them (and neither llmcompressor nor transformers).
"""

__all__: list[str] = []  # no star-import of the submodules (llmcompressor is heavy)
