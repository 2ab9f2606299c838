"""TorchRec-backed lookups (and, in a later issue, their sharding over processes).

Importing :mod:`embdim.distributed.torchrec_lookup` registers the ``torchrec`` lookup backend;
:func:`embdim.lookup.create_lookup` does that on demand, so this package imports nothing heavy.
"""
