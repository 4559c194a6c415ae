"""Research scripts reproducing the unit scaling paper; they import unitscale and ipu_sim.

Scripts (``python -m experiments.NAME``): ``gpt``, ``charlm``, ``bert``, ``shift``, ``umup``, ``scales``,
``ipu`` and ``sweep``. They share code only through the library modules, never through each other:
``train`` (the one training loop) with ``train_step``, ``optimizers``, ``checkpoint``, ``parallel`` and
``progress``; ``data`` (corpora, vocabularies, batches) and ``char_gpt`` (a GPT on a character corpus);
``cli`` (one run's options), ``sweep_cli`` (the sweep scripts' command line) and ``inputs`` (checks of
what a user hands a script); ``variants`` (numerics by name); ``charlm_run`` (one char-LM run);
``runner`` (sweeps of run directories), ``stages`` (a sweep's stages and the records of their runs) and
``outcome`` (what one run reports); ``intervals``, ``tables`` and ``figures`` (the results);
``results`` (result files).
"""
