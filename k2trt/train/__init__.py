"""Training the tiny K2 on CPU, so that the verification path's model chats, thinks and calls tools.

Owns the synthetic corpus (``pools``: values split train/held-out; ``tools``: tool families; ``corpus``:
conversations), its rendering through ``k2trt.chat.thinking`` (``render``: every thinking mode), the training
run (``config``, ``weights``, ``trainer``: the reference ``Transformer`` itself, resumable, deterministic,
block-FP8-aware at the end, exported through ``checkpoint.synth``; ``circuit``: the copying heads wired in at
initialisation) and the held-out scorer (``evaluate``, whose
turns also go through ``k2trt toolcheck`` against a served stack in the end-to-end gates).

``config``, ``pools``, ``tools``, ``corpus`` and ``render`` import no torch (the CLI reads its defaults from
``config``); ``weights``, ``circuit``, ``trainer`` and ``evaluate`` do. Nothing outside ``commands/train.py`` and
the tests imports this package: the trained checkpoint it writes (``config.DEFAULT_OUT``) is ordinary package data.
"""
