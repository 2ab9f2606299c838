"""TorchRec-backed lookups (and, in a later issue, their sharding over processes).

:func:`embdim.backends.create_lookup` imports :mod:`embdim.distributed.torchrec_lookup` on demand
for ``embedding.backend=torchrec``, so this package imports nothing heavy.
"""
