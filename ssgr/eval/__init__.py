"""ssgr.eval: accuracy (pass@1 over k samples, response length, truncation, by difficulty) and
perplexity (text corpus, held-out self-generated traces).

* :mod:`ssgr.eval.accuracy` - :func:`~ssgr.eval.accuracy.evaluate`, ``ssgr eval``;
* :mod:`ssgr.eval.perplexity` - :func:`~ssgr.eval.perplexity.perplexity`, ``ssgr ppl``;
* :mod:`ssgr.eval.cli` - ``register(subparsers)`` adds both subcommands.

Nothing heavy is imported here.
"""
